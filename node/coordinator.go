package node

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/tss"
)

// ErrUnknownKey is returned for a key this node holds no share of.
var ErrUnknownKey = errors.New("unknown key")

// SignRequest is one signature to make with a cluster key.
type SignRequest struct {
	Key    tss.KeyID
	Hash   crypto.Hash
	Digest []byte
	// Edge names the authenticated requester; Authority is its end-to-end
	// signature over the request, forwarded to every member.
	Edge      string
	Authority []byte
	RequestID string
}

// Sign coordinates one threshold signature: it picks a quorum that includes
// this node, runs the session, and if a member fails or stalls, tries once
// more with a quorum without it when the key has one. The signature comes
// from this node's own party, verified against the public key.
func (n *Node) Sign(ctx context.Context, req SignRequest) (sig []byte, err error) {
	start := time.Now()
	var quorums [][]string
	var path string // "presign" or "full", once signing started
	var tk *ticket
	// One audit record per request, whatever its outcome: who asked to sign
	// with which key, who signed, how long it took, how long it waited for
	// a session slot, its deadline and when it ended (so a log reader can
	// check that no work went on past a deadline).
	n.touchLive()
	defer func() {
		n.touchLive()
		ended := time.Now()
		ev := n.log.Info()
		outcome := "signed"
		switch {
		case errors.Is(err, ErrOverloaded):
			ev, outcome = n.log.Warn().AnErr("err", err), "overloaded"
		case errors.Is(err, errUnauthorized), errors.Is(err, ErrUnknownKey), errors.Is(err, ErrKeyDisabled), errors.Is(err, ErrKeySuspended):
			ev, outcome = n.log.Warn().AnErr("err", err), "refused"
		case err != nil && contextEnded(ctx, ended):
			// The requester gave up (its connection went away) or the
			// deadline passed: the session stopped on every member.
			ev, outcome = n.log.Warn().AnErr("err", err), "cancelled"
			n.metrics.cancelled.WithLabelValues("coordinator").Inc()
		case err != nil:
			ev, outcome = n.log.Warn().AnErr("err", err), "failed"
		}
		n.metrics.signRequests.WithLabelValues(outcome).Inc()
		n.metrics.signDuration.WithLabelValues(outcome).Observe(ended.Sub(start).Seconds())
		ev = ev.Str("event", "sign").Str("key", req.Key.String()).Str("edge", req.Edge).Str("request", req.RequestID).
			Interface("quorums", quorums).Str("path", path).Str("outcome", outcome).Int64("dur_ms", ended.Sub(start).Milliseconds()).
			Int64("ended_unix_ms", ended.UnixMilli())
		if tk != nil {
			ev = ev.Int64("queue_ms", tk.waited().Milliseconds())
		}
		if deadline, ok := ctx.Deadline(); ok {
			ev = ev.Int64("deadline_unix_ms", deadline.UnixMilli()).Int64("past_deadline_ms", ended.Sub(deadline).Milliseconds())
		}
		ev.Msg("audit")
	}()
	share, ok := n.share(req.Key)
	if !ok {
		return nil, fmt.Errorf("key %s: %w", req.Key, ErrUnknownKey)
	}
	if err := n.keyRefused(req.Key); err != nil {
		return nil, err
	}
	if err := tss.CheckDigest(req.Hash, req.Digest); err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(n.cfg.SignTimeout))
		defer cancel()
	}
	// Presignatures serve only requests that carry the edge's own
	// authority: then no signer, the coordinator included, chooses the
	// digest a presignature signs (docs/presigning.md).
	presign := n.cfg.Presign.Depth > 0 && len(req.Authority) > 0
	// A request a ready presignature can serve takes milliseconds: only one
	// that will need a full session is judged against its deadline now.
	var deadline time.Time
	if !presign || n.pool.depth(req.Key) == 0 {
		deadline, _ = ctx.Deadline()
	}
	if tk, err = n.admission.arrive(req.Edge, req.Key.String(), deadline); err != nil {
		return nil, fmt.Errorf("sign key %s on %s: %w", req.Key, n.cfg.Name, err)
	}
	defer tk.leave()
	var excluded []string
	var errs []error
	if presign {
		usable := func(m string) bool {
			return m == n.cfg.Name || (n.reachable(m) && !n.coolingDown(m) && !n.convicted(m))
		}
		if e := n.pool.take(req.Key, usable); e != nil {
			quorums = append(quorums, e.quorum)
			pathStart := time.Now()
			sig, bad, err := n.signPresigned(ctx, e, req)
			if err == nil {
				path = "presign"
				n.metrics.presign.WithLabelValues("hit").Inc()
				n.metrics.signPath.WithLabelValues(path).Observe(time.Since(pathStart).Seconds())
				for _, m := range e.quorum {
					n.credit(m)
				}
				return sig, nil
			}
			for _, m := range bad {
				n.blame(m, err)
			}
			if errors.Is(err, errAuthoritySpent) {
				// The members used their halves with this request: the
				// edge retries with a fresh one.
				n.metrics.presign.WithLabelValues("spent").Inc()
				n.log.Warn().Err(err).Str("key", req.Key.String()).Strs("quorum", e.quorum).Strs("suspects", bad).Msg("presigned signing failed after its members finished")
				return nil, fmt.Errorf("sign key %s: %w: presigned, quorum %v: %w", req.Key, ErrNoQuorum, e.quorum, err)
			}
			// The presignature is gone on every member; sign the full way
			// within what is left of the deadline.
			n.metrics.presign.WithLabelValues("fallback").Inc()
			n.log.Warn().Err(err).Str("key", req.Key.String()).Strs("quorum", e.quorum).Strs("suspects", bad).Msg("presigned signing failed; signing the full way")
			errs = append(errs, fmt.Errorf("presigned, quorum %v: %w", e.quorum, err))
			excluded = append(excluded, bad...)
		} else {
			n.metrics.presign.WithLabelValues("miss").Inc()
		}
	}
	path = "full"
	// A full session computes on every member: wait for this node's turn.
	if err := tk.wait(ctx); err != nil {
		return nil, fmt.Errorf("sign key %s on %s: %w", req.Key, n.cfg.Name, err)
	}
	// noQuorum stays true while every failure is a member's (or no quorum
	// is left to try): then the answer is ErrNoQuorum, not the last error.
	noQuorum := true
	for attempt := 0; attempt < 2; attempt++ {
		quorum, ok := n.pickQuorum(share, excluded)
		if !ok {
			break
		}
		quorums = append(quorums, quorum)
		attemptStart := time.Now()
		sig, bad, err := n.signWith(ctx, share, quorum, req)
		if err == nil {
			for _, m := range quorum {
				n.credit(m)
			}
			n.admission.observe(req.Key.String(), time.Since(attemptStart))
			n.metrics.signPath.WithLabelValues(path).Observe(time.Since(attemptStart).Seconds())
			return sig, nil
		}
		for _, m := range bad {
			n.blame(m, err)
		}
		n.metrics.aborts.WithLabelValues(abortReason(err, bad)).Inc()
		n.log.Warn().Err(err).Str("key", req.Key.String()).Strs("quorum", quorum).Strs("suspects", bad).
			Int("attempt", attempt+1).Int64("dur_ms", time.Since(attemptStart).Milliseconds()).Msg("signing session failed")
		errs = append(errs, fmt.Errorf("quorum %v: %w", quorum, err))
		if len(bad) == 0 {
			noQuorum = false
			break
		}
		// Past round 1 the edge's authority is spent on every member that
		// got there: a retry with it would be refused as a replay. The
		// edge's client retries with a fresh one.
		if ctx.Err() != nil || errors.Is(err, errAuthoritySpent) {
			break
		}
		excluded = append(excluded, bad...)
	}
	if noQuorum {
		return nil, fmt.Errorf("sign key %s: %w: %w", req.Key, ErrNoQuorum, errors.Join(errs...))
	}
	return nil, fmt.Errorf("sign key %s: %w", req.Key, errors.Join(errs...))
}

// pickQuorum chooses this node plus Threshold others, leaving out excluded
// and convicted members: healthy peers first, clearly slow ones last, the
// least busy first, with ties shuffled so load spreads over the cluster.
func (n *Node) pickQuorum(share *tss.Share, excluded []string) ([]string, bool) {
	var others []string
	for _, p := range share.Parties {
		if p != n.cfg.Name && !slices.Contains(excluded, p) && !n.convicted(p) {
			others = append(others, p)
		}
	}
	if len(others) < share.Threshold {
		return nil, false
	}
	rand.Shuffle(len(others), func(i, j int) { others[i], others[j] = others[j], others[i] })
	others = n.rankPeers(others)
	return append([]string{n.cfg.Name}, others[:share.Threshold]...), true
}

// failFast is for the coordinator's calls to members inside a running
// session. Every member was connected a moment ago (it prepared), so a
// connection that is gone now means the member died: the call fails at
// once and the session is retried with another quorum, instead of waiting
// (the connection default) until the stall bound, which grows with the
// sessions in flight. The coordinator's failure cancels the others' Run
// calls, so their messages to the dead member stop waiting too.
var failFast = grpc.WaitForReady(false)

// prepareTimeout bounds asking one member to prepare its party of a
// signing session, downPrepareTimeout one whose last ping failed;
// ceremonyPrepareTimeout of a key ceremony.
const (
	prepareTimeout         = time.Second
	downPrepareTimeout     = 300 * time.Millisecond
	ceremonyPrepareTimeout = 5 * time.Second
)

// ErrNoQuorum is returned when every quorum tried failed because of its
// members (down, or blamed for an aborted session) or too few members are
// left to try one.
var ErrNoQuorum = errors.New("no quorum of the signer cluster could sign")

// ErrOverloaded is returned when this node refuses a request it cannot
// serve in time: its queue of signing requests, or the requester's share
// of it, is full, or the deadline ends before a session could (see
// admission.go); the edge should try another signer.
var ErrOverloaded = errors.New("signer overloaded")

func abortReason(err error, bad []string) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline"
	case errors.Is(err, context.Canceled):
		return "cancelled"
	case len(bad) > 0:
		return "member"
	default:
		return "protocol"
	}
}

// signWith runs one session with a given quorum. bad names members to
// avoid on a retry.
func (n *Node) signWith(ctx context.Context, share *tss.Share, quorum []string, req SignRequest) (sig []byte, bad []string, err error) {
	pr := &peerwire.PrepareRequest{
		Version: peerwire.Version,
		Session: peerwire.NewSessionID(),
		Kind:    peerwire.KindSign,
		Sign: &peerwire.SignRequest{
			Key: req.Key.String(), Quorum: quorum, Hash: req.Hash.String(), Digest: req.Digest,
			Edge: req.Edge, Authority: req.Authority, RequestID: req.RequestID,
		},
		CarryEchoes: n.canCarryEchoes(quorum),
	}
	res, bad, err := n.runSession(ctx, pr, quorum)
	if err != nil {
		return nil, bad, err
	}
	return res.Signature, nil, nil
}

// runSession prepares a session on every member, then runs it on all of
// them, and returns this node's own result. Any member's failure cancels
// the others.
func (n *Node) runSession(ctx context.Context, pr *peerwire.PrepareRequest, members []string) (*peerwire.RunResponse, []string, error) {
	return n.runSessionCollect(ctx, pr, members, nil)
}

// runSessionCollect is runSession that also hands each other member's
// result to collect.
func (n *Node) runSessionCollect(ctx context.Context, pr *peerwire.PrepareRequest, members []string, collect func(member string, r *peerwire.RunResponse)) (*peerwire.RunResponse, []string, error) {
	return n.runSessionWith(ctx, pr, members, func() error { return n.prepare(n.cfg.Name, pr) }, collect)
}

// runSessionWith is runSessionCollect with this node's own party prepared
// by prepareSelf: for an import, whose coordinator holds what no request
// carries.
func (n *Node) runSessionWith(ctx context.Context, pr *peerwire.PrepareRequest, members []string, prepareSelf func() error, collect func(member string, r *peerwire.RunResponse)) (*peerwire.RunResponse, []string, error) {
	self := n.cfg.Name
	parent := ctx
	defer n.track(members)()
	if err := prepareSelf(); err != nil {
		return nil, nil, fmt.Errorf("prepare on %s: %w", self, err)
	}
	var busyMu sync.Mutex
	var busy []string // members that refused as overloaded
	if bad, err := n.forEachPeer(ctx, members, func(ctx context.Context, p *peerConn) error {
		// A member that cannot even prepare within this time is treated as
		// down, leaving the rest of the deadline for another quorum.
		// Ceremonies are operator commands, not latency-bound: a member
		// just restarted is waited for.
		timeout := prepareTimeout
		switch {
		case pr.Kind != peerwire.KindSign:
			timeout = ceremonyPrepareTimeout
		case !n.reachable(p.name):
			// Chosen although its last ping failed: no better quorum
			// was left. It may have just restarted, so reconnect now
			// rather than after the backoff, and wait only briefly.
			p.wake()
			timeout = downPrepareTimeout
		}
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		_, err := p.client().Prepare(ctx, pr, grpc.WaitForReady(true))
		if status.Code(err) == codes.ResourceExhausted {
			busyMu.Lock()
			busy = append(busy, p.name)
			busyMu.Unlock()
		}
		return err
	}); err != nil {
		n.sessions.abort(pr.Session)
		if parent.Err() != nil {
			return nil, nil, fmt.Errorf("prepare: %w: %w", context.Cause(parent), err)
		}
		if len(busy) == len(bad) {
			// Busy, not broken: nobody is blamed, and the requester hears
			// "overloaded" (an edge tries another signer).
			return nil, nil, fmt.Errorf("prepare: %w: members %v have no room: %w", ErrOverloaded, busy, err)
		}
		return nil, bad, fmt.Errorf("prepare: %w", err)
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var own *peerwire.RunResponse
	var ownErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		own, ownErr = n.sessions.start(ctx, pr.Session)
		if ownErr != nil {
			cancel(ownErr)
		}
	})
	_, _ = n.forEachPeer(ctx, members, func(ctx context.Context, p *peerConn) error {
		r, err := p.client().Run(ctx, &peerwire.RunRequest{Version: peerwire.Version, Session: pr.Session}, failFast)
		if err != nil {
			cancel(&memberError{member: p.name, err: err})
			return err
		}
		if collect != nil {
			collect(p.name, r)
		}
		return nil
	})
	wg.Wait()
	if ownErr == nil {
		// This node's party verified the signature against the public key;
		// a member failing after that changes nothing.
		return own, nil, nil
	}
	// The requester gave up, the deadline passed, or a live request took
	// a refill's slot: the session stopped on every member (their Run
	// calls were cancelled with this one), and nobody is to blame.
	if parent.Err() != nil {
		return nil, nil, fmt.Errorf("session %s stopped: %w: %w", pr.Session, context.Cause(parent), ownErr)
	}
	// Blame whoever failed first: a member whose call broke cancels this
	// node's party, whose own error would then only say "cancelled".
	var me *memberError
	if errors.As(context.Cause(ctx), &me) {
		if errors.Is(ownErr, errAuthoritySpent) {
			return nil, []string{me.member}, errors.Join(me, errAuthoritySpent)
		}
		return nil, []string{me.member}, me
	}
	var bad []string
	var se *tss.SessionError
	if errors.As(ownErr, &se) {
		bad = append(append(bad, se.Culprits...), se.Waiting...)
	}
	return nil, dedupe(bad), ownErr
}

// forEachPeer calls f for every member but this node, concurrently; it
// returns the members whose call failed.
func (n *Node) forEachPeer(ctx context.Context, members []string, f func(context.Context, *peerConn) error) ([]string, error) {
	var mu sync.Mutex
	var bad []string
	var errs []error
	var wg sync.WaitGroup
	for _, m := range members {
		if m == n.cfg.Name {
			continue
		}
		p, ok := n.peers[m]
		if !ok {
			bad = append(bad, m)
			errs = append(errs, fmt.Errorf("member %s: no address configured", m))
			continue
		}
		wg.Go(func() {
			if err := f(ctx, p); err != nil {
				mu.Lock()
				bad = append(bad, m)
				errs = append(errs, &memberError{member: m, err: err})
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return bad, errors.Join(errs...)
}

func dedupe(s []string) []string {
	slices.Sort(s)
	return slices.Compact(s)
}
