package tss

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	tsslib "github.com/bnb-chain/tss-lib/v2/tss"

	"github.com/tkeyless/tkeyless/tss/internal/gg18"
)

// Outgoing is one message a party produced, ready for the transport.
type Outgoing struct {
	// To lists the recipients. For a broadcast it is every other member.
	To        []string
	Broadcast bool
	// Round is the protocol round that carries the message (1-based); the
	// transport puts it in the envelope so a receiver can refuse messages
	// for a round that has passed.
	Round int
	// Type is tss-lib's message type name, for logs and envelope checks.
	Type string
	// Payload is tss-lib's wire encoding of the message content.
	Payload []byte
}

// Outbox carries a session's outgoing messages to the other members. Send is
// called from one goroutine per session, in the order the party produced the
// messages; it should return once the message is handed to the network, and
// must honour ctx, which carries the session's deadline.
type Outbox interface {
	Send(ctx context.Context, m Outgoing) error
}

// OutboxFunc adapts a function to Outbox.
type OutboxFunc func(ctx context.Context, m Outgoing) error

// Send calls f.
func (f OutboxFunc) Send(ctx context.Context, m Outgoing) error { return f(ctx, m) }

// ErrSessionClosed is returned by Deliver once a session has finished.
var ErrSessionClosed = errors.New("session closed")

// SessionError is a failed ceremony or signing session. Culprits are the
// members tss-lib (or tkeyless's own checks) blamed, by node name; empty when
// nobody was blamed (a deadline, a transport failure).
type SessionError struct {
	Kind     string // "keygen", "sign", "reshare" or "import"
	Round    int
	Culprits []string
	// Convicted names the culprits whose messages prove they deviated from
	// the protocol (ErrMisbehaved): an honest member's never fail the check
	// that caught them. A culprit that is only suspected (it stalled, or
	// sent bytes that do not parse) is not convicted.
	Convicted []string
	// Waiting names the members the party was still waiting for when the
	// session ended without a result.
	Waiting []string
	// Unattributed says a protocol check failed without naming anyone: the
	// joint signature did not verify, or tss-lib refused a round naming no
	// culprit. Such aborts are what a cheating member may hope to learn
	// something from, so the node layer budgets them.
	Unattributed bool
	// Fault says this member's own arithmetic failed a consistency check
	// (ErrFault): the session named nobody, and the machine needs looking
	// at. Not Unattributed: no member's message caused it.
	Fault bool
	Err   error
}

// ErrFault is in a SessionError's chain when this member's own CRT
// arithmetic (its Paillier key's or its Ñ's) failed its consistency check:
// a fault of this machine, never a peer's doing. The faulty result was
// discarded.
var ErrFault = gg18.ErrFault

func (e *SessionError) Error() string {
	var b strings.Builder
	b.WriteString(e.Kind)
	if e.Round > 0 {
		fmt.Fprintf(&b, ": round %d", e.Round)
	}
	if len(e.Convicted) > 0 {
		fmt.Fprintf(&b, ": convicted %v", e.Convicted)
	} else if len(e.Culprits) > 0 {
		fmt.Fprintf(&b, ": culprits %v", e.Culprits)
	}
	if len(e.Waiting) > 0 {
		fmt.Fprintf(&b, ": waiting for %v", e.Waiting)
	}
	fmt.Fprintf(&b, ": %v", e.Err)
	return b.String()
}

func (e *SessionError) Unwrap() error { return e.Err }

type inbound struct {
	from      string
	broadcast bool
	payload   []byte
}

// protocolParty is what a runner needs of a protocol party. tsslib.Party
// has it; so do engineParty (engine.go), tkeyless's signing party, and
// resharePair (reshare.go), the one or two parties a node runs in a
// resharing, which tss-lib's Party interface (with unexported methods) would
// not admit.
type protocolParty interface {
	Start() *tsslib.Error
	Update(msg tsslib.ParsedMessage) (ok bool, err *tsslib.Error)
	WaitingFor() []*tsslib.PartyID
}

// runner drives one protocol party (tss-lib's, or the signing engine's):
// it feeds delivered messages to the party one at a time (parties are not
// meant to be updated concurrently while a round starts) and hands
// produced messages to the Outbox.
type runner struct {
	kind  string
	self  string
	m     *members
	party protocolParty
	// out is where tss-lib writes the party's messages; the runner moves
	// them to sendq after every call into the party (flush), so that what
	// leaves is decided in the party's own goroutine, in order.
	out    chan tsslib.Message
	sendq  chan tsslib.Message
	outbox Outbox
	checks *peerChecks

	inbox     chan inbound
	failc     chan *SessionError
	done      chan struct{}
	closeOnce sync.Once
	lastRound atomic.Int32
	// recvRound is the latest round of a message accepted from a peer.
	recvRound atomic.Int32
	// stall, if set, ends the session when no message arrives for that
	// long while the party still waits for some. stallFn, if set, is asked
	// instead each time the wait starts over, for a bound that follows the
	// load.
	stall   time.Duration
	stallFn func() time.Duration
	// progress is signalled (without blocking) when the party sends a
	// message of a later round: a presignature is ready only once its own
	// round-4 message went out (presign.go).
	progress chan struct{}
}

func newRunner(kind, self string, m *members, threshold int, outbox Outbox) (*runner, error) {
	if _, ok := m.byName[self]; !ok {
		return nil, fmt.Errorf("%s: self %q is not a member of %v", kind, self, m.names())
	}
	if outbox == nil {
		return nil, fmt.Errorf("%s: nil outbox", kind)
	}
	n := len(m.sorted)
	return &runner{
		kind:   kind,
		self:   self,
		m:      m,
		outbox: outbox,
		checks: newPeerChecks(threshold),
		// Every round produces at most one broadcast and n-1 direct
		// messages per party; ten rounds of that never block the party.
		out:      make(chan tsslib.Message, 10*n),
		sendq:    make(chan tsslib.Message, 10*n),
		inbox:    make(chan inbound, 10*n*n),
		failc:    make(chan *SessionError, 1),
		done:     make(chan struct{}),
		progress: make(chan struct{}, 1),
	}, nil
}

// deliver queues a message from another member. It never blocks: a full
// inbox means the sender sends far more than the protocol allows.
func (r *runner) deliver(from string, broadcast bool, payload []byte) error {
	if from == r.self {
		return fmt.Errorf("%s: message claims to come from self %q", r.kind, from)
	}
	if _, ok := r.m.byName[from]; !ok {
		return fmt.Errorf("%s: sender %q is not a session member", r.kind, from)
	}
	select {
	case <-r.done:
		return ErrSessionClosed
	default:
	}
	select {
	case r.inbox <- inbound{from: from, broadcast: broadcast, payload: payload}:
		return nil
	default:
		return &SessionError{Kind: r.kind, Culprits: []string{from}, Err: errors.New("inbox full: sender exceeds the protocol's message count")}
	}
}

// stallBound is the current stall bound; zero means none.
func (r *runner) stallBound() time.Duration {
	if r.stallFn != nil {
		return r.stallFn()
	}
	return r.stall
}

func (r *runner) close() { r.closeOnce.Do(func() { close(r.done) }) }

// end closes the session and zeroes the secrets it leaves behind: the
// signing party's per-signature values (engineParty.destroy) and the MtA
// answers the range check decrypted (mtaCheck.clear). Every session kind
// ends here, however it ends (result, error, stall, cancel), from the
// goroutine that drove the party, or before the party was ever started.
// Calling it again does nothing more.
func (r *runner) end() {
	if p, ok := r.party.(interface{ destroy() }); ok {
		p.destroy()
	}
	if r.checks.mta != nil {
		r.checks.mta.clear()
	}
	r.close()
}

// abort ends the session with err, for failures found outside tss-lib (an
// equivocating member, found by the transport's echo check).
func (r *runner) abort(err *SessionError) {
	err.Kind = r.kind
	select {
	case r.failc <- err:
	default:
	}
}

// run starts the party and drives it until it yields a result on end, fails,
// or ctx ends.
func run[T any](ctx context.Context, r *runner, end <-chan T) (T, error) {
	var zero T
	defer r.end()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	sendErr := make(chan error, 1)
	drain, drained := make(chan struct{}), make(chan struct{})
	go r.sendLoop(ctx, sendErr, drain, drained)

	if err := r.call(func() *tsslib.Error { return r.party.Start() }, ""); err != nil {
		return zero, err
	}
	var stallC <-chan time.Time
	var stallTimer *time.Timer
	if bound := r.stallBound(); bound > 0 {
		stallTimer = time.NewTimer(bound)
		defer stallTimer.Stop()
		stallC = stallTimer.C
	}
	for {
		select {
		case res := <-end:
			// The party's last messages (round 9's share of s) are queued
			// but maybe not sent: the others need them to finish too.
			close(drain)
			select {
			case <-drained:
			case <-ctx.Done():
			}
			return res, nil
		case err := <-sendErr:
			return zero, &SessionError{Kind: r.kind, Round: r.round(), Err: err}
		case err := <-r.failc:
			return zero, err
		case <-ctx.Done():
			return zero, &SessionError{Kind: r.kind, Round: r.round(), Waiting: r.waitingFor(), Err: context.Cause(ctx)}
		case <-stallC:
			// A member that sends nothing for this long is blamed, so the
			// coordinator can retry without it inside the same deadline.
			w := r.waitingFor()
			return zero, &SessionError{Kind: r.kind, Round: r.round(), Culprits: w, Waiting: w, Err: fmt.Errorf("no message for %v: stalled", r.stallBound())}
		case in := <-r.inbox:
			if stallTimer != nil {
				stallTimer.Reset(r.stallBound())
			}
			msg, err := r.parse(in)
			if err != nil {
				return zero, err
			}
			if err := r.call(func() *tsslib.Error { _, e := r.party.Update(msg); return e }, in.from); err != nil {
				return zero, err
			}
		}
	}
}

// parse decodes a peer's message and runs tkeyless's own checks on it
// (validate.go) before tss-lib may see it. Only the sender could have
// produced a message that fails: the transport authenticated it and
// protects integrity. A failed check convicts the sender; bytes that do
// not parse only blame it.
func (r *runner) parse(in inbound) (msg tsslib.ParsedMessage, err error) {
	err = r.safely(func() *tsslib.Error {
		from := r.m.byName[in.from]
		var perr error
		if msg, perr = tsslib.ParseWireMessage(in.payload, from, in.broadcast); perr != nil {
			return tsslib.NewError(fmt.Errorf("malformed message: %w", perr), r.kind, r.round(), r.m.byName[r.self], from)
		}
		return nil
	}, in.from)
	if err != nil {
		return nil, err
	}
	round := RoundOf(msg.Type())
	if err := r.checks.check(in.from, msg); err != nil {
		if errors.Is(err, ErrFault) {
			return nil, &SessionError{Kind: r.kind, Round: round, Fault: true, Err: err}
		}
		se := &SessionError{Kind: r.kind, Round: round, Culprits: []string{in.from}, Err: err}
		if errors.Is(err, ErrMisbehaved) {
			se.Convicted = []string{in.from}
		}
		return nil, se
	}
	if int32(round) > r.recvRound.Load() {
		r.recvRound.Store(int32(round))
	}
	return msg, nil
}

// call calls into the tss-lib party (Start or Update) with safely, then
// hands whatever the party produced to the send loop.
func (r *runner) call(f func() *tsslib.Error, sender string) error {
	err := r.safely(f, sender)
	r.flush()
	return err
}

// flush moves the messages the party wrote to out during the last call
// into sendq. tss-lib writes them synchronously inside Start and Update,
// so after a call they are all there; sendq holds a whole session's
// messages, so this never blocks.
func (r *runner) flush() {
	for {
		select {
		case msg := <-r.out:
			if tamperMessage != nil {
				msg = tamperMessage(r.kind, r.party, msg)
			}
			r.sendq <- msg
		default:
			return
		}
	}
}

// tamperMessage, when set, may replace a message this party produced
// before it is sent, with access to the party's state. Only the adversary
// build (go build -tags adversary) and tests set it, to play a malicious
// member; release builds leave it nil.
var tamperMessage func(kind string, party protocolParty, msg tsslib.Message) tsslib.Message

// pastRound1 reports whether the session got beyond its first round here:
// this party sent, or accepted, a message of a later round. From then on
// its secrets have been used in answers to the other members.
func (r *runner) pastRound1() bool { return r.lastRound.Load() >= 2 || r.recvRound.Load() >= 2 }

// safely calls into tss-lib, turning its errors and panics into a
// SessionError. tss-lib panics on some malformed inputs (nil fields in
// peer messages); a panic while handling a message blames its sender.
func (r *runner) safely(f func() *tsslib.Error, sender string) (err error) {
	defer func() {
		if p := recover(); p != nil {
			se := &SessionError{Kind: r.kind, Round: r.round(), Err: fmt.Errorf("tss-lib panicked: %v", p)}
			if sender != "" {
				se.Culprits = []string{sender}
			}
			err = se
		}
	}()
	if e := f(); e != nil {
		se := &SessionError{Kind: r.kind, Round: e.Round(), Err: e.Cause()}
		for _, c := range e.Culprits() {
			// tss-lib names the party itself when a check over everyone's
			// values fails (signing round 9, "U doesn't equal T"): that
			// names nobody.
			if c != nil && c.Id != r.self {
				se.Culprits = append(se.Culprits, c.Id)
			}
		}
		if se.Err == nil {
			se.Err = errors.New(e.Error())
		}
		se.Fault = errors.Is(se.Err, ErrFault)
		se.Unattributed = len(se.Culprits) == 0 && !se.Fault
		return se
	}
	return nil
}

// round is the latest round this party has sent a message for: tss-lib
// keeps its current round private.
func (r *runner) round() int { return int(r.lastRound.Load()) }

// waitingFor names the members whose messages the party still needs, for
// errors on a deadline: the likeliest reason is one of them is slow or gone.
func (r *runner) waitingFor() (names []string) {
	defer func() { _ = recover() }()
	for _, p := range r.party.WaitingFor() {
		names = append(names, p.Id)
	}
	return names
}

func (r *runner) sendLoop(ctx context.Context, errc chan<- error, drain <-chan struct{}, drained chan<- struct{}) {
	send := func(msg tsslib.Message) bool {
		og, err := r.outgoing(msg)
		if og.Round > int(r.lastRound.Load()) {
			r.lastRound.Store(int32(og.Round))
			select {
			case r.progress <- struct{}{}:
			default:
			}
		}
		if err == nil {
			err = r.outbox.Send(ctx, og)
		}
		if err != nil {
			select {
			case errc <- fmt.Errorf("send %s: %w", og.Type, err):
			default:
			}
			return false
		}
		return true
	}
	for {
		select {
		case <-ctx.Done():
			return
		case msg := <-r.sendq:
			if !send(msg) {
				return
			}
		case <-drain:
			defer close(drained)
			for {
				select {
				case msg := <-r.sendq:
					if !send(msg) {
						return
					}
				default:
					return
				}
			}
		}
	}
}

func (r *runner) outgoing(msg tsslib.Message) (Outgoing, error) {
	wire, routing, err := msg.WireBytes()
	if err != nil {
		return Outgoing{}, fmt.Errorf("encode %s: %w", msg.Type(), err)
	}
	og := Outgoing{Broadcast: routing.IsBroadcast, Type: msg.Type(), Round: RoundOf(msg.Type()), Payload: wire}
	if routing.To == nil {
		og.To = r.m.others(r.self)
	} else {
		for _, p := range routing.To {
			og.To = append(og.To, p.Id)
		}
	}
	return og, nil
}

// RoundOf returns the protocol round of a tss-lib message type name, such as
// "binance.tsslib.ecdsa.signing.SignRound4Message" → 4, or 0 if the name
// carries none.
func RoundOf(msgType string) int {
	i := strings.LastIndex(msgType, "Round")
	if i < 0 {
		return 0
	}
	s := msgType[i+len("Round"):]
	j := 0
	for j < len(s) && s[j] >= '0' && s[j] <= '9' {
		j++
	}
	n, err := strconv.Atoi(s[:j])
	if err != nil {
		return 0
	}
	return n
}
