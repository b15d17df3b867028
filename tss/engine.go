package tss

import (
	"crypto/rand"
	"errors"
	"fmt"
	"math/big"
	"sync"

	"github.com/bnb-chain/tss-lib/v2/common"
	"github.com/bnb-chain/tss-lib/v2/crypto"
	"github.com/bnb-chain/tss-lib/v2/crypto/commitments"
	"github.com/bnb-chain/tss-lib/v2/crypto/mta"
	"github.com/bnb-chain/tss-lib/v2/crypto/schnorr"
	"github.com/bnb-chain/tss-lib/v2/ecdsa/keygen"
	"github.com/bnb-chain/tss-lib/v2/ecdsa/signing"
	tsslib "github.com/bnb-chain/tss-lib/v2/tss"

	"github.com/tkeyless/tkeyless/internal/p256"
	"github.com/tkeyless/tkeyless/tss/internal/gg18"
)

// engineParty is tkeyless's own GG18 signing party (Gennaro and Goldfeder
// 2018, §4.2), written with tss-lib v2.0.2's ecdsa/signing as the
// reference: the same nine rounds, the same protobuf messages (tss-lib's
// own types, built with its constructors), the same session id, proofs,
// hashes and commitments, so it signs together with stock tss-lib parties
// (TestSignInterop*). It replaces tss-lib's party only for signing; keygen,
// resharing and import stay on tss-lib, and shares are the same.
//
// What differs is the cost of rounds 1–3, the Paillier MtA with its range
// proofs (internal/gg18): Γ-powers without exponentiation, CRT with this
// party's own primes, h1^a·h2^b = h1^(a+αb) on its own Ñ, fixed-base tables
// on the others' Ñ, Alice's range proof verified once per peer instead of
// once per MtA, the MtA answers decrypted once (by the range check,
// validate.go), and the per-peer work of each round in parallel.
//
// The message m is not needed before round 5: a party made without one
// (presign.go) stops once round 4 is complete and goes on when setMessage
// gives it one. m is used once and cleared with the other secrets.
//
// It has tss-lib's party interface (Start, Update, WaitingFor) so the
// runner (session.go) drives it like any tss-lib party, and it is not safe
// for concurrent calls, like them.
type engineParty struct {
	kind  string
	ids   tsslib.SortedPartyIDs
	self  *tsslib.PartyID
	i     int
	keys  keygen.LocalPartySaveData // the quorum's subset, in ids order
	share *Share
	out   chan<- tsslib.Message
	end   chan<- *common.SignatureData
	// mta is the range check's decryption of each peer's MtA answers
	// (validate.go), reused instead of decrypting again; nil when the
	// check is off (a test playing stock tss-lib's behaviour).
	mta *mtaCheck
	// names maps index to node name, for the MtA cache and hooks.
	names []string

	own     *gg18.Own
	ownRing gg18.Ring
	peerPK  []*gg18.Peer
	rings   []gg18.Ring

	round int // the round whose messages are awaited; 10 once finished
	// msgs[t][j] is member j's message of type t (msgType), nil until it
	// arrives. Messages of a later round wait here until their round.
	msgs [10][]tsslib.ParsedMessage

	m *big.Int // nil until known (presigning)

	ssid                []byte
	w, k, gamma         *big.Int
	bigWs               []*crypto.ECPoint
	pointGamma          *crypto.ECPoint
	deCommit            commitments.HashDeCommitment
	cis, betas, vs      []*big.Int
	theta, thetaInverse *big.Int
	sigma               *big.Int
	// rounds 5–9
	si, li, roi, rx, ry       *big.Int
	bigR, bigAi, bigLi, bigVi *crypto.ECPoint
	pointVi                   *p256.Point       // bigVi, projective
	piAi                      *schnorr.ZKProof  // proof of knowledge of ρ_i
	bigGammas                 []*crypto.ECPoint // the others' Γ_j, checked
	dPower, dTelda            commitments.HashDeCommitment
	ui, ti                    *crypto.ECPoint
}

// Message types by slot in engineParty.msgs.
const (
	slotR1P2P = iota // SignRound1Message1: cA and Alice's range proof, to one member
	slotR1Bc         // SignRound1Message2: commitment to Γ_i
	slotR2           // SignRound2Message: Bob's answers and proofs, to one member
	slotR3
	slotR4
	slotR5
	slotR6
	slotR7
	slotR8
	slotR9
)

// mtaBetaHook, when set, chooses β′ for this party's MtA (γ) answer to
// member to, instead of a uniformly random one in [0, q⁵). Only the
// adversary build (adversary.go) and tests set it, to play the malicious
// Bob of the Alpha-Rays attack; release builds leave it nil.
var mtaBetaHook func(kind, self, to string, gamma *big.Int) *big.Int

func newEngineParty(kind string, share *Share, m *members, msg *big.Int, mtaCheck *mtaCheck, out chan<- tsslib.Message, end chan<- *common.SignatureData) (*engineParty, error) {
	key, err := share.paillierKey()
	if err != nil {
		return nil, fmt.Errorf("%s: own %w", kind, err)
	}
	ids := m.sorted
	p := &engineParty{
		kind:  kind,
		ids:   ids,
		self:  m.byName[share.Self],
		keys:  keygen.BuildLocalSaveDataSubset(share.data, ids),
		share: share,
		out:   out,
		end:   end,
		mta:   mtaCheck,
		own:   key.own,
		m:     msg,
		round: 1,
	}
	p.i = p.self.Index
	n := len(ids)
	for t := range p.msgs {
		p.msgs[t] = make([]tsslib.ParsedMessage, n)
	}
	p.names = make([]string, n)
	p.peerPK = make([]*gg18.Peer, n)
	p.rings = make([]gg18.Ring, n)
	for j, id := range ids {
		p.names[j] = id.Id
		if j >= len(p.keys.NTildej) || j >= len(p.keys.PaillierPKs) || j >= len(p.keys.H1j) || j >= len(p.keys.H2j) {
			return nil, fmt.Errorf("%s: share has no range-proof or Paillier key for %s", kind, id.Id)
		}
		r, err := share.ring(p.keys.NTildej[j], p.keys.H1j[j], p.keys.H2j[j])
		if err != nil {
			return nil, fmt.Errorf("%s: member %s: %w", kind, id.Id, err)
		}
		p.rings[j] = r
		if j == p.i {
			p.ownRing = r
			continue
		}
		if p.peerPK[j], err = gg18.NewPeer(p.keys.PaillierPKs[j]); err != nil {
			return nil, fmt.Errorf("%s: member %s: %w", kind, id.Id, err)
		}
	}
	if p.keys.PaillierSK == nil || p.keys.PaillierSK.N.Cmp(p.keys.PaillierPKs[p.i].N) != 0 {
		return nil, fmt.Errorf("%s: own Paillier key does not match the share's record", kind)
	}
	return p, nil
}

func (p *engineParty) wrap(round int, err error, culprits ...int) *tsslib.Error {
	var cs []*tsslib.PartyID
	for _, j := range culprits {
		cs = append(cs, p.ids[j])
	}
	return tsslib.NewError(err, signing.TaskName, round, p.self, cs...)
}

// context is the proof session tag of member j: tss-lib's ssid ‖ j.
func (p *engineParty) context(j int) []byte {
	return common.AppendBigIntToBytesSlice(p.ssid, big.NewInt(int64(j)))
}

// forPeers runs f for every other member in parallel (the work of a round
// is independent per peer: on idle cores this is latency saved) and
// returns the members whose f failed, in order, with the first error; or,
// when any f met a fault of this party's own arithmetic (gg18.ErrFault),
// that error and no member.
//
// A panic in f (tss-lib panics on some malformed peer values) becomes
// member j's error: these goroutines are outside runner.safely's recover,
// and an unrecovered panic there would end the whole signer process.
func (p *engineParty) forPeers(f func(j int) error) ([]int, error) {
	errs := make([]error, len(p.ids))
	var wg sync.WaitGroup
	for j := range p.ids {
		if j == p.i {
			continue
		}
		wg.Go(func() {
			defer func() {
				if r := recover(); r != nil {
					errs[j] = fmt.Errorf("panicked while handling %s's values: %v", p.names[j], r)
				}
			}()
			errs[j] = f(j)
		})
	}
	wg.Wait()
	// A fault in this party's own arithmetic (its Paillier key's or Ñ's
	// CRT) names nobody: it says nothing about the values being checked,
	// and the other verdicts of the round were computed on the same
	// faulty machine.
	for _, err := range errs {
		if errors.Is(err, gg18.ErrFault) {
			return nil, err
		}
	}
	var culprits []int
	var first error
	for j, err := range errs {
		if err != nil {
			culprits = append(culprits, j)
			if first == nil {
				first = err
			}
		}
	}
	return culprits, first
}

// proofError is the error of a peer's proof that failed verification: the
// message tss-lib gives for it, or the local fault that stopped the check.
func proofError(proof string, err error) error {
	if errors.Is(err, gg18.ErrFault) {
		return fmt.Errorf("verifying %s: %w", proof, err)
	}
	return fmt.Errorf("%s.Verify() returned false", proof)
}

// ssidOf is tss-lib's signing session id (rounds.go getSSID): the curve,
// the members' keys, their X_j, Ñ_j, h1_j, h2_j, the round (1) and a nonce
// tss-lib fixes at 0 (CVE-2022-47930: tkeyless separates sessions in its
// own envelope).
func (p *engineParty) ssidOf() ([]byte, error) {
	cp := curve.Params()
	list := []*big.Int{cp.P, cp.N, cp.B, cp.Gx, cp.Gy}
	list = append(list, p.ids.Keys()...)
	xs, err := crypto.FlattenECPoints(p.keys.BigXj)
	if err != nil {
		return nil, errors.New("read BigXj failed")
	}
	list = append(list, xs...)
	list = append(list, p.keys.NTildej...)
	list = append(list, p.keys.H1j...)
	list = append(list, p.keys.H2j...)
	list = append(list, big.NewInt(1), big.NewInt(0))
	return common.SHA512_256i(list...).Bytes(), nil
}

// Start runs round 1: k_i, γ_i, the commitment to Γ_i = γ_i·G, and for
// each other member Enc(k_i) with Alice's range proof against its Ñ.
func (p *engineParty) Start() *tsslib.Error {
	q := curve.Params().N
	if p.m != nil && p.m.Cmp(q) >= 0 {
		return p.wrap(1, errors.New("hashed message is not valid"))
	}
	if p.share.Threshold+1 > len(p.keys.Ks) {
		return p.wrap(1, fmt.Errorf("t+1=%d is not satisfied by the key count of %d", p.share.Threshold+1, len(p.keys.Ks)))
	}
	p.w, p.bigWs = signing.PrepareForSigning(curve, p.i, len(p.keys.Ks), p.keys.Xi, p.keys.Ks, p.keys.BigXj)
	ssid, err := p.ssidOf()
	if err != nil {
		return p.wrap(1, err)
	}
	p.ssid = ssid
	p.k = common.GetRandomPositiveInt(rand.Reader, q)
	p.gamma = common.GetRandomPositiveInt(rand.Reader, q)
	p.pointGamma = gg18.BaseMult(p.gamma)
	cmt := commitments.NewHashCommitment(rand.Reader, p.pointGamma.X(), p.pointGamma.Y())
	p.deCommit = cmt.D

	n := len(p.ids)
	p.cis = make([]*big.Int, n)
	proofs := make([]*mta.RangeProofAlice, n)
	if _, err := p.forPeers(func(j int) error {
		cA, rA, err := gg18.Encrypt(p.own, rand.Reader, p.k)
		if err != nil {
			return err
		}
		pf, err := gg18.ProveRangeAlice(curve, p.own, p.rings[j], cA, p.k, rA, rand.Reader)
		if err != nil {
			return err
		}
		p.cis[j], proofs[j] = cA, pf
		return nil
	}); err != nil {
		return p.wrap(1, fmt.Errorf("failed to init mta: %w", err))
	}
	for j, pj := range p.ids {
		if j != p.i {
			p.out <- signing.NewSignRound1Message1(pj, p.self, p.cis[j], proofs[j])
		}
	}
	p.out <- signing.NewSignRound1Message2(p.self, cmt.C)
	return p.advance()
}

// slotOf places a message by type and checks it came the way its type is
// sent (broadcast or to one member).
func slotOf(msg tsslib.ParsedMessage) (slot int, broadcast bool, ok bool) {
	switch msg.Content().(type) {
	case *signing.SignRound1Message1:
		return slotR1P2P, false, true
	case *signing.SignRound1Message2:
		return slotR1Bc, true, true
	case *signing.SignRound2Message:
		return slotR2, false, true
	case *signing.SignRound3Message:
		return slotR3, true, true
	case *signing.SignRound4Message:
		return slotR4, true, true
	case *signing.SignRound5Message:
		return slotR5, true, true
	case *signing.SignRound6Message:
		return slotR6, true, true
	case *signing.SignRound7Message:
		return slotR7, true, true
	case *signing.SignRound8Message:
		return slotR8, true, true
	case *signing.SignRound9Message:
		return slotR9, true, true
	}
	return 0, false, false
}

// Update stores a member's message and runs every round it completes.
func (p *engineParty) Update(msg tsslib.ParsedMessage) (bool, *tsslib.Error) {
	if msg == nil || msg.Content() == nil || msg.GetFrom() == nil {
		return false, p.wrap(p.round, errors.New("received nil message or sender"))
	}
	j := msg.GetFrom().Index
	if j < 0 || j >= len(p.ids) || j == p.i || p.ids[j].Id != msg.GetFrom().Id {
		return false, p.wrap(p.round, fmt.Errorf("message from unknown sender %v", msg.GetFrom()))
	}
	if !msg.ValidateBasic() {
		return false, p.wrap(p.round, fmt.Errorf("message failed ValidateBasic: %s", msg.Type()), j)
	}
	slot, broadcast, ok := slotOf(msg)
	if !ok {
		return false, p.wrap(p.round, fmt.Errorf("unexpected message type %s", msg.Type()), j)
	}
	if broadcast != msg.IsBroadcast() {
		return false, p.wrap(p.round, fmt.Errorf("%s sent the wrong way (broadcast %t)", msg.Type(), msg.IsBroadcast()), j)
	}
	if p.msgs[slot][j] != nil || p.round > roundOfSlot(slot) {
		return false, p.wrap(p.round, fmt.Errorf("second %s", msg.Type()), j)
	}
	p.msgs[slot][j] = msg
	if err := p.advance(); err != nil {
		return false, err
	}
	return true, nil
}

func roundOfSlot(slot int) int {
	if slot == slotR1P2P {
		return 1
	}
	return slot
}

// complete reports whether every other member's messages of round r are in.
func (p *engineParty) complete(r int) bool {
	slots := []int{r}
	if r == 1 {
		slots = []int{slotR1P2P, slotR1Bc}
	}
	for j := range p.ids {
		if j == p.i {
			continue
		}
		for _, s := range slots {
			if p.msgs[s][j] == nil {
				return false
			}
		}
	}
	return true
}

// awaitingMessage reports whether rounds 1–4 are complete and the party
// waits for the message to go on (presigning).
func (p *engineParty) awaitingMessage() bool { return p.round == 4 && p.m == nil && p.complete(4) }

// setMessage gives a party made without a message its m, and runs the
// rounds that were waiting for it.
func (p *engineParty) setMessage(m *big.Int) *tsslib.Error {
	if p.m != nil {
		return p.wrap(p.round, errors.New("message already set"))
	}
	if m.Sign() < 0 || m.Cmp(curve.Params().N) >= 0 {
		return p.wrap(p.round, errors.New("hashed message is not valid"))
	}
	p.m = new(big.Int).Set(m)
	return p.advance()
}

// advance runs the next round for as long as the last one is complete.
func (p *engineParty) advance() *tsslib.Error {
	for p.round <= 9 && p.complete(p.round) {
		next := p.round + 1
		if next == 5 && p.bigGammas == nil {
			if err := p.prepareOnline(); err != nil {
				p.destroy()
				return err
			}
		}
		if next == 5 && p.m == nil {
			return nil // presigning: round 5 needs the message
		}
		var err *tsslib.Error
		switch next {
		case 2:
			err = p.round2()
		case 3:
			err = p.round3()
		case 4:
			err = p.round4()
		case 5:
			err = p.round5()
		case 6:
			err = p.round6()
		case 7:
			err = p.round7()
		case 8:
			err = p.round8()
		case 9:
			err = p.round9()
		case 10:
			err = p.finalize()
		}
		if err != nil {
			p.destroy()
			return err
		}
		p.round = next
	}
	return nil
}

// WaitingFor names the members whose messages the current round lacks.
func (p *engineParty) WaitingFor() []*tsslib.PartyID {
	var ids []*tsslib.PartyID
	if p.round > 9 || (p.round == 4 && p.m == nil && p.complete(4)) {
		return nil
	}
	slots := []int{p.round}
	if p.round == 1 {
		slots = []int{slotR1P2P, slotR1Bc}
	}
	for j, id := range p.ids {
		if j == p.i {
			continue
		}
		for _, s := range slots {
			if p.msgs[s][j] == nil {
				ids = append(ids, id)
				break
			}
		}
	}
	return ids
}

// round2 is Bob's side of both MtAs with each member j: Alice's range
// proof, verified once (tss-lib verifies it in BobMid and again in
// BobMidWC), then Enc(γ_i·k_j + β′) and Enc(w_i·k_j + ν′) with Bob's
// proofs against j's Ñ.
func (p *engineParty) round2() *tsslib.Error {
	n := len(p.ids)
	p.betas, p.vs = make([]*big.Int, n), make([]*big.Int, n)
	type answer struct {
		c1, c2   *big.Int
		pf1, pf2 *mta.ProofBobWC
	}
	answers := make([]answer, n)
	q := curve.Params().N
	q5 := new(big.Int).Exp(q, big.NewInt(5), nil)
	ctxI := p.context(p.i)
	culprits, err := p.forPeers(func(j int) error {
		r1 := p.msgs[slotR1P2P][j].Content().(*signing.SignRound1Message1)
		pf, err := r1.UnmarshalRangeProofAlice()
		if err != nil {
			return fmt.Errorf("UnmarshalRangeProofAlice failed: %w", err)
		}
		cA := r1.UnmarshalC()
		pkA := p.peerPK[j]
		if err := gg18.VerifyRangeAlice(curve, pf, pkA, p.ownRing, cA); err != nil {
			return proofError("RangeProofAlice", err)
		}
		bob := func(b *big.Int, X *crypto.ECPoint, betaPrm *big.Int) (*big.Int, *mta.ProofBobWC, *big.Int, error) {
			cBeta, rBeta, err := gg18.Encrypt(pkA, rand.Reader, new(big.Int).Mod(betaPrm, pkA.N()))
			if err != nil {
				return nil, nil, nil, err
			}
			cB, err := pkA.Exp(cA, b)
			if err != nil {
				return nil, nil, nil, err
			}
			cB.Mul(cB, cBeta)
			cB.Mod(cB, pkA.N2())
			pf, err := gg18.ProveBob(curve, ctxI, pkA, p.rings[j], cA, cB, b, betaPrm, rBeta, X, rand.Reader)
			if err != nil {
				return nil, nil, nil, err
			}
			beta := new(big.Int).Neg(betaPrm)
			return cB, pf, beta.Mod(beta, q), nil
		}
		betaPrm := common.GetRandomPositiveInt(rand.Reader, q5)
		if mtaBetaHook != nil {
			if bp := mtaBetaHook(p.kind, p.self.Id, p.names[j], p.gamma); bp != nil {
				betaPrm = bp
			}
		}
		nuPrm := common.GetRandomPositiveInt(rand.Reader, q5)
		var a answer
		var errs [2]error
		var wg sync.WaitGroup
		wg.Go(func() { a.c1, a.pf1, p.betas[j], errs[0] = bob(p.gamma, nil, betaPrm) })
		a.c2, a.pf2, p.vs[j], errs[1] = bob(p.w, p.bigWs[p.i], nuPrm)
		wg.Wait()
		if err := errors.Join(errs[:]...); err != nil {
			return err
		}
		answers[j] = a
		return nil
	})
	if err != nil {
		return p.wrap(2, fmt.Errorf("failed to calculate Bob_mid or Bob_mid_wc: %w", err), culprits...)
	}
	for j, pj := range p.ids {
		if j != p.i {
			a := answers[j]
			p.out <- signing.NewSignRound2Message(pj, p.self, a.c1, a.pf1.ProofBob, a.c2, a.pf2)
		}
	}
	return nil
}

// round3 is Alice's end of both MtAs with each member j: Bob's two proofs
// verified against this party's own key and Ñ, the answers decrypted (or
// taken from the range check, which decrypted them already); then θ_i and
// σ_i, and θ_i broadcast.
func (p *engineParty) round3() *tsslib.Error {
	n := len(p.ids)
	q := curve.Params().N
	alphas, us := make([]*big.Int, n), make([]*big.Int, n)
	culprits, err := p.forPeers(func(j int) error {
		r2 := p.msgs[slotR2][j].Content().(*signing.SignRound2Message)
		ctxJ := p.context(j)
		c1, c2 := new(big.Int).SetBytes(r2.GetC1()), new(big.Int).SetBytes(r2.GetC2())
		var errs [2]error
		var wg sync.WaitGroup
		wg.Go(func() {
			pf, err := r2.UnmarshalProofBob()
			if err != nil {
				errs[0] = fmt.Errorf("UnmarshalProofBob failed: %w", err)
				return
			}
			if err := gg18.VerifyBob(curve, ctxJ, pf, nil, p.own, p.ownRing, p.cis[j], c1, nil); err != nil {
				errs[0] = proofError("ProofBob", err)
				return
			}
			alphas[j], errs[0] = p.plaintext(j, 0, c1)
		})
		pf, err := r2.UnmarshalProofBobWC(curve)
		if err != nil {
			errs[1] = fmt.Errorf("UnmarshalProofBobWC failed: %w", err)
		} else if err := gg18.VerifyBob(curve, ctxJ, pf.ProofBob, pf.U, p.own, p.ownRing, p.cis[j], c2, p.bigWs[j]); err != nil {
			errs[1] = proofError("ProofBobWC", err)
		} else {
			us[j], errs[1] = p.plaintext(j, 1, c2)
		}
		wg.Wait()
		if err := errors.Join(errs[:]...); err != nil {
			return err
		}
		alphas[j].Mod(alphas[j], q)
		us[j].Mod(us[j], q)
		return nil
	})
	if err != nil {
		return p.wrap(3, fmt.Errorf("failed to calculate Alice_end or Alice_end_wc: %w", err), culprits...)
	}
	modQ := common.ModInt(q)
	theta := modQ.Mul(p.k, p.gamma)
	sigma := modQ.Mul(p.k, p.w)
	for j := range p.ids {
		if j == p.i {
			continue
		}
		theta = modQ.Add(theta, alphas[j].Add(alphas[j], p.betas[j]))
		sigma = modQ.Add(sigma, us[j].Add(us[j], p.vs[j]))
		// α_ij + β_ji and μ_ij + ν_ji are shares of k·γ and k·w: used.
		alphas[j].SetInt64(0)
		us[j].SetInt64(0)
	}
	p.theta, p.sigma = theta, sigma
	p.betas, p.vs = nil, nil
	p.out <- signing.NewSignRound3Message(p.self, theta)
	return nil
}

// plaintext is the decryption of member j's answer (0: to k·γ, 1: to k·w),
// from the range check's cache when it decrypted it.
func (p *engineParty) plaintext(j, which int, c *big.Int) (*big.Int, error) {
	if p.mta != nil {
		if v := p.mta.plaintext(p.names[j], which, c); v != nil {
			return v, nil
		}
	}
	return p.own.Decrypt(c)
}

// round4: δ⁻¹ = (Σ θ_j)⁻¹, and the opening of Γ_i with its Schnorr proof.
func (p *engineParty) round4() *tsslib.Error {
	q := curve.Params().N
	modQ := common.ModInt(q)
	sum := new(big.Int).Set(p.theta)
	for j := range p.ids {
		if j == p.i {
			continue
		}
		sum = modQ.Add(sum, new(big.Int).SetBytes(p.msgs[slotR3][j].Content().(*signing.SignRound3Message).GetTheta()))
	}
	p.thetaInverse = modQ.ModInverse(sum)
	if p.thetaInverse == nil {
		return p.wrap(4, errors.New("θ is not invertible"))
	}
	piGamma, err := gg18.ProveZK(p.context(p.i), p.gamma, p.pointGamma, rand.Reader)
	if err != nil {
		return p.wrap(4, fmt.Errorf("NewZKProof(gamma, bigGamma): %w", err))
	}
	p.out <- signing.NewSignRound4Message(p.self, p.deCommit, piGamma)
	return nil
}

// prepareOnline does the part of rounds 5 and 6 that needs neither the
// message nor R, as soon as every member's round-4 message is in: it opens
// and checks each Γ_j, draws l_i and ρ_i, and makes l_i·G, A_i = ρ_i·G and
// the proof of knowledge of ρ_i. A presignature does this before it is
// ready, so a finish costs less; full signing does it just before round 5.
// R itself is still computed only in round 5, once the message is set
// (docs/presigning.md); A_i and its proof go out in round 6 as before.
func (p *engineParty) prepareOnline() *tsslib.Error {
	p.bigGammas = make([]*crypto.ECPoint, len(p.ids))
	for j := range p.ids {
		if j == p.i {
			continue
		}
		r1 := p.msgs[slotR1Bc][j].Content().(*signing.SignRound1Message2)
		r4 := p.msgs[slotR4][j].Content().(*signing.SignRound4Message)
		cmt := commitments.HashCommitDecommit{C: r1.UnmarshalCommitment(), D: r4.UnmarshalDeCommitment()}
		ok, gammaJ := cmt.DeCommit()
		if !ok || len(gammaJ) != 2 {
			return p.wrap(5, errors.New("commitment verify failed"), j)
		}
		point, err := crypto.NewECPoint(curve, gammaJ[0], gammaJ[1])
		if err != nil {
			return p.wrap(5, fmt.Errorf("NewECPoint(bigGammaJ): %w", err), j)
		}
		proof, err := r4.UnmarshalZKProof(curve)
		if err != nil || !proof.Verify(p.context(j), point) {
			return p.wrap(5, errors.New("failed to prove bigGamma"), j)
		}
		p.bigGammas[j] = point
	}
	q := curve.Params().N
	p.li = common.GetRandomPositiveInt(rand.Reader, q)
	p.roi = common.GetRandomPositiveInt(rand.Reader, q)
	p.bigLi = gg18.BaseMult(p.li)
	p.bigAi = gg18.BaseMult(p.roi)
	piAi, err := gg18.ProveZK(p.context(p.i), p.roi, p.bigAi, rand.Reader)
	if err != nil {
		return p.wrap(6, fmt.Errorf("NewZKProof(roi, bigAi): %w", err))
	}
	p.piAi = piAi
	return nil
}

// round5 is where the message enters: R = (Σ Γ_j)^(δ⁻¹), s_i = m·k_i + r·σ_i,
// and the commitment to V_i = s_i·R + l_i·G and A_i = ρ_i·G (prepareOnline
// checked the Γ_j and made l_i·G and A_i). k_i and w_i are cleared.
func (p *engineParty) round5() *tsslib.Error {
	sum, err := p256.FromAffine(p.pointGamma.X(), p.pointGamma.Y())
	if err != nil {
		return p.wrap(5, fmt.Errorf("Γ_i: %w", err))
	}
	for j, point := range p.bigGammas {
		if j == p.i {
			continue
		}
		gammaJ, err := p256.FromAffine(point.X(), point.Y())
		if err != nil {
			return p.wrap(5, fmt.Errorf("Γ_j: %w", err), j)
		}
		// tss-lib's R.Add refuses a sum at infinity, naming member j.
		if sum = p256.Add(sum, gammaJ); sum.IsInfinity() == 1 {
			return p.wrap(5, errors.New("R.Add(bigGammaJ): the point at infinity"), j)
		}
	}
	q := curve.Params().N
	modQ := common.ModInt(q)
	// δ⁻¹ is public (round 3 broadcast every share of δ), and sum is not
	// infinity, so neither is R.
	R := p256.ScalarMult(sum, p.thetaInverse)
	if p.rx, p.ry, err = p256.Affine(R); err != nil {
		return p.wrap(5, fmt.Errorf("R: %w", err))
	}
	p.si = modQ.Add(modQ.Mul(p.m, p.k), modQ.Mul(p.rx, p.sigma))
	p.k.SetInt64(0)
	p.w.SetInt64(0)
	li, err := p256.FromAffine(p.bigLi.X(), p.bigLi.Y())
	if err != nil {
		return p.wrap(5, fmt.Errorf("l_i·G: %w", err))
	}
	bigVi := p256.Add(p256.ScalarMult(R, p.si), li)
	vx, vy, err := p256.Affine(bigVi)
	if err != nil {
		return p.wrap(5, fmt.Errorf("rToSi.Add(li): %w", err))
	}
	p.pointVi = bigVi
	p.bigR = crypto.NewECPointNoCurveCheck(curve, p.rx, p.ry) // nistec's results are on the curve
	p.bigVi = crypto.NewECPointNoCurveCheck(curve, vx, vy)
	cmt := commitments.NewHashCommitment(rand.Reader, vx, vy, p.bigAi.X(), p.bigAi.Y())
	p.dPower = cmt.D
	p.out <- signing.NewSignRound5Message(p.self, cmt.C)
	return nil
}

// round6 opens V_i and A_i with proofs of knowledge of ρ_i and (s_i, l_i).
func (p *engineParty) round6() *tsslib.Error {
	piV, err := gg18.ProveZKV(p.context(p.i), p.bigVi, p.bigR, p.si, p.li, rand.Reader)
	if err != nil {
		return p.wrap(6, fmt.Errorf("NewZKVProof(bigVi, bigR, si, li): %w", err))
	}
	p.out <- signing.NewSignRound6Message(p.self, p.dPower, p.piAi, piV)
	return nil
}

// round7 checks the others' V_j, A_j and commits to U_i = ρ_i·V and
// T_i = l_i·A, V = −m·G − r·Y + Σ V_j, A = Σ A_j.
//
// The others' proofs are checked in one batch (gg18.VerifySchnorrBatch);
// only if it fails are they checked one by one with tss-lib's Verify, to
// name the member whose proof is wrong. V and A are sums of public values
// and use variable-time arithmetic; ρ_i and l_i multiply in constant time.
func (p *engineParty) round7() *tsslib.Error {
	ec := curve
	// zk[k] and zkv[k] are member who[k]'s proofs of A_j and V_j.
	var zk []gg18.ZKClaim
	var zkv []gg18.ZKVClaim
	var who []int
	for j := range p.ids {
		if j == p.i {
			continue
		}
		ctxJ := p.context(j)
		r5 := p.msgs[slotR5][j].Content().(*signing.SignRound5Message)
		r6 := p.msgs[slotR6][j].Content().(*signing.SignRound6Message)
		cmt := commitments.HashCommitDecommit{C: r5.UnmarshalCommitment(), D: r6.UnmarshalDeCommitment()}
		ok, values := cmt.DeCommit()
		if !ok || len(values) != 4 {
			return p.wrap(7, errors.New("de-commitment for bigVj and bigAj failed"), j)
		}
		vj, err := crypto.NewECPoint(ec, values[0], values[1])
		if err != nil {
			return p.wrap(7, fmt.Errorf("NewECPoint(bigVj): %w", err), j)
		}
		aj, err := crypto.NewECPoint(ec, values[2], values[3])
		if err != nil {
			return p.wrap(7, fmt.Errorf("NewECPoint(bigAj): %w", err), j)
		}
		pfA, err := r6.UnmarshalZKProof(ec)
		if err != nil {
			return p.wrap(7, errors.New("schnorr verify for Aj failed"), j)
		}
		pfV, err := r6.UnmarshalZKVProof(ec)
		if err != nil {
			return p.wrap(7, errors.New("vverify for Vj failed"), j)
		}
		zk = append(zk, gg18.ZKClaim{Session: ctxJ, X: aj, Proof: pfA})
		zkv = append(zkv, gg18.ZKVClaim{Session: ctxJ, V: vj, R: p.bigR, Proof: pfV})
		who = append(who, j)
	}
	ok, err := gg18.VerifySchnorrBatch(zk, zkv, rand.Reader)
	if err != nil {
		return p.wrap(7, err)
	}
	if !ok {
		for k, j := range who {
			if a := zk[k]; !a.Proof.Verify(a.Session, a.X) {
				return p.wrap(7, errors.New("schnorr verify for Aj failed"), j)
			}
			if v := zkv[k]; !v.Proof.Verify(v.Session, v.V, v.R) {
				return p.wrap(7, errors.New("vverify for Vj failed"), j)
			}
		}
		// Every proof passed on its own: the batch is only a shortcut.
	}
	// Y is the same in every session of this key: −r·Y uses its table.
	y, err := p256.Table(p.keys.ECDSAPub.X(), p.keys.ECDSAPub.Y())
	if err != nil {
		return p.wrap(7, fmt.Errorf("public key: %w", err))
	}
	a, err := p256.FromAffine(p.bigAi.X(), p.bigAi.Y())
	if err != nil {
		return p.wrap(7, fmt.Errorf("A_i: %w", err))
	}
	modQ := common.ModInt(ec.Params().N)
	V := p256.Add(y.Mult(modQ.Sub(big.NewInt(0), p.rx)), p256.ScalarBaseMult(modQ.Sub(big.NewInt(0), p.m)))
	V = p256.Add(V, p.pointVi)
	for k, j := range who {
		vj, err := p256.FromAffine(zkv[k].V.X(), zkv[k].V.Y())
		if err != nil {
			return p.wrap(7, fmt.Errorf("bigVj: %w", err), j)
		}
		aj, err := p256.FromAffine(zk[k].X.X(), zk[k].X.Y())
		if err != nil {
			return p.wrap(7, fmt.Errorf("bigAj: %w", err), j)
		}
		V, a = p256.Add(V, vj), p256.Add(a, aj)
	}
	ux, uy := affineOrZero(p256.ScalarMult(V, p.roi))
	tx, ty := affineOrZero(p256.ScalarMult(a, p.li))
	p.ui = crypto.NewECPointNoCurveCheck(ec, ux, uy)
	p.ti = crypto.NewECPointNoCurveCheck(ec, tx, ty)
	cmt := commitments.NewHashCommitment(rand.Reader, ux, uy, tx, ty)
	p.dTelda = cmt.D
	p.out <- signing.NewSignRound7Message(p.self, cmt.C)
	return nil
}

// affineOrZero is p's affine coordinates, with the point at infinity as
// (0, 0): crypto/elliptic's encoding, which tss-lib commits to.
func affineOrZero(p *p256.Point) (x, y *big.Int) {
	x, y, err := p256.Affine(p)
	if err != nil {
		return new(big.Int), new(big.Int)
	}
	return x, y
}

// round8 opens U_i and T_i.
func (p *engineParty) round8() *tsslib.Error {
	p.out <- signing.NewSignRound8Message(p.self, p.dTelda)
	return nil
}

// round9 checks Σ U_j = Σ T_j, which holds only if the s_j will add up to a
// valid signature, and then releases s_i.
func (p *engineParty) round9() *tsslib.Error {
	u, err := fromAffineOrZero(p.ui.X(), p.ui.Y())
	if err != nil {
		return p.wrap(9, fmt.Errorf("U_i: %w", err))
	}
	t, err := fromAffineOrZero(p.ti.X(), p.ti.Y())
	if err != nil {
		return p.wrap(9, fmt.Errorf("T_i: %w", err))
	}
	for j := range p.ids {
		if j == p.i {
			continue
		}
		r7 := p.msgs[slotR7][j].Content().(*signing.SignRound7Message)
		r8 := p.msgs[slotR8][j].Content().(*signing.SignRound8Message)
		cmt := commitments.HashCommitDecommit{C: r7.UnmarshalCommitment(), D: r8.UnmarshalDeCommitment()}
		// tss-lib checks !ok && len != 4, accepting an opening that fails;
		// here either failure refuses it.
		ok, values := cmt.DeCommit()
		if !ok || len(values) != 4 {
			return p.wrap(9, errors.New("de-commitment for Uj and Tj failed"), j)
		}
		// tss-lib adds these with crypto/elliptic, which panics on a point
		// off the curve; here that is member j's fault, said as such.
		uj, err := fromAffineOrZero(values[0], values[1])
		if err != nil {
			return p.wrap(9, fmt.Errorf("U_j: %w", err), j)
		}
		tj, err := fromAffineOrZero(values[2], values[3])
		if err != nil {
			return p.wrap(9, fmt.Errorf("T_j: %w", err), j)
		}
		u, t = p256.Add(u, uj), p256.Add(t, tj)
	}
	if !p256.Equal(u, t) {
		return p.wrap(9, errors.New("U doesn't equal T"), p.i)
	}
	p.out <- signing.NewSignRound9Message(p.self, p.si)
	return nil
}

// fromAffineOrZero reads crypto/elliptic's encoding of a point, where
// (0, 0) is the point at infinity (affineOrZero's inverse).
func fromAffineOrZero(x, y *big.Int) (*p256.Point, error) {
	if x != nil && y != nil && x.Sign() == 0 && y.Sign() == 0 {
		return p256.NewPoint(), nil
	}
	return p256.FromAffine(x, y)
}

// finalize adds the s_j and normalizes s to the lower half as tss-lib does.
// It does not verify the signature: both sessions that receive it
// (SignSession.Run, PresignSession.loop) verify it against the share's
// public key and the digest before it leaves the package, and checking
// twice would cost every signature one more verification.
func (p *engineParty) finalize() *tsslib.Error {
	ec := curve
	q := ec.Params().N
	modQ := common.ModInt(q)
	sumS := new(big.Int).Set(p.si)
	for j := range p.ids {
		if j == p.i {
			continue
		}
		sumS = modQ.Add(sumS, p.msgs[slotR9][j].Content().(*signing.SignRound9Message).UnmarshalS())
	}
	recid := 0
	if p.rx.Cmp(q) > 0 {
		recid = 2
	}
	if p.ry.Bit(0) != 0 {
		recid |= 1
	}
	if sumS.Cmp(new(big.Int).Rsh(q, 1)) > 0 {
		sumS.Sub(q, sumS)
		recid ^= 1
	}
	size := (ec.Params().BitSize + 7) / 8
	data := &common.SignatureData{
		R:                 p.rx.FillBytes(make([]byte, size)),
		S:                 sumS.FillBytes(make([]byte, size)),
		SignatureRecovery: []byte{byte(recid)},
		M:                 p.m.FillBytes(make([]byte, size)),
	}
	data.Signature = append(append([]byte{}, data.R...), data.S...)
	p.destroy()
	p.end <- data
	return nil
}

// destroy clears the per-signature secrets (what math/big lets us clear;
// the rest is garbage once the party is dropped).
func (p *engineParty) destroy() {
	for _, x := range []*big.Int{p.k, p.gamma, p.w, p.sigma, p.theta, p.si, p.li, p.roi, p.m} {
		if x != nil {
			x.SetInt64(0)
		}
	}
	p.betas, p.vs = nil, nil
}
