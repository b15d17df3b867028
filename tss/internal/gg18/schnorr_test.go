package gg18

import (
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"math/big"
	"testing"

	"github.com/bnb-chain/tss-lib/v2/common"
	"github.com/bnb-chain/tss-lib/v2/crypto"
	"github.com/bnb-chain/tss-lib/v2/crypto/schnorr"
)

var p256Curve = elliptic.P256()

func randInt(t testing.TB) *big.Int {
	return common.GetRandomPositiveInt(rand.Reader, p256Curve.Params().N)
}

// zkFixture is a valid round-6 proof of knowledge of x, X = x·G, by
// tss-lib.
func zkFixture(t testing.TB, session []byte) ZKClaim {
	x := randInt(t)
	X := crypto.ScalarBaseMult(p256Curve, x)
	pf, err := schnorr.NewZKProof(session, x, X, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return ZKClaim{Session: session, X: X, Proof: pf}
}

// zkvFixture is a valid proof that V = s·R + l·G, by tss-lib.
func zkvFixture(t testing.TB, session []byte, R *crypto.ECPoint) ZKVClaim {
	s, l := randInt(t), randInt(t)
	V, err := R.ScalarMult(s).Add(crypto.ScalarBaseMult(p256Curve, l))
	if err != nil {
		t.Fatal(err)
	}
	pf, err := schnorr.NewZKVProof(session, V, R, s, l, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return ZKVClaim{Session: session, V: V, R: R, Proof: pf}
}

// reference is tss-lib's verdict on every claim; a panic in tss-lib (it
// panics on some zero scalars) is a refusal.
func reference(zk []ZKClaim, zkv []ZKVClaim) (ok bool) {
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	for _, c := range zk {
		if !c.Proof.Verify(c.Session, c.X) {
			return false
		}
	}
	for _, c := range zkv {
		if !c.Proof.Verify(c.Session, c.V, c.R) {
			return false
		}
	}
	return true
}

// TestVerifySchnorrBatchMatchesTSSLib checks the batch against tss-lib's
// one-by-one verification: a round 7's worth of valid proofs passes both,
// and each way of changing one proof gives both the same answer (most
// refuse; T + q and U + q are the same proof to both).
func TestVerifySchnorrBatchMatchesTSSLib(t *testing.T) {
	q := p256Curve.Params().N
	R := crypto.ScalarBaseMult(p256Curve, randInt(t))
	for _, shape := range []struct{ zk, zkv int }{{1, 0}, {0, 1}, {1, 1}, {2, 2}, {4, 4}} {
		session := []byte(fmt.Sprintf("ssid-%d-%d", shape.zk, shape.zkv))
		fresh := func() ([]ZKClaim, []ZKVClaim) {
			var zk []ZKClaim
			var zkv []ZKVClaim
			for range shape.zk {
				zk = append(zk, zkFixture(t, session))
			}
			for range shape.zkv {
				zkv = append(zkv, zkvFixture(t, session, R))
			}
			return zk, zkv
		}
		zk, zkv := fresh()
		if ok, err := VerifySchnorrBatch(zk, zkv, rand.Reader); err != nil || !ok {
			t.Fatalf("%v: valid proofs refused (%v)", shape, err)
		}
		other := crypto.ScalarBaseMult(p256Curve, randInt(t))
		plus := func(x, y *big.Int) *big.Int { return new(big.Int).Add(x, y) }
		zkChanges := map[string]func(c *ZKClaim){
			"alpha":   func(c *ZKClaim) { c.Proof.Alpha = other },
			"T+1":     func(c *ZKClaim) { c.Proof.T = plus(c.Proof.T, big.NewInt(1)) },
			"T+q":     func(c *ZKClaim) { c.Proof.T = plus(c.Proof.T, q) },
			"T=0":     func(c *ZKClaim) { c.Proof.T = big.NewInt(0) },
			"T=q":     func(c *ZKClaim) { c.Proof.T = new(big.Int).Set(q) },
			"X":       func(c *ZKClaim) { c.X = other },
			"session": func(c *ZKClaim) { c.Session = []byte("another session") },
			"nil T":   func(c *ZKClaim) { c.Proof.T = nil },
		}
		zkvChanges := map[string]func(c *ZKVClaim){
			"alpha":   func(c *ZKVClaim) { c.Proof.Alpha = other },
			"T+1":     func(c *ZKVClaim) { c.Proof.T = plus(c.Proof.T, big.NewInt(1)) },
			"U+1":     func(c *ZKVClaim) { c.Proof.U = plus(c.Proof.U, big.NewInt(1)) },
			"T+q":     func(c *ZKVClaim) { c.Proof.T = plus(c.Proof.T, q) },
			"U+q":     func(c *ZKVClaim) { c.Proof.U = plus(c.Proof.U, q) },
			"T=0":     func(c *ZKVClaim) { c.Proof.T = big.NewInt(0) },
			"U=q":     func(c *ZKVClaim) { c.Proof.U = new(big.Int).Set(q) },
			"V":       func(c *ZKVClaim) { c.V = other },
			"R":       func(c *ZKVClaim) { c.R = other },
			"session": func(c *ZKVClaim) { c.Session = []byte("another session") },
			"nil U":   func(c *ZKVClaim) { c.Proof.U = nil },
		}
		for i := range shape.zk {
			for name, change := range zkChanges {
				zk, zkv := fresh()
				change(&zk[i])
				want := reference(zk, zkv)
				if got, err := VerifySchnorrBatch(zk, zkv, rand.Reader); err != nil || got != want {
					t.Errorf("%v: Schnorr proof %d, %s: batch says %v (%v), tss-lib %v", shape, i, name, got, err, want)
				}
			}
		}
		for i := range shape.zkv {
			for name, change := range zkvChanges {
				zk, zkv := fresh()
				change(&zkv[i])
				want := reference(zk, zkv)
				if got, err := VerifySchnorrBatch(zk, zkv, rand.Reader); err != nil || got != want {
					t.Errorf("%v: ZKV proof %d, %s: batch says %v (%v), tss-lib %v", shape, i, name, got, err, want)
				}
			}
		}
	}
}

// TestVerifySchnorrBatchTwoWrongsCancel: two proofs wrong by opposite
// amounts would cancel in an unweighted sum; the weights catch them.
func TestVerifySchnorrBatchTwoWrongsCancel(t *testing.T) {
	session := []byte("ssid")
	zk := []ZKClaim{zkFixture(t, session), zkFixture(t, session)}
	zk[0].Proof.T = new(big.Int).Add(zk[0].Proof.T, big.NewInt(1))
	zk[1].Proof.T = new(big.Int).Sub(zk[1].Proof.T, big.NewInt(1))
	if ok, err := VerifySchnorrBatch(zk, nil, rand.Reader); err != nil || ok {
		t.Fatalf("two compensating errors accepted (%v)", err)
	}
}

// TestProveZKVInterop: tss-lib verifies ProveZKV's proofs, and the batch
// verifies tss-lib's (TestVerifySchnorrBatchMatchesTSSLib).
func TestProveZKVInterop(t *testing.T) {
	R := crypto.ScalarBaseMult(p256Curve, randInt(t))
	for range 20 {
		s, l := randInt(t), randInt(t)
		V, err := R.ScalarMult(s).Add(crypto.ScalarBaseMult(p256Curve, l))
		if err != nil {
			t.Fatal(err)
		}
		pf, err := ProveZKV([]byte("ssid"), V, R, s, l, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if !pf.Verify([]byte("ssid"), V, R) {
			t.Fatal("tss-lib refuses ProveZKV's proof")
		}
		if pf.Verify([]byte("other"), V, R) {
			t.Fatal("tss-lib accepts ProveZKV's proof under another session")
		}
		if ok, err := VerifySchnorrBatch(nil, []ZKVClaim{{Session: []byte("ssid"), V: V, R: R, Proof: pf}}, rand.Reader); err != nil || !ok {
			t.Fatalf("batch refuses ProveZKV's proof (%v)", err)
		}
	}
}

// TestProveZKInterop: tss-lib verifies ProveZK's proofs, and BaseMult is
// tss-lib's ScalarBaseMult.
func TestProveZKInterop(t *testing.T) {
	for range 20 {
		x := randInt(t)
		X := BaseMult(x)
		if !X.Equals(crypto.ScalarBaseMult(p256Curve, x)) {
			t.Fatal("BaseMult differs from tss-lib's ScalarBaseMult")
		}
		pf, err := ProveZK([]byte("ssid"), x, X, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if !pf.Verify([]byte("ssid"), X) {
			t.Fatal("tss-lib refuses ProveZK's proof")
		}
		if pf.Verify([]byte("other"), X) || pf.Verify([]byte("ssid"), BaseMult(randInt(t))) {
			t.Fatal("tss-lib accepts ProveZK's proof for another session or point")
		}
		if ok, err := VerifySchnorrBatch([]ZKClaim{{Session: []byte("ssid"), X: X, Proof: pf}}, nil, rand.Reader); err != nil || !ok {
			t.Fatalf("batch refuses ProveZK's proof (%v)", err)
		}
	}
}

// BenchmarkRound7Checks is one member's round-7 proof checks in a session
// of three: two Schnorr and two ZKV proofs, one by one with tss-lib and as
// one batch.
func BenchmarkRound7Checks(b *testing.B) {
	R := crypto.ScalarBaseMult(p256Curve, randInt(b))
	session := []byte("ssid")
	zk := []ZKClaim{zkFixture(b, session), zkFixture(b, session)}
	zkv := []ZKVClaim{zkvFixture(b, session, R), zkvFixture(b, session, R)}
	b.Run("tss-lib", func(b *testing.B) {
		for b.Loop() {
			if !reference(zk, zkv) {
				b.Fatal("refused")
			}
		}
	})
	b.Run("batch", func(b *testing.B) {
		for b.Loop() {
			if ok, _ := VerifySchnorrBatch(zk, zkv, rand.Reader); !ok {
				b.Fatal("refused")
			}
		}
	})
}
