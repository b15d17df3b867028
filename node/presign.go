package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tkeyless/tkeyless/internal/authority"
	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/tss"
)

// Presigning in the cluster (the engine is tss/presign.go; the security
// argument docs/presigning.md).
//
// Each node keeps, per key, a pool of presignatures for the requests it
// coordinates: it picks a quorum, every member runs GG18's rounds 1–4 and
// holds its half in memory under the session id. A request takes the
// oldest ready entry whose members are all up and sends each member a
// FinishPresign with the full signing request, which the member checks
// exactly as it checks a SignRequest (the edge's authority included)
// before it lets the digest into its party. Any failure destroys the
// presignature everywhere (each half dies with its Finish call) and the
// request is signed the full way within the same deadline.

// preparePresign sets up this node's half of a presignature, within this
// node's own presign settings: presigning on here (presign.depth > 0), a
// lifetime no longer than its own presign.max_age, and no more halves held
// for one coordinator and key than its own depth. A presignature costs a
// full signature's offline rounds and needs no edge authority, so these
// are what keep one node from filling another's tables with them.
func (n *Node) preparePresign(coordinator string, id peerwire.SessionID, req *peerwire.PresignRequest, carry bool) error {
	keyID, err := tss.ParseKeyID(req.Key)
	if err != nil {
		return err
	}
	share, ok := n.share(keyID)
	if !ok {
		return fmt.Errorf("key %s: this node holds no share", keyID)
	}
	if err := n.keyRefused(keyID); err != nil {
		return err
	}
	if !slices.Contains(req.Quorum, n.cfg.Name) || !slices.Contains(req.Quorum, coordinator) {
		return fmt.Errorf("quorum %v must include this node (%s) and the coordinator (%s)", req.Quorum, n.cfg.Name, coordinator)
	}
	depth := n.cfg.Presign.Depth
	if depth == 0 {
		return fmt.Errorf("presigning is off on %s (presign.depth 0): it holds no presignatures for any coordinator", n.cfg.Name)
	}
	// Halves the coordinator no longer holds are gone for good: it lists
	// those it does. At the cap (a coordinator too old to list them), the
	// oldest makes room. It can only ever displace its own, and never hold
	// more than depth.
	if req.LiveListed {
		if dropped := n.sessions.dropLostPresigns(coordinator, req.Key, req.Live); dropped > 0 {
			n.log.Debug().Str("coordinator", coordinator).Str("key", req.Key).Int("dropped", dropped).Msg("dropped presignature halves the coordinator no longer holds")
		}
	}
	if _, _, held := n.sessions.load(coordinator, req.Key); held >= depth && !n.sessions.evictOldestPresign(coordinator, req.Key) {
		return fmt.Errorf("%w: %s already holds %d presignatures of key %s for %s, its presign.depth", ErrOverloaded, n.cfg.Name, held, keyID, coordinator)
	}
	ttl := time.Duration(n.cfg.Presign.MaxAge)
	if req.TTL > 0 {
		ttl = min(max(req.TTL, time.Second), ttl)
	}
	ps, err := tss.NewPresignSession(share, req.Quorum, n.outbox(id, peerwire.KindPresign, req.Key, len(req.Quorum)))
	if err != nil {
		return err
	}
	ps.SetStallFunc(n.stallTimeout)
	s := &session{id: id, kind: peerwire.KindPresign, key: req.Key, members: slices.Clone(req.Quorum), coordinator: coordinator, party: ps, keep: true, carry: carry}
	s.run = func(ctx context.Context) (*peerwire.RunResponse, error) {
		life, cancel := context.WithTimeout(context.Background(), ttl)
		ps.Start(life)
		go func() {
			<-ps.Done()
			cancel()
			n.sessions.finish(s)
		}()
		if coordinator != n.cfg.Name {
			// Rounds 1–4 compute until the half is ready; the
			// coordinator holds a slot in its own queue for them.
			defer n.admission.join()()
		}
		if err := ps.WaitReady(ctx); err != nil {
			ps.Abort(&tss.SessionError{Err: fmt.Errorf("presign: %w", err)})
			return nil, err
		}
		return &peerwire.RunResponse{}, nil
	}
	return n.sessions.add(s)
}

// errUnknownPresign is a member's answer for a presignature it does not
// hold (it restarted, or the half expired): the coordinator falls back.
var errUnknownPresign = errors.New("unknown presignature")

// finishPresign completes this node's half of a presignature that caller
// coordinates, after the same checks as for any signing request.
func (n *Node) finishPresign(ctx context.Context, caller string, req *peerwire.FinishPresignRequest) ([]byte, error) {
	sig, _, err := n.finishPresignClaim(ctx, caller, req)
	return sig, err
}

// finishPresignClaim is finishPresign that also returns the request's
// claims, which it spent (nil for a legacy request or a refusal).
func (n *Node) finishPresignClaim(ctx context.Context, caller string, req *peerwire.FinishPresignRequest) ([]byte, *authority.Claims, error) {
	s, err := n.sessions.get(req.Session)
	if err != nil || s.kind != peerwire.KindPresign {
		return nil, nil, fmt.Errorf("presignature %s: %w", req.Session, errUnknownPresign)
	}
	ps := s.party.(*tss.PresignSession)
	if s.coordinator != caller {
		return nil, nil, fmt.Errorf("presignature %s belongs to %s, not %s", req.Session, s.coordinator, caller)
	}
	refuse := func(err error) ([]byte, *authority.Claims, error) {
		// A presignature is used once: a refused request uses it up too.
		ps.Abort(&tss.SessionError{Err: err})
		return nil, nil, err
	}
	if req.Sign == nil {
		return refuse(errors.New("finish without a signing request"))
	}
	if req.Sign.Key != s.key || !sameMembers(req.Sign.Quorum, s.members) {
		return refuse(fmt.Errorf("request for key %s quorum %v does not match presignature %s (key %s, quorum %v)", req.Sign.Key, req.Sign.Quorum, req.Session, s.key, s.members))
	}
	_, claims, err := n.checkSignRequest(caller, req.Session, req.Sign)
	if err != nil {
		return refuse(err)
	}
	// Finishing runs rounds 5–9 with secrets already committed: the
	// authority is spent whatever the outcome.
	if claims != nil {
		if err := n.verifier.MarkUsed(*claims); err != nil {
			return refuse(err)
		}
	}
	member := caller != n.cfg.Name
	if member && claims != nil {
		defer n.finishes.start(caller, req.Session)()
	}
	n.touchLive()
	defer n.touchLive()
	sig, err := ps.Finish(ctx, req.Sign.Digest)
	if err != nil {
		n.sessionFailed(s, err)
		// As the coordinator does (signPresigned), a member gives the
		// authority back when its half sent no more than its round-5
		// commitment: the half is destroyed and nothing that depends on
		// the digest left this node. The coordinator then signs the
		// request the full way when another member had lost its half
		// (restarted); without this, the full path's Prepare would find
		// the request id spent here and refuse it as a replay.
		if member && claims != nil && ps.SentRound() <= 5 {
			n.verifier.Release(*claims)
		}
	}
	return sig, claims, err
}

// finishTracker counts, per coordinator, the presignature halves being
// finished here, so that a Prepare refused as a replay while one of them
// may still give its authority back can wait for it (checkSignRequest).
type finishTracker struct {
	mu  sync.Mutex
	now map[string]map[peerwire.SessionID]chan struct{}
	// waiting counts, per coordinator, the Prepares waiting now: a
	// compromised coordinator holding a finish open could otherwise park
	// any number of replayed Prepares here.
	waiting map[string]int
}

// maxFinishWaiters bounds the Prepares of one coordinator that wait for
// its finishes at once; the honest case is one fallback at a time.
const maxFinishWaiters = 2

// start records a finish for coordinator; the returned func ends it.
func (f *finishTracker) start(coordinator string, id peerwire.SessionID) (end func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.now == nil {
		f.now = map[string]map[peerwire.SessionID]chan struct{}{}
	}
	if f.now[coordinator] == nil {
		f.now[coordinator] = map[peerwire.SessionID]chan struct{}{}
	}
	done := make(chan struct{})
	f.now[coordinator][id] = done
	return func() {
		f.mu.Lock()
		delete(f.now[coordinator], id)
		f.mu.Unlock()
		close(done)
	}
}

// wait waits, at most d, until every finish for coordinator under way now
// has ended; it reports whether there was any. It does not wait when
// maxFinishWaiters of the coordinator's Prepares already do.
func (f *finishTracker) wait(coordinator string, d time.Duration) bool {
	f.mu.Lock()
	var pending []chan struct{}
	for _, done := range f.now[coordinator] {
		pending = append(pending, done)
	}
	if len(pending) == 0 || f.waiting[coordinator] >= maxFinishWaiters {
		f.mu.Unlock()
		return false
	}
	if f.waiting == nil {
		f.waiting = map[string]int{}
	}
	f.waiting[coordinator]++
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.waiting[coordinator]--
		f.mu.Unlock()
	}()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for _, done := range pending {
		select {
		case <-done:
		case <-timer.C:
			return true
		}
	}
	return true
}

func sameMembers(a, b []string) bool {
	return slices.Equal(slices.Sorted(slices.Values(a)), slices.Sorted(slices.Values(b)))
}

// presignEntry is one ready presignature this node coordinates.
type presignEntry struct {
	id      peerwire.SessionID
	key     tss.KeyID
	quorum  []string
	ps      *tss.PresignSession
	created time.Time
}

// presignPool holds this node's ready presignatures, per key, oldest first.
type presignPool struct {
	mu      sync.Mutex
	entries map[tss.KeyID][]*presignEntry
	// wake nudges the refiller: an entry was taken or a request finished.
	wake chan struct{}
}

func newPresignPool() *presignPool {
	return &presignPool{entries: map[tss.KeyID][]*presignEntry{}, wake: make(chan struct{}, 1)}
}

func (p *presignPool) nudge() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// pruneLocked drops entries that can no longer be finished (expired,
// aborted); p.mu is held.
func (p *presignPool) pruneLocked(key tss.KeyID) {
	p.entries[key] = slices.DeleteFunc(p.entries[key], func(e *presignEntry) bool { return !e.ps.Ready() })
}

func (p *presignPool) depth(key tss.KeyID) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pruneLocked(key)
	return len(p.entries[key])
}

func (p *presignPool) add(e *presignEntry) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.entries[e.key] = append(p.entries[e.key], e)
}

// take removes and returns the oldest ready entry for key whose members
// all pass usable; entries with a member down are destroyed (that member's
// half is likely gone with it).
func (p *presignPool) take(key tss.KeyID, usable func(member string) bool) *presignEntry {
	p.mu.Lock()
	defer p.mu.Unlock()
	defer p.nudge()
	p.pruneLocked(key)
	for len(p.entries[key]) > 0 {
		e := p.entries[key][0]
		p.entries[key] = p.entries[key][1:]
		if !slices.ContainsFunc(e.quorum, func(m string) bool { return !usable(m) }) {
			return e
		}
		e.ps.Abort(&tss.SessionError{Err: errors.New("presignature dropped: a quorum member is down")})
	}
	return nil
}

// dropMember destroys every entry whose quorum includes member (it was
// convicted).
func (p *presignPool) dropMember(member string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for key, es := range p.entries {
		p.entries[key] = slices.DeleteFunc(es, func(e *presignEntry) bool {
			if slices.Contains(e.quorum, member) {
				e.ps.Abort(&tss.SessionError{Err: fmt.Errorf("presignature dropped: member %s: %w", member, errConvicted)})
				return true
			}
			return false
		})
	}
}

// drain destroys every entry of key (the key was disabled or reshared).
func (p *presignPool) drain(key tss.KeyID) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range p.entries[key] {
		e.ps.Abort(&tss.SessionError{Err: errors.New("presignature dropped")})
	}
	delete(p.entries, key)
}

// refillPresignatures keeps every key's pool at its target depth, one
// presignature at a time, and only while no signing request is in
// progress here: live requests always come first.
func (n *Node) refillPresignatures(ctx context.Context) {
	target := n.cfg.Presign.Depth
	if target == 0 {
		return
	}
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-n.pool.wake:
		}
		for _, key := range n.Keys() {
			if n.keyDisabled(key) {
				n.pool.drain(key)
				continue
			}
			// Live signing comes first: this node's own requests, and the
			// sessions it joins for other coordinators.
			for n.pool.depth(key) < target && n.idle() && ctx.Err() == nil {
				if err := n.presignOne(ctx, key); err != nil {
					if errors.Is(err, ErrOverloaded) || errors.Is(err, errPreempted) {
						// Live signing here or on a member came first:
						// nothing failed, refilling waits for the next lull.
						n.log.Debug().Err(err).Str("key", key.String()).Msg("presignature yielded to live signing")
						break
					}
					failures++
					n.metrics.presign.WithLabelValues("failed").Inc()
					// Each failure pauses refilling a little longer (up to
					// 30 s), so a cluster missing a quorum is not flooded.
					n.log.Debug().Err(err).Str("key", key.String()).Msg("presignature not made")
					select {
					case <-ctx.Done():
					case <-time.After(min(time.Duration(failures)*time.Second, 30*time.Second)):
					}
					break
				}
				failures = 0
				n.metrics.presign.WithLabelValues("made").Inc()
			}
			n.metrics.presignDepth.WithLabelValues(key.String()).Set(float64(n.pool.depth(key)))
		}
	}
}

// refillIdle is how long after the last live signing a node waits before
// it refills: a request that arrives while a presignature is being made
// shares the cores with it, so refilling waits for a lull, not just a gap.
const refillIdle = 250 * time.Millisecond

// idle reports whether no live signing is under way here, coordinated or
// joined, nor was for refillIdle.
func (n *Node) idle() bool {
	return n.admission.inProgress() == 0 && n.sessions.active() == 0 && time.Since(time.Unix(0, n.lastLive.Load())) > refillIdle
}

// touchLive records live signing activity.
func (n *Node) touchLive() { n.lastLive.Store(time.Now().UnixNano()) }

// presignOne makes one presignature for key with a healthy quorum.
func (n *Node) presignOne(ctx context.Context, key tss.KeyID) error {
	share, ok := n.share(key)
	if !ok {
		return ErrUnknownKey
	}
	quorum, ok := n.pickQuorum(share, n.downPeers())
	if !ok {
		return errors.New("no healthy quorum")
	}
	// Behind every live request in the queue; a live request that would
	// wait takes the slot back (the context ends with errPreempted).
	ctx, slot, err := n.admission.acquirePresign(ctx)
	if err != nil {
		return err
	}
	defer slot.release()
	ctx, cancel := context.WithTimeout(ctx, time.Duration(n.cfg.SignTimeout))
	defer cancel()
	pr := &peerwire.PrepareRequest{
		Version: peerwire.Version,
		Session: peerwire.NewSessionID(),
		Kind:    peerwire.KindPresign,
		Presign: &peerwire.PresignRequest{Key: key.String(), Quorum: quorum, TTL: time.Duration(n.cfg.Presign.MaxAge),
			// This node's own halves are exactly the presignatures it
			// still holds, pooled or being finished (refills run one at a
			// time, so none is being made now).
			Live: n.sessions.presignIDs(n.cfg.Name, key.String()), LiveListed: true},
		CarryEchoes: n.canCarryEchoes(quorum),
	}
	if _, bad, err := n.runSession(ctx, pr, quorum); err != nil {
		for _, m := range bad {
			n.blame(m, err)
		}
		return err
	}
	s, err := n.sessions.get(pr.Session)
	if err != nil {
		return fmt.Errorf("presignature expired at once: %w", err)
	}
	n.pool.add(&presignEntry{id: pr.Session, key: key, quorum: quorum, ps: s.party.(*tss.PresignSession), created: time.Now()})
	return nil
}

// downPeers names the peers a quorum should not include now.
func (n *Node) downPeers() []string {
	var down []string
	for name := range n.peers {
		if !n.reachable(name) || n.coolingDown(name) {
			down = append(down, name)
		}
	}
	return down
}

// signPresigned finishes a pooled presignature with req on every member.
// bad names members to avoid; a member that no longer holds its half is
// not blamed (it restarted and is fine now).
func (n *Node) signPresigned(ctx context.Context, e *presignEntry, req SignRequest) (sig []byte, bad []string, err error) {
	sreq := &peerwire.SignRequest{
		Key: req.Key.String(), Quorum: e.quorum, Hash: req.Hash.String(), Digest: req.Digest,
		Edge: req.Edge, Authority: req.Authority, RequestID: req.RequestID,
	}
	fr := &peerwire.FinishPresignRequest{Version: peerwire.Version, Session: e.id, Sign: sreq}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var own []byte
	var ownErr error
	var claims *authority.Claims
	var wg sync.WaitGroup
	wg.Go(func() {
		own, claims, ownErr = n.finishPresignClaim(ctx, n.cfg.Name, fr)
		if ownErr != nil {
			cancel(ownErr)
		}
	})
	var lostMu sync.Mutex
	var lostBy []string // members that answered they hold no half
	_, _ = n.forEachPeer(ctx, e.quorum, func(ctx context.Context, p *peerConn) error {
		if _, err := p.client().FinishPresign(ctx, fr, failFast); err != nil {
			if status.Code(err) == codes.NotFound {
				lostMu.Lock()
				lostBy = append(lostBy, p.name)
				lostMu.Unlock()
			}
			cancel(&memberError{member: p.name, err: err})
			return err
		}
		return nil
	})
	wg.Wait()
	if ownErr == nil {
		return own, nil, nil
	}
	// This node spent the request's authority finishing its half. It gives
	// it back for the full path only when a member no longer held its half
	// (it restarted: nobody else finished) and this half sent no more than
	// its round-5 commitment; otherwise the edge must come back with a
	// fresh request.
	//
	// A member that lost its half says so twice: it answers FinishPresign
	// with NotFound, and refuses this half's round-5 message as an unknown
	// session. Either may arrive first, so either counts.
	var me *memberError
	errors.As(context.Cause(ctx), &me)
	lost := len(lostBy) > 0 || strings.Contains(ownErr.Error(), ErrUnknownSession.Error())
	if claims != nil {
		if lost && e.ps.SentRound() <= 5 {
			n.verifier.Release(*claims)
		} else {
			ownErr = fmt.Errorf("%w: %w", errAuthoritySpent, ownErr)
		}
	}
	if lost {
		// Not to blame: it restarted and is fine now.
		return nil, nil, errors.Join(fmt.Errorf("members %v hold no half of presignature %s", lostBy, e.id), ownErr)
	}
	if me != nil {
		return nil, []string{me.member}, errors.Join(me, spentIf(ownErr))
	}
	var se *tss.SessionError
	if errors.As(ownErr, &se) {
		bad = append(append(bad, se.Culprits...), se.Waiting...)
	}
	return nil, dedupe(bad), ownErr
}

// spentIf is errAuthoritySpent if err says so, nil otherwise.
func spentIf(err error) error {
	if errors.Is(err, errAuthoritySpent) {
		return errAuthoritySpent
	}
	return nil
}
