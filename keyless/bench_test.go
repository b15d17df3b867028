package keyless

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"testing"
)

// BenchmarkSignLocal is the reference: the same ECDSA P-256 signature made
// in process, with no protocol or network around it.
func BenchmarkSignLocal(b *testing.B) {
	key := newKey(b, elliptic.P256())
	d := sha256.Sum256([]byte("bench"))
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := ecdsa.SignASN1(rand.Reader, key, d[:]); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkSignKeyless signs through Client and Server over mTLS on
// 127.0.0.1 with an in-memory backend key: what the keyless protocol itself
// costs on top of BenchmarkSignLocal.
func BenchmarkSignKeyless(b *testing.B) {
	p := newPKI(b)
	key := newKey(b, elliptic.P256())
	srv := startServer(b, p, newKeyBackend(key))
	c := newTestClient(b, p, []string{srv.addr})
	ski := skiOf(b, key)
	d := sha256.Sum256([]byte("bench"))
	if _, err := c.Sign(context.Background(), ski, crypto.SHA256, d[:]); err != nil { // dial outside the timer
		b.Fatal(err)
	}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.Sign(context.Background(), ski, crypto.SHA256, d[:]); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
