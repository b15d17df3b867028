package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Admission control: a node does only work that can succeed.
//
// A GG18 session's cost is almost all rounds 1–3, paid on every member at
// once; k sessions sharing the cores each take k times as long, so under a
// flood every request finishes late together and none in time. So a node
// computes at most max_concurrent_sessions sessions at once and queues the
// rest:
//
//   - What the bound counts is the sessions that compute here: the ones this
//     node coordinates (each holds a slot from the queue) plus the ones it
//     joins as a member. A member never waits for a slot (its coordinator
//     already holds one, and members waiting on each other's coordinators
//     would deadlock the cluster); it takes part at once, within
//     max_sessions and max_sessions_per_peer, and its work delays this
//     node's own queue instead.
//   - Live requests wait in arrival order, but a freed slot goes to the
//     identity (edge) served least recently among those waiting: with k
//     edges waiting each gets a k-th of the node, however many requests one
//     of them piles up. Each identity may also have only
//     max_queue_per_identity requests in progress here (waiting or running).
//   - A request whose remaining deadline is shorter than the expected
//     session time (a moving average of recent sessions with its key) is
//     refused at once, on arrival and again when its slot comes up: it could
//     only fail, after spending every member's CPU.
//   - Presignature refills wait behind every live request, and one that is
//     computing gives its slot up (it is cancelled) when a live request
//     would otherwise wait.

// Reasons a request is refused as overloaded (the metric's label).
const (
	overloadQueueFull = "queue_full" // max_queue requests already in progress here
	overloadIdentity  = "identity"   // its identity has max_queue_per_identity in progress
	overloadDeadline  = "deadline"   // its deadline ends before a session could
)

// overloadError is ErrOverloaded with the reason the metric counts.
type overloadError struct {
	reason string
	detail string
}

func (e *overloadError) Error() string {
	return fmt.Sprintf("%v (%s): %s", ErrOverloaded, e.reason, e.detail)
}
func (e *overloadError) Unwrap() error { return ErrOverloaded }

// errPreempted ends a presignature refill whose slot a live request needs.
var errPreempted = errors.New("presignature refill gave its slot to a live request")

// admission is one node's queue of sessions to compute. Make it with
// newAdmission; there is one per node.
type admission struct {
	limit         int // sessions computing at once
	maxQueue      int // live requests in progress (waiting or running)
	identityLimit func(identity string) int
	metrics       *metrics

	mu         sync.Mutex
	running    int // slots held by sessions this node coordinates
	joined     int // sessions this node computes as a member
	live       int // live requests in progress, waiting or running
	byIdentity map[string]int
	lastServed map[string]uint64 // grant sequence number of each identity's last slot
	seq        uint64
	waiters    []*waiter // arrival order
	presigns   map[*slot]context.CancelCauseFunc
	// peak is the most sessions ever computing at once here: tests read it.
	peak int

	estMu sync.Mutex
	est   map[string]sessionEstimate // by key
}

// sessionEstimate is the moving average of full sessions with one key and
// when it last changed.
type sessionEstimate struct {
	d  time.Duration
	at time.Time
}

// estimateWeight is the weight of the newest session in the moving average:
// about the last ten sessions count.
const estimateWeight = 0.2

// estimateStale is how long an estimate is trusted without a new session:
// one from a slow moment that refused every request since would otherwise
// never be measured again.
const estimateStale = 30 * time.Second

func newAdmission(cfg Config, m *metrics) *admission {
	return &admission{
		limit: cfg.MaxConcurrentSessions, maxQueue: cfg.MaxQueue, identityLimit: cfg.identityQueueLimit, metrics: m,
		byIdentity: map[string]int{}, lastServed: map[string]uint64{}, presigns: map[*slot]context.CancelCauseFunc{},
		est: map[string]sessionEstimate{},
	}
}

type waiter struct {
	identity string
	presign  bool
	arrived  time.Time
	granted  chan struct{} // closed when the slot is this waiter's
}

// slot is a place in the queue and, once granted, the right to compute one
// session here.
type slot struct {
	a        *admission
	identity string
	presign  bool
	held     bool
	// Waited is how long the request waited for its slot.
	waited time.Duration
}

// ticket is a live request's place in this node: taken on arrival (it counts
// against max_queue and its identity's limit), given back when the request
// ends, whichever path it signed by.
type ticket struct {
	a        *admission
	identity string
	key      string
	slot     *slot
	left     bool
}

// arrive admits a live request from identity for key, or refuses it as
// overloaded: too many requests in progress here or from its identity, or
// a deadline that ends before a session with key could.
func (a *admission) arrive(identity, key string, deadline time.Time) (*ticket, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.live >= a.maxQueue {
		return nil, a.refuse(overloadQueueFull, fmt.Sprintf("%d signing requests already in progress (max_queue %d)", a.live, a.maxQueue))
	}
	if limit := a.identityLimit(identity); a.byIdentity[identity] >= limit {
		return nil, a.refuse(overloadIdentity, fmt.Sprintf("%d requests from %s already in progress (max_queue_per_identity %d)", a.byIdentity[identity], identity, limit))
	}
	if err := a.checkDeadlineLocked(key, deadline, a.liveWaitingLocked()); err != nil {
		return nil, err
	}
	a.live++
	a.byIdentity[identity]++
	a.metrics.queueDepth.Set(float64(a.live))
	return &ticket{a: a, identity: identity, key: key}, nil
}

// refuse counts one refusal; a.mu is held.
func (a *admission) refuse(reason, detail string) error {
	a.metrics.overloaded.WithLabelValues(reason).Inc()
	return &overloadError{reason: reason, detail: detail}
}

// checkDeadlineLocked refuses a request whose deadline ends before ahead
// queued sessions and its own could finish, by the moving estimate; with
// no estimate yet for key, nothing is refused.
func (a *admission) checkDeadlineLocked(key string, deadline time.Time, ahead int) error {
	est := a.estimate(key)
	if est == 0 || deadline.IsZero() {
		return nil
	}
	// The sessions ahead share a.limit slots; each batch takes one session
	// time.
	need := est * time.Duration(1+ahead/max(1, a.limit))
	if left := time.Until(deadline); left < need {
		return a.refuse(overloadDeadline, fmt.Sprintf("%v left before the deadline, a session with key %s takes about %v here (%d requests ahead)",
			left.Round(time.Millisecond), key, need.Round(time.Millisecond), ahead))
	}
	return nil
}

// wait takes a slot to compute the request's full session, waiting its turn.
// Once the slot comes up the deadline is checked again: a request that
// waited too long is refused rather than started.
func (t *ticket) wait(ctx context.Context) error {
	if t.slot != nil {
		return nil
	}
	s, err := t.a.acquire(ctx, t.identity, false)
	if err != nil {
		return err
	}
	t.slot = s
	deadline, _ := ctx.Deadline()
	t.a.mu.Lock()
	err = t.a.checkDeadlineLocked(t.key, deadline, 0)
	t.a.mu.Unlock()
	return err
}

// waited is how long the request waited for its slot (0 if it took none).
func (t *ticket) waited() time.Duration {
	if t.slot == nil {
		return 0
	}
	return t.slot.waited
}

// leave ends the request here, giving back its slot if it holds one.
func (t *ticket) leave() {
	if t.left {
		return
	}
	t.left = true
	if t.slot != nil {
		t.slot.release()
	}
	a := t.a
	a.mu.Lock()
	defer a.mu.Unlock()
	a.live--
	if a.byIdentity[t.identity]--; a.byIdentity[t.identity] <= 0 {
		delete(a.byIdentity, t.identity)
	}
	a.metrics.queueDepth.Set(float64(a.live))
}

// acquire waits for a slot in turn; presign waiters come after every live
// one. It returns when the slot is granted or ctx ends.
func (a *admission) acquire(ctx context.Context, identity string, presign bool) (*slot, error) {
	w := &waiter{identity: identity, presign: presign, arrived: time.Now(), granted: make(chan struct{})}
	a.mu.Lock()
	a.waiters = append(a.waiters, w)
	a.metrics.queueLength.Set(float64(len(a.waiters)))
	if !presign {
		a.preemptLocked()
	}
	a.dispatchLocked()
	a.mu.Unlock()
	s := &slot{a: a, identity: identity, presign: presign}
	select {
	case <-w.granted:
	case <-ctx.Done():
		a.mu.Lock()
		select {
		case <-w.granted:
			// Granted as ctx ended: hand it on.
			a.mu.Unlock()
			s.held = true
			s.release()
		default:
			a.waiters = slices.DeleteFunc(a.waiters, func(o *waiter) bool { return o == w })
			a.metrics.queueLength.Set(float64(len(a.waiters)))
			a.mu.Unlock()
		}
		return nil, fmt.Errorf("waiting for a session slot: %w", context.Cause(ctx))
	}
	s.held = true
	s.waited = time.Since(w.arrived)
	a.metrics.queueWait.Observe(s.waited.Seconds())
	return s, nil
}

// acquirePresign is acquire for a presignature refill: its context is
// cancelled (errPreempted) when a live request needs the slot.
func (a *admission) acquirePresign(ctx context.Context) (context.Context, *slot, error) {
	s, err := a.acquire(ctx, "", true)
	if err != nil {
		return nil, nil, err
	}
	pctx, cancel := context.WithCancelCause(ctx)
	a.mu.Lock()
	a.presigns[s] = cancel
	a.mu.Unlock()
	return pctx, s, nil
}

// release gives the slot back and grants the next waiter.
func (s *slot) release() {
	if !s.held {
		return
	}
	s.held = false
	a := s.a
	a.mu.Lock()
	defer a.mu.Unlock()
	if cancel, ok := a.presigns[s]; ok {
		cancel(nil)
		delete(a.presigns, s)
	}
	a.running--
	a.dispatchLocked()
}

// join counts a session this node computes as a member, at once (members
// never wait: see above); the returned func ends it.
func (a *admission) join() (leave func()) {
	a.mu.Lock()
	a.joined++
	a.notePeakLocked()
	if a.liveWaitingLocked() > 0 {
		a.preemptLocked()
	}
	a.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			a.mu.Lock()
			a.joined--
			a.dispatchLocked()
			a.mu.Unlock()
		})
	}
}

// busy says a presignature should not start here now: live work waits, or
// every slot is taken.
func (a *admission) busy() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.liveWaitingLocked() > 0 || a.running+a.joined >= a.limit
}

// inProgress counts the live requests in progress here.
func (a *admission) inProgress() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.live
}

// waiting counts the requests waiting for a slot.
func (a *admission) waiting() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.waiters)
}

// peakLoad is the most sessions ever computing here at once.
func (a *admission) peakLoad() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.peak
}

func (a *admission) liveWaitingLocked() int {
	n := 0
	for _, w := range a.waiters {
		if !w.presign {
			n++
		}
	}
	return n
}

func (a *admission) notePeakLocked() {
	a.peak = max(a.peak, a.running+a.joined)
	a.metrics.computing.Set(float64(a.running + a.joined))
}

// preemptLocked cancels one computing presignature refill if a live request
// would otherwise wait for a slot.
func (a *admission) preemptLocked() {
	if a.running+a.joined < a.limit {
		return
	}
	for s, cancel := range a.presigns {
		cancel(errPreempted)
		delete(a.presigns, s)
		a.metrics.presign.WithLabelValues("preempted").Inc()
		return
	}
}

// dispatchLocked grants free slots: live waiters first, each to the waiting
// identity served least recently (arrival order within one identity, and
// between identities never served); presign waiters only when no live one
// waits.
func (a *admission) dispatchLocked() {
	for a.running+a.joined < a.limit && len(a.waiters) > 0 {
		next := -1
		for i, w := range a.waiters {
			switch {
			case next < 0:
				next = i
			case a.waiters[next].presign && !w.presign:
				next = i
			case w.presign:
			case a.lastServed[w.identity] < a.lastServed[a.waiters[next].identity]:
				next = i
			}
		}
		w := a.waiters[next]
		a.waiters = slices.Delete(a.waiters, next, next+1)
		a.seq++
		if !w.presign {
			a.lastServed[w.identity] = a.seq
		}
		a.running++
		a.notePeakLocked()
		close(w.granted)
	}
	// Both ends of a session (a released slot, a left join) come here.
	a.metrics.computing.Set(float64(a.running + a.joined))
	// Identities with nothing in progress are forgotten: lastServed stays
	// as small as the set of identities using the node now.
	for id := range a.lastServed {
		if a.byIdentity[id] == 0 {
			delete(a.lastServed, id)
		}
	}
	a.metrics.queueLength.Set(float64(len(a.waiters)))
}

// estimate is the expected duration of a full session with key here, 0
// before the first one or when the last is older than estimateStale.
func (a *admission) estimate(key string) time.Duration {
	a.estMu.Lock()
	defer a.estMu.Unlock()
	e, ok := a.est[key]
	if !ok || time.Since(e.at) > estimateStale {
		return 0
	}
	return e.d
}

// observe adds a full session with key that took d to the estimate.
func (a *admission) observe(key string, d time.Duration) {
	a.estMu.Lock()
	defer a.estMu.Unlock()
	e, ok := a.est[key]
	if ok && time.Since(e.at) <= estimateStale {
		d = time.Duration(float64(e.d) + estimateWeight*float64(d-e.d))
	}
	a.est[key] = sessionEstimate{d: d, at: time.Now()}
}
