package gg18

import "math/big"

// fixedBase holds g^(2^(w·i)) mod m for i = 0 … ⌈bits/w⌉: with it g^e costs
// about bits/w + 2^w multiplications (Brickell–Gordon–McCurley–Wilson, the
// bucket form of Yao's method) instead of a square per bit.
type fixedBase struct {
	m    *big.Int
	pow  []*big.Int
	bits int
}

// windowBits is w: 6 balances the ~470 digit products of a 2816-bit
// exponent against the 2·63 bucket products.
const windowBits = 6

func newFixedBase(g, m *big.Int, bits int) *fixedBase {
	n := (bits + windowBits - 1) / windowBits
	t := &fixedBase{m: m, pow: make([]*big.Int, n), bits: n * windowBits}
	x := new(big.Int).Mod(g, m)
	for i := range n {
		t.pow[i] = new(big.Int).Set(x)
		for range windowBits {
			x.Mul(x, x)
			x.Mod(x, m)
		}
	}
	return t
}

func (t *fixedBase) fits(e *big.Int) bool { return e.Sign() >= 0 && e.BitLen() <= t.bits }

// multiExp returns Π tables[k].g^es[k] mod m. Every table has modulus m and
// every exponent fits. Bucket d collects the table entries whose digit is
// d; then Π_d bucket_d^d = Π_{d} (Π_{d′≥d} bucket_d′), two products per
// digit value.
func multiExp(m *big.Int, tables []*fixedBase, es []*big.Int) *big.Int {
	const digits = 1 << windowBits
	var buckets [digits]*big.Int
	// One product and one quotient buffer for every step: math/big would
	// allocate both afresh for an in-place Mul and for Mod.
	prod, quo := new(big.Int), new(big.Int)
	mul := func(acc **big.Int, x *big.Int) {
		if *acc == nil {
			*acc = new(big.Int).Set(x)
			return
		}
		prod.Mul(*acc, x)
		quo.QuoRem(prod, m, *acc)
	}
	for k, t := range tables {
		e := es[k]
		for i := range t.pow {
			var d uint
			for b := range windowBits {
				d |= e.Bit(i*windowBits+b) << b
			}
			if d != 0 {
				mul(&buckets[d], t.pow[i])
			}
		}
	}
	var acc, res *big.Int
	for d := digits - 1; d >= 1; d-- {
		if buckets[d] != nil {
			mul(&acc, buckets[d])
		}
		if acc != nil {
			mul(&res, acc)
		}
	}
	if res == nil {
		return big.NewInt(1)
	}
	return res
}
