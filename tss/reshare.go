package tss

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"time"

	"github.com/bnb-chain/tss-lib/v2/crypto"
	"github.com/bnb-chain/tss-lib/v2/ecdsa/keygen"
	"github.com/bnb-chain/tss-lib/v2/ecdsa/resharing"
	tsslib "github.com/bnb-chain/tss-lib/v2/tss"
)

// Resharing deals new shares of an existing key without assembling it: an
// old committee (t+1 or more current holders) deals fresh shares of the same
// secret to a new committee with its own (t', n'). The public key, and so the
// key id and every certificate, stays the same; the old shares do not
// combine with the new ones. One ceremony serves:
//
//   - refresh: same parties, same (t, n), so a share stolen before the
//     refresh is worth nothing after it (once the old shares are deleted);
//   - a change of (t, n), such as (1,2) to (2,3);
//   - replacing a lost node: the survivors deal to themselves and a newcomer;
//   - import (import.go): a one-party old committee holding a whole key.
//
// How a node in both committees takes part. tss-lib runs the committees as
// separate parties and tells them apart by party key, so a node in both runs
// two parties, which need two keys. The new-committee party keeps
// partyKey(name): it becomes the new share's evaluation point, which every
// later signing session derives from the name. The old-committee party runs
// under oldCommitteeKey(name) and rescales its share to that key (see
// oldCommitteeShare), so nothing else about shares or signing changes.
//
// Both parties live in one ReshareSession, and the transport still carries
// node names only, as in keygen and signing: tss-lib fixes, for each
// resharing message type, which committee sends it and which receives it
// (reshareRouteOf), so the session routes a delivered message to its party
// by type, and refuses, naming the sender, a message whose sender is not in
// the committee that sends that type. Messages between a node's own two
// parties never leave the session.

// ReshareConfig describes one resharing ceremony. Every participant must run
// it with the same values: the coordinator announces them.
type ReshareConfig struct {
	// PublicKey is the key being reshared. Every new-committee member checks
	// each old member's claim, and its own new share, against it.
	PublicKey *ecdsa.PublicKey
	// OldParties are the current holders that deal: at least OldThreshold+1
	// of the key's parties. Every one listed must take part.
	OldParties []string
	// OldThreshold is the key's current t. It is 0 only for an import,
	// whose one old party holds the whole key (see NewImportSession).
	OldThreshold int
	// NewParties are the holders after the ceremony; NewThreshold is their
	// t: any NewThreshold+1 of them sign.
	NewParties   []string
	NewThreshold int
}

// validate checks what every participant can check alone.
func (c *ReshareConfig) validate() error {
	if c.PublicKey == nil || c.PublicKey.Curve != curve || !curve.IsOnCurve(c.PublicKey.X, c.PublicKey.Y) {
		return errors.New("public key missing or not on P-256")
	}
	if err := distinctNames(c.OldParties); err != nil {
		return fmt.Errorf("old committee: %w", err)
	}
	if err := distinctNames(c.NewParties); err != nil {
		return fmt.Errorf("new committee: %w", err)
	}
	switch {
	case c.OldThreshold < 0:
		return fmt.Errorf("old threshold %d is negative", c.OldThreshold)
	case c.OldThreshold == 0 && len(c.OldParties) != 1:
		return fmt.Errorf("old threshold 0 is an import, with one old party; got %v", c.OldParties)
	case len(c.OldParties) < c.OldThreshold+1:
		return fmt.Errorf("old committee %v: a key with t=%d needs %d of its holders to deal", c.OldParties, c.OldThreshold, c.OldThreshold+1)
	case len(c.NewParties) < 2:
		return fmt.Errorf("new committee %v: need at least 2 parties", c.NewParties)
	case c.NewThreshold < 1 || c.NewThreshold >= len(c.NewParties):
		return fmt.Errorf("new threshold %d with %d parties: want 1 ≤ t < n (t+1 of n sign)", c.NewThreshold, len(c.NewParties))
	}
	return nil
}

func distinctNames(names []string) error {
	if len(names) == 0 {
		return errors.New("no parties")
	}
	seen := make(map[string]bool, len(names))
	for _, n := range names {
		if n == "" {
			return errors.New("empty party name")
		}
		if seen[n] {
			return fmt.Errorf("party %q named twice", n)
		}
		seen[n] = true
	}
	return nil
}

// ReshareSession is one node's part in a resharing (or an import): its
// old-committee party, its new-committee party, or both.
type ReshareSession struct {
	r        *runner
	pair     *resharePair
	cfg      ReshareConfig
	newNames []string // tss-lib's order, which the new share records
	// dealt is this node's rescaled old share while the session runs;
	// Run zeroes it (tss-lib zeroes it too, but only on success).
	dealt *big.Int
}

// NewReshareSession prepares this node's part of a resharing. share is the
// node's current share of cfg.PublicKey, required when self is in the old
// committee (ignored otherwise); preParams are the node's own pre-parameters,
// required when self is in the new committee. The share is not modified:
// after the ceremony succeeded everywhere, the caller replaces it (see
// Store.Stage and Store.Commit), or deletes it if self left the committee.
func NewReshareSession(cfg ReshareConfig, self string, share *Share, preParams *PreParams, outbox Outbox) (*ReshareSession, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("reshare: %w", err)
	}
	var input *keygen.LocalPartySaveData
	var dealt *big.Int
	if slices.Contains(cfg.OldParties, self) {
		if cfg.OldThreshold == 0 {
			return nil, fmt.Errorf("reshare: old threshold 0 is an import; the importer runs NewImportSession")
		}
		if share == nil {
			return nil, fmt.Errorf("reshare: %s is in the old committee %v but has no share of the key", self, cfg.OldParties)
		}
		id := KeyIDOf(cfg.PublicKey)
		switch {
		case !share.PublicKey().Equal(cfg.PublicKey):
			return nil, fmt.Errorf("reshare key %s: this node's share is of key %s", id, share.KeyID())
		case share.Self != self:
			return nil, fmt.Errorf("reshare key %s: share belongs to %q, not %q", id, share.Self, self)
		case share.Threshold != cfg.OldThreshold:
			return nil, fmt.Errorf("reshare key %s: old threshold %d, but the share says %d", id, cfg.OldThreshold, share.Threshold)
		}
		for _, p := range cfg.OldParties {
			if !slices.Contains(share.Parties, p) {
				return nil, fmt.Errorf("reshare key %s: old committee member %q holds no share (holders %v)", id, p, share.Parties)
			}
		}
		var err error
		input, dealt, err = oldCommitteeShare(share, cfg.OldParties)
		if err != nil {
			return nil, fmt.Errorf("reshare key %s: %w", id, err)
		}
	}
	s, err := newReshareSession("reshare", cfg, self, input, preParams, outbox)
	if err != nil {
		if dealt != nil {
			zeroInt(dealt)
		}
		return nil, err
	}
	s.dealt = dealt
	return s, nil
}

// newReshareSession builds the session; input is the old-committee party's
// save data when self deals (nil otherwise).
func newReshareSession(kind string, cfg ReshareConfig, self string, input *keygen.LocalPartySaveData, preParams *PreParams, outbox Outbox) (*ReshareSession, error) {
	inOld, inNew := slices.Contains(cfg.OldParties, self), slices.Contains(cfg.NewParties, self)
	if !inOld && !inNew {
		return nil, fmt.Errorf("%s: %s is in neither the old committee %v nor the new %v", kind, self, cfg.OldParties, cfg.NewParties)
	}
	if inNew && (preParams == nil || !preParams.p.ValidateWithProof()) {
		return nil, fmt.Errorf("%s: %s is in the new committee and needs its pre-parameters (missing or invalid)", kind, self)
	}
	union := slices.Clone(cfg.OldParties)
	for _, n := range cfg.NewParties {
		if !slices.Contains(union, n) {
			union = append(union, n)
		}
	}
	m, err := newMembers(union)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", kind, err)
	}
	r, err := newRunner(kind, self, m, cfg.NewThreshold, outbox)
	if err != nil {
		return nil, err
	}
	// The runner's own party slot is the pair; messages between the pair's
	// parties go straight back into the runner's inbox.
	r.outbox = &reshareOutbox{r: r, next: outbox, loopback: inOld && inNew}

	oldIDs := committeeIDs(cfg.OldParties, oldCommitteeKey, " (old)")
	newIDs := committeeIDs(cfg.NewParties, partyKey, "")
	oldCtx, newCtx := tsslib.NewPeerContext(oldIDs), tsslib.NewPeerContext(newIDs)
	params := func(pid *tsslib.PartyID) *tsslib.ReSharingParameters {
		return tsslib.NewReSharingParameters(curve, oldCtx, newCtx, pid, len(oldIDs), cfg.OldThreshold, len(newIDs), cfg.NewThreshold)
	}
	pub, err := crypto.NewECPoint(curve, cfg.PublicKey.X, cfg.PublicKey.Y)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", kind, err)
	}
	p := &resharePair{
		self:   self,
		oldIDs: byName(oldIDs),
		newIDs: byName(newIDs),
		pub:    pub,
		end:    make(chan reshareOutcome, 1),
	}
	if inOld {
		if input == nil {
			return nil, fmt.Errorf("%s: %s is in the old committee but has nothing to deal", kind, self)
		}
		p.oldEnd = make(chan *keygen.LocalPartySaveData, 1)
		p.old = resharing.NewLocalParty(params(p.oldIDs[self]), *input, r.out, p.oldEnd)
	}
	if inNew {
		save := keygen.NewLocalPartySaveData(len(newIDs))
		save.LocalPreParams = preParams.p
		p.newEnd = make(chan *keygen.LocalPartySaveData, 1)
		p.new = resharing.NewLocalParty(params(p.newIDs[self]), save, r.out, p.newEnd)
	}
	r.party = p
	newNames := make([]string, len(newIDs))
	for i, id := range newIDs {
		newNames[i] = id.Id
	}
	return &ReshareSession{r: r, pair: p, cfg: cfg, newNames: newNames}, nil
}

// Deliver hands the session a message from another participant. from must
// be the node name the transport authenticated; the message's type says
// which of this node's parties it is for. It does not block.
func (s *ReshareSession) Deliver(from string, broadcast bool, payload []byte) error {
	return s.r.deliver(from, broadcast, payload)
}

// Run drives the ceremony to its end. It returns this node's new share when
// the node is in the new committee, after checking it is a share of
// cfg.PublicKey; a node only in the old committee gets (nil, nil) once every
// new member acknowledged its deal.
//
// Success here is one node's view: the ceremony succeeded only if every new
// member's Run did. Until the caller knows that, it must keep the old share
// (stage the new one with Store.Stage, then Store.Commit everywhere).
func (s *ReshareSession) Run(ctx context.Context) (*Share, error) {
	defer func() {
		if s.dealt != nil {
			zeroInt(s.dealt)
		}
	}()
	out, err := run(ctx, s.r, s.pair.end)
	if err != nil {
		return nil, err
	}
	if out.save == nil {
		return nil, nil
	}
	fail := func(err error) (*Share, error) {
		return nil, &SessionError{Kind: s.r.kind, Round: 5, Err: err}
	}
	share, err := newShare(s.cfg.NewThreshold, s.newNames, s.r.self, *out.save)
	if err != nil {
		return fail(fmt.Errorf("new share: %w", err))
	}
	if !share.PublicKey().Equal(s.cfg.PublicKey) {
		return fail(fmt.Errorf("new share is of key %s, not %s", share.KeyID(), KeyIDOf(s.cfg.PublicKey)))
	}
	i := slices.Index(s.newNames, s.r.self)
	if x := crypto.ScalarBaseMult(curve, out.save.Xi); !x.Equals(out.save.BigXj[i]) {
		return fail(errors.New("new share does not match its own public verification share"))
	}
	return share, nil
}

// Abort ends the session with err (Kind is filled in): for misbehaviour the
// transport detects, such as an equivocating member.
func (s *ReshareSession) Abort(err *SessionError) { s.r.abort(err) }

// SetStallTimeout makes Run fail, blaming the members it waits for, when no
// message arrives for d. Call it before Run. New members spend seconds on
// their proofs in rounds 2 and 4, so d must be well above a signing
// session's.
func (s *ReshareSession) SetStallTimeout(d time.Duration) { s.r.stall = d }

// committeeIDs makes a committee's tss-lib party ids, sorted. Id is the
// node name in both committees, so culprits and recipients come out as node
// names; the key tells the committees apart.
func committeeIDs(names []string, key func(string) *big.Int, moniker string) tsslib.SortedPartyIDs {
	ids := make(tsslib.UnSortedPartyIDs, len(names))
	for i, n := range names {
		ids[i] = tsslib.NewPartyID(n, n+moniker, key(n))
	}
	return tsslib.SortPartyIDs(ids)
}

func byName(ids tsslib.SortedPartyIDs) map[string]*tsslib.PartyID {
	m := make(map[string]*tsslib.PartyID, len(ids))
	for _, id := range ids {
		m[id.Id] = id
	}
	return m
}

// oldCommitteeKey is the tss-lib party key of a node's old-committee party
// in a resharing: distinct from partyKey(name), which its new-committee
// party needs, because tss-lib decides a party's committee by its key.
func oldCommitteeKey(name string) *big.Int {
	h := sha256.Sum256([]byte("tkeyless reshare old committee key v1\x00" + name))
	k := new(big.Int).SetBytes(h[:])
	k.Mod(k, curve.Params().N)
	if k.Sign() == 0 {
		k.SetInt64(2)
	}
	return k
}

// oldCommitteeShare builds the save data tss-lib's old-committee party
// reads (Xi, ShareID, Ks, BigXj, the range-proof parameters for its session
// id, ECDSAPub), and returns the secret in it so the caller can zero it.
//
// tss-lib's round 1 turns Xi into the additive share w = λ·Xi, λ being the
// Lagrange coefficient at zero over the old committee's party keys. Those
// run as oldCommitteeKey(name), not the share's evaluation points, so Xi is
// rescaled first: Xi' = Xi·λ/λ', with λ over the real points and λ' over the
// party keys, which tss-lib turns back into w. Only this node's own share is
// involved; nothing is combined.
func oldCommitteeShare(share *Share, oldParties []string) (*keygen.LocalPartySaveData, *big.Int, error) {
	ids := committeeIDs(oldParties, oldCommitteeKey, " (old)")
	in := keygen.NewLocalPartySaveData(len(ids))
	realKs := make([]*big.Int, len(ids))
	self := -1
	for j, id := range ids {
		k := slices.Index(share.Parties, id.Id)
		if k < 0 || k >= len(share.data.Ks) {
			return nil, nil, fmt.Errorf("old committee member %q holds no share", id.Id)
		}
		if id.Id == share.Self {
			self = j
		}
		realKs[j] = share.data.Ks[k]
		in.Ks[j] = id.KeyInt()
		in.BigXj[j] = share.data.BigXj[k]
		in.NTildej[j], in.H1j[j], in.H2j[j] = share.data.NTildej[k], share.data.H1j[k], share.data.H2j[k]
		in.PaillierPKs[j] = share.data.PaillierPKs[k]
	}
	if self < 0 {
		return nil, nil, fmt.Errorf("%s is not in the old committee %v", share.Self, oldParties)
	}
	lambda, err := lagrangeAtZero(self, realKs)
	if err != nil {
		return nil, nil, err
	}
	lambdaRun, err := lagrangeAtZero(self, in.Ks)
	if err != nil {
		return nil, nil, err
	}
	q := curve.Params().N
	inv := new(big.Int).ModInverse(lambdaRun, q)
	if inv == nil {
		return nil, nil, errors.New("old committee party keys give no inverse")
	}
	xi := new(big.Int).Mul(share.data.Xi, lambda)
	xi.Mul(xi, inv).Mod(xi, q)
	zeroInt(lambda)
	in.Xi = xi
	in.ShareID = in.Ks[self]
	in.ECDSAPub = share.data.ECDSAPub
	return &in, xi, nil
}

// lagrangeAtZero is λ_i = Π_{j≠i} k_j / (k_j − k_i) mod q.
func lagrangeAtZero(i int, ks []*big.Int) (*big.Int, error) {
	q := curve.Params().N
	num, den := big.NewInt(1), big.NewInt(1)
	for j, k := range ks {
		if j == i {
			continue
		}
		num.Mul(num, k).Mod(num, q)
		d := new(big.Int).Sub(k, ks[i])
		den.Mul(den, d).Mod(den, q)
	}
	inv := new(big.Int).ModInverse(den, q)
	if inv == nil {
		return nil, errors.New("two parties share an evaluation point")
	}
	return num.Mul(num, inv).Mod(num, q), nil
}

// zeroInt overwrites a secret's words before dropping it. Best effort: Go
// may have copied them while computing.
func zeroInt(x *big.Int) {
	clear(x.Bits())
	x.SetInt64(0)
}

// committee says which committee a party is in.
type committee int

const (
	oldCommittee committee = iota
	newCommittee
)

func (c committee) String() string {
	if c == oldCommittee {
		return "old"
	}
	return "new"
}

// reshareRoute is what tss-lib fixes for one resharing message type.
type reshareRoute struct {
	from         committee
	toOld, toNew bool
	broadcast    bool
}

// reshareRouteOf returns the route of a resharing message, from tss-lib's
// rounds (ecdsa/resharing/round_*.go): the old committee deals (rounds 1
// and 3), the new committee exchanges its Paillier keys and proofs (rounds 2
// and 4) and acknowledges to the old one.
func reshareRouteOf(content tsslib.MessageContent) (reshareRoute, bool) {
	switch content.(type) {
	case *resharing.DGRound1Message: // commitment to the dealt polynomial
		return reshareRoute{from: oldCommittee, toNew: true, broadcast: true}, true
	case *resharing.DGRound2Message1: // Paillier key, range-proof parameters, proofs
		return reshareRoute{from: newCommittee, toNew: true, broadcast: true}, true
	case *resharing.DGRound2Message2: // ack to the old committee
		return reshareRoute{from: newCommittee, toOld: true, broadcast: true}, true
	case *resharing.DGRound3Message1: // one new member's share
		return reshareRoute{from: oldCommittee, toNew: true}, true
	case *resharing.DGRound3Message2: // de-commitment
		return reshareRoute{from: oldCommittee, toNew: true, broadcast: true}, true
	case *resharing.DGRound4Message1: // factorization proof, to one new member
		return reshareRoute{from: newCommittee, toNew: true}, true
	case *resharing.DGRound4Message2: // done, to both committees
		return reshareRoute{from: newCommittee, toOld: true, toNew: true, broadcast: true}, true
	}
	return reshareRoute{}, false
}

type reshareOutcome struct {
	save *keygen.LocalPartySaveData // nil for a node only in the old committee
}

// resharePair is the one or two tss-lib parties a node runs in a
// resharing, behind the runner's single-party face. The runner calls it
// from one goroutine.
type resharePair struct {
	self           string
	old, new       tsslib.Party // nil when the node is not in that committee
	oldIDs, newIDs map[string]*tsslib.PartyID
	pub            *crypto.ECPoint

	oldEnd, newEnd chan *keygen.LocalPartySaveData
	oldDone        bool
	newSave        *keygen.LocalPartySaveData
	finished       bool
	end            chan reshareOutcome
}

func (p *resharePair) Start() *tsslib.Error {
	// The new party only waits in round 1; the old one deals at once.
	for _, party := range []tsslib.Party{p.new, p.old} {
		if party != nil {
			if err := party.Start(); err != nil {
				return err
			}
		}
	}
	p.poll()
	return nil
}

// Update routes msg, which the runner parsed under the sender's node name,
// to the party or parties of this node it is for, re-addressed from the
// sender's party in the committee that sends its type.
func (p *resharePair) Update(msg tsslib.ParsedMessage) (bool, *tsslib.Error) {
	from := msg.GetFrom()
	refuse := func(format string, args ...any) (bool, *tsslib.Error) {
		return false, tsslib.NewError(fmt.Errorf(format, args...), resharing.TaskName, RoundOf(msg.Type()), p.selfID(), from)
	}
	route, ok := reshareRouteOf(msg.Content())
	if !ok {
		return refuse("%s is not a resharing message", msg.Type())
	}
	senders := p.oldIDs
	if route.from == newCommittee {
		senders = p.newIDs
	}
	sender, ok := senders[from.Id]
	if !ok {
		return refuse("%s sent %s, which only %s-committee members send", from.Id, msg.Type(), route.from)
	}
	if msg.IsBroadcast() != route.broadcast {
		return refuse("%s arrived with broadcast=%t", msg.Type(), msg.IsBroadcast())
	}
	if err := p.check(msg); err != nil {
		return refuse("%v", err)
	}
	var to []tsslib.Party
	if from.Id == p.self {
		// From this node's other party: only the other committee receives.
		switch {
		case route.from == oldCommittee && route.toNew && p.new != nil:
			to = append(to, p.new)
		case route.from == newCommittee && route.toOld && p.old != nil:
			to = append(to, p.old)
		default:
			return refuse("internal: %s from this node's %s-committee party has no local recipient", msg.Type(), route.from)
		}
	} else {
		if route.toOld && p.old != nil {
			to = append(to, p.old)
		}
		if route.toNew && p.new != nil {
			to = append(to, p.new)
		}
		if len(to) == 0 {
			return refuse("%s sent %s to %s, which has no party in the committee that receives it", from.Id, msg.Type(), p.self)
		}
	}
	// tss-lib reads the sender from the routing, not from the wire wrapper.
	routed := tsslib.NewMessage(tsslib.MessageRouting{From: sender, IsBroadcast: msg.IsBroadcast()}, msg.Content(), msg.WireMsg())
	for _, party := range to {
		if _, err := party.Update(routed); err != nil {
			return false, err
		}
	}
	p.poll()
	return true, nil
}

// check refuses what tss-lib v2.0.2 accepts but should not (see
// validate.go): a new member's Paillier or range-proof modulus that is not
// full size, which tss-lib's keygen checks but its resharing does not; a
// modulus proof whose W shares a factor with N; and, early, an old member
// dealing for another key than the one announced.
func (p *resharePair) check(msg tsslib.ParsedMessage) error {
	switch m := msg.Content().(type) {
	case *resharing.DGRound1Message:
		pub, err := m.UnmarshalECDSAPub(curve)
		if err != nil {
			return fmt.Errorf("reshare round 1: public key: %w", err)
		}
		if !pub.Equals(p.pub) {
			return errors.New("reshare round 1: dealing for another public key than the one being reshared")
		}
	case *resharing.DGRound2Message1:
		n := m.UnmarshalPaillierPK().N
		if err := checkModuli("reshare round 2", n, m.UnmarshalNTilde()); err != nil {
			return err
		}
		pf, err := m.UnmarshalModProof()
		if err != nil {
			return fmt.Errorf("reshare round 2: modulus proof: %w", err)
		}
		if n.Sign() <= 0 || pf.W == nil || new(big.Int).GCD(nil, nil, pf.W, n).Cmp(one) != 0 {
			return errors.New("reshare round 2: modulus proof W is not coprime to N")
		}
	}
	return nil
}

// poll notes which parties finished and, once all of this node's have,
// hands the outcome to the runner.
func (p *resharePair) poll() {
	if p.finished {
		return
	}
	if p.old != nil && !p.oldDone {
		select {
		case <-p.oldEnd: // an empty save: the old party keeps nothing
			p.oldDone = true
		default:
		}
	}
	if p.new != nil && p.newSave == nil {
		select {
		case s := <-p.newEnd:
			p.newSave = s
		default:
		}
	}
	if (p.old == nil || p.oldDone) && (p.new == nil || p.newSave != nil) {
		p.finished = true
		p.end <- reshareOutcome{save: p.newSave}
	}
}

// WaitingFor names the other nodes either party still waits for.
func (p *resharePair) WaitingFor() []*tsslib.PartyID {
	var out []*tsslib.PartyID
	seen := map[string]bool{p.self: true}
	for _, party := range []tsslib.Party{p.old, p.new} {
		if party == nil {
			continue
		}
		for _, id := range party.WaitingFor() {
			if !seen[id.Id] {
				seen[id.Id] = true
				out = append(out, id)
			}
		}
	}
	return out
}

func (p *resharePair) selfID() *tsslib.PartyID {
	if p.new != nil {
		return p.newIDs[p.self]
	}
	return p.oldIDs[p.self]
}

// reshareOutbox passes a resharing party's messages on: the rest go to the
// transport with each recipient node named once (tss-lib names a node twice
// when both its parties receive), and one naming this node goes back into
// the runner's inbox for its other party, if it has one. (tss-lib also
// addresses the round-4 acknowledgement to its sender, which needs nothing.)
type reshareOutbox struct {
	r        *runner
	next     Outbox
	loopback bool // this node runs a party in each committee
}

func (o *reshareOutbox) Send(ctx context.Context, m Outgoing) error {
	var to []string
	local := false
	for _, n := range m.To {
		switch {
		case n == o.r.self:
			local = o.loopback
		case !slices.Contains(to, n):
			to = append(to, n)
		}
	}
	if local {
		select {
		case o.r.inbox <- inbound{from: o.r.self, broadcast: m.Broadcast, payload: m.Payload}:
		case <-o.r.done:
			return ErrSessionClosed
		default:
			return errors.New("inbox full")
		}
	}
	if len(to) == 0 {
		return nil
	}
	m.To = to
	return o.next.Send(ctx, m)
}
