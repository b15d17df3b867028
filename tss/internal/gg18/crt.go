// Package gg18 is the arithmetic of tkeyless's GG18 signing rounds: the
// Paillier encryption, the range-proof (Ñ) commitments and the three MtA
// proofs of Gennaro and Goldfeder (2018, figs. 9–11), computed the way
// tss-lib v2.0.2 computes them — the same values, hashes and encodings, so
// its parties accept our proofs and we accept theirs — but cheaper:
//
//   - Γ^m mod N² for Γ = N+1 is 1 + (m mod N)·N: exact, no exponentiation;
//   - what a party computes modulo its own N² or Ñ goes by the Chinese
//     remainder theorem with its own primes (x^N mod p² from x mod p);
//   - h1^a·h2^b modulo its own Ñ is h1^(a+αb mod p′q′), one exponentiation;
//   - h1^a·h2^b modulo a peer's Ñ uses tables of h1, h2 to fixed powers.
//
// Every shortcut is checked against the plain computation with random
// inputs (gg18_test.go), and every CRT result is checked for faults
// (crt.go) before it is used.
package gg18

import (
	"crypto/rand"
	"errors"
	"fmt"
	"math/big"
	"sync/atomic"
)

var (
	zero = big.NewInt(0)
	one  = big.NewInt(1)
)

// ErrFault is a CRT computation whose result failed its consistency check:
// a fault in this machine's arithmetic (or memory), never a peer's doing.
// The result is discarded; a faulty half-result must never leave, as it
// would give away a factor of the modulus (the Bellcore attack).
var ErrFault = errors.New("gg18: CRT consistency check failed (arithmetic fault)")

// crt computes modulo m = f1·f2 (f1, f2 coprime) by halves. Each half is
// computed modulo f·r for a random 61-bit prime r chosen per key, and its
// value modulo r is compared with x^(e mod (r−1)) mod r, computed directly
// at the cost of a 64-bit exponentiation (Shamir's countermeasure): a fault
// in either half's exponentiation is caught with probability 1 − 2⁻⁶⁰. The
// recombination is checked against both halves.
type crt struct {
	m, f1, f2 *big.Int
	f1Inv     *big.Int // f1⁻¹ mod f2
	r, rm1    *big.Int
	f1r, f2r  *big.Int
}

func newCRT(f1, f2 *big.Int) (*crt, error) {
	inv := new(big.Int).ModInverse(f1, f2)
	if inv == nil {
		return nil, errors.New("gg18: CRT moduli are not coprime")
	}
	r, err := rand.Prime(rand.Reader, 61)
	if err != nil {
		return nil, fmt.Errorf("gg18: fault-check prime: %w", err)
	}
	return &crt{
		m:     new(big.Int).Mul(f1, f2),
		f1:    f1,
		f2:    f2,
		f1Inv: inv,
		r:     r,
		rm1:   new(big.Int).Sub(r, one),
		f1r:   new(big.Int).Mul(f1, r),
		f2r:   new(big.Int).Mul(f2, r),
	}, nil
}

// expected is x^e mod r, computed directly: what a half-result computed
// modulo f·r must be congruent to modulo r. e ≥ 0.
func (c *crt) expected(x, e *big.Int) *big.Int {
	xr := new(big.Int).Mod(x, c.r)
	if xr.Sign() == 0 {
		if e.Sign() == 0 {
			return big.NewInt(1)
		}
		return xr
	}
	// Fermat: x^(r−1) ≡ 1 (mod r) for x a unit.
	return xr.Exp(xr, new(big.Int).Mod(e, c.rm1), c.r)
}

// check reports whether half (a value modulo f·r) agrees with want mod r.
// op names the computation for SetFaultInjector.
func (c *crt) check(op string, half, want *big.Int) bool {
	if f := faultInjector.Load(); f != nil && (*f)(op, c.m) {
		return false
	}
	return new(big.Int).Mod(half, c.r).Cmp(want) == 0
}

// faultInjector, when set, makes the consistency checks it answers true for
// fail as a real fault would.
var faultInjector atomic.Pointer[func(op string, m *big.Int) bool]

// SetFaultInjector makes every CRT consistency check for which f(op, m)
// answers true fail, as an arithmetic fault would: op is "exp", "expN",
// "decrypt" or "commit", m the modulus the key or ring computes in (N,
// N² or Ñ). It returns a function that removes f. Tests only: it lets the
// tss tests check that a member's own fault is attributed to nobody else.
func SetFaultInjector(f func(op string, m *big.Int) bool) (restore func()) {
	faultInjector.Store(&f)
	return func() { faultInjector.Store(nil) }
}

// combine returns the x mod m with x ≡ a (mod f1), x ≡ b (mod f2), and
// checks it reduces back to both.
func (c *crt) combine(a, b *big.Int) (*big.Int, error) {
	t := new(big.Int).Sub(b, a)
	t.Mul(t, c.f1Inv)
	t.Mod(t, c.f2)
	t.Mul(t, c.f1)
	t.Add(t, a)
	if new(big.Int).Mod(t, c.f1).Cmp(a) != 0 || new(big.Int).Mod(t, c.f2).Cmp(b) != 0 {
		return nil, ErrFault
	}
	return t, nil
}

// exp returns x^e mod m, e ≥ 0.
func (c *crt) exp(x, e *big.Int) (*big.Int, error) {
	want := c.expected(x, e)
	a := new(big.Int).Mod(x, c.f1r)
	a.Exp(a, e, c.f1r)
	b := new(big.Int).Mod(x, c.f2r)
	b.Exp(b, e, c.f2r)
	if !c.check("exp", a, want) || !c.check("exp", b, want) {
		return nil, ErrFault
	}
	return c.combine(a.Mod(a, c.f1), b.Mod(b, c.f2))
}
