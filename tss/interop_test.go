package tss

import (
	"context"
	"crypto/ecdsa"
	"fmt"
	"sync"
	"testing"
	"time"
)

// runSignMixed signs digest with the quorum's shares in memory, member i
// running impls[i]: tkeyless's engine or stock tss-lib's party.
func runSignMixed(t testing.TB, shares []*Share, digest []byte, impls []signImpl) ([]byte, error) {
	t.Helper()
	var quorum []string
	for _, s := range shares {
		quorum = append(quorum, s.Self)
	}
	net := newMemnet()
	sessions := make([]*SignSession, len(shares))
	for i, sh := range shares {
		s, err := newSignSession(sh, quorum, digest, net.outbox(sh.Self), impls[i])
		if err != nil {
			return nil, err
		}
		sessions[i] = s
		net.join(sh.Self, s)
	}
	sigs := make([][]byte, len(shares))
	errs := make([]error, len(shares))
	var wg sync.WaitGroup
	for i, s := range sessions {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			sigs[i], errs[i] = s.Run(ctx)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("%s: %w", shares[i].Self, err)
		}
	}
	for _, sig := range sigs[1:] {
		if string(sig) != string(sigs[0]) {
			return nil, fmt.Errorf("quorum members returned different signatures")
		}
	}
	return sigs[0], nil
}

func (i signImpl) String() string {
	if i == implEngine {
		return "engine"
	}
	return "tss-lib"
}

// TestSignInterop: sessions mixing tkeyless's engine and stock tss-lib
// parties sign, for every (t, n) and digest size. Every pair of members
// runs the MtA both ways (each is Alice to the other's Bob and Bob to its
// Alice), so each engine party's range proofs, Bob's proofs, answers and
// later-round messages are checked by a tss-lib party and the other way
// round; the mix alternates which member runs which. Signatures verify
// with crypto/ecdsa.
func TestSignInterop(t *testing.T) {
	names := []string{"SHA-224", "SHA-256", "SHA-384", "SHA-512"}
	for _, ts := range thresholdSets {
		shares := fixtureShares(t, ts.t, ts.n)
		for di, name := range names {
			// Rotate the quorum over the holders, and alternate the mix.
			quorum := make([]*Share, ts.t+1)
			impls := make([]signImpl, ts.t+1)
			for i := range quorum {
				quorum[i] = shares[(i+di)%ts.n]
				impls[i] = signImpl((i + di) % 2)
			}
			t.Run(fmt.Sprintf("t%d-n%d/%s/%v", ts.t, ts.n, name, impls), func(t *testing.T) {
				d := digests()[name]
				sig, err := runSignMixed(t, quorum, d, impls)
				if err != nil {
					t.Fatal(err)
				}
				if !ecdsa.VerifyASN1(shares[0].PublicKey(), d, sig) {
					t.Fatal("signature does not verify")
				}
			})
		}
	}
}
