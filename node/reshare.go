package node

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/tss"
)

// Resharing and import, as the cluster runs them.
//
// A resharing (tss/reshare.go) deals new shares of a key without
// assembling it. Switching to the new shares must happen everywhere or
// nowhere: an old share does not combine with a new one. So it runs in two
// phases. Each member runs its part and stages its new share beside the old
// one, which stays in use (tss.Store.Stage), and reports the fingerprint of
// the new share's public data. Only when every member finished, and every
// new member reports the same fingerprint, does the coordinator tell each
// one to commit: new members switch to the staged share (replacing the old
// one on disk), members that left the committee delete theirs. Otherwise it
// tells them to discard, and the key keeps working with the old shares.
//
// A member remembers, on disk, which resharing it awaits the outcome of, so
// a restart between the phases loses nothing: the coordinator keeps telling
// it, and the staged share waits.

// reshareStall is how long a resharing waits for any message before it
// blames the members it waits for: new members spend seconds on their
// Paillier proofs, more on a loaded node.
const reshareStall = 60 * time.Second

// finishTimeout bounds telling all members how a resharing ended; a member
// that cannot be told within it is reported as pending.
const finishTimeout = 30 * time.Second

// pendingReshare is a resharing this node finished its part of and awaits
// the coordinator's verdict on.
type pendingReshare struct {
	Session     peerwire.SessionID `json:"session"`
	Coordinator string             `json:"coordinator"`
	// Staged says a new share waits in the store; otherwise the node left
	// the key's committee and deletes its share on commit.
	Staged bool      `json:"staged"`
	Since  time.Time `json:"since"`
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
	b, err := os.ReadFile(p.path)
	if errors.Is(err, os.ErrNotExist) {
		return p, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read pending resharings: %w", err)
	}
	var byHex map[string]pendingReshare
	if err := json.Unmarshal(b, &byHex); err != nil {
		return nil, fmt.Errorf("read pending resharings %s: %w", p.path, err)
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
	b, err := json.MarshalIndent(byHex, "", "  ")
	if err != nil {
		return err
	}
	tmp := p.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("save pending resharings: %w", err)
	}
	if err := os.Rename(tmp, p.path); err != nil {
		return fmt.Errorf("save pending resharings: %w", err)
	}
	return nil
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

func (p *pendingReshares) clear(id tss.KeyID) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.m, id)
	return p.saveLocked()
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
			if err != nil {
				return nil, err
			}
			resp := &peerwire.RunResponse{}
			if newShare != nil {
				if err := n.store.Stage(newShare); err != nil {
					return nil, err
				}
				resp.PublicKey, resp.Fingerprint = req.PublicKey, newShare.Fingerprint()
			}
			if err := n.pending.set(keyID, pendingReshare{Session: id, Coordinator: coordinator, Staged: newShare != nil, Since: time.Now().UTC()}); err != nil {
				return nil, err
			}
			n.log.Info().Str("key", keyID.String()).Str("session", id.String()).Bool("new_share_staged", newShare != nil).Msg("resharing done here; awaiting the coordinator's commit")
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
			Import: true,
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

// runReshare runs the ceremony, checks that every member finished with the
// same view of the new key, and tells every member to commit or discard.
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
	if runErr == nil {
		results[n.cfg.Name] = own
		runErr = checkReshareResults(req, members, results)
	}
	commit := runErr == nil
	fctx, fcancel := context.WithTimeout(context.WithoutCancel(ctx), finishTimeout)
	defer fcancel()
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
	done, pending := n.finishReshare(fctx, pr.Session, keyID, newMembers, commit)
	if commit && len(pending) == 0 {
		d, p := n.finishReshare(fctx, pr.Session, keyID, leaving, true)
		done, pending = append(done, d...), append(pending, p...)
	} else if commit {
		pending = append(pending, leaving...)
	} else {
		d, p := n.finishReshare(fctx, pr.Session, keyID, leaving, false)
		done, pending = append(done, d...), append(pending, p...)
	}
	if runErr != nil {
		n.metrics.aborts.WithLabelValues("reshare").Inc()
		log.Warn().Err(runErr).Strs("discarded", done).Strs("not_told", pending).Msg("resharing failed; every member keeps its old share")
		return nil, fmt.Errorf("reshare key %s: %w (the old shares stay in use)", keyID, runErr)
	}
	log.Info().Strs("committed", done).Strs("pending", pending).Dur("dur_ms", time.Since(start)).Msg("resharing committed")
	return &peerwire.ReshareCeremonyResponse{
		Key: keyID.String(), Session: pr.Session.String(),
		OldParties: req.OldParties, OldThreshold: req.OldThreshold,
		NewParties: req.NewParties, NewThreshold: req.NewThreshold,
		Committed: done, Pending: pending,
	}, nil
}

// checkReshareResults accepts a resharing only if every member reported
// back and every new member holds a share with the same public data.
func checkReshareResults(req *peerwire.ReshareRequest, members []string, results map[string]*peerwire.RunResponse) error {
	var want []byte
	for _, m := range members {
		r, ok := results[m]
		if !ok || r == nil {
			return fmt.Errorf("member %s did not report its result", m)
		}
		if !slices.Contains(req.NewParties, m) {
			continue
		}
		if !bytes.Equal(r.PublicKey, req.PublicKey) || len(r.Fingerprint) == 0 {
			return fmt.Errorf("member %s reports no new share of the key", m)
		}
		if want == nil {
			want = r.Fingerprint
		} else if !bytes.Equal(want, r.Fingerprint) {
			return fmt.Errorf("member %s holds a different view of the new shares than the others: a dealer sent inconsistent commitments", m)
		}
	}
	return nil
}

// finishReshare tells members (this node included) to commit or discard,
// retrying each until ctx ends. It returns who was told and who was not.
func (n *Node) finishReshare(ctx context.Context, session peerwire.SessionID, keyID tss.KeyID, members []string, commit bool) (done, pending []string) {
	req := &peerwire.FinishReshareRequest{Version: peerwire.Version, Session: session, Key: keyID.String(), Commit: commit}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, m := range members {
		wg.Go(func() {
			var err error
			for {
				if m == n.cfg.Name {
					err = n.applyFinish(m, req)
				} else if p, ok := n.peers[m]; ok {
					timeout := 5 * time.Second
					if !commit {
						timeout = 2 * time.Second
					}
					cctx, cancel := context.WithTimeout(ctx, timeout)
					_, err = p.client.FinishReshare(cctx, req)
					cancel()
				} else {
					err = fmt.Errorf("no address for %s", m)
				}
				// A member with nothing pending did not get as far as
				// staging: there is nothing to tell it. A discard is
				// tried once: a member that missed it keeps its old
				// share, which is what a discard means.
				if err == nil || errors.Is(err, errNothingPending) || ctx.Err() != nil || !commit {
					break
				}
				select {
				case <-ctx.Done():
				case <-time.After(500 * time.Millisecond):
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil && !errors.Is(err, errNothingPending) && !isNothingPending(err) {
				n.log.Warn().Err(err).Str("peer", m).Str("key", keyID.String()).Bool("commit", commit).Msg("could not tell member how the resharing ended")
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

var errNothingPending = errors.New("no resharing of this key awaits its outcome here")

// isNothingPending recognizes errNothingPending come back over gRPC.
func isNothingPending(err error) bool {
	return err != nil && bytes.Contains([]byte(err.Error()), []byte(errNothingPending.Error()))
}

// applyFinish carries out the coordinator's verdict on a resharing this
// node took part in.
func (n *Node) applyFinish(caller string, req *peerwire.FinishReshareRequest) error {
	keyID, err := tss.ParseKeyID(req.Key)
	if err != nil {
		return err
	}
	p, ok := n.pending.get(keyID)
	if !ok || p.Session != req.Session {
		return fmt.Errorf("key %s session %s: %w", keyID, req.Session, errNothingPending)
	}
	if caller != p.Coordinator {
		return fmt.Errorf("key %s: the resharing was coordinated by %s, not %s", keyID, p.Coordinator, caller)
	}
	log := n.log.With().Str("key", keyID.String()).Str("session", req.Session.String()).Logger()
	if req.Commit {
		// Presignatures were made with the old shares.
		n.pool.drain(keyID)
	}
	switch {
	case req.Commit && p.Staged:
		s, err := n.store.Commit(keyID)
		if err != nil {
			return err
		}
		n.mu.Lock()
		n.shares[keyID] = s
		n.mu.Unlock()
		log.Info().Int("t", s.Threshold).Strs("parties", s.Parties).Msg("new share committed; the old one is gone")
	case req.Commit:
		if err := n.store.Delete(keyID); err != nil {
			return err
		}
		n.mu.Lock()
		delete(n.shares, keyID)
		n.mu.Unlock()
		log.Info().Msg("this node left the key's committee; its share is deleted")
	case p.Staged:
		if err := n.store.Discard(keyID); err != nil {
			return err
		}
		log.Info().Msg("resharing failed; staged share discarded, the current one stays")
	}
	return n.pending.clear(keyID)
}
