package p256

import (
	"encoding/binary"
	"math/big"

	"filippo.io/nistec"
)

// fixedWindow is the digit size of a FixedBase: 43 six-bit signed digits
// cover a 256-bit scalar, so a multiplication is at most 44 additions and
// no doublings, against ~256 doublings and ~43 additions for an arbitrary
// point. The table is 44 × 32 points, 135 KB.
const fixedWindow = 6

// fixedWindows is how many digits a scalar below 2^256 recodes into: one
// more than 256/6 rounds up to, for the final carry.
const fixedWindows = (256+fixedWindow-1)/fixedWindow + 1

// FixedBase is a table of multiples of one point P, for points that are
// multiplied again and again: a peer's node key, the cluster's public key.
// Mult is variable-time: for public scalars only.
type FixedBase struct {
	// t[i][d−1] = d·2^(6i)·P for d = 1 … 32.
	t [fixedWindows][1 << (fixedWindow - 1)]Point
}

// NewFixedBase computes P's table: about 1,400 additions, once.
func NewFixedBase(p *Point) *FixedBase {
	fb := new(FixedBase)
	base := nistec.NewP256Point().Set(p)
	for i := range fb.t {
		fb.t[i][0].Set(base)
		for d := 1; d < len(fb.t[i]); d++ {
			fb.t[i][d].Add(&fb.t[i][d-1], base)
		}
		// 2^6·base = 2·(32·base), the last entry doubled.
		base.Double(&fb.t[i][len(fb.t[i])-1])
	}
	return fb
}

// Mult returns k·P, in variable time.
func (fb *FixedBase) Mult(k *big.Int) *Point {
	b := scalarBytes(k)
	var l [4]uint64
	for i := range l {
		l[i] = binary.BigEndian.Uint64(b[32-8*(i+1):])
	}
	acc := nistec.NewP256Point()
	neg := nistec.NewP256Point()
	carry := uint64(0)
	for i := range fixedWindows {
		// Bits 6i … 6i+5 of k, plus the carry from the digit below.
		bit := uint(i * fixedWindow)
		var w uint64
		if bit < 256 {
			limb, off := bit/64, bit%64
			w = l[limb] >> off
			if off+fixedWindow > 64 && limb+1 < 4 {
				w |= l[limb+1] << (64 - off)
			}
			w &= 1<<fixedWindow - 1
		}
		d := int(w + carry)
		carry = 0
		if d > 1<<(fixedWindow-1) {
			d -= 1 << fixedWindow
			carry = 1
		}
		switch {
		case d > 0:
			acc.Add(acc, &fb.t[i][d-1])
		case d < 0:
			acc.Add(acc, neg.Negate(&fb.t[i][-d-1]))
		}
	}
	return acc
}
