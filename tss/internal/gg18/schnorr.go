package gg18

import (
	"crypto/elliptic"
	"errors"
	"fmt"
	"io"
	"math/big"
	"slices"

	"github.com/bnb-chain/tss-lib/v2/common"
	"github.com/bnb-chain/tss-lib/v2/crypto"
	"github.com/bnb-chain/tss-lib/v2/crypto/schnorr"

	"github.com/tkeyless/tkeyless/internal/p256"
)

// The Schnorr proofs of GG18's phase 5 (figs. 16 and 17) in tss-lib
// v2.0.2's form: the same challenge hash over the same values, the same
// structs (schnorr.ZKProof, schnorr.ZKVProof), so a stock tss-lib party
// verifies what ProveZKV makes, and VerifySchnorrBatch accepts exactly what
// tss-lib's Verify methods accept. The arithmetic is nistec's (package
// p256): P-256 only.

// ZKClaim is a proof of knowledge of x such that X = x·G.
type ZKClaim struct {
	Session []byte
	X       *crypto.ECPoint
	Proof   *schnorr.ZKProof
}

// ZKVClaim is a proof of knowledge of s and l such that V = s·R + l·G.
type ZKVClaim struct {
	Session []byte
	V, R    *crypto.ECPoint
	Proof   *schnorr.ZKVProof
}

// batchWeightBits is the size of the random weights: a batch that holds
// although one of its equations does not passes with probability at most
// 2^−128 over the verifier's choice of weights.
const batchWeightBits = 128

// generator is G's affine coordinates, as the challenges hash them.
var generator = [2]*big.Int{elliptic.P256().Params().Gx, elliptic.P256().Params().Gy}

// zkChallenge is schnorr.ZKProof's challenge: H(session, X, G, α) mod q.
func zkChallenge(session []byte, X, alpha *crypto.ECPoint) *big.Int {
	h := common.SHA512_256i_TAGGED(session, X.X(), X.Y(), generator[0], generator[1], alpha.X(), alpha.Y())
	return common.RejectionSample(p256.Order, h)
}

// zkvChallenge is schnorr.ZKVProof's challenge: H(session, V, R, G, α) mod q.
func zkvChallenge(session []byte, V, R *crypto.ECPoint, ax, ay *big.Int) *big.Int {
	h := common.SHA512_256i_TAGGED(session, V.X(), V.Y(), R.X(), R.Y(), generator[0], generator[1], ax, ay)
	return common.RejectionSample(p256.Order, h)
}

// BaseMult is crypto.ScalarBaseMult(P-256, k) in constant time: k·G for a
// secret k (γ_i, l_i, ρ_i, a nonce), where tss-lib's multiplies by a
// variable-time math/big scalar.
func BaseMult(k *big.Int) *crypto.ECPoint {
	x, y, err := p256.Affine(p256.ScalarBaseMult(k))
	if err != nil {
		// k ≡ 0 mod q. The callers draw k uniformly from [0, q), so this
		// has probability 2⁻²⁵⁶; the session runner turns the panic into
		// a failed session.
		panic("gg18: BaseMult of a multiple of the order")
	}
	return crypto.NewECPointNoCurveCheck(elliptic.P256(), x, y) // a nistec result is on the curve
}

// ProveZK is schnorr.NewZKProof, the proof that X = x·G, with nistec's
// constant-time multiplication for the nonce a.
func ProveZK(session []byte, x *big.Int, X *crypto.ECPoint, rand io.Reader) (*schnorr.ZKProof, error) {
	if x == nil || X == nil || !X.ValidateBasic() {
		return nil, errors.New("ProveZK: nil or invalid value")
	}
	q := p256.Order
	a := common.GetRandomPositiveInt(rand, q)
	alpha := BaseMult(a)
	c := zkChallenge(session, X, alpha)
	t := common.ModInt(q).Add(a, new(big.Int).Mul(c, x))
	return &schnorr.ZKProof{Alpha: alpha, T: t}, nil
}

// ProveZKV is schnorr.NewZKVProof, the proof that V = s·R + l·G, with
// nistec's constant-time multiplications for the nonces a and b.
func ProveZKV(session []byte, V, R *crypto.ECPoint, s, l *big.Int, rand io.Reader) (*schnorr.ZKVProof, error) {
	if V == nil || R == nil || s == nil || l == nil || !V.ValidateBasic() || !R.ValidateBasic() {
		return nil, errors.New("ProveZKV: nil or invalid value")
	}
	r, err := p256.FromAffine(R.X(), R.Y())
	if err != nil {
		return nil, fmt.Errorf("ProveZKV: R: %w", err)
	}
	q := p256.Order
	a, b := common.GetRandomPositiveInt(rand, q), common.GetRandomPositiveInt(rand, q)
	ax, ay, err := p256.Affine(p256.Add(p256.ScalarMult(r, a), p256.ScalarBaseMult(b)))
	if err != nil {
		return nil, fmt.Errorf("ProveZKV: α: %w", err)
	}
	alpha := crypto.NewECPointNoCurveCheck(R.Curve(), ax, ay) // a nistec result is on the curve
	c := zkvChallenge(session, V, R, ax, ay)
	modQ := common.ModInt(q)
	t := modQ.Add(a, new(big.Int).Mul(c, s))
	u := modQ.Add(b, new(big.Int).Mul(c, l))
	return &schnorr.ZKVProof{Alpha: alpha, T: t, U: u}, nil
}

// VerifySchnorrBatch reports whether every proof verifies, checking them
// all in one multi-scalar multiplication: with random weights w_k (the
// first 1),
//
//	Σ w_k·(α_k + c_k·X_k − t_k·G) + Σ w_k·(α_k + c_k·V_k − t_k·R_k − u_k·G) = O.
//
// true means each proof passes tss-lib's Verify, except with probability
// 2^−128 over the weights; false means at least one does not, and the
// caller checks them one by one (with tss-lib's Verify) to learn which.
// The only other difference from tss-lib is for a proof whose check point
// α + c·X is infinity, which tss-lib refuses; making one needs α with
// α = −H(…, α)·X, a fixed point of the hash.
func VerifySchnorrBatch(zk []ZKClaim, zkv []ZKVClaim, rand io.Reader) (bool, error) {
	q := p256.Order
	var ps []*p256.Point
	var ks []*big.Int
	gSum := new(big.Int)
	first := true
	weight := func() (*big.Int, error) {
		if first {
			first = false
			return big.NewInt(1), nil
		}
		w := make([]byte, batchWeightBits/8)
		if _, err := io.ReadFull(rand, w); err != nil {
			return nil, fmt.Errorf("batch weight: %w", err)
		}
		return new(big.Int).SetBytes(w), nil
	}
	term := func(x *crypto.ECPoint, k *big.Int) bool {
		p, err := p256.FromAffine(x.X(), x.Y())
		if err != nil {
			return false
		}
		ps, ks = append(ps, p), append(ks, k)
		return true
	}
	// nonZero mirrors tss-lib, which panics (and so refuses) when t·G or
	// t·R is the point at infinity.
	nonZero := func(k *big.Int) bool { return new(big.Int).Mod(k, q).Sign() != 0 }
	for _, c := range zk {
		pf := c.Proof
		if pf == nil || !pf.ValidateBasic() || c.X == nil || !c.X.ValidateBasic() || !nonZero(pf.T) {
			return false, nil
		}
		w, err := weight()
		if err != nil {
			return false, err
		}
		e := zkChallenge(c.Session, c.X, pf.Alpha)
		if !term(pf.Alpha, w) || !term(c.X, e.Mul(e, w)) {
			return false, nil
		}
		gSum.Add(gSum, new(big.Int).Mul(w, pf.T))
	}
	// Proofs against the same R (every member's in round 7) share one
	// term: Σ w_k·t_k for that R.
	type rTerm struct {
		R   *crypto.ECPoint
		sum *big.Int
	}
	var rTerms []*rTerm
	for _, c := range zkv {
		pf := c.Proof
		if pf == nil || !pf.ValidateBasic() || c.V == nil || !c.V.ValidateBasic() || c.R == nil || !c.R.ValidateBasic() || !nonZero(pf.T) || !nonZero(pf.U) {
			return false, nil
		}
		w, err := weight()
		if err != nil {
			return false, err
		}
		e := zkvChallenge(c.Session, c.V, c.R, pf.Alpha.X(), pf.Alpha.Y())
		if !term(pf.Alpha, w) || !term(c.V, e.Mul(e, w)) {
			return false, nil
		}
		gSum.Add(gSum, new(big.Int).Mul(w, pf.U))
		i := slices.IndexFunc(rTerms, func(t *rTerm) bool { return t.R.Equals(c.R) })
		if i < 0 {
			i, rTerms = len(rTerms), append(rTerms, &rTerm{R: c.R, sum: new(big.Int)})
		}
		rTerms[i].sum.Add(rTerms[i].sum, new(big.Int).Mul(w, pf.T))
	}
	for _, t := range rTerms {
		if !term(t.R, t.sum.Neg(t.sum)) {
			return false, nil
		}
	}
	sum := p256.MultiScalarMult(ps, ks, new(big.Int).Neg(gSum))
	return sum.IsInfinity() == 1, nil
}
