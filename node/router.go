package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/tss"
)

// sessionState names where a session is in its life. A session moves only
// forward: prepared → running → finished.
type sessionState int

const (
	statePrepared sessionState = iota
	stateRunning
	stateFinished
)

func (s sessionState) String() string {
	return [...]string{"prepared", "running", "finished"}[s]
}

// party is what the engine's keygen and sign sessions have in common.
type party interface {
	Deliver(from string, broadcast bool, payload []byte) error
	Abort(err *tss.SessionError)
}

// session is this node's part in one signing session or ceremony.
type session struct {
	id      peerwire.SessionID
	kind    peerwire.Kind
	key     string   // KeyID of a signing session
	members []string // every member, this node included
	// coordinator is the node that prepared the session; only it may start it.
	coordinator string
	party       party
	// echo says broadcasts go through the echo check (echo.go): in
	// signing and key generation sessions of three or more members. A
	// resharing's broadcasts reach one committee only; it compares every
	// new member's result instead (reshare.go).
	echo bool
	// carry says the echoes of rounds carriedFrom and later travel on the
	// next round's envelopes, not in Echo calls (echo.go); the coordinator
	// chose it in the Prepare. Only with echo.
	carry bool
	// keep says the session outlives its Run call: a presignature stays
	// registered, ready, until it is finished or expires.
	keep    bool
	created time.Time
	run     func(ctx context.Context) (*peerwire.RunResponse, error)
	expiry  *time.Timer

	mu    sync.Mutex
	state sessionState
	// lastRound is the highest round seen from each sender, and seen the
	// message types already accepted from each, both as the payloads say
	// (not the envelopes' labels): a sender's messages arrive in the order
	// it sent them, so an older round is a replay and a repeat a duplicate.
	lastRound map[string]int
	seen      map[seenKey]bool
	// broadcasts tracks, in sessions of three or more, each broadcast
	// message until every other member has echoed the same one.
	broadcasts map[broadcastKey]*broadcast
	// owed holds, in a carry session, the echoes this node owes each other
	// member, sent with its next envelope to that member; echoWake is
	// closed (and cleared) whenever a broadcast or an echo is recorded,
	// for a send waiting on echoes (awaitEchoes).
	owed     map[string][]peerwire.Echo
	echoWake chan struct{}
}

// ErrUnknownSession is returned for a message or call that names a session
// this node does not have (never prepared, expired, or finished).
var ErrUnknownSession = errors.New("unknown session")

type seenKey struct{ sender, msgType string }

// router holds this node's live sessions by id.
type router struct {
	mu       sync.Mutex
	sessions map[peerwire.SessionID]*session
	// prepareTTL is how long a prepared session waits for its Run call.
	prepareTTL time.Duration
	// failed, if set, is told about every session whose run failed here.
	failed func(*session, error)
}

func newRouter(prepareTTL time.Duration) *router {
	return &router{sessions: map[peerwire.SessionID]*session{}, prepareTTL: prepareTTL}
}

// add registers a prepared session. An id already in use is refused: ids
// are random, so a repeat is a replay.
func (r *router) add(s *session) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.sessions[s.id]; ok {
		return fmt.Errorf("session %s already exists", s.id)
	}
	if s.kind != peerwire.KindReshare && len(s.members) >= 3 {
		s.echo = true
	}
	s.carry = s.carry && s.echo && (s.kind == peerwire.KindSign || s.kind == peerwire.KindPresign)
	s.owed = map[string][]peerwire.Echo{}
	s.lastRound = map[string]int{}
	s.seen = map[seenKey]bool{}
	s.broadcasts = map[broadcastKey]*broadcast{}
	s.created = time.Now()
	r.sessions[s.id] = s
	s.expiry = time.AfterFunc(r.prepareTTL, func() {
		s.mu.Lock()
		expired := s.state == statePrepared
		if expired {
			s.state = stateFinished
		}
		s.mu.Unlock()
		if expired {
			r.remove(s.id)
		}
	})
	return nil
}

func (r *router) get(id peerwire.SessionID) (*session, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.sessions[id]
	if !ok {
		return nil, fmt.Errorf("session %s: %w", id, ErrUnknownSession)
	}
	return s, nil
}

func (r *router) remove(id peerwire.SessionID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.sessions, id)
}

// abort forgets a prepared session that will not run.
func (r *router) abort(id peerwire.SessionID) {
	r.mu.Lock()
	s, ok := r.sessions[id]
	delete(r.sessions, id)
	r.mu.Unlock()
	if ok {
		s.mu.Lock()
		s.state = stateFinished
		s.expiry.Stop()
		s.mu.Unlock()
	}
}

func (r *router) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.sessions)
}

// start moves a prepared session to running, runs it, and forgets it.
func (r *router) start(ctx context.Context, id peerwire.SessionID) (*peerwire.RunResponse, error) {
	s, err := r.get(id)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.state != statePrepared {
		st := s.state
		s.mu.Unlock()
		return nil, fmt.Errorf("session %s is %s, not prepared", id, st)
	}
	s.state = stateRunning
	s.expiry.Stop()
	s.mu.Unlock()
	resp, err := s.run(ctx)
	if s.keep && err == nil {
		return resp, nil
	}
	s.mu.Lock()
	s.state = stateFinished
	s.mu.Unlock()
	r.remove(id)
	if err != nil && r.failed != nil {
		r.failed(s, err)
	}
	return resp, err
}

// where returns the live sessions that match.
func (r *router) where(match func(*session) bool) []*session {
	r.mu.Lock()
	defer r.mu.Unlock()
	var hit []*session
	for _, s := range r.sessions {
		if match(s) {
			hit = append(hit, s)
		}
	}
	return hit
}

// abortWith aborts every session peer is a member of (it was convicted).
func (r *router) abortWith(peer string, cause error) {
	for _, s := range r.where(func(s *session) bool { return slices.Contains(s.members, peer) }) {
		s.party.Abort(&tss.SessionError{Culprits: []string{peer}, Err: cause})
		r.abort(s.id)
	}
}

// abortPresigns destroys the presignature halves held here for key (all
// coordinators): the key was disabled or reshared, so they can never be
// finished.
func (r *router) abortPresigns(key string, cause error) {
	for _, s := range r.where(func(s *session) bool { return s.kind == peerwire.KindPresign && s.key == key }) {
		s.party.Abort(&tss.SessionError{Err: cause})
	}
}

// evictOldestPresign destroys the oldest presignature half held here for
// coordinator and key, if any. A coordinator asking for more than it may
// hold has lost some it had (it restarted, or dropped them): those would
// otherwise wait out their lifetime here, and keep it from refilling.
func (r *router) evictOldestPresign(coordinator, key string) bool {
	held := r.presignsOf(coordinator, key)
	if len(held) == 0 {
		return false
	}
	oldest := slices.MinFunc(held, func(a, b *session) int { return a.created.Compare(b.created) })
	oldest.party.Abort(&tss.SessionError{Err: fmt.Errorf("presignature evicted: %s asked for a new one beyond this node's presign.depth", coordinator)})
	r.abort(oldest.id)
	return true
}

// dropLostPresigns destroys the presignature halves held here for
// coordinator and key that are not in live, the coordinator's list of
// those it still holds: it lost them, and they would otherwise wait out
// their lifetime here, counted against its presign.depth. A half already
// being finished is left alone (the coordinator may have finished its own
// part first). It returns how many it destroyed.
func (r *router) dropLostPresigns(coordinator, key string, live []peerwire.SessionID) int {
	dropped := 0
	for _, s := range r.presignsOf(coordinator, key) {
		if ps, ok := s.party.(*tss.PresignSession); slices.Contains(live, s.id) || (ok && ps.Claimed()) {
			continue
		}
		s.party.Abort(&tss.SessionError{Err: fmt.Errorf("presignature dropped: %s no longer holds it", coordinator)})
		r.abort(s.id)
		dropped++
	}
	return dropped
}

// presignIDs lists the presignatures of key held here for coordinator.
func (r *router) presignIDs(coordinator, key string) []peerwire.SessionID {
	var ids []peerwire.SessionID
	for _, s := range r.presignsOf(coordinator, key) {
		ids = append(ids, s.id)
	}
	return ids
}

// presignsOf returns the presignature halves of key held here for
// coordinator.
func (r *router) presignsOf(coordinator, key string) []*session {
	return r.where(func(s *session) bool {
		return s.kind == peerwire.KindPresign && s.coordinator == coordinator && s.key == key
	})
}

// load counts the live sessions that compute (all kinds but ready
// presignatures, which wait idle) and, among them, those coordinator
// opened here; and the presignatures coordinator holds here for key.
func (r *router) load(coordinator, key string) (active, byCoordinator, presignsOfKey int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.sessions {
		if s.kind == peerwire.KindPresign {
			if s.coordinator == coordinator && s.key == key {
				presignsOfKey++
			}
			continue
		}
		active++
		if s.coordinator == coordinator {
			byCoordinator++
		}
	}
	return active, byCoordinator, presignsOfKey
}

// finish forgets a kept session once it has ended.
func (r *router) finish(s *session) {
	s.mu.Lock()
	s.state = stateFinished
	s.mu.Unlock()
	r.remove(s.id)
}

// active counts the sessions that are computing, leaving out ready
// presignatures, which wait idle.
func (r *router) active() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, s := range r.sessions {
		if s.kind != peerwire.KindPresign {
			n++
		}
	}
	return n
}

// accept checks an envelope against its session: the session exists and
// is live, the envelope is for this session's kind and key, the sender is
// a member and claims to be who its certificate says, the payload is a
// message of this kind of session whose type, round and routing are what
// the envelope says, and it is neither a replay of an earlier round nor a
// duplicate. sender is the authenticated peer name.
//
// Everything is judged by the payload, never by the labels alone: one
// payload sent under two labels is one message, and the per-session
// buffers (seen, lastRound, the echo tracking) grow only with the
// protocol's own message types, per member.
func (r *router) accept(sender string, env *peerwire.Envelope) (*session, error) {
	if !peerwire.Supported(env.Version) {
		return nil, fmt.Errorf("envelope version %d, want %d to %d", env.Version, peerwire.MinVersion, peerwire.Version)
	}
	s, err := r.get(env.Session)
	if err != nil {
		return nil, err
	}
	if env.From != sender {
		return nil, fmt.Errorf("session %s: %s sent a message claiming to be %q", s.id, sender, env.From)
	}
	if env.Kind != s.kind || env.Key != s.key {
		return nil, fmt.Errorf("session %s: envelope is for %s key %q, session is %s key %q", s.id, env.Kind, env.Key, s.kind, s.key)
	}
	if !slices.Contains(s.members, sender) {
		return nil, fmt.Errorf("session %s: %s is not a member %v", s.id, sender, s.members)
	}
	info, err := tss.InspectMessage(string(s.kind), env.Payload)
	if err != nil {
		return nil, fmt.Errorf("session %s: message from %s: %w", s.id, sender, err)
	}
	if env.Type != info.Type || env.Round != info.Round || env.Broadcast != info.Broadcast {
		return nil, fmt.Errorf("session %s: %s labelled its message %s round %d broadcast=%t, but the payload is %s round %d broadcast=%t",
			s.id, sender, env.Type, env.Round, env.Broadcast, info.Type, info.Round, info.Broadcast)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == stateFinished {
		return nil, fmt.Errorf("session %s: %w", s.id, ErrUnknownSession)
	}
	if info.Round < s.lastRound[sender] {
		return nil, fmt.Errorf("session %s: %s sent round %d after round %d: replayed or reordered", s.id, sender, info.Round, s.lastRound[sender])
	}
	mk := seenKey{sender, info.Type}
	if s.seen[mk] {
		return nil, fmt.Errorf("session %s: duplicate %s from %s", s.id, info.Type, sender)
	}
	s.seen[mk] = true
	s.lastRound[sender] = info.Round
	return s, nil
}
