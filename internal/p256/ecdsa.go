package p256

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"math/big"
	"sync"

	"filippo.io/nistec"

	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/crypto/cryptobyte/asn1"
)

// VerifyASN1 is crypto/ecdsa.VerifyASN1 for the same few P-256 keys
// verified again and again: the node keys of a cluster's members, which
// sign every broadcast of every session. It keeps a FixedBase per key, so
// u₂·Q costs ~44 additions instead of a full multiplication, and answers
// exactly as crypto/ecdsa does (TestVerifyASN1MatchesECDSA), which it falls
// back to for any other curve. Signatures and keys are public: the
// variable time of Mult reveals nothing.
//
// The first verification under a key builds its table (~0.5 ms); at most
// maxKeys tables are kept, so a stream of new keys costs time, not memory.
// Every caller passes only keys of certificates that chain to the
// cluster's CA (node certificates, edge and admin identities), so that
// stream is not the attacker's to choose.
func VerifyASN1(pub *ecdsa.PublicKey, hash, sig []byte) bool {
	if pub == nil || pub.Curve == nil || pub.Curve.Params() != elliptic.P256().Params() {
		return ecdsa.VerifyASN1(pub, hash, sig)
	}
	var rb, sb []byte
	var inner cryptobyte.String
	input := cryptobyte.String(sig)
	if !input.ReadASN1(&inner, asn1.SEQUENCE) || !input.Empty() ||
		!inner.ReadASN1Integer(&rb) || !inner.ReadASN1Integer(&sb) || !inner.Empty() {
		return false
	}
	r, s := new(big.Int).SetBytes(rb), new(big.Int).SetBytes(sb)
	// ReadASN1Integer into []byte refuses negative integers; zero and
	// values ≥ n are refused here, as bigmod refuses them in crypto/ecdsa.
	if r.Sign() == 0 || s.Sign() == 0 || r.Cmp(Order) >= 0 || s.Cmp(Order) >= 0 {
		return false
	}
	q, err := Table(pub.X, pub.Y)
	if err != nil {
		return false
	}
	// e is the hash's leftmost 256 bits (FIPS 186-5 6.4.2, for n of 256
	// bits); it need not be reduced, u₁ is.
	if len(hash) > 32 {
		hash = hash[:32]
	}
	e := new(big.Int).SetBytes(hash)
	w := new(big.Int).ModInverse(s, Order)
	u1 := e.Mul(e, w)
	u1.Mod(u1, Order)
	u2 := w.Mul(w, r)
	u2.Mod(u2, Order)
	sum := Add(ScalarBaseMult(u1), q.Mult(u2))
	x, _, err := Affine(sum)
	if err != nil {
		return false
	}
	return x.Mod(x, Order).Cmp(r) == 0
}

// maxKeys bounds the tables VerifyASN1 keeps (135 KB each).
const maxKeys = 64

var tables struct {
	sync.Mutex
	byKey map[[65]byte]*FixedBase
}

// Table returns the FixedBase of the point (x, y), a public key, from the
// tables VerifyASN1 keeps, building it on first use; a point off the curve
// is an error, as crypto/ecdsa refuses such a key.
func Table(x, y *big.Int) (*FixedBase, error) {
	key, err := uncompressed(x, y)
	if err != nil {
		return nil, err
	}
	tables.Lock()
	fb := tables.byKey[key]
	tables.Unlock()
	if fb != nil {
		return fb, nil // key was checked to be on the curve when its table was made
	}
	p, err := nistec.NewP256Point().SetBytes(key[:])
	if err != nil {
		return nil, err
	}
	fb = NewFixedBase(p)
	tables.Lock()
	defer tables.Unlock()
	if tables.byKey == nil || len(tables.byKey) >= maxKeys {
		tables.byKey = map[[65]byte]*FixedBase{}
	}
	tables.byKey[key] = fb
	return fb, nil
}
