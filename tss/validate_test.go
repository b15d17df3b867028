package tss

import (
	"context"
	"crypto/rand"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/bnb-chain/tss-lib/v2/common"
	cmts "github.com/bnb-chain/tss-lib/v2/crypto/commitments"
	"github.com/bnb-chain/tss-lib/v2/crypto/modproof"
	"github.com/bnb-chain/tss-lib/v2/crypto/mta"
	"github.com/bnb-chain/tss-lib/v2/crypto/paillier"
	"github.com/bnb-chain/tss-lib/v2/crypto/vss"
	"github.com/bnb-chain/tss-lib/v2/ecdsa/keygen"
	"github.com/bnb-chain/tss-lib/v2/ecdsa/signing"
	tsslib "github.com/bnb-chain/tss-lib/v2/tss"
)

// Each test here builds a message that tss-lib v2.0.2's own verifier
// accepts but that upstream later declared invalid, and shows tkeyless's
// peer checks refuse it, naming the sender.

// wire round-trips a message through its wire encoding, as a peer would
// send it, and parses it as coming from "b".
func wire(t *testing.T, m *members, msg tsslib.ParsedMessage) tsslib.ParsedMessage {
	t.Helper()
	b, _, err := msg.WireBytes()
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := tsslib.ParseWireMessage(b, m.byName["b"], msg.IsBroadcast())
	if err != nil {
		t.Fatal(err)
	}
	return parsed
}

// aliceValues are the prover's choices in Alice's range proof, which an
// honest prover draws at random and a cheating one picks.
type aliceValues struct{ m, r, alpha, beta, gamma, rho *big.Int }

// craftRangeProofAlice is tss-lib's ProveRangeAlice (crypto/mta) with every
// random choice given, so a test can make the degenerate proofs upstream
// later forbade. It returns the ciphertext and the proof.
func craftRangeProofAlice(pk *paillier.PublicKey, nTilde, h1, h2 *big.Int, v aliceValues) (*big.Int, *mta.RangeProofAlice) {
	q := curve.Params().N
	modNSq, modNTilde, modN := common.ModInt(pk.NSquare()), common.ModInt(nTilde), common.ModInt(pk.N)
	c := modNSq.Mul(modNSq.Exp(pk.Gamma(), v.m), modNSq.Exp(v.r, pk.N))
	z := modNTilde.Mul(modNTilde.Exp(h1, v.m), modNTilde.Exp(h2, v.rho))
	u := modNSq.Mul(modNSq.Exp(pk.Gamma(), v.alpha), modNSq.Exp(v.beta, pk.N))
	w := modNTilde.Mul(modNTilde.Exp(h1, v.alpha), modNTilde.Exp(h2, v.gamma))
	e := common.RejectionSample(q, common.SHA512_256i(append(pk.AsInts(), c, z, u, w)...))
	s := modN.Mul(modN.Exp(v.r, e), v.beta)
	s1 := new(big.Int).Add(new(big.Int).Mul(e, v.m), v.alpha)
	s2 := new(big.Int).Add(new(big.Int).Mul(e, v.rho), v.gamma)
	return c, &mta.RangeProofAlice{Z: z, U: u, W: w, S: s, S1: s1, S2: s2}
}

func TestCraftedRangeProofAliceRefused(t *testing.T) {
	prover, verifier := testPreParams(t, 0), testPreParams(t, 1)
	pk := &prover.p.PaillierSK.PublicKey
	nTilde, h1, h2 := verifier.p.NTildei, verifier.p.H1i, verifier.p.H2i
	q := curve.Params().N
	q3 := new(big.Int).Exp(q, big.NewInt(3), nil)
	random := func(max *big.Int) *big.Int { return common.GetRandomPositiveInt(rand.Reader, max) }
	honest := func() aliceValues {
		return aliceValues{
			m: random(q), r: common.GetRandomPositiveRelativelyPrimeInt(rand.Reader, pk.N), alpha: random(q3),
			beta:  common.GetRandomPositiveRelativelyPrimeInt(rand.Reader, pk.N),
			gamma: random(new(big.Int).Mul(q3, nTilde)), rho: random(new(big.Int).Mul(q, nTilde)),
		}
	}
	m, err := newMembers([]string{"a", "b"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, want string
		craft      func(v *aliceValues)
	}{
		// Paillier randomness 1 and β = 1 make S = r^e·β = 1.
		{"S=1", "S = 1", func(v *aliceValues) { v.r, v.beta = big.NewInt(1), big.NewInt(1) }},
		// m = 0 and ρ = 0 make Z = h1^m·h2^ρ = 1.
		{"Z=1", "Z = 1", func(v *aliceValues) { v.m, v.rho = big.NewInt(0), big.NewInt(0) }},
		// ρ = m and γ = α make S1 = e·m+α equal S2 = e·ρ+γ.
		{"S1=S2", "S1 = S2", func(v *aliceValues) { v.rho, v.gamma = v.m, v.alpha }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := honest()
			tc.craft(&v)
			c, pf := craftRangeProofAlice(pk, nTilde, h1, h2, v)
			if !pf.Verify(curve, pk, nTilde, h1, h2, c) {
				t.Fatal("tss-lib v2.0.2 rejects the crafted proof; it would not need tkeyless's check")
			}
			msg := wire(t, m, signing.NewSignRound1Message1(m.byName["a"], m.byName["b"], c, pf))
			err := newPeerChecks(1).check("b", msg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want refusal naming %q, got %v", tc.want, err)
			}
		})
	}
	// The honest proof passes both.
	v := honest()
	c, pf := craftRangeProofAlice(pk, nTilde, h1, h2, v)
	if !pf.Verify(curve, pk, nTilde, h1, h2, c) {
		t.Fatal("honest proof rejected by tss-lib")
	}
	if err := newPeerChecks(1).check("b", wire(t, m, signing.NewSignRound1Message1(m.byName["a"], m.byName["b"], c, pf))); err != nil {
		t.Fatalf("honest proof refused: %v", err)
	}
}

// craftModProof makes a Paillier-Blum modulus proof whose W shares the
// prime P with N. With b = 1 in every iteration, (-1)^a·W·Y is 0 mod P
// (whose fourth root is 0) and, for the right a, a fourth power mod Q, so
// the prover can answer every challenge.
func craftModProof(t *testing.T, session []byte, n, p, qq *big.Int) *modproof.ProofMod {
	t.Helper()
	one := big.NewInt(1)
	phi := new(big.Int).Mul(new(big.Int).Sub(p, one), new(big.Int).Sub(qq, one))
	modN := common.ModInt(n)
	// W = P·u with W a non-residue mod Q.
	var w *big.Int
	for u := int64(2); ; u++ {
		w = modN.Mul(p, big.NewInt(u))
		if big.Jacobi(new(big.Int).Mod(w, qq), qq) == -1 {
			break
		}
	}
	var y [modproof.Iterations]*big.Int
	for i := range y {
		ei := common.SHA512_256i_TAGGED(session, append([]*big.Int{w, n}, y[:i]...)...)
		y[i] = common.RejectionSample(n, ei)
	}
	invN := new(big.Int).ModInverse(n, phi)
	e := new(big.Int).Rsh(new(big.Int).Add(qq, one), 2) // (Q+1)/4: square root mod Q
	e.Mul(e, e)                                         // twice: fourth root
	a := new(big.Int).Lsh(one, modproof.Iterations)
	b := new(big.Int).Lsh(one, modproof.Iterations)
	var x, z [modproof.Iterations]*big.Int
	for i := range y {
		z[i] = modN.Exp(y[i], invN)
		v := modN.Mul(w, y[i])
		if big.Jacobi(new(big.Int).Mod(v, qq), qq) != 1 {
			v = modN.Mul(big.NewInt(-1), v)
			a.SetBit(a, i, 1)
		}
		b.SetBit(b, i, 1)
		xq := new(big.Int).Exp(new(big.Int).Mod(v, qq), e, qq)
		// X ≡ 0 mod P and X ≡ xq mod Q.
		x[i] = modN.Mul(p, modN.Mul(xq, new(big.Int).ModInverse(p, qq)))
	}
	return &modproof.ProofMod{W: w, X: x, A: a, B: b, Z: z}
}

func TestCraftedModProofRefused(t *testing.T) {
	pp := testPreParams(t, 0).p
	n, p, q := pp.PaillierSK.N, pp.PaillierSK.P, pp.PaillierSK.Q
	session := []byte("tkeyless crafted modulus proof")
	pf := craftModProof(t, session, n, p, q)
	if !pf.Verify(session, n) {
		t.Fatal("tss-lib v2.0.2 rejects the crafted proof; it would not need tkeyless's check")
	}
	if new(big.Int).GCD(nil, nil, pf.W, n).Cmp(big.NewInt(1)) == 0 {
		t.Fatal("crafted W is coprime to N")
	}
	m, err := newMembers([]string{"a", "b"})
	if err != nil {
		t.Fatal(err)
	}
	checks := newPeerChecks(1)
	checks.paillierN["b"] = n // as b's round-1 message announced it
	deCommit := cmts.NewHashCommitment(rand.Reader, big.NewInt(1), big.NewInt(2), big.NewInt(3), big.NewInt(4)).D
	err = checks.check("b", wire(t, m, keygen.NewKGRound2Message2(m.byName["b"], deCommit, pf)))
	if err == nil || !strings.Contains(err.Error(), "not coprime") {
		t.Fatalf("want refusal of W not coprime to N, got %v", err)
	}
}

// A Feldman commitment longer than t+1 points: tss-lib's share check reads
// only the first t+1, so an honest share verifies against a vector with
// extra points appended, and the de-commitment of such a vector opens.
func TestCraftedFeldmanCommitmentRefused(t *testing.T) {
	const threshold = 1
	secret := common.GetRandomPositiveInt(rand.Reader, curve.Params().N)
	ids := []*big.Int{big.NewInt(11), big.NewInt(22), big.NewInt(33)}
	vs, shares, err := vss.Create(curve, threshold, secret, ids, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	extra := vs[1] // any point will do
	long := append(append(vss.Vs{}, vs...), extra)
	if !shares[0].Verify(curve, threshold, long) {
		t.Fatal("tss-lib v2.0.2 rejects the share against the longer vector; it would not need tkeyless's check")
	}
	var flat []*big.Int
	for _, pt := range long {
		flat = append(flat, pt.X(), pt.Y())
	}
	cmt := cmts.NewHashCommitment(rand.Reader, flat...)
	if ok, _ := (&cmts.HashCommitDecommit{C: cmt.C, D: cmt.D}).DeCommit(); !ok {
		t.Fatal("the longer vector's de-commitment does not open")
	}
	m, err := newMembers([]string{"a", "b"})
	if err != nil {
		t.Fatal(err)
	}
	pp := testPreParams(t, 0).p
	pf, err := modproof.NewProof([]byte("s"), pp.PaillierSK.N, pp.PaillierSK.P, pp.PaillierSK.Q, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	checks := newPeerChecks(threshold)
	checks.paillierN["b"] = pp.PaillierSK.N
	err = checks.check("b", wire(t, m, keygen.NewKGRound2Message2(m.byName["b"], cmt.D, pf)))
	if err == nil || !strings.Contains(err.Error(), "Feldman commitment has 3 points, want t+1 = 2") {
		t.Fatalf("want refusal of a 3-point commitment, got %v", err)
	}
	// The honest length passes (with an honest modulus proof).
	var honest []*big.Int
	for _, pt := range vs {
		honest = append(honest, pt.X(), pt.Y())
	}
	if err := checks.check("b", wire(t, m, keygen.NewKGRound2Message2(m.byName["b"], cmts.NewHashCommitment(rand.Reader, honest...).D, pf))); err != nil {
		t.Fatalf("honest round-2 message refused: %v", err)
	}
}

// A session whose member sends a crafted range proof ends with that member
// named as the culprit, before tss-lib's round 2 uses the proof.
func TestCraftedProofInSessionNamesCulprit(t *testing.T) {
	shares := fixtureShares(t, 1, 2)
	net := newMemnet()
	m, err := newMembers([]string{"a", "b"})
	if err != nil {
		t.Fatal(err)
	}
	net.tamper = func(from, to string, og Outgoing) []byte {
		if from != "b" || !strings.HasSuffix(og.Type, "SignRound1Message1") {
			return og.Payload
		}
		msg, err := tsslib.ParseWireMessage(og.Payload, m.byName["b"], false)
		if err != nil {
			t.Error(err)
			return og.Payload
		}
		// Keep b's ciphertext, replace its proof with one whose S1 = S2.
		pf, _ := msg.Content().(*signing.SignRound1Message1).UnmarshalRangeProofAlice()
		pf.S2 = pf.S1
		b, _, _ := signing.NewSignRound1Message1(m.byName["a"], m.byName["b"], new(big.Int).SetBytes(msg.Content().(*signing.SignRound1Message1).C), pf).WireBytes()
		return b
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d := digests()["SHA-256"]
	sa, err := NewSignSession(shares[0], []string{"a", "b"}, d, net.outbox("a"))
	if err != nil {
		t.Fatal(err)
	}
	sb, err := NewSignSession(shares[1], []string{"a", "b"}, d, net.outbox("b"))
	if err != nil {
		t.Fatal(err)
	}
	net.join("a", sa)
	net.join("b", sb)
	go func() { _, _ = sb.Run(ctx) }()
	_, err = sa.Run(ctx)
	var se *SessionError
	if err == nil || !asSessionError(err, &se) || len(se.Culprits) != 1 || se.Culprits[0] != "b" || !strings.Contains(err.Error(), "S1 = S2") {
		t.Fatalf("want a session error naming b for S1 = S2, got %v", err)
	}
}

func asSessionError(err error, se **SessionError) bool {
	return errors.As(err, se)
}
