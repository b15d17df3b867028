package node

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tkeyless/tkeyless/internal/authority"
	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/tss"
)

var hashNames = map[string]crypto.Hash{"SHA-224": crypto.SHA224, "SHA-256": crypto.SHA256, "SHA-384": crypto.SHA384, "SHA-512": crypto.SHA512}

// prepare sets up this node's party of a session another node (or this
// one) coordinates, after checking on its own that the request is one it
// should take part in.
func (n *Node) prepare(coordinator string, req *peerwire.PrepareRequest) error {
	if !peerwire.Supported(req.Version) {
		return fmt.Errorf("protocol version %d, this node speaks %d to %d", req.Version, peerwire.MinVersion, peerwire.Version)
	}
	if err := n.admit(coordinator, req); err != nil {
		return err
	}
	// Whether echoes travel on envelopes is the coordinator's choice, the
	// same for every member (it asks only when all speak the version).
	carry := req.CarryEchoes && req.Version >= peerwire.CarryEchoesVersion
	switch req.Kind {
	case peerwire.KindSign:
		if req.Sign == nil {
			return errors.New("sign session without a sign request")
		}
		return n.prepareSign(coordinator, req.Session, req.Sign, carry)
	case peerwire.KindKeygen:
		if req.Keygen == nil {
			return errors.New("keygen session without a keygen request")
		}
		return n.prepareKeygen(coordinator, req.Session, req.Keygen)
	case peerwire.KindPresign:
		if req.Presign == nil {
			return errors.New("presign session without a presign request")
		}
		return n.preparePresign(coordinator, req.Session, req.Presign, carry)
	case peerwire.KindReshare:
		if req.Reshare == nil {
			return errors.New("reshare session without a reshare request")
		}
		return n.prepareReshare(coordinator, req.Session, req.Reshare, nil)
	default:
		return fmt.Errorf("unknown session kind %q", req.Kind)
	}
}

// keygenStall is how long a key generation waits for any message before it
// blames the members it waits for: its rounds carry Paillier and
// factorization proofs that take seconds each on a loaded node.
const keygenStall = 60 * time.Second

// errBusyPeer marks a Prepare refused because its coordinator already has
// its share of this node's sessions.
var errBusyPeer = errors.New("coordinator already has its share of this node's sessions")

// admit decides whether this node has room for one more session from
// coordinator, before it looks at what the session is. No member it would
// share the session with may be convicted here. Sessions that compute
// (all but presignatures, which preparePresign bounds by presign.depth)
// are bounded in all (max_sessions) and per coordinator
// (max_sessions_per_peer), so one node flooding Prepares fills its own
// share of this node, never the others'.
func (n *Node) admit(coordinator string, req *peerwire.PrepareRequest) error {
	for _, m := range append(sessionMembers(req), coordinator) {
		if n.convicted(m) {
			return fmt.Errorf("session %s includes %s: %w (an admin may readmit it)", req.Session, m, errConvicted)
		}
	}
	if req.Kind == peerwire.KindPresign {
		// A presignature never competes with live requests: a member
		// with live work waiting, or every slot taken, refuses it (the
		// coordinator itself took its slot from the queue, behind every
		// live request).
		if coordinator != n.cfg.Name && n.admission.busy() {
			return fmt.Errorf("%w: live signing first: %s has no free session slot for a presignature", ErrOverloaded, n.cfg.Name)
		}
		return nil
	}
	active, mine, _ := n.sessions.load(coordinator, "")
	if active >= n.cfg.MaxSessions {
		return fmt.Errorf("%w: %d sessions already live on %s", ErrOverloaded, active, n.cfg.Name)
	}
	if mine >= n.cfg.MaxSessionsPerPeer {
		return fmt.Errorf("%w: %w: %d sessions from %s already live here (max_sessions_per_peer %d)", ErrOverloaded, errBusyPeer, mine, coordinator, n.cfg.MaxSessionsPerPeer)
	}
	return nil
}

// sessionMembers names who takes part in the session req prepares.
func sessionMembers(req *peerwire.PrepareRequest) []string {
	switch {
	case req.Sign != nil:
		return req.Sign.Quorum
	case req.Presign != nil:
		return req.Presign.Quorum
	case req.Keygen != nil:
		return req.Keygen.Parties
	case req.Reshare != nil:
		return union(req.Reshare.OldParties, req.Reshare.NewParties)
	}
	return nil
}

// errAuthoritySpent marks a failed signing session that got past round 1
// on this node: the edge's authority for it is used up, so the coordinator
// must not retry with it (the edge retries with a fresh one).
var errAuthoritySpent = errors.New("the request's authority is spent (the session passed round 1)")

// finishWait bounds how long a Prepare waits for presignature finishes
// under way to end (a cancelled finish ends in well under a millisecond).
const finishWait = time.Second

// checkSignRequest is what every member checks on its own before it
// signs: it holds a share of the key, the key is enabled, the quorum
// includes it and the coordinator, the digest fits the hash, and the edge
// authorized this very request for this key.
func (n *Node) checkSignRequest(coordinator string, id peerwire.SessionID, req *peerwire.SignRequest) (*tss.Share, *authority.Claims, error) {
	keyID, err := tss.ParseKeyID(req.Key)
	if err != nil {
		return nil, nil, err
	}
	share, ok := n.share(keyID)
	if !ok {
		return nil, nil, fmt.Errorf("key %s: this node holds no share", keyID)
	}
	if err := n.keyRefused(keyID); err != nil {
		return nil, nil, err
	}
	if !slices.Contains(req.Quorum, n.cfg.Name) || !slices.Contains(req.Quorum, coordinator) {
		return nil, nil, fmt.Errorf("quorum %v must include this node (%s) and the coordinator (%s)", req.Quorum, n.cfg.Name, coordinator)
	}
	hash, ok := hashNames[req.Hash]
	if !ok {
		return nil, nil, fmt.Errorf("hash %q not supported", req.Hash)
	}
	if err := tss.CheckDigest(hash, req.Digest); err != nil {
		return nil, nil, err
	}
	if req.Edge == "" {
		return nil, nil, errors.New("request names no edge identity")
	}
	claims, err := n.authorize(keyID, hash, req)
	if errors.Is(err, authority.ErrReplay) && n.finishes.wait(coordinator, finishWait) {
		// This coordinator's presigned attempt at the request may have
		// just failed here (a member had lost its half), and this node's
		// half gives the authority back as it ends: the cancellation and
		// the full path's Prepare race. Ask again once it has ended.
		claims, err = n.authorize(keyID, hash, req)
	}
	if err != nil {
		n.log.Warn().Err(err).Str("key", keyID.String()).Str("edge", req.Edge).Str("coordinator", coordinator).Str("session", id.String()).Msg("refused to sign: request not authorized")
		return nil, nil, fmt.Errorf("%w: %w", errUnauthorized, err)
	}
	return share, claims, nil
}

func (n *Node) prepareSign(coordinator string, id peerwire.SessionID, req *peerwire.SignRequest, carry bool) error {
	share, claims, err := n.checkSignRequest(coordinator, id, req)
	if err != nil {
		return err
	}
	ss, err := tss.NewSignSession(share, req.Quorum, req.Digest, n.outbox(id, peerwire.KindSign, req.Key, len(req.Quorum)))
	if err != nil {
		return err
	}
	ss.SetStallFunc(n.stallTimeout)
	return n.sessions.add(&session{
		id: id, kind: peerwire.KindSign, key: req.Key, members: slices.Clone(req.Quorum), coordinator: coordinator, party: ss, carry: carry,
		run: func(ctx context.Context) (resp *peerwire.RunResponse, err error) {
			if coordinator != n.cfg.Name {
				// The coordinator took its slot from its own queue; this
				// node computes its part at once, and counts it.
				defer n.admission.join()()
				defer n.memberAudit(ctx, id, coordinator, req, time.Now(), &err)
			}
			// One authority yields at most one session past round 1 on
			// this node: claim its request id before signing. A session
			// that fails before this node's secrets went into any answer
			// gives it back, so the coordinator can retry with another
			// quorum; one that got further keeps it spent, so no member can
			// make one request run (and fail) many times.
			if claims != nil {
				if err := n.verifier.MarkUsed(*claims); err != nil {
					return nil, err
				}
			}
			n.touchLive()
			defer n.touchLive()
			sig, err := ss.Run(ctx)
			if err != nil {
				if claims == nil {
					return nil, err
				}
				if ss.PastRound1() {
					return nil, fmt.Errorf("%w: %w", errAuthoritySpent, err)
				}
				n.verifier.Release(*claims)
				return nil, err
			}
			return &peerwire.RunResponse{Signature: sig}, nil
		},
	})
}

// memberAudit logs how this node's part in another coordinator's signing
// session ended: with its deadline (the coordinator's, carried by the Run
// call) and end time, a log reader can check that no member kept working
// on a request its requester had given up on.
func (n *Node) memberAudit(ctx context.Context, id peerwire.SessionID, coordinator string, req *peerwire.SignRequest, start time.Time, errp *error) {
	ended := time.Now()
	err := *errp
	ev, outcome := n.log.Info(), "signed"
	// The coordinator refusing this party's message as an unknown session
	// means it ended the session first: its requester gave up, and the
	// cancellation of this node's Run call is on its way.
	var me *memberError
	coordinatorGone := errors.As(err, &me) && me.member == coordinator && strings.Contains(me.Error(), ErrUnknownSession.Error())
	switch {
	case err != nil && (contextEnded(ctx, ended) || coordinatorGone):
		ev, outcome = n.log.Warn().AnErr("err", err), "cancelled"
		n.metrics.cancelled.WithLabelValues("member").Inc()
	case err != nil:
		ev, outcome = n.log.Warn().AnErr("err", err), "failed"
	}
	ev = ev.Str("event", "member_sign").Str("key", req.Key).Str("session", id.String()).Str("coordinator", coordinator).
		Str("edge", req.Edge).Str("request", req.RequestID).Str("outcome", outcome).Int64("dur_ms", ended.Sub(start).Milliseconds()).
		Int64("ended_unix_ms", ended.UnixMilli())
	if deadline, ok := ctx.Deadline(); ok {
		ev = ev.Int64("deadline_unix_ms", deadline.UnixMilli()).Int64("past_deadline_ms", ended.Sub(deadline).Milliseconds())
	}
	ev.Msg("audit")
}

func (n *Node) prepareKeygen(coordinator string, id peerwire.SessionID, req *peerwire.KeygenRequest) error {
	if !slices.Contains(req.Parties, n.cfg.Name) || !slices.Contains(req.Parties, coordinator) {
		return fmt.Errorf("parties %v must include this node (%s) and the coordinator (%s)", req.Parties, n.cfg.Name, coordinator)
	}
	for _, p := range req.Parties {
		if _, ok := n.peers[p]; !ok && p != n.cfg.Name {
			return fmt.Errorf("keygen: party %q is not a node this one knows", p)
		}
	}
	claims, err := n.verifier.VerifyStatement(req.Authority, peerwire.KeygenStatement(req.Threshold, req.Parties), authority.Once)
	if err == nil {
		// A ceremony needs an admin trusted now: not one revoked here. (A
		// key state it signed earlier stands: revoking an admin must not
		// undo a kill switch.)
		err = n.refuseRevoked(claims.Identity.Cert, "statement")
	}
	if err != nil {
		return fmt.Errorf("keygen: %w: %w", errUnauthorized, err)
	}
	n.log.Info().Str("session", id.String()).Str("coordinator", coordinator).Str("admin", claims.Identity.Name).Int("t", req.Threshold).Strs("parties", req.Parties).
		Msg("key generation authorized by an admin")
	pp, err := n.preParams.get()
	if err != nil {
		return err
	}
	ks, err := tss.NewKeygenSession(req.Threshold, req.Parties, n.cfg.Name, pp, n.outbox(id, peerwire.KindKeygen, "", len(req.Parties)))
	if err != nil {
		return err
	}
	ks.SetStallTimeout(keygenStall)
	return n.sessions.add(&session{
		id: id, kind: peerwire.KindKeygen, members: slices.Clone(req.Parties), coordinator: coordinator, party: ks,
		run: func(ctx context.Context) (*peerwire.RunResponse, error) {
			share, err := ks.Run(ctx)
			if err != nil {
				return nil, err
			}
			if err := n.store.Save(share); err != nil {
				return nil, fmt.Errorf("store share of new key %s: %w", share.KeyID(), err)
			}
			n.mu.Lock()
			n.shares[share.KeyID()] = share
			n.mu.Unlock()
			pub, err := x509.MarshalPKIXPublicKey(share.PublicKey())
			if err != nil {
				return nil, err
			}
			n.log.Info().Str("key", share.KeyID().String()).Int("t", share.Threshold).Strs("parties", share.Parties).Msg("new key share stored")
			return &peerwire.RunResponse{PublicKey: pub}, nil
		},
	})
}

// outbox sends a session's messages to the other members, in parallel, and
// returns once every recipient accepted (queued) them.
// Broadcasts in sessions of three or more are signed for the echo check
// (see echo.go).
func (n *Node) outbox(id peerwire.SessionID, kind peerwire.Kind, key string, members int) tss.Outbox {
	return tss.OutboxFunc(func(ctx context.Context, m tss.Outgoing) error {
		// In a carry session, a round waits for the echoes of the
		// next-but-last round's broadcasts, and carries this node's own of
		// the last round's (carry.go).
		s, _ := n.sessions.get(id)
		carry := s != nil && s.carried(m.Round)
		if carry {
			if err := n.awaitEchoes(ctx, s, m.Round-2); err != nil {
				return err
			}
		}
		errs := make([]error, len(m.To))
		// One signature serves every recipient of a broadcast: it covers
		// nothing that differs between them.
		var signedDigest, sig []byte
		for i, to := range m.To {
			p, ok := n.peers[to]
			if !ok {
				errs[i] = fmt.Errorf("no address configured for member %s", to)
				continue
			}
			env := &peerwire.Envelope{Version: peerwire.Version, Session: id, Kind: kind, Key: key, From: n.cfg.Name,
				Round: m.Round, Type: m.Type, Broadcast: m.Broadcast, Payload: m.Payload}
			if carry {
				env.Echoes = s.takeOwed(to, m.Round-1)
			}
			if tamperOutgoing != nil && !tamperOutgoing(to, env) {
				continue
			}
			if env.Broadcast && members >= 3 {
				if d := broadcastDigest(env); !bytes.Equal(d, signedDigest) {
					var err error
					if sig, err = n.signWithNodeKey(d); err != nil {
						return fmt.Errorf("sign broadcast: %w", err)
					}
					signedDigest = d
				}
				env.Sig = sig
			}
			// Members talk to each other here for the first time in the
			// session (the coordinator prepared each of them), so a member
			// that restarted may still be in this node's reconnect backoff:
			// reconnect now, and wait for it within the session's bounds.
			p.wake()
			// Posted, not delivered: the send does not wait for the member
			// to take the envelope (so the members are sent to one after
			// the other), and a refusal, which comes later, fails the
			// session as a failed send would have.
			refused := func(err error) { n.sendRefused(id, m, &memberError{member: to, err: err}) }
			if err := p.client().Post(ctx, env, refused); err != nil {
				errs[i] = &memberError{member: to, err: err}
			}
		}
		return errors.Join(errs...)
	})
}

// sendRefused fails session id as its outbox would have failed had the
// send of m waited for the refusal err.
func (n *Node) sendRefused(id peerwire.SessionID, m tss.Outgoing, err error) {
	if s, _ := n.sessions.get(id); s != nil {
		s.party.Abort(&tss.SessionError{Round: m.Round, Err: fmt.Errorf("send %s: %w", m.Type, err)})
	}
}

// contextEnded reports whether ctx was cancelled, or its deadline had
// passed at now. ctx.Err() alone can lag: a deadline is noticed when its
// timer fires, and on a busy machine a member's refusal at the same
// deadline (its copy, from the call's timeout) can come back first.
func contextEnded(ctx context.Context, now time.Time) bool {
	if ctx.Err() != nil {
		return true
	}
	deadline, ok := ctx.Deadline()
	return ok && !now.Before(deadline)
}

// memberError is a failure attributed to one session member.
type memberError struct {
	member string
	err    error
}

func (e *memberError) Error() string { return fmt.Sprintf("member %s: %v", e.member, e.err) }
func (e *memberError) Unwrap() error { return e.err }

// tamperOutgoing, when set, may rewrite an envelope before it is signed and
// sent. Only the adversary build (go build -tags adversary) sets it, to test
// that honest nodes catch a misbehaving one; release builds leave it nil.
var tamperOutgoing func(to string, env *peerwire.Envelope) (send bool)

// stallTimeout is how long a session waits for any message before it
// blames the members it waits for. A round takes well under a second on an
// idle node; with k sessions sharing the cores each round takes up to k
// times as long (measured: eight concurrent 3-party sessions on 2 cores
// saw rounds of several seconds, and a bound of base·(1+k/4) blamed honest
// members), so the bound grows in proportion to the sessions live here.
func (n *Node) stallTimeout() time.Duration {
	base := time.Duration(n.cfg.StallTimeout)
	return base * time.Duration(max(1, n.sessions.active()))
}
