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
// Rounds 1–4 of tss-lib's GG18 signing (ecdsa/signing round_1.go to
// round_4.go) never read the message: they run the Paillier MtA with its
// range proofs (k_i·γ_j and k_i·w_j), and open the commitments to Γ_i. The
// message m first appears in round 5 (round_5.go: s_i = m·k_i + r·σ_i), and
// tss-lib's party keeps the *big.Int it was created with (local_party.go:
// p.temp.m = msg) rather than a copy. So a PresignSession creates the party
// with a *big.Int it owns, set to zero, runs rounds 1–3, lets its party
// send its round-4 message, and holds every incoming round-4 message
// (SignRound4Message) instead of delivering it: without them no party can
// compute R = (Σ Γ_j)^(1/θ)… on its own side. It is then ready. Finish
// writes the digest into that *big.Int and releases the held messages:
// rounds 5–9 run, costing about a millisecond of compute instead of
// hundreds. TestPresignPointerPinned fails if a tss-lib upgrade stops
// reading the message through the pointer.
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
	m      *big.Int // what the party signs; zero until Finish
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
		m:        new(big.Int),
		ready:    make(chan struct{}),
		digestc:  make(chan []byte, 1),
		loopDone: make(chan struct{}),
	}
	r, err := newSignRunner("presign", share, quorum, s.m, outbox, s.end)
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

// destroy drops the party and its secret per-signature state (k_i, γ_i,
// σ_i live inside tss-lib's party, which offers no way to zero them; with
// the last reference gone they are garbage) and zeroes what is ours.
func (s *PresignSession) destroy() {
	s.r.party = nil
	s.m.SetInt64(0)
	s.r.close()
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
	others := len(r.m.sorted) - 1
	var held []tsslib.ParsedMessage
	heldRound4, round4From := 0, map[string]bool{}
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
		if !online && !ready && r.round() >= 4 && heldRound4 == others {
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
			close(drain)
			select {
			case <-drained:
			case <-ctx.Done():
			}
			rr, sv := new(big.Int).SetBytes(res.R), new(big.Int).SetBytes(res.S)
			der := encodeSignature(rr, sv)
			if !ecdsa.VerifyASN1(s.pub, s.digest, der) {
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
			// The digest enters here and nowhere earlier: tss-lib reads
			// it through this pointer from round 5 on.
			s.digest = d
			s.m.Set(DigestScalar(d))
			online = true
			resetStall()
			for _, msg := range held {
				if err := update(msg, msg.GetFrom().Id); err != nil {
					fail(err)
					return
				}
			}
			held = nil
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
			if !online && RoundOf(msg.Type()) >= 4 {
				// Each other member sends one message per round, six rounds
				// from 4 on: more is a sender flooding the held queue.
				if len(held) >= 6*others {
					fail(&SessionError{Round: RoundOf(msg.Type()), Culprits: []string{in.from}, Err: errors.New("more held messages than the protocol sends")})
					return
				}
				held = append(held, msg)
				if RoundOf(msg.Type()) == 4 && !round4From[in.from] {
					round4From[in.from] = true
					heldRound4++
				}
				continue
			}
			if err := update(msg, in.from); err != nil {
				fail(err)
				return
			}
		}
	}
}
