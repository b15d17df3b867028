package tss

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bnb-chain/tss-lib/v2/common"
	tsslib "github.com/bnb-chain/tss-lib/v2/tss"
)

// Presigning: GG18's signing split into an offline and an online part.
//
// Rounds 1–4 of GG18 signing never read the message: they run the
// Paillier MtA with its range proofs (k_i·γ_j and k_i·w_j), and open the
// commitments to Γ_i. The message m first appears in round 5
// (s_i = m·k_i + r·σ_i), which is also where R is computed. The engine's
// party (engine.go) made without a message runs rounds 1–4, and once every
// member's round-4 message is in (and its own went out) it waits: it is
// ready. Messages of later rounds that arrive early (a member given the
// digest first) wait inside the party, one per member and round. Finish
// hands the party the digest (setMessage), and rounds 5–9 run, costing
// about a millisecond of compute instead of hundreds.
//
// A presignature is used at most once, and lives in memory only: Finish
// claims it before anything else, and every path out of the session
// (a signature, an error, expiry, Abort) ends it and drops its state. See
// docs/presigning.md for why the digest must be fixed by an authenticated
// request and why a presignature is bound to one key and one quorum.

// Presignature errors. The node layer maps them to "fall back to full
// signing" (the entry is gone either way).
var (
	// ErrPresignUsed is returned by a second Finish of the same session.
	ErrPresignUsed = errors.New("presignature already used")
	// ErrPresignExpired is returned by Finish after the session's lifetime
	// (the context given to Start) ended.
	ErrPresignExpired = errors.New("presignature expired")
	// ErrPresignNotReady is returned by Finish before rounds 1–4 are done
	// on this node; the presignature is destroyed all the same.
	ErrPresignNotReady = errors.New("presignature not ready")
)

// PresignSession is one node's part in one presignature: a signing
// session with a key and quorum fixed and the message not yet.
type PresignSession struct {
	r      *runner
	end    chan *common.SignatureData
	pub    *ecdsa.PublicKey
	digest []byte

	ready    chan struct{} // closed once rounds 1–4 are done here
	digestc  chan []byte
	claimed  atomic.Bool
	loopDone chan struct{}
	// sig and err are the outcome, set before loopDone is closed.
	sig []byte
	err error

	startOnce sync.Once
	life      context.Context // the presignature's lifetime, from Start
}

// NewPresignSession prepares this node's party of a presignature with
// share's key and the given quorum (Threshold+1 holders, self among them).
// Every member of the quorum runs one, with the same session id at the
// transport.
func NewPresignSession(share *Share, quorum []string, outbox Outbox) (*PresignSession, error) {
	s := &PresignSession{
		end:      make(chan *common.SignatureData, 1),
		ready:    make(chan struct{}),
		digestc:  make(chan []byte, 1),
		loopDone: make(chan struct{}),
	}
	r, err := newSignRunner("presign", share, quorum, nil, outbox, s.end, implEngine)
	if err != nil {
		return nil, err
	}
	s.r, s.pub = r, share.pub
	return s, nil
}

// Deliver hands the session a message from another quorum member. from
// must be the name the transport authenticated. It does not block.
func (s *PresignSession) Deliver(from string, broadcast bool, payload []byte) error {
	return s.r.deliver(from, broadcast, payload)
}

// SetStallTimeout makes the session fail, blaming the members it waits
// for, when no message arrives for d while it runs its rounds (not while it
// waits, ready, for a digest). Call it before Start.
func (s *PresignSession) SetStallTimeout(d time.Duration) { s.r.stall = d }

// SetStallFunc is SetStallTimeout with a bound asked again each time the
// wait for a message starts over, so it can follow the node's load.
func (s *PresignSession) SetStallFunc(f func() time.Duration) { s.r.stallFn = f }

// Start runs the offline rounds in the background. ctx bounds the
// presignature's whole life: when it ends, ready or not, the session ends
// and Finish returns ErrPresignExpired.
func (s *PresignSession) Start(ctx context.Context) {
	s.startOnce.Do(func() {
		s.life = ctx
		go s.loop(ctx)
	})
}

// WaitReady returns nil once rounds 1–4 are done on this node and every
// other member's round-4 message is held here, or the session's error.
func (s *PresignSession) WaitReady(ctx context.Context) error {
	select {
	case <-s.ready:
		return nil
	case <-s.loopDone:
		return s.err
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// Done is closed when the session has ended, whatever the outcome; its
// state is gone by then.
func (s *PresignSession) Done() <-chan struct{} { return s.loopDone }

// Ready reports whether the presignature can be finished now.
func (s *PresignSession) Ready() bool {
	select {
	case <-s.loopDone:
		return false
	case <-s.ready:
		return !s.claimed.Load()
	default:
		return false
	}
}

// Claimed reports whether Finish has been called: the presignature is
// spent, and may still be finishing.
func (s *PresignSession) Claimed() bool { return s.claimed.Load() }

// Finish signs digest with the presignature and returns the signature,
// ASN.1 DER, verified against the key's public key. It succeeds at most
// once per session; every call after the first returns ErrPresignUsed, and
// whatever the outcome the session's state is gone when it returns. If
// ctx ends first, the session is aborted.
func (s *PresignSession) Finish(ctx context.Context, digest []byte) ([]byte, error) {
	if err := checkDigestLen(digest); err != nil {
		s.Abort(&SessionError{Err: fmt.Errorf("finish refused: %w", err)})
		return nil, fmt.Errorf("presign: %w", err)
	}
	if !s.claimed.CompareAndSwap(false, true) {
		return nil, ErrPresignUsed
	}
	select {
	case <-s.ready:
	case <-s.loopDone:
		return nil, s.err
	default:
		s.Abort(&SessionError{Err: ErrPresignNotReady})
		return nil, ErrPresignNotReady
	}
	if s.life.Err() != nil {
		<-s.loopDone
		return nil, &SessionError{Kind: s.r.kind, Round: 4, Err: ErrPresignExpired}
	}
	s.digestc <- slices.Clone(digest)
	select {
	case <-s.loopDone:
	case <-ctx.Done():
		s.Abort(&SessionError{Err: fmt.Errorf("finish: %w", context.Cause(ctx))})
		<-s.loopDone
	}
	return s.sig, s.err
}

// SentRound is the latest protocol round this party sent a message of.
// Finishing sends round 5 at once, a commitment; from round 6 on the party
// opens values that depend on the digest and its secrets.
func (s *PresignSession) SentRound() int { return s.r.round() }

// Abort ends the session with err (Kind is filled in) and destroys it.
func (s *PresignSession) Abort(err *SessionError) {
	s.claimed.Store(true)
	s.r.abort(err)
	// A session that was never started has no loop to end it.
	s.startOnce.Do(func() {
		s.err = err
		s.destroy()
		close(s.loopDone)
	})
}

// destroy zeroes the party's secret per-signature state (k_i, γ_i, σ_i,
// m, the decrypted MtA answers: runner.end) and drops it. It runs in the
// session's own goroutine, or before it ever started.
func (s *PresignSession) destroy() {
	s.r.end()
	s.r.party = nil
}

func (s *PresignSession) loop(ctx context.Context) {
	defer close(s.loopDone)
	defer s.destroy()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r := s.r

	sendErr := make(chan error, 1)
	drain, drained := make(chan struct{}), make(chan struct{})
	go r.sendLoop(ctx, sendErr, drain, drained)
	fail := func(err error) {
		var se *SessionError
		if !errors.As(err, &se) {
			se = &SessionError{Kind: r.kind, Round: r.round(), Err: err}
		}
		se.Kind = r.kind
		s.err = se
	}
	if err := r.call(func() *tsslib.Error { return r.party.Start() }, ""); err != nil {
		fail(err)
		return
	}
	// Only the engine's party can wait for its message (NewPresignSession).
	party := r.party.(*engineParty)
	online, ready := false, false
	var stallC <-chan time.Time
	var stallTimer *time.Timer
	if bound := r.stallBound(); bound > 0 {
		stallTimer = time.NewTimer(bound)
		defer stallTimer.Stop()
		stallC = stallTimer.C
	}
	resetStall := func() {
		if stallTimer != nil {
			stallTimer.Reset(r.stallBound())
			stallC = stallTimer.C
		}
	}
	update := func(msg tsslib.ParsedMessage, from string) error {
		return r.call(func() *tsslib.Error { _, e := r.party.Update(msg); return e }, from)
	}
	for {
		if !online && !ready && r.round() >= 4 && party.awaitingMessage() {
			ready = true
			close(s.ready)
			// Waiting for a digest is not a stall.
			if stallTimer != nil {
				stallTimer.Stop()
				stallC = nil
			}
		}
		select {
		case res := <-s.end:
			// The party's round-9 message may still be on its way to the
			// others, who need it too: check the signature meanwhile, then
			// wait for it to go out.
			close(drain)
			rr, sv := new(big.Int).SetBytes(res.R), new(big.Int).SetBytes(res.S)
			der := encodeSignature(rr, sv)
			valid := ecdsa.VerifyASN1(s.pub, s.digest, der)
			select {
			case <-drained:
			case <-ctx.Done():
			}
			if !valid {
				fail(&SessionError{Round: 9, Unattributed: true, Err: errors.New("joint signature does not verify against the key's public key")})
				return
			}
			s.sig = der
			return
		case err := <-sendErr:
			fail(err)
			return
		case err := <-r.failc:
			fail(err)
			return
		case <-ctx.Done():
			if ready && !online {
				fail(&SessionError{Round: 4, Err: ErrPresignExpired})
			} else {
				fail(&SessionError{Round: r.round(), Waiting: r.waitingFor(), Err: context.Cause(ctx)})
			}
			return
		case <-stallC:
			w := r.waitingFor()
			fail(&SessionError{Round: r.round(), Culprits: w, Waiting: w, Err: fmt.Errorf("no message for %v: stalled", r.stallBound())})
			return
		case <-r.progress:
		case d := <-s.digestc:
			if ctx.Err() != nil {
				fail(&SessionError{Round: 4, Err: ErrPresignExpired})
				return
			}
			// The digest enters here and nowhere earlier: the party
			// cannot start round 5 without it, and messages of rounds 5
			// and later that came early wait inside it.
			s.digest = d
			online = true
			resetStall()
			if err := r.call(func() *tsslib.Error { return party.setMessage(DigestScalar(d)) }, ""); err != nil {
				fail(err)
				return
			}
		case in := <-r.inbox:
			// Ready and waiting for the digest, a message (round 5 from a
			// member that was given the digest first) is held and the
			// stall timer stays off.
			if !ready || online {
				resetStall()
			}
			msg, err := r.parse(in)
			if err != nil {
				fail(err)
				return
			}
			if err := update(msg, in.from); err != nil {
				fail(err)
				return
			}
		}
	}
}
