package tss

import (
	"context"
	"errors"
	"math/big"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bnb-chain/tss-lib/v2/crypto/schnorr"
	"github.com/bnb-chain/tss-lib/v2/ecdsa/signing"
	tsslib "github.com/bnb-chain/tss-lib/v2/tss"
)

// TestForPeersRecoversPanic: a panic in one member's per-peer work (its
// goroutine is outside runner.safely) becomes that member's error instead
// of ending the process, and the other members' results are kept.
func TestForPeersRecoversPanic(t *testing.T) {
	p := &engineParty{ids: make(tsslib.SortedPartyIDs, 4), i: 1, names: []string{"a", "b", "c", "d"}}
	boom := errors.New("boom")
	culprits, err := p.forPeers(func(j int) error {
		switch j {
		case 1:
			t.Errorf("forPeers ran f for the party itself")
		case 2:
			var m map[string]int
			m["x"] = 1 // a nil-map write panics
		case 3:
			return boom
		}
		return nil
	})
	if !slices.Equal(culprits, []int{2, 3}) {
		t.Fatalf("culprits = %v, want [2 3]", culprits)
	}
	if err == nil || !strings.Contains(err.Error(), "panicked while handling c's values") {
		t.Fatalf("first error = %v, want the panic of member c", err)
	}
}

// TestMtACacheConsumedAndCleared: a decrypted MtA answer (α_ij, μ_ij) is
// handed out once and zeroed in the cache; what is never taken is zeroed
// when the session ends.
func TestMtACacheConsumedAndCleared(t *testing.T) {
	c := &mtaCheck{plain: map[mtaAnswer]decrypted{}}
	ct0, ct1 := big.NewInt(1001), big.NewInt(1002)
	pt0, pt1 := big.NewInt(7), big.NewInt(9)
	c.plain[mtaAnswer{"b", 0}] = decrypted{ct: ct0, pt: pt0}
	c.plain[mtaAnswer{"b", 1}] = decrypted{ct: ct1, pt: pt1}

	if v := c.plaintext("b", 0, ct1); v != nil {
		t.Fatalf("answer returned for another ciphertext: %v", v)
	}
	if pt0.Sign() != 0 {
		t.Fatalf("answer left unzeroed after a mismatched take: %v", pt0)
	}
	if v := c.plaintext("b", 0, ct0); v != nil {
		t.Fatalf("answer handed out twice: %v", v)
	}
	c.clear()
	if pt1.Sign() != 0 || len(c.plain) != 0 {
		t.Fatalf("clear left %d entries, μ = %v", len(c.plain), pt1)
	}

	pt := big.NewInt(5)
	c.plain[mtaAnswer{"c", 1}] = decrypted{ct: ct1, pt: pt}
	if v := c.plaintext("c", 1, ct1); v == nil || v.Int64() != 5 {
		t.Fatalf("plaintext = %v, want 5", v)
	}
	if v := c.plaintext("c", 1, ct1); v != nil {
		t.Fatalf("answer handed out twice: %v", v)
	}
}

// TestRound7WrongProofNamesSender: round 7 checks the peers' proofs in one
// batch, and only a failed batch checks them one by one. A member whose
// round-6 proof (of A_j or of V_j) is wrong by one must still be the one
// named, by both honest members of a (2,3) session, with tss-lib's words.
func TestRound7WrongProofNamesSender(t *testing.T) {
	shares := fixtureShares(t, 2, 3)
	for _, tc := range []struct {
		proof, want string
		wrong       func(a *schnorr.ZKProof, v *schnorr.ZKVProof)
	}{
		{"A_j", "schnorr verify for Aj failed", func(a *schnorr.ZKProof, _ *schnorr.ZKVProof) { a.T.Add(a.T, big.NewInt(1)) }},
		{"V_j", "vverify for Vj failed", func(_ *schnorr.ZKProof, v *schnorr.ZKVProof) { v.U.Add(v.U, big.NewInt(1)) }},
	} {
		t.Run(tc.proof, func(t *testing.T) {
			tamperMessage = func(_ string, _ protocolParty, m tsslib.Message) tsslib.Message {
				r6, ok := m.(tsslib.ParsedMessage).Content().(*signing.SignRound6Message)
				if !ok || m.GetFrom().Id != "b" {
					return m
				}
				a, errA := r6.UnmarshalZKProof(curve)
				v, errV := r6.UnmarshalZKVProof(curve)
				if errA != nil || errV != nil {
					t.Errorf("b's own round-6 proofs do not parse: %v, %v", errA, errV)
					return m
				}
				tc.wrong(a, v)
				return signing.NewSignRound6Message(m.GetFrom(), r6.UnmarshalDeCommitment(), a, v)
			}
			defer func() { tamperMessage = nil }()

			net := newMemnet()
			quorum := []string{"a", "b", "c"}
			sessions := map[string]*SignSession{}
			for i, name := range quorum {
				s, err := NewSignSession(shares[i], quorum, digests()["SHA-256"], net.outbox(name))
				if err != nil {
					t.Fatal(err)
				}
				sessions[name] = s
				net.join(name, s)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			errs := map[string]error{}
			var mu sync.Mutex
			var honest, all sync.WaitGroup
			for name, s := range sessions {
				if name != "b" {
					honest.Add(1)
				}
				all.Go(func() {
					_, err := s.Run(ctx)
					mu.Lock()
					errs[name] = err
					mu.Unlock()
					if name != "b" {
						honest.Done()
					}
				})
			}
			honest.Wait()
			cancel() // b waits for round-7 messages that will not come
			all.Wait()
			for _, name := range []string{"a", "c"} {
				var se *SessionError
				if !errors.As(errs[name], &se) || !slices.Equal(se.Culprits, []string{"b"}) || se.Round != 7 || !strings.Contains(errs[name].Error(), tc.want) {
					t.Errorf("%s: %v (culprits %v), want round 7 naming b: %q", name, errs[name], culprits(se), tc.want)
				}
			}
		})
	}
}

func culprits(se *SessionError) []string {
	if se == nil {
		return nil
	}
	return se.Culprits
}
