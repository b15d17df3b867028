package tss

import (
	"context"
	"crypto/rand"
	"errors"
	"math/big"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bnb-chain/tss-lib/v2/crypto"
	cmt "github.com/bnb-chain/tss-lib/v2/crypto/commitments"
	"github.com/bnb-chain/tss-lib/v2/crypto/schnorr"
	"github.com/bnb-chain/tss-lib/v2/ecdsa/signing"
	tsslib "github.com/bnb-chain/tss-lib/v2/tss"

	"github.com/tkeyless/tkeyless/tss/internal/gg18"
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

// TestOwnFaultNamesNobody: when a member's own CRT arithmetic faults (its
// Ñ while it checks the others' range proofs in round 2, or its Paillier
// key while it decrypts their MtA answers), its session ends with a Fault
// that names and convicts nobody and does not count as an unattributed
// abort; the honest members convict nobody either. Before, the member
// blamed whichever peer's proof or answer it was checking.
func TestOwnFaultNamesNobody(t *testing.T) {
	shares := fixtureShares(t, 2, 3)
	b := shares[1].data
	bN2 := new(big.Int).Mul(b.PaillierSK.N, b.PaillierSK.N)
	for _, tc := range []struct {
		name, op string
		mod      *big.Int
	}{
		{"own Ñ in round 2", "commit", b.LocalPreParams.NTildei},
		{"own Paillier key decrypting", "decrypt", bN2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer gg18.SetFaultInjector(func(op string, m *big.Int) bool { return op == tc.op && m.Cmp(tc.mod) == 0 })()
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
			var faulty, all sync.WaitGroup
			faulty.Add(1)
			for name, s := range sessions {
				all.Go(func() {
					_, err := s.Run(ctx)
					mu.Lock()
					errs[name] = err
					mu.Unlock()
					if name == "b" {
						faulty.Done()
					}
				})
			}
			faulty.Wait()
			cancel() // a and c wait for b's messages
			all.Wait()
			var se *SessionError
			if !errors.As(errs["b"], &se) || !se.Fault || !errors.Is(errs["b"], ErrFault) || len(se.Culprits) > 0 || len(se.Convicted) > 0 || se.Unattributed {
				t.Fatalf("b: %v (culprits %v, fault %v, unattributed %v), want a fault naming nobody", errs["b"], culprits(se), se != nil && se.Fault, se != nil && se.Unattributed)
			}
			for _, name := range []string{"a", "c"} {
				var se *SessionError
				if errors.As(errs[name], &se) && (len(se.Convicted) > 0 || se.Fault) {
					t.Errorf("%s: %v, want no conviction and no fault of its own", name, errs[name])
				}
			}
		})
	}
}

// TestRound9RefusesWithoutReleasingShare: a member that opens its round-7
// commitment to U_j, T_j wrongly, to a point off the curve, or to values
// with Σ U ≠ Σ T is refused at round 9 by both honest members, naming it
// where its messages prove it (the opening, the point) and naming nobody
// where they cannot (the sums), and neither honest member sends its share
// s_i: s_i leaves only when the check of rounds 5–8 passed.
func TestRound9RefusesWithoutReleasingShare(t *testing.T) {
	shares := fixtureShares(t, 2, 3)
	g := crypto.ScalarBaseMult(curve, big.NewInt(1))
	for _, tc := range []struct {
		name    string
		commit  func(u, t *crypto.ECPoint) []*big.Int // what b commits to in round 7; nil: its true values
		opening func(d cmt.HashDeCommitment) cmt.HashDeCommitment
		blame   []string // nil: unattributed
		want    string
	}{
		{name: "opening does not match", opening: func(d cmt.HashDeCommitment) cmt.HashDeCommitment {
			d = slices.Clone(d)
			d[1] = new(big.Int).Add(d[1], big.NewInt(1))
			return d
		}, blame: []string{"b"}, want: "de-commitment for Uj and Tj failed"},
		{name: "U_j off the curve", commit: func(u, t *crypto.ECPoint) []*big.Int {
			return []*big.Int{u.X(), new(big.Int).Add(u.Y(), big.NewInt(1)), t.X(), t.Y()}
		}, blame: []string{"b"}, want: "U_j"},
		{name: "sum of U is not sum of T", commit: func(u, t *crypto.ECPoint) []*big.Int {
			u2, err := u.Add(g)
			if err != nil {
				panic(err)
			}
			return []*big.Int{u2.X(), u2.Y(), t.X(), t.Y()}
		}, want: "U doesn't equal T"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tamperMessage = func(_ string, party protocolParty, m tsslib.Message) tsslib.Message {
				p, ok := party.(*engineParty)
				if !ok || m.GetFrom().Id != "b" {
					return m
				}
				switch m.(tsslib.ParsedMessage).Content().(type) {
				case *signing.SignRound7Message:
					if tc.commit == nil {
						return m
					}
					c := cmt.NewHashCommitment(rand.Reader, tc.commit(p.ui, p.ti)...)
					p.dTelda = c.D
					return signing.NewSignRound7Message(m.GetFrom(), c.C)
				case *signing.SignRound8Message:
					d := p.dTelda // set above, even when round 8 was made in the same call as round 7
					if tc.opening != nil {
						d = tc.opening(d)
					}
					return signing.NewSignRound8Message(m.GetFrom(), d)
				}
				return m
			}
			defer func() { tamperMessage = nil }()

			net := newMemnet()
			var mu sync.Mutex
			released := map[string]bool{}
			net.tamper = func(from, _ string, m Outgoing) []byte {
				if strings.HasSuffix(m.Type, "SignRound9Message") {
					mu.Lock()
					released[from] = true
					mu.Unlock()
				}
				return m.Payload
			}
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
			cancel() // b waits for the honest members' shares, which do not come
			all.Wait()
			for _, name := range []string{"a", "c"} {
				var se *SessionError
				if !errors.As(errs[name], &se) || se.Round != 9 || !slices.Equal(se.Culprits, tc.blame) || se.Unattributed != (tc.blame == nil) || !strings.Contains(errs[name].Error(), tc.want) {
					t.Errorf("%s: %v (culprits %v), want round 9 naming %v: %q", name, errs[name], culprits(se), tc.blame, tc.want)
				}
				if released[name] {
					t.Errorf("%s sent its round-9 share s_i after the check failed", name)
				}
			}
		})
	}
}
