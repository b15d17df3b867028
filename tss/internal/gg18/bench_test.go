package gg18

import (
	"testing"
)

// BenchmarkOps compares each shortcut with the plain computation it
// replaces, on the test pre-parameters.
func BenchmarkOps(b *testing.B) {
	k := own(b, 0)
	peer, _ := NewPeer(k.Public())
	p := preParams(b, 0)
	plain, _ := NewPlainRing(p.NTildei, p.H1i, p.H2i)
	or, pr := ownRing(b, 0), peerRing(b, 0)
	x := randBelow(b, k.N2())
	e768 := randBits(b, 768)
	a, c := randBits(b, 768), randBits(b, 2816)
	for _, bc := range []struct {
		name string
		f    func()
	}{
		{"ExpN/plain", func() { _, _ = peer.ExpN(x) }},
		{"ExpN/own", func() { _, _ = k.ExpN(x) }},
		{"Exp768/plain", func() { _, _ = peer.Exp(x, e768) }},
		{"Exp768/own", func() { _, _ = k.Exp(x, e768) }},
		{"Decrypt/own", func() { _, _ = k.Decrypt(x) }},
		{"Commit/plain", func() { _, _ = plain.Commit(a, c) }},
		{"Commit/own", func() { _, _ = or.Commit(a, c) }},
		{"Commit/peer", func() { _, _ = pr.Commit(a, c) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				bc.f()
			}
		})
	}
}
