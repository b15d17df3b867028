package gg18

import (
	"errors"
	"fmt"
	"io"
	"math/big"

	"github.com/bnb-chain/tss-lib/v2/common"
	"github.com/bnb-chain/tss-lib/v2/crypto/paillier"
)

// Paillier is a Paillier key as one party of an MtA uses it: its own key
// (Own, with the factors) or a peer's (Peer). Both compute the same values;
// Own computes them by CRT.
type Paillier interface {
	// Public is the key in tss-lib's form, for hashing (AsInts) and for
	// tss-lib's own verifiers in tests.
	Public() *paillier.PublicKey
	N() *big.Int
	N2() *big.Int
	// Exp returns x^e mod N², e ≥ 0.
	Exp(x, e *big.Int) (*big.Int, error)
	// ExpN returns x^N mod N².
	ExpN(x *big.Int) (*big.Int, error)
	// ExpModN returns x^e mod N, e ≥ 0.
	ExpModN(x, e *big.Int) (*big.Int, error)
}

// Peer is another party's Paillier public key.
type Peer struct {
	pk    *paillier.PublicKey
	n, n2 *big.Int
}

// NewPeer wraps a peer's public key.
func NewPeer(pk *paillier.PublicKey) (*Peer, error) {
	if pk == nil || pk.N == nil || pk.N.Sign() <= 0 {
		return nil, errors.New("gg18: no Paillier modulus")
	}
	return &Peer{pk: pk, n: pk.N, n2: new(big.Int).Mul(pk.N, pk.N)}, nil
}

func (k *Peer) Public() *paillier.PublicKey { return k.pk }
func (k *Peer) N() *big.Int                 { return k.n }
func (k *Peer) N2() *big.Int                { return k.n2 }
func (k *Peer) Exp(x, e *big.Int) (*big.Int, error) {
	return new(big.Int).Exp(x, e, k.n2), nil
}
func (k *Peer) ExpN(x *big.Int) (*big.Int, error) { return new(big.Int).Exp(x, k.n, k.n2), nil }
func (k *Peer) ExpModN(x, e *big.Int) (*big.Int, error) {
	return new(big.Int).Exp(x, e, k.n), nil
}

// Own is a party's own Paillier key: its factors p, q make every
// exponentiation modulo N or N² a pair of half-size ones (crt.go).
type Own struct {
	Peer
	p, q     *big.Int
	modN2    *crt // p², q²
	modN     *crt // p, q
	pr, qr   *big.Int
	p2r, q2r *big.Int
	// Decryption (with g = N+1): m_p = L_p(c^(p−1) mod p²)·h_p mod p,
	// h_p = (−q)⁻¹ mod p, as g^(p−1) ≡ 1 + (p−1)N (mod p²).
	pm1, qm1 *big.Int
	hp, hq   *big.Int
}

// NewOwn prepares a party's own key for CRT.
func NewOwn(sk *paillier.PrivateKey) (*Own, error) {
	if sk == nil || sk.N == nil || sk.P == nil || sk.Q == nil {
		return nil, errors.New("gg18: Paillier key has no factors")
	}
	p, q := sk.P, sk.Q
	if new(big.Int).Mul(p, q).Cmp(sk.N) != 0 {
		return nil, errors.New("gg18: Paillier key: P·Q ≠ N")
	}
	peer, err := NewPeer(&sk.PublicKey)
	if err != nil {
		return nil, err
	}
	k := &Own{Peer: *peer, p: p, q: q, pm1: new(big.Int).Sub(p, one), qm1: new(big.Int).Sub(q, one)}
	if k.modN2, err = newCRT(new(big.Int).Mul(p, p), new(big.Int).Mul(q, q)); err != nil {
		return nil, err
	}
	if k.modN, err = newCRT(p, q); err != nil {
		return nil, err
	}
	// One fault-check prime for the x^N shortcut: the one modN2 uses.
	r := k.modN2.r
	k.pr, k.qr = new(big.Int).Mul(p, r), new(big.Int).Mul(q, r)
	k.p2r, k.q2r = k.modN2.f1r, k.modN2.f2r
	negQ := new(big.Int).Neg(q)
	negP := new(big.Int).Neg(p)
	k.hp = new(big.Int).ModInverse(negQ.Mod(negQ, p), p)
	k.hq = new(big.Int).ModInverse(negP.Mod(negP, q), q)
	if k.hp == nil || k.hq == nil {
		return nil, errors.New("gg18: Paillier key: factors are not coprime")
	}
	return k, nil
}

func (k *Own) Exp(x, e *big.Int) (*big.Int, error)     { return k.modN2.exp(x, e) }
func (k *Own) ExpModN(x, e *big.Int) (*big.Int, error) { return k.modN.exp(x, e) }

// ExpN returns x^N mod N². Modulo p², x^N = (x^q)^p and (a + tp)^p ≡ a^p
// (mod p²), so x^N ≡ (x^q mod p)^p (mod p²): an exponent of half the size
// modulo p, then one modulo p². Both steps run modulo ·r, and the result is
// checked against x^(N mod (r−1)) mod r.
func (k *Own) ExpN(x *big.Int) (*big.Int, error) {
	c := k.modN2
	want := c.expected(x, k.n)
	half := func(mr, m2r, other, self *big.Int) (*big.Int, error) {
		s := new(big.Int).Mod(x, mr)
		s.Exp(s, other, mr)
		s.Exp(s, self, m2r)
		if !c.check("expN", s, want) {
			return nil, ErrFault
		}
		return s, nil
	}
	a, err := half(k.pr, k.p2r, k.q, k.p)
	if err != nil {
		return nil, err
	}
	b, err := half(k.qr, k.q2r, k.p, k.q)
	if err != nil {
		return nil, err
	}
	return c.combine(a.Mod(a, c.f1), b.Mod(b, c.f2))
}

// Decrypt returns the plaintext of c in [0, N). c must be a unit modulo
// N², as every honest ciphertext is.
func (k *Own) Decrypt(c *big.Int) (*big.Int, error) {
	if c == nil || c.Sign() <= 0 || c.Cmp(k.n2) >= 0 {
		return nil, fmt.Errorf("ciphertext is not in (0, N²)")
	}
	if new(big.Int).GCD(nil, nil, c, k.n).Cmp(one) != 0 {
		return nil, fmt.Errorf("ciphertext shares a factor with N")
	}
	cr := k.modN2
	half := func(rr, r2, r2r, rm1, h *big.Int) (*big.Int, error) {
		x := new(big.Int).Mod(c, r2r)
		x.Exp(x, rm1, r2r)
		if !cr.check("decrypt", x, cr.expected(c, rm1)) {
			return nil, ErrFault
		}
		x.Mod(x, r2)
		x.Sub(x, one)
		rem := new(big.Int)
		x.QuoRem(x, rr, rem) // L_r; exact, as x ≡ 1 (mod r)
		if rem.Sign() != 0 {
			return nil, ErrFault
		}
		x.Mul(x, h)
		return x.Mod(x, rr), nil
	}
	mp, err := half(k.p, cr.f1, k.p2r, k.pm1, k.hp)
	if err != nil {
		return nil, err
	}
	mq, err := half(k.q, cr.f2, k.q2r, k.qm1, k.hq)
	if err != nil {
		return nil, err
	}
	return k.modN.combine(mp, mq)
}

// GammaExp returns Γ^m mod N² for Γ = N+1 and m ≥ 0: by the binomial
// theorem (1+N)^m ≡ 1 + m·N (mod N²), so no exponentiation is needed and
// nothing secret about the key is used.
func GammaExp(k Paillier, m *big.Int) *big.Int {
	t := new(big.Int).Mod(m, k.N())
	t.Mul(t, k.N())
	return t.Add(t, one) // < N², as m mod N ≤ N−1
}

// Encrypt returns Enc(m) = Γ^m·r^N mod N² and its randomness r, for
// m in [0, N).
func Encrypt(k Paillier, rand io.Reader, m *big.Int) (c, r *big.Int, err error) {
	if m.Sign() < 0 || m.Cmp(k.N()) >= 0 {
		return nil, nil, paillier.ErrMessageTooLong
	}
	r = common.GetRandomPositiveRelativelyPrimeInt(rand, k.N())
	rn, err := k.ExpN(r)
	if err != nil {
		return nil, nil, err
	}
	c = GammaExp(k, m)
	c.Mul(c, rn)
	return c.Mod(c, k.N2()), r, nil
}
