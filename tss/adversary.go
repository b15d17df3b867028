//go:build adversary

package tss

import (
	"crypto/rand"
	"math/big"
	"os"

	"github.com/tkeyless/tkeyless/internal/adversary"
)

// This file exists only in the adversary build (go build -tags adversary),
// used by the security tests to run one signer that attacks the others
// from inside the GG18 rounds. Release builds leave tamperMessage nil.
// TKEYLESS_ADVERSARY selects the attack:
//
//	mta-oracle  in every signing session, answer every other member's MtA
//	            request with β′ = −T·γ for a random T (the Alpha-Rays abort
//	            oracle, internal/adversary.MtAOracle)
func init() {
	if os.Getenv("TKEYLESS_ADVERSARY") != "mta-oracle" {
		return
	}
	q := curve.Params().N
	oracle := &adversary.MtAOracle{Threshold: func() *big.Int {
		// T in [q/4, 3q/4): each answer probes one comparison on a nonce share.
		t, _ := rand.Int(rand.Reader, new(big.Int).Rsh(q, 1))
		return t.Add(t, new(big.Int).Rsh(q, 2))
	}}
	// The engine computes the answer, Bob's proof and its own β from the
	// β′ the oracle picks.
	mtaBetaHook = func(kind, self, to string, gamma *big.Int) *big.Int {
		if kind != "sign" && kind != "presign" {
			return nil
		}
		return oracle.Answer(self, to, gamma)
	}
}
