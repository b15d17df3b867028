// Package p256 is the signing engine's P-256 point arithmetic: nistec's
// projective points instead of crypto/elliptic's affine big.Int interface,
// and a variable-time multi-scalar multiplication for checking proofs.
//
// crypto/elliptic converts every result to affine coordinates (a field
// inversion) and back, and tss-lib's ECPoint adds a curve check on top; a
// GG18 round that chains a few multiplications and additions pays for that
// at every step. Here a value stays projective until it has to be hashed
// or sent.
//
// Two kinds of multiplication, chosen by who may learn the scalar:
//
//   - ScalarMult and ScalarBaseMult are nistec's, constant-time: for
//     secrets (s_i, ρ_i, l_i, proof nonces).
//   - MultiScalarMult is variable-time: its running time depends on the
//     scalars. Only for public values, such as a peer's proof and the
//     challenge derived from it, or a verifier's own random batch weights,
//     which protect nothing once the check is done.
package p256

import (
	"crypto/elliptic"
	"encoding/binary"
	"errors"
	"math/big"
	"math/bits"

	"filippo.io/nistec"
)

// Point is a P-256 point in projective form; the zero value is not valid,
// use NewPoint.
type Point = nistec.P256Point

// Order is q, the order of the group.
var Order = elliptic.P256().Params().N

// NewPoint returns the point at infinity.
func NewPoint() *Point { return nistec.NewP256Point() }

// FromAffine returns the point (x, y), or an error if it is not on the
// curve. (0, 0), crypto/elliptic's encoding of infinity, is refused too.
func FromAffine(x, y *big.Int) (*Point, error) {
	b, err := uncompressed(x, y)
	if err != nil {
		return nil, err
	}
	return nistec.NewP256Point().SetBytes(b[:])
}

// uncompressed is the SEC 1 encoding of (x, y), not yet checked to be on
// the curve.
func uncompressed(x, y *big.Int) (b [65]byte, err error) {
	if x == nil || y == nil || x.Sign() < 0 || y.Sign() < 0 || x.BitLen() > 256 || y.BitLen() > 256 {
		return b, errors.New("p256: coordinates out of range")
	}
	b[0] = 4
	x.FillBytes(b[1:33])
	y.FillBytes(b[33:])
	return b, nil
}

// Affine returns p's affine coordinates, or an error for the point at
// infinity, which has none (and which no GG18 value may be).
func Affine(p *Point) (x, y *big.Int, err error) {
	if p.IsInfinity() == 1 {
		return nil, nil, errors.New("p256: point at infinity")
	}
	b := p.Bytes()
	return new(big.Int).SetBytes(b[1:33]), new(big.Int).SetBytes(b[33:]), nil
}

// scalarBytes is k mod q as 32 big-endian bytes.
func scalarBytes(k *big.Int) []byte {
	if k.Sign() < 0 || k.Cmp(Order) >= 0 {
		k = new(big.Int).Mod(k, Order)
	}
	return k.FillBytes(make([]byte, 32))
}

// ScalarMult returns k·p in constant time (k is reduced mod q first, which
// is not constant-time for k ≥ q or k < 0; the engine's secrets are < q).
func ScalarMult(p *Point, k *big.Int) *Point {
	r, err := nistec.NewP256Point().ScalarMult(p, scalarBytes(k))
	if err != nil {
		panic("p256: nistec refused a 32-byte scalar") // cannot happen: scalarBytes is 32 bytes
	}
	return r
}

// ScalarBaseMult returns k·G in constant time (as ScalarMult).
func ScalarBaseMult(k *big.Int) *Point {
	r, err := nistec.NewP256Point().ScalarBaseMult(scalarBytes(k))
	if err != nil {
		panic("p256: nistec refused a 32-byte scalar")
	}
	return r
}

// Add returns a + b.
func Add(a, b *Point) *Point { return nistec.NewP256Point().Add(a, b) }

// Equal reports whether a and b are the same point.
func Equal(a, b *Point) bool { return a.Equal(b) == 1 }

// window is the wNAF width: digits are odd and in (−2^(w−1), 2^(w−1)), and
// each point needs 2^(w−2) precomputed odd multiples. 5 costs 8 table
// entries and one addition per ~6 bits of scalar.
const window = 5

// MultiScalarMult returns Σ ks[i]·ps[i] + g·G (g may be nil), in variable
// time: every input must be public. It is Straus's method with a wNAF per
// scalar, so the ~256 doublings are shared by all the points; for the five
// to ten points of a GG18 round-7 check that is several times cheaper than
// a multiplication per point.
func MultiScalarMult(ps []*Point, ks []*big.Int, g *big.Int) *Point {
	if len(ps) != len(ks) {
		panic("p256: MultiScalarMult: points and scalars differ in number")
	}
	nafs := make([][]int8, len(ps))
	tables := make([][1 << (window - 2)]*Point, len(ps))
	top := 0
	for i, p := range ps {
		nafs[i] = wNAF(scalarBytes(ks[i]))
		top = max(top, len(nafs[i]))
		if len(nafs[i]) == 0 {
			continue
		}
		twice := nistec.NewP256Point().Double(p)
		tables[i][0] = nistec.NewP256Point().Set(p)
		for j := 1; j < len(tables[i]); j++ {
			tables[i][j] = nistec.NewP256Point().Add(tables[i][j-1], twice)
		}
	}
	acc := nistec.NewP256Point()
	neg := nistec.NewP256Point()
	for b := top - 1; b >= 0; b-- {
		acc.Double(acc)
		for i := range ps {
			if b >= len(nafs[i]) {
				continue
			}
			switch d := nafs[i][b]; {
			case d > 0:
				acc.Add(acc, tables[i][d/2])
			case d < 0:
				acc.Add(acc, neg.Negate(tables[i][-d/2]))
			}
		}
	}
	if g != nil {
		acc.Add(acc, ScalarBaseMult(g))
	}
	return acc
}

// wNAF is the width-window non-adjacent form of the 256-bit big-endian k,
// least significant digit first: k = Σ d_i·2^i, every non-zero d_i odd,
// |d_i| < 2^(window−1), and at most one non-zero digit in any window
// consecutive digits.
func wNAF(k []byte) []int8 {
	// Five limbs: k + a digit's correction can carry past 256 bits.
	var l [5]uint64
	for i := range 4 {
		l[i] = binary.BigEndian.Uint64(k[32-8*(i+1):])
	}
	const mask = 1<<window - 1
	out := make([]int8, 0, 258)
	for l != [5]uint64{} {
		if l[0]&1 == 0 {
			// Skip a run of zero digits at once.
			n := uint(64)
			if l[0] != 0 {
				n = uint(bits.TrailingZeros64(l[0]))
			}
			for range n {
				out = append(out, 0)
			}
			shiftRight(&l, n)
			continue
		}
		d := int64(l[0] & mask)
		if d >= 1<<(window-1) {
			d -= 1 << window
		}
		// l -= d, so the low window bits become zero.
		if d > 0 {
			var borrow uint64
			l[0], borrow = bits.Sub64(l[0], uint64(d), 0)
			for i := 1; i < len(l) && borrow != 0; i++ {
				l[i], borrow = bits.Sub64(l[i], 0, borrow)
			}
		} else {
			var carry uint64
			l[0], carry = bits.Add64(l[0], uint64(-d), 0)
			for i := 1; i < len(l) && carry != 0; i++ {
				l[i], carry = bits.Add64(l[i], 0, carry)
			}
		}
		out = append(out, int8(d))
		shiftRight(&l, 1)
	}
	return out
}

// shiftRight shifts l right by n bits, 0 < n ≤ 64.
func shiftRight(l *[5]uint64, n uint) {
	if n == 64 {
		copy(l[:], l[1:])
		l[len(l)-1] = 0
		return
	}
	for i := range len(l) - 1 {
		l[i] = l[i]>>n | l[i+1]<<(64-n)
	}
	l[len(l)-1] >>= n
}
