package node

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tkeyless/tkeyless/internal/authority"
	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/internal/pki"
	"github.com/tkeyless/tkeyless/tss"
)

// Resharing and import, as the cluster runs them.
//
// A resharing (tss/reshare.go) deals new shares of a key without
// assembling it. Switching to the new shares must happen everywhere or
// nowhere: an old share does not combine with a new one. So it runs in two
// phases. Each member runs its part and stages its new share beside the old
// one, which stays in use (tss.Store.Stage). A new member then signs a
// confirmation (its node key) naming the session and the new shares' public
// data (their fingerprint), and returns it. A member switches to its staged
// share (and a member leaving the committee deletes its old one) only on a
// commit carrying every new member's confirmation of the same fingerprint,
// which it checks itself: a commit proves itself, so it does not rest on
// the coordinator's word, and any member may pass it on.
//
// What a compromised coordinator could do before, tell one member to
// commit and another to discard, leaving the cluster with old and new
// shares that do not combine, it can no longer: a member that confirmed
// never discards on a node's word (only an admin's, `signer reshare
// discard`), and a member that holds a commit passes it to the others,
// which also ask each other (ReshareOutcome) until they have one. The worst
// a coordinator or member can do is keep a resharing from committing; the
// old shares then stay in use.
//
// A member remembers on disk which resharing it awaits the outcome of, and
// which sessions it confirmed or committed, so a restart between the phases
// loses nothing, and no session id is ever run twice.

// reshareStall is how long a resharing waits for any message before it
// blames the members it waits for: new members spend seconds on their
// Paillier proofs, more on a loaded node.
const reshareStall = 60 * time.Second

// finishTimeout bounds telling all members how a resharing ended; a member
// that cannot be told within it is reported as pending.
const finishTimeout = 30 * time.Second

// pendingReshare is a resharing this node finished its part of and awaits
// the outcome of.
type pendingReshare struct {
	Session     peerwire.SessionID `json:"session"`
	Coordinator string             `json:"coordinator"`
	// Staged says a new share waits in the store; otherwise the node left
	// the key's committee and deletes its share on commit.
	Staged bool      `json:"staged"`
	Since  time.Time `json:"since"`
	// Members are everyone in the session; NewParties and NewThreshold the
	// committee after it, as the admin's statement named them.
	Members      []string `json:"members"`
	NewParties   []string `json:"new_parties"`
	NewThreshold int      `json:"new_threshold"`
	// Confirmation is this node's own, when it is a new member.
	Confirmation *peerwire.ReshareConfirmation `json:"confirmation,omitempty"`
}

// pendingReshares is the set of resharings awaiting their outcome on this
// node, by key, kept in a small JSON file (nothing secret in it).
type pendingReshares struct {
	path string
	mu   sync.Mutex
	m    map[tss.KeyID]pendingReshare
}

func loadPendingReshares(dataDir string) (*pendingReshares, error) {
	p := &pendingReshares{path: filepath.Join(dataDir, "reshare-pending.json"), m: map[tss.KeyID]pendingReshare{}}
	var byHex map[string]pendingReshare
	if err := loadJSON(p.path, &byHex); err != nil {
		return nil, fmt.Errorf("pending resharings: %w", err)
	}
	for k, v := range byHex {
		id, err := tss.ParseKeyID(k)
		if err != nil {
			return nil, fmt.Errorf("read pending resharings %s: %w", p.path, err)
		}
		p.m[id] = v
	}
	return p, nil
}

// saveLocked writes the set; p.mu is held.
func (p *pendingReshares) saveLocked() error {
	byHex := map[string]pendingReshare{}
	for k, v := range p.m {
		byHex[k.String()] = v
	}
	return saveJSON(p.path, byHex)
}

func (p *pendingReshares) set(id tss.KeyID, r pendingReshare) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.m[id] = r
	return p.saveLocked()
}

func (p *pendingReshares) get(id tss.KeyID) (pendingReshare, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r, ok := p.m[id]
	return r, ok
}

func (p *pendingReshares) all() map[tss.KeyID]pendingReshare {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.m)
}

func (p *pendingReshares) clear(id tss.KeyID) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.m, id)
	return p.saveLocked()
}

// reshareRecord is what a node keeps of each resharing session it took
// part in: that it did (a session id is never prepared twice), its own
// confirmation, and the commit it applied, to hand to members that missed
// it.
type reshareRecord struct {
	Key          string                         `json:"key"`
	At           time.Time                      `json:"at"`
	Confirmation *peerwire.ReshareConfirmation  `json:"confirmation,omitempty"`
	Commit       *peerwire.FinishReshareRequest `json:"commit,omitempty"`
}

// reshareHistory is the node's reshareRecords by session, in
// data_dir/reshare-history.json; records older than reshareHistoryAge are
// dropped when it is loaded.
type reshareHistory struct {
	path string
	mu   sync.Mutex
	m    map[string]*reshareRecord
}

const reshareHistoryAge = 90 * 24 * time.Hour

func loadReshareHistory(dataDir string) (*reshareHistory, error) {
	h := &reshareHistory{path: filepath.Join(dataDir, "reshare-history.json"), m: map[string]*reshareRecord{}}
	if err := loadJSON(h.path, &h.m); err != nil {
		return nil, fmt.Errorf("resharing history: %w", err)
	}
	for s, r := range h.m {
		if time.Since(r.At) > reshareHistoryAge {
			delete(h.m, s)
		}
	}
	return h, nil
}

func (h *reshareHistory) get(session peerwire.SessionID) (reshareRecord, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r, ok := h.m[session.String()]
	if !ok {
		return reshareRecord{}, false
	}
	return *r, true
}

// update changes (or creates) session's record with f and saves.
func (h *reshareHistory) update(session peerwire.SessionID, key string, f func(*reshareRecord)) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	r, ok := h.m[session.String()]
	if !ok {
		r = &reshareRecord{Key: key, At: time.Now().UTC()}
		h.m[session.String()] = r
	}
	f(r)
	return saveJSON(h.path, h.m)
}

// union is the old committee followed by the new members not in it.
func union(old, new []string) []string {
	u := slices.Clone(old)
	for _, n := range new {
		if !slices.Contains(u, n) {
			u = append(u, n)
		}
	}
	return u
}

// prepareReshare sets up this node's part of a resharing that coordinator
// runs, after checking it on its own. importKey is the whole key when this
// node is the coordinator of an import, nil otherwise.
func (n *Node) prepareReshare(coordinator string, id peerwire.SessionID, req *peerwire.ReshareRequest, importKey *ecdsa.PrivateKey) error {
	self := n.cfg.Name
	keyID, err := tss.ParseKeyID(req.Key)
	if err != nil {
		return err
	}
	pubAny, err := x509.ParsePKIXPublicKey(req.PublicKey)
	if err != nil {
		return fmt.Errorf("reshare key %s: public key: %w", keyID, err)
	}
	pub, ok := pubAny.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() || tss.KeyIDOf(pub) != keyID {
		return fmt.Errorf("reshare key %s: the public key sent is not that key's", keyID)
	}
	members := union(req.OldParties, req.NewParties)
	if !slices.Contains(members, self) || !slices.Contains(members, coordinator) {
		return fmt.Errorf("reshare key %s: committees %v → %v must include this node (%s) and the coordinator (%s)", keyID, req.OldParties, req.NewParties, self, coordinator)
	}
	if req.NewThreshold < 1 {
		// t = 0 would let one node sign alone: the one thing tkeyless exists to prevent.
		return fmt.Errorf("reshare key %s: new threshold %d: at least two parties must sign (t ≥ 1)", keyID, req.NewThreshold)
	}
	if _, ran := n.reshares.get(id); ran {
		return fmt.Errorf("reshare key %s: session %s already ran here: replay", keyID, id)
	}
	st := peerwire.ReshareStatement(req.Key, req.NewParties, req.NewThreshold)
	if req.Import {
		st = peerwire.ImportStatement(req.Key, req.NewParties, req.NewThreshold)
	}
	claims, err := n.verifier.VerifyStatement(req.Authority, st, authority.Once)
	if err == nil {
		// A ceremony needs an admin trusted now: not one revoked here.
		err = n.refuseRevoked(claims.Identity.Cert, "statement")
	}
	if err != nil {
		return fmt.Errorf("%s of key %s: %w: %w", st.Kind, keyID, errUnauthorized, err)
	}
	n.log.Info().Str("session", id.String()).Str("key", keyID.String()).Str("coordinator", coordinator).Str("admin", claims.Identity.Name).
		Strs("new_parties", req.NewParties).Int("new_t", req.NewThreshold).Bool("import", req.Import).Msg("resharing authorized by an admin")
	for _, p := range req.NewParties {
		if _, ok := n.peers[p]; !ok && p != self {
			return fmt.Errorf("reshare key %s: new party %q is not a node this one knows", keyID, p)
		}
	}
	inOld, inNew := slices.Contains(req.OldParties, self), slices.Contains(req.NewParties, self)
	var share *tss.Share
	if req.Import {
		if !slices.Equal(req.OldParties, []string{coordinator}) || req.OldThreshold != 0 {
			return fmt.Errorf("import of key %s: the coordinator (%s) must be the one dealer, with t=0; got %v t=%d", keyID, coordinator, req.OldParties, req.OldThreshold)
		}
		if (coordinator == self) != (importKey != nil) {
			return fmt.Errorf("import of key %s: only the node handed the key deals it", keyID)
		}
		if _, ok := n.share(keyID); ok {
			return fmt.Errorf("import of key %s: this node already holds a share of it", keyID)
		}
	} else if inOld {
		if share, ok = n.share(keyID); !ok {
			return fmt.Errorf("reshare key %s: this node is named a dealer but holds no share", keyID)
		}
	}
	if _, busy := n.pending.get(keyID); busy && (inNew || inOld) {
		return fmt.Errorf("reshare key %s: an earlier resharing of it still awaits its outcome here", keyID)
	}
	var pp *tss.PreParams
	if inNew {
		if pp, err = n.preParams.get(); err != nil {
			return err
		}
	}
	outbox := n.outbox(id, peerwire.KindReshare, req.Key, 0)
	var rs *tss.ReshareSession
	if importKey != nil {
		rs, err = tss.NewImportSession(importKey, self, req.NewParties, req.NewThreshold, pp, outbox)
	} else {
		cfg := tss.ReshareConfig{PublicKey: pub, OldParties: req.OldParties, OldThreshold: req.OldThreshold, NewParties: req.NewParties, NewThreshold: req.NewThreshold}
		rs, err = tss.NewReshareSession(cfg, self, share, pp, outbox)
	}
	if err != nil {
		return err
	}
	rs.SetStallTimeout(reshareStall)
	return n.sessions.add(&session{
		id: id, kind: peerwire.KindReshare, key: req.Key, members: members, coordinator: coordinator, party: rs,
		run: func(ctx context.Context) (*peerwire.RunResponse, error) {
			newShare, err := rs.Run(ctx)
			// Whatever happens, this session id is spent here.
			if herr := n.reshares.update(id, req.Key, func(*reshareRecord) {}); herr != nil && err == nil {
				err = herr
			}
			if err != nil {
				return nil, err
			}
			pending := pendingReshare{Session: id, Coordinator: coordinator, Staged: newShare != nil, Since: time.Now().UTC(),
				Members: members, NewParties: slices.Clone(req.NewParties), NewThreshold: req.NewThreshold}
			resp := &peerwire.RunResponse{}
			if newShare != nil {
				if err := n.store.Stage(newShare); err != nil {
					return nil, err
				}
				conf, err := n.confirmReshare(id, req.Key, newShare.Fingerprint(), req.NewParties, req.NewThreshold)
				if err != nil {
					_ = n.store.Discard(keyID)
					return nil, err
				}
				pending.Confirmation = conf
				resp.PublicKey, resp.Fingerprint, resp.Confirmation = req.PublicKey, newShare.Fingerprint(), conf
			}
			if err := n.pending.set(keyID, pending); err != nil {
				return nil, err
			}
			if pending.Confirmation != nil {
				if err := n.reshares.update(id, req.Key, func(r *reshareRecord) { r.Confirmation = pending.Confirmation }); err != nil {
					return nil, err
				}
			}
			n.log.Info().Str("key", keyID.String()).Str("session", id.String()).Bool("new_share_staged", newShare != nil).
				Msg("resharing done here; awaiting a commit confirmed by every new member")
			return resp, nil
		},
	})
}

// Reshare coordinates a resharing of a key this node holds a share of:
// with an empty request, a refresh of every share (same parties, same t).
func (n *Node) Reshare(ctx context.Context, req *peerwire.ReshareCeremonyRequest) (*peerwire.ReshareCeremonyResponse, error) {
	keyID, err := tss.ParseKeyID(req.Key)
	if err != nil {
		return nil, err
	}
	share, ok := n.share(keyID)
	if !ok {
		return nil, fmt.Errorf("key %s: %w on this node; run the command on a node holding a share", keyID, ErrUnknownKey)
	}
	newParties := slices.Clone(req.NewParties)
	if len(newParties) == 0 {
		newParties = slices.Clone(share.Parties)
	}
	slices.Sort(newParties)
	newT := req.NewThreshold
	if newT == 0 {
		newT = share.Threshold
	}
	if newT < 1 || newT >= len(newParties) {
		return nil, fmt.Errorf("threshold %d with %d parties: want 1 ≤ t < n (t+1 of n sign)", newT, len(newParties))
	}
	dealers := slices.Clone(req.Dealers)
	if len(dealers) == 0 {
		var ok bool
		if dealers, ok = n.pickQuorum(share, nil); !ok {
			return nil, fmt.Errorf("key %s: not enough holders to deal", keyID)
		}
	}
	slices.Sort(dealers)
	pkix, err := x509.MarshalPKIXPublicKey(share.PublicKey())
	if err != nil {
		return nil, err
	}
	pr := &peerwire.PrepareRequest{
		Version: peerwire.Version,
		Session: peerwire.NewSessionID(),
		Kind:    peerwire.KindReshare,
		Reshare: &peerwire.ReshareRequest{
			Key: keyID.String(), PublicKey: pkix,
			OldParties: dealers, OldThreshold: share.Threshold,
			NewParties: newParties, NewThreshold: newT,
			Authority: req.Authority,
		},
	}
	// Holders that are not dealers and leave the committee are told too,
	// if they took part; those that did not keep a share of no use once
	// the others commit (say so to the operator).
	return n.runReshare(ctx, pr, keyID, nil)
}

// Import coordinates splitting a whole P-256 key into shares for the
// cluster: this node deals it as a one-party old committee and zeroes its
// copy. The key exists whole only in memory here, for the ceremony.
func (n *Node) Import(ctx context.Context, req *peerwire.ImportCeremonyRequest) (*peerwire.KeygenCeremonyResponse, error) {
	defer clear(req.PrivateKey)
	key, err := parseImportKey(req.PrivateKey)
	if err != nil {
		return nil, err
	}
	keyID := tss.KeyIDOf(&key.PublicKey)
	if _, ok := n.share(keyID); ok {
		return nil, fmt.Errorf("import: key %s is already in the cluster", keyID)
	}
	parties := slices.Clone(req.Parties)
	if len(parties) == 0 {
		parties = append(parties, n.cfg.Name)
		for _, p := range n.cfg.Peers {
			parties = append(parties, p.Name)
		}
	}
	slices.Sort(parties)
	if !slices.Contains(parties, n.cfg.Name) {
		return nil, fmt.Errorf("import: run it on one of the parties %v; this node (%s) is not one", parties, n.cfg.Name)
	}
	if req.Threshold < 1 || req.Threshold >= len(parties) {
		return nil, fmt.Errorf("threshold %d with %d parties: want 1 ≤ t < n (t+1 of n sign)", req.Threshold, len(parties))
	}
	pkix, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	pr := &peerwire.PrepareRequest{
		Version: peerwire.Version,
		Session: peerwire.NewSessionID(),
		Kind:    peerwire.KindReshare,
		Reshare: &peerwire.ReshareRequest{
			Key: keyID.String(), PublicKey: pkix,
			OldParties: []string{n.cfg.Name}, OldThreshold: 0,
			NewParties: parties, NewThreshold: req.Threshold,
			Import:    true,
			Authority: req.Authority,
		},
	}
	res, err := n.runReshare(ctx, pr, keyID, key)
	if err != nil {
		return nil, err
	}
	if len(res.Pending) > 0 {
		return nil, fmt.Errorf("import of key %s: shares made, but %v could not be told to commit; they will be told when reachable", keyID, res.Pending)
	}
	return &peerwire.KeygenCeremonyResponse{Key: keyID.String(), PublicKey: pkix}, nil
}

func parseImportKey(der []byte) (*ecdsa.PrivateKey, error) {
	var key any
	key, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		var ecErr error
		if key, ecErr = x509.ParseECPrivateKey(der); ecErr != nil {
			return nil, fmt.Errorf("import: private key is neither PKCS#8 (%v) nor SEC 1 (%v)", err, ecErr)
		}
	}
	k, ok := key.(*ecdsa.PrivateKey)
	if !ok || k.Curve != elliptic.P256() {
		return nil, fmt.Errorf("import: want an ECDSA P-256 private key, got %T", key)
	}
	return k, nil
}

// runReshare runs the ceremony, gathers every new member's confirmation,
// and tells every member the outcome: a commit with the confirmations as
// its proof, or, when they are not all there, a discard, which only the
// members that did not confirm act on.
func (n *Node) runReshare(ctx context.Context, pr *peerwire.PrepareRequest, keyID tss.KeyID, importKey *ecdsa.PrivateKey) (*peerwire.ReshareCeremonyResponse, error) {
	req := pr.Reshare
	ctx, cancel := context.WithTimeout(ctx, time.Duration(n.cfg.KeygenTimeout))
	defer cancel()
	members := union(req.OldParties, req.NewParties)
	start := time.Now()
	log := n.log.With().Str("key", keyID.String()).Str("session", pr.Session.String()).Logger()
	log.Info().Strs("dealers", req.OldParties).Int("old_t", req.OldThreshold).Strs("new_parties", req.NewParties).Int("new_t", req.NewThreshold).Bool("import", req.Import).Msg("resharing started")

	var mu sync.Mutex
	results := map[string]*peerwire.RunResponse{}
	prepareSelf := func() error {
		if importKey != nil {
			return n.prepareReshare(n.cfg.Name, pr.Session, req, importKey)
		}
		return n.prepare(n.cfg.Name, pr)
	}
	own, _, runErr := n.runSessionWith(ctx, pr, members, prepareSelf, func(m string, r *peerwire.RunResponse) {
		mu.Lock()
		results[m] = r
		mu.Unlock()
	})
	if own != nil {
		results[n.cfg.Name] = own
	}
	fctx, fcancel := context.WithTimeout(context.WithoutCancel(ctx), finishTimeout)
	defer fcancel()
	finish, proofErr := n.reshareProof(fctx, pr.Session, req, results)
	if runErr == nil {
		runErr = proofErr
	}
	if finish == nil {
		// Members that confirmed keep their staged share until a commit
		// reaches them or an admin discards it; the rest keep their old
		// share, which is what the cluster signs with.
		finish = &peerwire.FinishReshareRequest{Version: peerwire.Version, Session: pr.Session, Key: keyID.String()}
	}
	// New members commit first: a member leaving the committee deletes its
	// share only once every new member holds its new one.
	var newMembers, leaving []string
	for _, m := range members {
		if slices.Contains(req.NewParties, m) {
			newMembers = append(newMembers, m)
		} else {
			leaving = append(leaving, m)
		}
	}
	done, pending := n.finishReshare(fctx, finish, newMembers)
	if !finish.Commit || len(pending) == 0 {
		d, p := n.finishReshare(fctx, finish, leaving)
		done, pending = append(done, d...), append(pending, p...)
	} else {
		pending = append(pending, leaving...)
	}
	if !finish.Commit {
		n.metrics.aborts.WithLabelValues("reshare").Inc()
		log.Warn().Err(runErr).Strs("told", done).Strs("keep_staged_share", pending).Msg("resharing failed; the old shares stay in use")
		msg := fmt.Errorf("reshare key %s: %w (the old shares stay in use)", keyID, runErr)
		if len(pending) > 0 {
			msg = fmt.Errorf("%w; %v confirmed and keep their new share staged until a commit reaches them or an admin runs `signer reshare discard --key %s`", msg, pending, keyID)
		}
		return nil, msg
	}
	log.Info().Strs("committed", done).Strs("pending", pending).Int64("dur_ms", time.Since(start).Milliseconds()).Msg("resharing committed")
	return &peerwire.ReshareCeremonyResponse{
		Key: keyID.String(), Session: pr.Session.String(),
		OldParties: req.OldParties, OldThreshold: req.OldThreshold,
		NewParties: req.NewParties, NewThreshold: req.NewThreshold,
		Committed: done, Pending: pending,
	}, nil
}

// reshareProof builds the commit of a resharing from the members' results:
// every member reported, and every new member confirmed the same new
// shares. A new member whose result did not arrive is asked for its
// confirmation (it may have finished all the same). It returns nil and why
// when there is no proof.
func (n *Node) reshareProof(ctx context.Context, session peerwire.SessionID, req *peerwire.ReshareRequest, results map[string]*peerwire.RunResponse) (*peerwire.FinishReshareRequest, error) {
	confs := map[string]peerwire.ReshareConfirmation{}
	for _, m := range req.NewParties {
		var c *peerwire.ReshareConfirmation
		if r := results[m]; r != nil {
			c = r.Confirmation
		} else if p, ok := n.peers[m]; ok {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			o, err := p.client().ReshareOutcome(cctx, &peerwire.ReshareOutcomeRequest{Version: peerwire.Version, Session: session, Key: req.Key})
			cancel()
			if err == nil {
				c = o.Confirmation
			}
		}
		if c == nil {
			return nil, fmt.Errorf("new member %s did not confirm a new share", m)
		}
		confs[m] = *c
	}
	fin := assembleCommit(session, req.Key, req.NewParties, req.NewThreshold, confs)
	if err := n.checkCommit(fin, req.NewParties, req.NewThreshold); err != nil {
		return nil, err
	}
	return fin, nil
}

// confirmReshare signs this node's confirmation of a resharing.
func (n *Node) confirmReshare(session peerwire.SessionID, key string, fingerprint []byte, newParties []string, newT int) (*peerwire.ReshareConfirmation, error) {
	sig, err := n.signWithNodeKey(peerwire.ReshareConfirmationDigest(session, key, fingerprint, newParties, newT))
	if err != nil {
		return nil, fmt.Errorf("confirm resharing: %w", err)
	}
	return &peerwire.ReshareConfirmation{Node: n.cfg.Name, Fingerprint: slices.Clone(fingerprint), Cert: n.current().cert.Leaf.Raw, Sig: sig}, nil
}

// errNotCommit marks a commit whose proof does not hold.
var errNotCommit = errors.New("not a valid commit")

// checkCommit checks a commit's proof on its own: one confirmation from
// each of newParties, no one else, each signed by that node's key (a node
// certificate of the cluster CA) over this session, key, fingerprint,
// committee and threshold.
func (n *Node) checkCommit(fin *peerwire.FinishReshareRequest, newParties []string, newT int) error {
	if !fin.Commit {
		return fmt.Errorf("%w: it is a discard", errNotCommit)
	}
	if !sameMembers(fin.NewParties, newParties) || fin.NewThreshold != newT {
		return fmt.Errorf("%w: committee %v t=%d, the resharing was to %v t=%d", errNotCommit, fin.NewParties, fin.NewThreshold, newParties, newT)
	}
	if len(fin.Fingerprint) == 0 {
		return fmt.Errorf("%w: no fingerprint", errNotCommit)
	}
	seen := map[string]bool{}
	for _, c := range fin.Confirmations {
		if !slices.Contains(newParties, c.Node) || seen[c.Node] {
			return fmt.Errorf("%w: confirmation from %s, who is not a new member or confirmed twice", errNotCommit, c.Node)
		}
		seen[c.Node] = true
		if !bytes.Equal(c.Fingerprint, fin.Fingerprint) {
			return fmt.Errorf("%w: %s confirmed other new shares than the rest: a dealer sent inconsistent commitments", errNotCommit, c.Node)
		}
		if err := n.checkNodeSig(c.Node, c.Cert, c.Sig, peerwire.ReshareConfirmationDigest(fin.Session, fin.Key, c.Fingerprint, newParties, newT)); err != nil {
			return fmt.Errorf("%w: confirmation from %s: %w", errNotCommit, c.Node, err)
		}
	}
	if len(seen) != len(newParties) {
		return fmt.Errorf("%w: %d of %d new members confirmed", errNotCommit, len(seen), len(newParties))
	}
	return nil
}

// checkNodeSig checks that sig over digest was made by node's key, with a
// node certificate of the cluster CA.
func (n *Node) checkNodeSig(node string, certDER, sig, digest []byte) error {
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		return fmt.Errorf("certificate: %w", err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: n.current().pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("certificate not from the cluster CA: %w", err)
	}
	id, err := pki.IdentityOf(cert)
	if err != nil || id.Role != pki.RoleNode || id.Name != node {
		return fmt.Errorf("certificate is not node %s's", node)
	}
	if !verifyNodeSig(cert.PublicKey, digest, sig) {
		return errors.New("signature does not verify")
	}
	return nil
}

// finishReshare tells members (this node included) how a resharing ended,
// retrying a commit until ctx ends. It returns who was told and who was
// not (a member that confirmed and is told a discard is not told: it keeps
// its staged share).
func (n *Node) finishReshare(ctx context.Context, req *peerwire.FinishReshareRequest, members []string) (done, pending []string) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	self := pki.Identity{Name: n.cfg.Name, Role: pki.RoleNode}
	for _, m := range members {
		wg.Go(func() {
			req := req
			if tamperFinish != nil {
				if req = tamperFinish(m, req); req == nil {
					mu.Lock()
					done = append(done, m) // the adversary says so
					mu.Unlock()
					return
				}
			}
			var err error
			for {
				if m == n.cfg.Name {
					err = n.applyFinish(self, req)
				} else if p, ok := n.peers[m]; ok {
					timeout := 5 * time.Second
					if !req.Commit {
						timeout = 2 * time.Second
					}
					cctx, cancel := context.WithTimeout(ctx, timeout)
					_, err = p.client().FinishReshare(cctx, req)
					cancel()
				} else {
					err = fmt.Errorf("no address for %s", m)
				}
				// A member with nothing pending did not get as far as
				// staging, or has applied this already: there is nothing
				// to tell it. A discard is tried once.
				if err == nil || isNothingPending(err) || ctx.Err() != nil || !req.Commit {
					break
				}
				select {
				case <-ctx.Done():
				case <-time.After(500 * time.Millisecond):
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil && !isNothingPending(err) {
				n.log.Warn().Err(err).Str("peer", m).Str("key", req.Key).Bool("commit", req.Commit).Msg("member not told how the resharing ended")
				pending = append(pending, m)
				return
			}
			done = append(done, m)
		})
	}
	wg.Wait()
	slices.Sort(done)
	slices.Sort(pending)
	return done, pending
}

// tamperFinish, when set, may rewrite or drop (nil) the outcome a
// coordinator sends a member. Only the adversary build and tests set it, to
// play a coordinator that tells members different things.
var tamperFinish func(member string, req *peerwire.FinishReshareRequest) *peerwire.FinishReshareRequest

var errNothingPending = errors.New("no resharing of this key awaits its outcome here")

// isNothingPending recognizes errNothingPending, also come back over gRPC.
func isNothingPending(err error) bool {
	return err != nil && (errors.Is(err, errNothingPending) || strings.Contains(err.Error(), errNothingPending.Error()))
}

// applyFinish carries out the outcome of a resharing this node took part
// in. A commit is applied whoever delivers it, once its proof checks out;
// a discard only from the coordinator to a member that did not confirm,
// or from an admin.
func (n *Node) applyFinish(caller pki.Identity, req *peerwire.FinishReshareRequest) error {
	keyID, err := tss.ParseKeyID(req.Key)
	if err != nil {
		return err
	}
	p, ok := n.pending.get(keyID)
	if !ok || p.Session != req.Session {
		return fmt.Errorf("key %s session %s: %w", keyID, req.Session, errNothingPending)
	}
	log := n.log.With().Str("key", keyID.String()).Str("session", req.Session.String()).Str("from", caller.Name).Logger()
	if req.Commit {
		if err := n.checkCommit(req, p.NewParties, p.NewThreshold); err != nil {
			return err
		}
		if p.Confirmation != nil && !bytes.Equal(p.Confirmation.Fingerprint, req.Fingerprint) {
			return fmt.Errorf("%w: the new members confirmed other shares than the one staged here", errNotCommit)
		}
		// Presignatures were made with the old shares.
		n.pool.drain(keyID)
		n.sessions.abortPresigns(keyID.String(), errors.New("presignature dropped: the key was reshared"))
		if p.Staged {
			s, err := n.store.Commit(keyID)
			if err != nil {
				return err
			}
			n.mu.Lock()
			n.shares[keyID] = s
			n.mu.Unlock()
			log.Info().Int("t", s.Threshold).Strs("parties", s.Parties).Msg("new share committed on every new member's confirmation; the old one is gone")
		} else {
			if err := n.store.Delete(keyID); err != nil {
				return err
			}
			n.mu.Lock()
			delete(n.shares, keyID)
			n.mu.Unlock()
			log.Info().Msg("this node left the key's committee; its share is deleted")
		}
		if err := n.reshares.update(req.Session, req.Key, func(r *reshareRecord) { r.Commit = req }); err != nil {
			log.Error().Err(err).Msg("commit applied but not recorded; members that missed it must get it from another member")
		}
		if err := n.pending.clear(keyID); err != nil {
			return err
		}
		// Pass it on: a member the coordinator did not tell (or told to
		// discard) learns it here, and would otherwise ask.
		go n.passCommit(req, p.Members)
		return nil
	}
	switch {
	case caller.Role == pki.RoleAdmin:
	case p.Confirmation != nil:
		return fmt.Errorf("key %s: this node confirmed resharing %s, so a commit may exist: it keeps its new share staged until a commit reaches it, or an admin discards it (`signer reshare discard`)", keyID, req.Session)
	case caller.Name != p.Coordinator:
		return fmt.Errorf("key %s: the resharing was coordinated by %s, not %s", keyID, p.Coordinator, caller.Name)
	}
	if p.Staged {
		if err := n.store.Discard(keyID); err != nil {
			return err
		}
		log.Info().Msg("resharing discarded; staged share gone, the current one stays")
	}
	return n.pending.clear(keyID)
}

// passCommit hands a commit to every other member of the resharing, once,
// in the background.
func (n *Node) passCommit(req *peerwire.FinishReshareRequest, members []string) {
	ctx, cancel := context.WithTimeout(context.Background(), finishTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, m := range members {
		p, ok := n.peers[m]
		if !ok {
			continue
		}
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			_, _ = p.client().FinishReshare(cctx, req)
		})
	}
	wg.Wait()
}

// reshareOutcome answers a member asking how a resharing ended.
func (n *Node) reshareOutcome(req *peerwire.ReshareOutcomeRequest) *peerwire.ReshareOutcomeResponse {
	r, ok := n.reshares.get(req.Session)
	switch {
	case !ok || r.Key != req.Key:
		return &peerwire.ReshareOutcomeResponse{State: peerwire.OutcomeUnknown}
	case r.Commit != nil:
		return &peerwire.ReshareOutcomeResponse{State: peerwire.OutcomeCommitted, Finish: r.Commit}
	case r.Confirmation != nil:
		return &peerwire.ReshareOutcomeResponse{State: peerwire.OutcomeConfirmed, Confirmation: r.Confirmation}
	}
	return &peerwire.ReshareOutcomeResponse{State: peerwire.OutcomeUnknown}
}

func (s *peerService) ReshareOutcome(ctx context.Context, req *peerwire.ReshareOutcomeRequest) (*peerwire.ReshareOutcomeResponse, error) {
	return s.n.reshareOutcome(req), nil
}

// resolvePending asks the other members of each resharing this node
// awaits the outcome of: a member that holds a commit hands it over, and
// if every new member has confirmed, their confirmations are a commit.
// Run periodically, it ends a split the coordinator left (it told some
// members and not others, or died before telling anyone).
func (n *Node) resolvePending(ctx context.Context) {
	for keyID, p := range n.pending.all() {
		confs := map[string]peerwire.ReshareConfirmation{}
		if p.Confirmation != nil {
			confs[n.cfg.Name] = *p.Confirmation
		}
		var commit *peerwire.FinishReshareRequest
		for _, m := range p.Members {
			peer, ok := n.peers[m]
			if !ok || commit != nil {
				continue
			}
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			o, err := peer.client().ReshareOutcome(cctx, &peerwire.ReshareOutcomeRequest{Version: peerwire.Version, Session: p.Session, Key: keyID.String()}, failFast)
			cancel()
			switch {
			case err != nil:
			case o.State == peerwire.OutcomeCommitted && o.Finish != nil:
				commit = o.Finish
			case o.State == peerwire.OutcomeConfirmed && o.Confirmation != nil && o.Confirmation.Node == m:
				confs[m] = *o.Confirmation
			}
		}
		if commit == nil {
			commit = assembleCommit(p.Session, keyID.String(), p.NewParties, p.NewThreshold, confs)
		}
		if commit == nil {
			continue
		}
		if err := n.applyFinish(pki.Identity{Name: n.cfg.Name, Role: pki.RoleNode}, commit); err != nil {
			n.log.Warn().Err(err).Str("key", keyID.String()).Str("session", p.Session.String()).Msg("a commit learned from the other members did not hold")
			continue
		}
		n.log.Info().Str("key", keyID.String()).Str("session", p.Session.String()).Msg("resharing outcome learned from the other members: committed")
	}
}

// assembleCommit is the commit of a resharing made of its new members'
// confirmations, or nil while one is missing. Whether it holds (one
// fingerprint, valid signatures) is checkCommit's to say.
func assembleCommit(session peerwire.SessionID, key string, newParties []string, newT int, confs map[string]peerwire.ReshareConfirmation) *peerwire.FinishReshareRequest {
	var list []peerwire.ReshareConfirmation
	for _, m := range newParties {
		c, ok := confs[m]
		if !ok {
			return nil
		}
		list = append(list, c)
	}
	if len(list) == 0 {
		return nil
	}
	return &peerwire.FinishReshareRequest{Version: peerwire.Version, Session: session, Key: key, Commit: true,
		NewParties: slices.Clone(newParties), NewThreshold: newT, Fingerprint: list[0].Fingerprint, Confirmations: list}
}
