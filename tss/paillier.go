package tss

import (
	"errors"
	"fmt"
	"math/big"

	"github.com/bnb-chain/tss-lib/v2/crypto/paillier"
)

// paillierCRT decrypts with a party's own Paillier key by the Chinese
// remainder theorem: two exponentiations by p-1 and q-1 modulo p² and q²
// instead of tss-lib's one by λ(N) modulo N², about a quarter of the work.
// tkeyless decrypts each MtA answer itself to range-check it before
// tss-lib sees the message (validate.go), so this cost is paid on top of
// tss-lib's own decryption; CRT keeps it small.
//
// With g = N+1 (tss-lib's Γ), decryption modulo p is
// m_p = L_p(c^(p-1) mod p²) · h_p mod p, where L_p(x) = (x-1)/p and
// h_p = L_p(g^(p-1) mod p²)⁻¹ = (−q)⁻¹ mod p, because
// g^(p-1) ≡ 1 + (p-1)N (mod p²). The same holds for q; the two residues
// combine by CRT. TestPaillierCRT checks it against tss-lib's Decrypt.
type paillierCRT struct {
	n, n2    *big.Int
	p, q     *big.Int
	p2, q2   *big.Int
	pm1, qm1 *big.Int
	hp, hq   *big.Int
	pInvQ    *big.Int // p⁻¹ mod q
}

func newPaillierCRT(sk *paillier.PrivateKey) (*paillierCRT, error) {
	if sk == nil || sk.N == nil || sk.P == nil || sk.Q == nil {
		return nil, errors.New("paillier key has no factors")
	}
	p, q := sk.P, sk.Q
	if new(big.Int).Mul(p, q).Cmp(sk.N) != 0 {
		return nil, errors.New("paillier key: P·Q ≠ N")
	}
	k := &paillierCRT{
		n:   sk.N,
		n2:  new(big.Int).Mul(sk.N, sk.N),
		p:   p,
		q:   q,
		p2:  new(big.Int).Mul(p, p),
		q2:  new(big.Int).Mul(q, q),
		pm1: new(big.Int).Sub(p, one),
		qm1: new(big.Int).Sub(q, one),
	}
	negQ := new(big.Int).Neg(q)
	negQ.Mod(negQ, p)
	negP := new(big.Int).Neg(p)
	negP.Mod(negP, q)
	k.hp = new(big.Int).ModInverse(negQ, p)
	k.hq = new(big.Int).ModInverse(negP, q)
	k.pInvQ = new(big.Int).ModInverse(p, q)
	if k.hp == nil || k.hq == nil || k.pInvQ == nil {
		return nil, errors.New("paillier key: factors are not coprime")
	}
	return k, nil
}

// decrypt returns the plaintext of c in [0, N). c must be a unit modulo N²,
// as every honest ciphertext is.
func (k *paillierCRT) decrypt(c *big.Int) (*big.Int, error) {
	if c == nil || c.Sign() <= 0 || c.Cmp(k.n2) >= 0 {
		return nil, fmt.Errorf("ciphertext is not in (0, N²)")
	}
	if new(big.Int).GCD(nil, nil, c, k.n).Cmp(one) != 0 {
		return nil, fmt.Errorf("ciphertext shares a factor with N")
	}
	mp := k.half(c, k.p, k.p2, k.pm1, k.hp)
	mq := k.half(c, k.q, k.q2, k.qm1, k.hq)
	// m = mp + p·((mq − mp)·p⁻¹ mod q)
	t := new(big.Int).Sub(mq, mp)
	t.Mul(t, k.pInvQ)
	t.Mod(t, k.q)
	t.Mul(t, k.p)
	return t.Add(t, mp), nil
}

// half is the plaintext modulo one prime factor r of N.
func (k *paillierCRT) half(c, r, r2, rm1, h *big.Int) *big.Int {
	x := new(big.Int).Mod(c, r2)
	x.Exp(x, rm1, r2)
	x.Sub(x, one)
	x.Quo(x, r) // L_r; exact, as x ≡ 1 (mod r)
	x.Mul(x, h)
	return x.Mod(x, r)
}
