package gg18

import (
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/bnb-chain/tss-lib/v2/crypto"
	"github.com/bnb-chain/tss-lib/v2/crypto/mta"
	"github.com/bnb-chain/tss-lib/v2/ecdsa/keygen"
	tsslib "github.com/bnb-chain/tss-lib/v2/tss"
)

var ec = elliptic.P256()

func init() { tsslib.RegisterCurve("P-256", ec) }

var (
	preMu sync.Mutex
	pre   = map[int]*keygen.LocalPreParams{}
)

// preParams loads tkeyless's committed test-only pre-parameters.
func preParams(t testing.TB, i int) *keygen.LocalPreParams {
	t.Helper()
	preMu.Lock()
	defer preMu.Unlock()
	if p, ok := pre[i]; ok {
		return p
	}
	b, err := os.ReadFile(filepath.Join("..", "..", "testdata", "preparams", fmt.Sprintf("party-%d.json", i)))
	if err != nil {
		t.Fatal(err)
	}
	var p keygen.LocalPreParams
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatal(err)
	}
	pre[i] = &p
	return &p
}

func randBelow(t testing.TB, n *big.Int) *big.Int {
	x, err := rand.Int(rand.Reader, n)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func randBits(t testing.TB, bits int) *big.Int {
	return randBelow(t, new(big.Int).Lsh(one, uint(bits)))
}

func own(t testing.TB, i int) *Own {
	k, err := NewOwn(preParams(t, i).PaillierSK)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func ownRing(t testing.TB, i int) *OwnRing {
	p := preParams(t, i)
	r, err := NewOwnRing(p.NTildei, p.H1i, p.H2i, p.Alpha, p.P, p.Q)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func peerRing(t testing.TB, i int) *PeerRing {
	p := preParams(t, i)
	r, err := NewPeerRing(p.NTildei, p.H1i, p.H2i)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestGammaExp: Γ^m = 1 + m·N mod N², for random m of every size up to
// beyond N.
func TestGammaExp(t *testing.T) {
	k := own(t, 0)
	g := new(big.Int).Add(k.N(), one)
	for _, bits := range []int{0, 1, 256, 768, 1792, 2047, 2048, 2300} {
		m := randBits(t, bits)
		if got, want := GammaExp(k, m), new(big.Int).Exp(g, m, k.N2()); got.Cmp(want) != 0 {
			t.Fatalf("%d-bit m: Γ^m differs", bits)
		}
	}
}

// TestOwnMatchesPlain: the key owner's CRT exponentiations and decryption
// give what math/big and tss-lib give.
func TestOwnMatchesPlain(t *testing.T) {
	k := own(t, 1)
	peer, _ := NewPeer(k.Public())
	sk := preParams(t, 1).PaillierSK
	for i := range 8 {
		x := randBelow(t, k.N2())
		if i == 0 {
			x = new(big.Int).Set(k.p) // not a unit: CRT is exact anyway
		}
		e := randBits(t, []int{0, 1, 256, 768, 2048, 2900}[i%6])
		for _, c := range []struct {
			name      string
			got, want func() (*big.Int, error)
		}{
			{"x^e mod N²", func() (*big.Int, error) { return k.Exp(x, e) }, func() (*big.Int, error) { return peer.Exp(x, e) }},
			{"x^N mod N²", func() (*big.Int, error) { return k.ExpN(x) }, func() (*big.Int, error) { return peer.ExpN(x) }},
			{"x^e mod N", func() (*big.Int, error) { return k.ExpModN(x, e) }, func() (*big.Int, error) { return peer.ExpModN(x, e) }},
		} {
			got, err := c.got()
			if err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			want, _ := c.want()
			if got.Cmp(want) != 0 {
				t.Fatalf("case %d: %s differs from math/big", i, c.name)
			}
		}
		m := randBelow(t, k.N())
		ct, _, err := Encrypt(k, rand.Reader, m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := k.Decrypt(ct)
		if err != nil {
			t.Fatal(err)
		}
		want, err := sk.Decrypt(ct)
		if err != nil {
			t.Fatal(err)
		}
		if got.Cmp(want) != 0 || got.Cmp(m) != 0 {
			t.Fatalf("case %d: decryption differs from tss-lib's", i)
		}
	}
}

// TestRingsMatchPlain: h1^a·h2^b by the own-Ñ shortcut and by peer tables
// equals the plain product, for exponents of every size the proofs use
// (and beyond the tables, where the plain path takes over).
func TestRingsMatchPlain(t *testing.T) {
	p := preParams(t, 2)
	plain, _ := NewPlainRing(p.NTildei, p.H1i, p.H2i)
	rings := map[string]Ring{"own": ownRing(t, 2), "peer": peerRing(t, 2)}
	for i, bits := range []int{0, 1, 256, 768, 1280, 1792, 2304, 2816, 2880, 3500} {
		a, b := randBits(t, bits), randBits(t, []int{2816, 256, 0}[i%3])
		want, _ := plain.Commit(a, b)
		for name, r := range rings {
			got, err := r.Commit(a, b)
			if err != nil {
				t.Fatal(err)
			}
			if got.Cmp(want) != 0 {
				t.Fatalf("%s ring: h1^a·h2^b differs for %d-bit a", name, bits)
			}
		}
		x := randBelow(t, p.NTildei)
		got, err := rings["own"].Exp(x, a)
		if err != nil {
			t.Fatal(err)
		}
		if want, _ := plain.Exp(x, a); got.Cmp(want) != 0 {
			t.Fatalf("own ring: x^e differs for %d-bit e", bits)
		}
	}
}

// TestFaultDetected: a half computed wrong is caught, not combined. The
// fault is simulated by making one half compute modulo f·r′ while the
// check expects a result modulo r.
func TestFaultDetected(t *testing.T) {
	k := own(t, 0)
	other, _ := rand.Prime(rand.Reader, 61)
	k.modN2.f1r = new(big.Int).Mul(k.modN2.f1, other)
	k.p2r = k.modN2.f1r
	x := randBelow(t, k.N2())
	if _, err := k.Exp(x, randBits(t, 256)); err != ErrFault {
		t.Fatalf("Exp with a faulty half: %v, want ErrFault", err)
	}
	if _, err := k.ExpN(x); err != ErrFault {
		t.Fatalf("ExpN with a faulty half: %v, want ErrFault", err)
	}
	if _, err := k.Decrypt(GammaExp(k, big.NewInt(7))); err != ErrFault {
		t.Fatalf("Decrypt with a faulty half: %v, want ErrFault", err)
	}
	r := ownRing(t, 0)
	r.tp = newFixedBase(r.h1, new(big.Int).Mul(r.mod.f1, other), r.order.BitLen())
	if _, err := r.Commit(randBits(t, 256), randBits(t, 2816)); err != ErrFault {
		t.Fatalf("own-ring commitment with a faulty half: %v, want ErrFault", err)
	}
	if _, err := k.modN2.combine(big.NewInt(1), k.modN2.f2); err != ErrFault {
		t.Fatalf("combine of an unreduced half: %v, want ErrFault", err)
	}
}

// TestRangeProofInterop: our prover's proof passes tss-lib's verifier and
// tss-lib's passes ours; a changed proof fails ours.
func TestRangeProofInterop(t *testing.T) {
	alice, bob := own(t, 0), preParams(t, 1)
	pkA, _ := NewPeer(alice.Public())
	m := randBelow(t, ec.Params().N)
	c, r, err := Encrypt(alice, rand.Reader, m)
	if err != nil {
		t.Fatal(err)
	}
	pf, err := ProveRangeAlice(ec, alice, peerRing(t, 1), c, m, r, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if !pf.Verify(ec, alice.Public(), bob.NTildei, bob.H1i, bob.H2i, c) {
		t.Fatal("tss-lib refuses the engine's range proof")
	}
	if err := VerifyRangeAlice(ec, pf, pkA, ownRing(t, 1), c); err != nil {
		t.Fatalf("the engine refuses its own range proof: %v", err)
	}
	ref, err := mta.ProveRangeAlice(ec, alice.Public(), c, bob.NTildei, bob.H1i, bob.H2i, m, r, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyRangeAlice(ec, ref, pkA, ownRing(t, 1), c); err != nil {
		t.Fatalf("the engine refuses tss-lib's range proof: %v", err)
	}
	bad := *ref
	bad.S1 = new(big.Int).Add(ref.S1, one)
	if err := VerifyRangeAlice(ec, &bad, pkA, ownRing(t, 1), c); !errors.Is(err, ErrProof) {
		t.Fatalf("the engine accepts a changed range proof: %v, want ErrProof", err)
	}
	// A value out of range: m ≥ q³ must not be provable.
	q3, _ := powers(ec.Params().N)
	big3 := new(big.Int).Add(q3, q3)
	c2, r2, _ := Encrypt(alice, rand.Reader, big3)
	pf2, _ := ProveRangeAlice(ec, alice, peerRing(t, 1), c2, big3, r2, rand.Reader)
	if err := VerifyRangeAlice(ec, pf2, pkA, ownRing(t, 1), c2); !errors.Is(err, ErrProof) {
		t.Fatalf("the engine accepts a range proof for m > q³: %v, want ErrProof", err)
	}
}

// TestVerifyFaultIsNotTheProvers: when the verifier's own CRT arithmetic
// faults while checking a valid proof, the verifiers answer ErrFault, not
// ErrProof: the prover did nothing wrong, and must not be blamed for it.
func TestVerifyFaultIsNotTheProvers(t *testing.T) {
	alice, bob := own(t, 0), ownRing(t, 1)
	pkA, _ := NewPeer(alice.Public())
	m := randBelow(t, ec.Params().N)
	c, r, err := Encrypt(alice, rand.Reader, m)
	if err != nil {
		t.Fatal(err)
	}
	pf, err := ProveRangeAlice(ec, alice, peerRing(t, 1), c, m, r, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, op := range []string{"exp", "commit"} {
		restore := SetFaultInjector(func(o string, mod *big.Int) bool { return o == op && mod.Cmp(bob.NTilde()) == 0 })
		err := VerifyRangeAlice(ec, pf, pkA, bob, c)
		restore()
		if !errors.Is(err, ErrFault) {
			t.Errorf("range proof, fault in the verifier's own ring (%s): %v, want ErrFault", op, err)
		}
	}
	if err := VerifyRangeAlice(ec, pf, pkA, bob, c); err != nil {
		t.Fatalf("range proof after the injector was removed: %v", err)
	}

	// Bob answers Alice's cA; Alice verifies with her own key and ring.
	aliceRing := ownRing(t, 0)
	q := ec.Params().N
	cA, _, _ := Encrypt(alice, rand.Reader, randBelow(t, q))
	b := randBelow(t, q)
	X := crypto.ScalarBaseMult(ec, b)
	betaPrm := randBelow(t, new(big.Int).Exp(q, big.NewInt(5), nil))
	cBeta, rB, _ := Encrypt(pkA, rand.Reader, betaPrm)
	cB := mulMod(pkA.N2(), new(big.Int).Exp(cA, b, pkA.N2()), cBeta)
	session := []byte("session and sender")
	bobPf, err := ProveBob(ec, session, pkA, peerRing(t, 0), cA, cB, b, betaPrm, rB, X, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		op  string
		mod *big.Int
	}{{"exp", alice.N2()}, {"expN", alice.N2()}, {"exp", aliceRing.NTilde()}, {"commit", aliceRing.NTilde()}} {
		restore := SetFaultInjector(func(o string, mod *big.Int) bool { return o == tc.op && mod.Cmp(tc.mod) == 0 })
		err := VerifyBob(ec, session, bobPf.ProofBob, bobPf.U, alice, aliceRing, cA, cB, X)
		restore()
		if !errors.Is(err, ErrFault) {
			t.Errorf("Bob's proof, fault in the verifier's %s modulo a %d-bit modulus: %v, want ErrFault", tc.op, tc.mod.BitLen(), err)
		}
	}
	if err := VerifyBob(ec, session, bobPf.ProofBob, bobPf.U, alice, aliceRing, cA, cB, X); err != nil {
		t.Fatalf("Bob's proof after the injector was removed: %v", err)
	}
}

// TestBobProofInterop: both of Bob's proofs (with and without check), made
// by either side, pass the other's verifier.
func TestBobProofInterop(t *testing.T) {
	aliceOwn, alicePre := own(t, 0), preParams(t, 0)
	pkA, _ := NewPeer(aliceOwn.Public())
	session := []byte("session and sender")
	q := ec.Params().N
	a := randBelow(t, q)
	cA, _, _ := Encrypt(aliceOwn, rand.Reader, a)
	for _, withCheck := range []bool{false, true} {
		b := randBelow(t, q)
		var X *crypto.ECPoint
		if withCheck {
			X = crypto.ScalarBaseMult(ec, b)
		}
		q5 := new(big.Int).Exp(q, big.NewInt(5), nil)
		betaPrm := randBelow(t, q5)
		cBeta, rB, _ := Encrypt(pkA, rand.Reader, betaPrm)
		cB := mulMod(pkA.N2(), new(big.Int).Exp(cA, b, pkA.N2()), cBeta)

		pf, err := ProveBob(ec, session, pkA, peerRing(t, 0), cA, cB, b, betaPrm, rB, X, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		var refOK bool
		if withCheck {
			refOK = pf.Verify(session, ec, aliceOwn.Public(), alicePre.NTildei, alicePre.H1i, alicePre.H2i, cA, cB, X)
		} else {
			refOK = pf.ProofBob.Verify(session, ec, aliceOwn.Public(), alicePre.NTildei, alicePre.H1i, alicePre.H2i, cA, cB)
		}
		if !refOK {
			t.Fatalf("with check %t: tss-lib refuses the engine's proof", withCheck)
		}
		if err := VerifyBob(ec, session, pf.ProofBob, pf.U, aliceOwn, ownRing(t, 0), cA, cB, X); err != nil {
			t.Fatalf("with check %t: the engine refuses its own proof: %v", withCheck, err)
		}
		var ref *mta.ProofBobWC
		if withCheck {
			ref, err = mta.ProveBobWC(session, ec, aliceOwn.Public(), alicePre.NTildei, alicePre.H1i, alicePre.H2i, cA, cB, b, betaPrm, rB, X, rand.Reader)
		} else {
			var p *mta.ProofBob
			p, err = mta.ProveBob(session, ec, aliceOwn.Public(), alicePre.NTildei, alicePre.H1i, alicePre.H2i, cA, cB, b, betaPrm, rB, rand.Reader)
			ref = &mta.ProofBobWC{ProofBob: p}
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := VerifyBob(ec, session, ref.ProofBob, ref.U, aliceOwn, ownRing(t, 0), cA, cB, X); err != nil {
			t.Fatalf("with check %t: the engine refuses tss-lib's proof: %v", withCheck, err)
		}
		if err := VerifyBob(ec, []byte("another session"), ref.ProofBob, ref.U, aliceOwn, ownRing(t, 0), cA, cB, X); !errors.Is(err, ErrProof) {
			t.Fatalf("with check %t: the engine accepts a proof from another session: %v, want ErrProof", withCheck, err)
		}
		bad := *ref.ProofBob
		bad.T1 = new(big.Int).Add(bad.T1, one)
		if err := VerifyBob(ec, session, &bad, ref.U, aliceOwn, ownRing(t, 0), cA, cB, X); !errors.Is(err, ErrProof) {
			t.Fatalf("with check %t: the engine accepts a changed proof: %v, want ErrProof", withCheck, err)
		}
		// Decrypting the answer gives a·b + β′ exactly.
		got, err := aliceOwn.Decrypt(cB)
		if err != nil {
			t.Fatal(err)
		}
		want := new(big.Int).Mul(a, b)
		if want.Add(want, betaPrm).Cmp(got) != 0 {
			t.Fatal("Bob's answer does not decrypt to a·b + β′")
		}
	}
}
