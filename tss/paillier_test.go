package tss

import (
	"crypto/rand"
	"math/big"
	"testing"
)

// TestPaillierCRT checks tkeyless's CRT decryption against tss-lib's own
// Decrypt on random plaintexts and the edges of the plaintext space, and
// that it refuses what is not a ciphertext.
func TestPaillierCRT(t *testing.T) {
	sk := testPreParams(t, 0).p.PaillierSK
	k, err := newPaillierCRT(sk)
	if err != nil {
		t.Fatal(err)
	}
	nMinus1 := new(big.Int).Sub(sk.N, one)
	msgs := []*big.Int{big.NewInt(0), big.NewInt(1), nMinus1}
	for range 20 {
		m, _ := rand.Int(rand.Reader, sk.N)
		msgs = append(msgs, m)
	}
	for _, m := range msgs {
		c, err := sk.PublicKey.Encrypt(rand.Reader, m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := k.decrypt(c)
		if err != nil {
			t.Fatalf("decrypt: %v", err)
		}
		want, err := sk.Decrypt(c)
		if err != nil {
			t.Fatal(err)
		}
		if got.Cmp(want) != 0 || got.Cmp(m) != 0 {
			t.Fatalf("CRT decryption gave %x, tss-lib %x, plaintext %x", got, want, m)
		}
	}
	n2 := new(big.Int).Mul(sk.N, sk.N)
	for name, c := range map[string]*big.Int{"zero": big.NewInt(0), "N²": n2, "negative": big.NewInt(-5), "multiple of p": sk.P} {
		if _, err := k.decrypt(c); err == nil {
			t.Errorf("%s: decrypted a non-ciphertext", name)
		}
	}
	if _, err := newPaillierCRT(nil); err == nil {
		t.Error("nil key accepted")
	}
}

func BenchmarkPaillierDecrypt(b *testing.B) {
	sk := testPreParams(b, 0).p.PaillierSK
	k, _ := newPaillierCRT(sk)
	m, _ := rand.Int(rand.Reader, sk.N)
	c, _ := sk.PublicKey.Encrypt(rand.Reader, m)
	b.Run("CRT", func(b *testing.B) {
		for b.Loop() {
			_, _ = k.decrypt(c)
		}
	})
	b.Run("tss-lib", func(b *testing.B) {
		for b.Loop() {
			_, _ = sk.Decrypt(c)
		}
	})
}
