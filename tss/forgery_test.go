package tss

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"math/big"
	"testing"
)

// TestRawDigestForgery shows, on a plain P-256 key made for the test (no
// threshold key is involved), why presigning must keep R = k·G inside the
// quorum until the signature is out, and why only an authenticated edge
// request may choose the digest: whoever knows R before choosing the raw
// digest e that gets signed with nonce k turns one signature into a
// signature on any message h* of its choice.
//
// With t = x(R) and t' = x(a·R) for any a, ask for a signature on
// e = h*·t/t'. It is s = k⁻¹(e + t·d). Then (t', s·t'/(a·t)) is a valid
// signature on h*: s·t'/(a·t) = (a·k)⁻¹(h* + t'·d), the signature with
// nonce a·k, whose point a·R has x-coordinate t'.
func TestRawDigestForgery(t *testing.T) {
	c := elliptic.P256()
	n := c.Params().N
	key, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	d := key.D
	// The presignature's nonce, and R, which the attacker learned early.
	k, _ := rand.Int(rand.Reader, n)
	rx, ry := c.ScalarBaseMult(k.Bytes())
	tt := new(big.Int).Mod(rx, n)

	a := big.NewInt(7)
	ax, _ := c.ScalarMult(rx, ry, a.Bytes())
	t2 := new(big.Int).Mod(ax, n)

	target := sha256.Sum256([]byte("a message the signer never saw"))
	hStar := new(big.Int).SetBytes(target[:])
	// e = h*·t/t' mod n: the raw digest the attacker has signed.
	e := new(big.Int).Mul(hStar, tt)
	e.Mul(e, new(big.Int).ModInverse(t2, n)).Mod(e, n)
	// The honest signer's signature on e with nonce k.
	s := new(big.Int).Mul(tt, d)
	s.Add(s, e).Mul(s, new(big.Int).ModInverse(k, n)).Mod(s, n)

	// The forgery on h*.
	fs := new(big.Int).Mul(s, t2)
	fs.Mul(fs, new(big.Int).ModInverse(new(big.Int).Mul(a, tt), n)).Mod(fs, n)
	if !ecdsa.Verify(&key.PublicKey, target[:], t2, fs) {
		t.Fatal("the forgery does not verify; the argument in docs/presigning.md needs another look")
	}
}
