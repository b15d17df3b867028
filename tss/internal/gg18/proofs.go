package gg18

import (
	"crypto/elliptic"
	"errors"
	"io"
	"math/big"

	"github.com/bnb-chain/tss-lib/v2/common"
	"github.com/bnb-chain/tss-lib/v2/crypto"
	"github.com/bnb-chain/tss-lib/v2/crypto/mta"
)

// The MtA proofs of GG18 (figs. 9–11) in tss-lib v2.0.2's form: the same
// random ranges, the same challenge hashes over the same values, the same
// structs (mta.RangeProofAlice, mta.ProofBob, mta.ProofBobWC), so either
// side can be a stock tss-lib party. Verifiers check every condition
// tss-lib's do; an equation A·B⁻ᵉ = C is checked as A = C·Bᵉ, which is the
// same for a unit B (checked) and needs no inverse.

func powers(q *big.Int) (q3, q7 *big.Int) {
	q3 = new(big.Int).Mul(q, q)
	q3.Mul(q3, q)
	q7 = new(big.Int).Mul(q3, q3)
	q7.Mul(q7, q)
	return q3, q7
}

func mulMod(m *big.Int, xs ...*big.Int) *big.Int {
	r := new(big.Int).Set(xs[0])
	for _, x := range xs[1:] {
		r.Mul(r, x)
		r.Mod(r, m)
	}
	return r.Mod(r, m)
}

func inRange(x, bound *big.Int) bool { return x != nil && x.Sign() >= 0 && x.Cmp(bound) < 0 }

func coprime(x, n *big.Int) bool { return new(big.Int).GCD(nil, nil, x, n).Cmp(one) == 0 }

func challenge(q *big.Int, ints ...*big.Int) *big.Int {
	return common.RejectionSample(q, common.SHA512_256i(ints...))
}

func taggedChallenge(q *big.Int, session []byte, ints ...*big.Int) *big.Int {
	return common.RejectionSample(q, common.SHA512_256i_TAGGED(session, ints...))
}

// ProveRangeAlice proves that c = Enc_k(m; r) holds an m < q³ (fig. 9),
// committing against the verifier's ring. k is the prover's own key.
func ProveRangeAlice(ec elliptic.Curve, k Paillier, ring Ring, c, m, r *big.Int, rand io.Reader) (*mta.RangeProofAlice, error) {
	if c == nil || m == nil || r == nil {
		return nil, errors.New("gg18: range proof: nil value")
	}
	q := ec.Params().N
	q3, _ := powers(q)
	nt := ring.NTilde()
	alpha := common.GetRandomPositiveInt(rand, q3)
	beta := common.GetRandomPositiveRelativelyPrimeInt(rand, k.N())
	gamma := common.GetRandomPositiveInt(rand, new(big.Int).Mul(q3, nt))
	rho := common.GetRandomPositiveInt(rand, new(big.Int).Mul(q, nt))

	z, err := ring.Commit(m, rho)
	if err != nil {
		return nil, err
	}
	bn, err := k.ExpN(beta)
	if err != nil {
		return nil, err
	}
	u := mulMod(k.N2(), GammaExp(k, alpha), bn)
	w, err := ring.Commit(alpha, gamma)
	if err != nil {
		return nil, err
	}
	pk := k.Public()
	e := challenge(q, append(pk.AsInts(), c, z, u, w)...)
	s, err := k.ExpModN(r, e)
	if err != nil {
		return nil, err
	}
	s = mulMod(k.N(), s, beta)
	s1 := new(big.Int).Mul(e, m)
	s1.Add(s1, alpha)
	s2 := new(big.Int).Mul(e, rho)
	s2.Add(s2, gamma)
	return &mta.RangeProofAlice{Z: z, U: u, W: w, S: s, S1: s1, S2: s2}, nil
}

// ErrProof is a proof that does not verify: the prover's doing, unlike
// ErrFault.
var ErrProof = errors.New("gg18: proof does not verify")

// VerifyRangeAlice checks Alice's range proof for her ciphertext c under
// her key k, against the verifier's own ring. It returns nil for a valid
// proof, ErrProof for an invalid one, and ErrFault when the verifier's own
// arithmetic failed its check: then nothing is known about the proof.
func VerifyRangeAlice(ec elliptic.Curve, pf *mta.RangeProofAlice, k Paillier, ring Ring, c *big.Int) error {
	if pf == nil || !pf.ValidateBasic() || c == nil {
		return ErrProof
	}
	q := ec.Params().N
	q3, _ := powers(q)
	nt, n, n2 := ring.NTilde(), k.N(), k.N2()
	switch {
	case !inRange(pf.Z, nt), !inRange(pf.U, n2), !inRange(pf.W, nt), !inRange(pf.S, n),
		!coprime(pf.Z, nt), !coprime(pf.U, n2), !coprime(pf.W, nt),
		pf.S1.Cmp(q) < 0, pf.S2.Cmp(q) < 0, pf.S1.Cmp(q3) > 0,
		// c must be a unit for c^−e: tss-lib's inverse does not exist otherwise.
		!inRange(c, n2), !coprime(c, n):
		return ErrProof
	}
	pk := k.Public()
	e := challenge(q, append(pk.AsInts(), c, pf.Z, pf.U, pf.W)...)

	// 4. u = Γ^s1 · s^N · c^−e  ⇔  u·c^e = Γ^s1 · s^N (mod N²)
	ce, err := k.Exp(c, e)
	if err != nil {
		return err
	}
	sn, err := k.ExpN(pf.S)
	if err != nil {
		return err
	}
	if mulMod(n2, pf.U, ce).Cmp(mulMod(n2, GammaExp(k, pf.S1), sn)) != 0 {
		return ErrProof
	}
	// 5. w = h1^s1 · h2^s2 · z^−e  ⇔  w·z^e = h1^s1 · h2^s2 (mod Ñ)
	ze, err := ring.Exp(pf.Z, e)
	if err != nil {
		return err
	}
	hs, err := ring.Commit(pf.S1, pf.S2)
	if err != nil {
		return err
	}
	if mulMod(nt, pf.W, ze).Cmp(hs) != 0 {
		return ErrProof
	}
	return nil
}

// ProveBob proves Bob's answer c2 = c1^x · Enc_k(y; r) to Alice's c1
// (fig. 11; fig. 10 with X = g^x when X is not nil), under Alice's key k and
// committing against Alice's ring. session separates sessions and senders.
func ProveBob(ec elliptic.Curve, session []byte, k Paillier, ring Ring, c1, c2, x, y, r *big.Int, X *crypto.ECPoint, rand io.Reader) (*mta.ProofBobWC, error) {
	if c1 == nil || c2 == nil || x == nil || y == nil || r == nil {
		return nil, errors.New("gg18: Bob's proof: nil value")
	}
	q := ec.Params().N
	q3, q7 := powers(q)
	nt := ring.NTilde()
	qNt := new(big.Int).Mul(q, nt)
	q3Nt := new(big.Int).Mul(q3, nt)
	alpha := common.GetRandomPositiveInt(rand, q3)
	rho := common.GetRandomPositiveInt(rand, qNt)
	sigma := common.GetRandomPositiveInt(rand, qNt)
	tau := common.GetRandomPositiveInt(rand, q3Nt)
	rhoPrm := common.GetRandomPositiveInt(rand, q3Nt)
	beta := common.GetRandomPositiveRelativelyPrimeInt(rand, k.N())
	gamma := common.GetRandomPositiveInt(rand, q7)

	u := crypto.NewECPointNoCurveCheck(ec, zero, zero)
	if X != nil {
		u = crypto.ScalarBaseMult(ec, alpha)
	}
	z, err := ring.Commit(x, rho)
	if err != nil {
		return nil, err
	}
	zPrm, err := ring.Commit(alpha, rhoPrm)
	if err != nil {
		return nil, err
	}
	t, err := ring.Commit(y, sigma)
	if err != nil {
		return nil, err
	}
	c1a, err := k.Exp(c1, alpha)
	if err != nil {
		return nil, err
	}
	bn, err := k.ExpN(beta)
	if err != nil {
		return nil, err
	}
	v := mulMod(k.N2(), c1a, GammaExp(k, gamma), bn)
	w, err := ring.Commit(gamma, tau)
	if err != nil {
		return nil, err
	}
	pk := k.Public()
	var e *big.Int
	if X == nil {
		e = taggedChallenge(q, session, append(pk.AsInts(), c1, c2, z, zPrm, t, v, w)...)
	} else {
		e = taggedChallenge(q, session, append(pk.AsInts(), X.X(), X.Y(), c1, c2, u.X(), u.Y(), z, zPrm, t, v, w)...)
	}
	s, err := k.ExpModN(r, e)
	if err != nil {
		return nil, err
	}
	s = mulMod(k.N(), s, beta)
	lin := func(a, b, c *big.Int) *big.Int { // a·b + c
		v := new(big.Int).Mul(a, b)
		return v.Add(v, c)
	}
	pf := &mta.ProofBob{Z: z, ZPrm: zPrm, T: t, V: v, W: w, S: s,
		S1: lin(e, x, alpha), S2: lin(e, rho, rhoPrm), T1: lin(e, y, gamma), T2: lin(e, sigma, tau)}
	return &mta.ProofBobWC{ProofBob: pf, U: u}, nil
}

// VerifyBob checks Bob's proof for his answer c2 to Alice's c1, under
// Alice's (the verifier's) own key and ring; X is Bob's g^x for the
// proof with check (nil without). Its result is VerifyRangeAlice's.
func VerifyBob(ec elliptic.Curve, session []byte, pf *mta.ProofBob, U *crypto.ECPoint, k Paillier, ring Ring, c1, c2 *big.Int, X *crypto.ECPoint) error {
	if pf == nil || !pf.ValidateBasic() || c1 == nil || c2 == nil || (X != nil && U == nil) {
		return ErrProof
	}
	q := ec.Params().N
	q3, q7 := powers(q)
	nt, n, n2 := ring.NTilde(), k.N(), k.N2()
	switch {
	case !inRange(pf.Z, nt), !inRange(pf.ZPrm, nt), !inRange(pf.T, nt), !inRange(pf.V, n2),
		!inRange(pf.W, nt), !inRange(pf.S, n),
		!coprime(pf.Z, nt), !coprime(pf.ZPrm, nt), !coprime(pf.T, nt), !coprime(pf.V, n2), !coprime(pf.W, nt),
		pf.S.Sign() == 0, !coprime(pf.S, n), pf.V.Sign() == 0, !coprime(pf.V, n),
		pf.S1.Cmp(q) < 0, pf.S2.Cmp(q) < 0, pf.T1.Cmp(q) < 0, pf.T2.Cmp(q) < 0,
		pf.S1.Cmp(q3) > 0, pf.T1.Cmp(q7) > 0:
		return ErrProof
	}
	pk := k.Public()
	var e *big.Int
	if X == nil {
		e = taggedChallenge(q, session, append(pk.AsInts(), c1, c2, pf.Z, pf.ZPrm, pf.T, pf.V, pf.W)...)
	} else {
		if X.Curve() == nil || X.Curve().Params().Name != ec.Params().Name || !U.IsOnCurve() {
			return ErrProof
		}
		e = taggedChallenge(q, session, append(pk.AsInts(), X.X(), X.Y(), c1, c2, U.X(), U.Y(), pf.Z, pf.ZPrm, pf.T, pf.V, pf.W)...)
		// 4. g^(s1 mod q) = X^e · u
		gS1 := crypto.ScalarBaseMult(ec, new(big.Int).Mod(pf.S1, q))
		xEU, err := X.ScalarMult(e).Add(U)
		if err != nil || !gS1.Equals(xEU) {
			return ErrProof
		}
	}
	// 5. h1^s1 · h2^s2 = z^e · z′ (mod Ñ)
	// 6. h1^t1 · h2^t2 = t^e · w (mod Ñ)
	for _, eq := range [][4]*big.Int{{pf.S1, pf.S2, pf.Z, pf.ZPrm}, {pf.T1, pf.T2, pf.T, pf.W}} {
		left, err := ring.Commit(eq[0], eq[1])
		if err != nil {
			return err
		}
		xe, err := ring.Exp(eq[2], e)
		if err != nil {
			return err
		}
		if left.Cmp(mulMod(nt, xe, eq[3])) != 0 {
			return ErrProof
		}
	}
	// 7. c1^s1 · s^N · Γ^t1 = c2^e · v (mod N²)
	c1s, err := k.Exp(c1, pf.S1)
	if err != nil {
		return err
	}
	sn, err := k.ExpN(pf.S)
	if err != nil {
		return err
	}
	c2e, err := k.Exp(c2, e)
	if err != nil {
		return err
	}
	if mulMod(n2, c1s, sn, GammaExp(k, pf.T1)).Cmp(mulMod(n2, c2e, pf.V)) != 0 {
		return ErrProof
	}
	return nil
}
