package gg18

import (
	"errors"
	"math/big"
)

// Ring is a party's range-proof modulus Ñ with its bases h1, h2, as used
// in the MtA proofs: its owner verifies proofs against it (OwnRing), the
// others prove against it (PeerRing).
type Ring interface {
	NTilde() *big.Int
	H1() *big.Int
	H2() *big.Int
	// Commit returns h1^a·h2^b mod Ñ, a, b ≥ 0.
	Commit(a, b *big.Int) (*big.Int, error)
	// Exp returns x^e mod Ñ, e ≥ 0.
	Exp(x, e *big.Int) (*big.Int, error)
}

// PlainRing computes as tss-lib does: the reference the others are tested
// against, and the fallback for a share whose pre-parameters lack what the
// shortcuts need.
type PlainRing struct{ nt, h1, h2 *big.Int }

// NewPlainRing wraps Ñ, h1, h2.
func NewPlainRing(nTilde, h1, h2 *big.Int) (*PlainRing, error) {
	if nTilde == nil || h1 == nil || h2 == nil || nTilde.Sign() <= 0 {
		return nil, errors.New("gg18: incomplete range-proof parameters")
	}
	return &PlainRing{nt: nTilde, h1: h1, h2: h2}, nil
}

func (r *PlainRing) NTilde() *big.Int { return r.nt }
func (r *PlainRing) H1() *big.Int     { return r.h1 }
func (r *PlainRing) H2() *big.Int     { return r.h2 }
func (r *PlainRing) Commit(a, b *big.Int) (*big.Int, error) {
	x := new(big.Int).Exp(r.h1, a, r.nt)
	x.Mul(x, new(big.Int).Exp(r.h2, b, r.nt))
	return x.Mod(x, r.nt), nil
}
func (r *PlainRing) Exp(x, e *big.Int) (*big.Int, error) { return new(big.Int).Exp(x, e, r.nt), nil }

// OwnRing is a party's own Ñ = P̃·Q̃ with P̃ = 2p′+1, Q̃ = 2q′+1 safe primes
// and h2 = h1^α. h1 is a square, so its order divides p′q′, and
// h1^a·h2^b = h1^(a+αb mod p′q′): one power of the fixed base h1 by a
// 2046-bit exponent, computed by CRT modulo P̃ and Q̃ from tables of h1
// (fixedBase, modulo P̃·r and Q̃·r for the fault check), instead of two
// exponentiations by exponents up to 2816 bits modulo Ñ.
type OwnRing struct {
	PlainRing
	alpha, order *big.Int
	mod          *crt
	tp, tq       *fixedBase // h1 modulo P̃·r and Q̃·r
}

// NewOwnRing checks the pre-parameters (Ñ = (2p′+1)(2q′+1), h2 = h1^α)
// before trusting them: a share whose record does not hold them all must
// use PlainRing.
func NewOwnRing(nTilde, h1, h2, alpha, p, q *big.Int) (*OwnRing, error) {
	plain, err := NewPlainRing(nTilde, h1, h2)
	if err != nil {
		return nil, err
	}
	if alpha == nil || p == nil || q == nil {
		return nil, errors.New("gg18: pre-parameters lack α, p′ or q′")
	}
	P := new(big.Int).Lsh(p, 1)
	P.Add(P, one)
	Q := new(big.Int).Lsh(q, 1)
	Q.Add(Q, one)
	if new(big.Int).Mul(P, Q).Cmp(nTilde) != 0 {
		return nil, errors.New("gg18: Ñ ≠ (2p′+1)(2q′+1)")
	}
	if new(big.Int).Exp(h1, alpha, nTilde).Cmp(h2) != 0 {
		return nil, errors.New("gg18: h2 ≠ h1^α")
	}
	// h1 must be a square modulo both primes for its order to divide p′q′
	// (Euler's criterion); tss-lib makes it f², so it is.
	if new(big.Int).Exp(h1, p, P).Cmp(one) != 0 || new(big.Int).Exp(h1, q, Q).Cmp(one) != 0 {
		return nil, errors.New("gg18: h1 is not a quadratic residue")
	}
	mod, err := newCRT(P, Q)
	if err != nil {
		return nil, err
	}
	order := new(big.Int).Mul(p, q)
	return &OwnRing{PlainRing: *plain, alpha: alpha, order: order, mod: mod,
		tp: newFixedBase(h1, mod.f1r, order.BitLen()),
		tq: newFixedBase(h1, mod.f2r, order.BitLen()),
	}, nil
}

func (r *OwnRing) Commit(a, b *big.Int) (*big.Int, error) {
	e := new(big.Int).Mul(r.alpha, b)
	e.Add(e, a)
	e.Mod(e, r.order)
	c := r.mod
	want := c.expected(r.h1, e)
	x := multiExp(c.f1r, []*fixedBase{r.tp}, []*big.Int{e})
	y := multiExp(c.f2r, []*fixedBase{r.tq}, []*big.Int{e})
	if !c.check("commit", x, want) || !c.check("commit", y, want) {
		return nil, ErrFault
	}
	return c.combine(x.Mod(x, c.f1), y.Mod(y, c.f2))
}

func (r *OwnRing) Exp(x, e *big.Int) (*big.Int, error) { return r.mod.exp(x, e) }

// PeerRing is another party's Ñ with tables of h1 and h2 to the powers
// 2^(w·i) (fixedBase), built once per peer and reused by every session.
type PeerRing struct {
	PlainRing
	t1, t2 *fixedBase
}

// maxCommitBits bounds the exponents the provers commit to: the largest is
// τ < q³·Ñ (2816 bits); a bigger one falls back to math/big.
const maxCommitBits = 2048 + 3*256 + 64

// NewPeerRing builds the tables for a peer's Ñ (about the cost of two
// exponentiations).
func NewPeerRing(nTilde, h1, h2 *big.Int) (*PeerRing, error) {
	plain, err := NewPlainRing(nTilde, h1, h2)
	if err != nil {
		return nil, err
	}
	return &PeerRing{
		PlainRing: *plain,
		t1:        newFixedBase(h1, nTilde, maxCommitBits),
		t2:        newFixedBase(h2, nTilde, maxCommitBits),
	}, nil
}

func (r *PeerRing) Commit(a, b *big.Int) (*big.Int, error) {
	if !r.t1.fits(a) || !r.t2.fits(b) {
		return r.PlainRing.Commit(a, b)
	}
	return multiExp(r.nt, []*fixedBase{r.t1, r.t2}, []*big.Int{a, b}), nil
}
