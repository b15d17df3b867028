package p256

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"math/big"
	"testing"

	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/crypto/cryptobyte/asn1"
)

func TestFixedBase(t *testing.T) {
	p, x, y := randPoint(t)
	fb := NewFixedBase(p)
	qm1 := new(big.Int).Sub(Order, big.NewInt(1))
	scalars := []*big.Int{big.NewInt(0), big.NewInt(1), big.NewInt(31), big.NewInt(32), big.NewInt(33), big.NewInt(63), big.NewInt(64),
		qm1, Order, new(big.Int).Lsh(big.NewInt(1), 255), new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 256), big.NewInt(1))}
	// Every digit pattern that carries: runs of 6-bit 63s and 32s.
	all63, all32 := new(big.Int), new(big.Int)
	for i := range 43 {
		all63.Or(all63, new(big.Int).Lsh(big.NewInt(63), uint(6*i)))
		all32.Or(all32, new(big.Int).Lsh(big.NewInt(32), uint(6*i)))
	}
	scalars = append(scalars, all63, all32)
	for range 200 {
		scalars = append(scalars, randScalar(t))
	}
	for _, k := range scalars {
		got := fb.Mult(k)
		wx, wy := ec.ScalarMult(x, y, new(big.Int).Mod(k, Order).Bytes())
		if wx.Sign() == 0 && wy.Sign() == 0 {
			if got.IsInfinity() != 1 {
				t.Fatalf("k = %x: want infinity", k)
			}
			continue
		}
		gx, gy, err := Affine(got)
		if err != nil || gx.Cmp(wx) != 0 || gy.Cmp(wy) != 0 {
			t.Fatalf("k = %x: got (%x, %x, %v), want (%x, %x)", k, gx, gy, err, wx, wy)
		}
	}
}

// derSig encodes r and s as an ECDSA signature, however wrong they are.
func derSig(r, s []byte) []byte {
	var b cryptobyte.Builder
	b.AddASN1(asn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(asn1.INTEGER, func(b *cryptobyte.Builder) { b.AddBytes(r) })
		b.AddASN1(asn1.INTEGER, func(b *cryptobyte.Builder) { b.AddBytes(s) })
	})
	return b.BytesOrPanic()
}

// TestVerifyASN1MatchesECDSA checks VerifyASN1 against crypto/ecdsa on
// valid signatures and on every kind of wrong one: another digest, another
// key, r or s changed, out of range or zero, high s, malformed DER, hashes
// shorter and longer than 32 bytes, keys off the curve. The two must agree
// on every input.
func TestVerifyASN1MatchesECDSA(t *testing.T) {
	keys := make([]*ecdsa.PrivateKey, 3)
	for i := range keys {
		var err error
		if keys[i], err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			t.Fatal(err)
		}
	}
	type input struct {
		name      string
		pub       *ecdsa.PublicKey
		hash, sig []byte
	}
	var inputs []input
	n := Order.Bytes()
	for i := range 40 {
		key := keys[i%len(keys)]
		other := &keys[(i+1)%len(keys)].PublicKey
		h := sha256.Sum256([]byte{byte(i)})
		hash := h[:]
		sig, err := ecdsa.SignASN1(rand.Reader, key, hash)
		if err != nil {
			t.Fatal(err)
		}
		var rb, sb []byte
		var inner cryptobyte.String
		in := cryptobyte.String(sig)
		if !in.ReadASN1(&inner, asn1.SEQUENCE) || !inner.ReadASN1Integer(&rb) || !inner.ReadASN1Integer(&sb) {
			t.Fatal("cannot parse own signature")
		}
		r, s := new(big.Int).SetBytes(rb), new(big.Int).SetBytes(sb)
		enc := func(x *big.Int) []byte {
			b := x.Bytes()
			if len(b) == 0 || b[0]&0x80 != 0 {
				b = append([]byte{0}, b...)
			}
			return b
		}
		highS := new(big.Int).Sub(Order, s)
		flipped := append([]byte(nil), hash...)
		flipped[31] ^= 1
		long := append(append([]byte(nil), hash...), 0xff, 0xee)
		inputs = append(inputs,
			input{"valid", &key.PublicKey, hash, sig},
			input{"high s (valid too)", &key.PublicKey, hash, derSig(enc(r), enc(highS))},
			input{"other key", other, hash, sig},
			input{"other hash", &key.PublicKey, flipped, sig},
			input{"short hash", &key.PublicKey, hash[:20], sig},
			input{"long hash", &key.PublicKey, long, sig},
			input{"r+1", &key.PublicKey, hash, derSig(enc(new(big.Int).Add(r, big.NewInt(1))), enc(s))},
			input{"s+1", &key.PublicKey, hash, derSig(enc(r), enc(new(big.Int).Add(s, big.NewInt(1))))},
			input{"r+n", &key.PublicKey, hash, derSig(enc(new(big.Int).Add(r, Order)), enc(s))},
			input{"s+n", &key.PublicKey, hash, derSig(enc(r), enc(new(big.Int).Add(s, Order)))},
			input{"r=0", &key.PublicKey, hash, derSig([]byte{0}, enc(s))},
			input{"s=0", &key.PublicKey, hash, derSig(enc(r), []byte{0})},
			input{"r=n", &key.PublicKey, hash, derSig(append([]byte{0}, n...), enc(s))},
			input{"negative r", &key.PublicKey, hash, derSig(append([]byte{0xff}, rb...), enc(s))},
			input{"non-minimal r", &key.PublicKey, hash, derSig(append([]byte{0, 0}, rb...), enc(s))},
			input{"trailing byte", &key.PublicKey, hash, append(append([]byte(nil), sig...), 0)},
			input{"truncated", &key.PublicKey, hash, sig[:len(sig)-1]},
			input{"empty", &key.PublicKey, hash, nil},
			input{"off-curve key", &ecdsa.PublicKey{Curve: elliptic.P256(), X: key.X, Y: new(big.Int).Add(key.Y, big.NewInt(1))}, hash, sig},
		)
	}
	// A signature whose r is x(R) mod n for the digest all zero, signed
	// by crypto/ecdsa too.
	zero := make([]byte, 32)
	zsig, err := ecdsa.SignASN1(rand.Reader, keys[0], zero)
	if err != nil {
		t.Fatal(err)
	}
	inputs = append(inputs, input{"zero digest", &keys[0].PublicKey, zero, zsig})
	for _, in := range inputs {
		want := ecdsa.VerifyASN1(in.pub, in.hash, in.sig)
		if got := VerifyASN1(in.pub, in.hash, in.sig); got != want {
			t.Errorf("%s: VerifyASN1 says %v, crypto/ecdsa %v", in.name, got, want)
		}
	}
	// crypto/ecdsa panics on a key without coordinates; VerifyASN1 refuses it.
	if VerifyASN1(&ecdsa.PublicKey{Curve: elliptic.P256()}, zero, zsig) {
		t.Error("a key without coordinates was accepted")
	}
	if !VerifyASN1(&keys[0].PublicKey, zero, zsig) {
		t.Error("a valid signature was refused") // the loop above must not pass by refusing everything
	}
}

// TestVerifyASN1KeyTableBound: more keys than maxKeys still verify, and
// the table map never holds more than maxKeys.
func TestVerifyASN1KeyTableBound(t *testing.T) {
	hash := sha256.Sum256([]byte("bound"))
	for range maxKeys + 3 {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		sig, err := ecdsa.SignASN1(rand.Reader, key, hash[:])
		if err != nil {
			t.Fatal(err)
		}
		if !VerifyASN1(&key.PublicKey, hash[:], sig) {
			t.Fatal("valid signature refused")
		}
		tables.Lock()
		n := len(tables.byKey)
		tables.Unlock()
		if n > maxKeys {
			t.Fatalf("%d tables kept, bound %d", n, maxKeys)
		}
	}
}

// BenchmarkVerifyASN1 is one node-key verification, crypto/ecdsa against
// VerifyASN1 with the key's table made.
func BenchmarkVerifyASN1(b *testing.B) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	hash := sha256.Sum256([]byte("bench"))
	sig, err := ecdsa.SignASN1(rand.Reader, key, hash[:])
	if err != nil {
		b.Fatal(err)
	}
	b.Run("crypto-ecdsa", func(b *testing.B) {
		for b.Loop() {
			if !ecdsa.VerifyASN1(&key.PublicKey, hash[:], sig) {
				b.Fatal("refused")
			}
		}
	})
	b.Run("fixed-base", func(b *testing.B) {
		VerifyASN1(&key.PublicKey, hash[:], sig)
		for b.Loop() {
			if !VerifyASN1(&key.PublicKey, hash[:], sig) {
				b.Fatal("refused")
			}
		}
	})
}
