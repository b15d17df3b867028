package node

import (
	"context"
	"errors"
	"fmt"
	dto "github.com/prometheus/client_model/go"
	"testing"
	"time"
)

// The admission rules one by one, on the queue alone (admission.go); the
// cluster tests in admission_cluster_test.go show them with real sessions.

func testAdmission(t *testing.T, limit, maxQueue, perIdentity int) *admission {
	t.Helper()
	cfg := Config{MaxConcurrentSessions: limit, MaxQueue: maxQueue, MaxQueuePerIdentity: perIdentity}
	return newAdmission(cfg, newMetrics(func() float64 { return 0 }))
}

// waitTurn starts a live request from identity waiting for its slot; its
// ticket is sent on got once the slot is granted.
func waitTurn(t *testing.T, ctx context.Context, a *admission, identity string, got chan<- *ticket) *ticket {
	t.Helper()
	tk, err := a.arrive(identity, "k", time.Time{})
	if err != nil {
		t.Fatalf("%s refused: %v", identity, err)
	}
	before := a.queued()
	go func() {
		if err := tk.wait(ctx); err == nil {
			got <- tk
		}
	}()
	// Queued (or granted) before the next one arrives: arrival order is
	// the test's order.
	waitFor(t, 5*time.Second, identity+" queued", func() bool { return a.queued() > before })
	return tk
}

// queued counts the slots waited for or held.
func (a *admission) queued() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.waiters) + a.running
}

func nextGranted(t *testing.T, got <-chan *ticket) *ticket {
	t.Helper()
	select {
	case tk := <-got:
		return tk
	case <-time.After(5 * time.Second):
		t.Fatal("no slot granted")
		return nil
	}
}

func noneGranted(t *testing.T, got <-chan *ticket) {
	t.Helper()
	select {
	case tk := <-got:
		t.Fatalf("%s granted a slot beyond the bound", tk.identity)
	case <-time.After(50 * time.Millisecond):
	}
}

func TestAdmissionBoundsComputingSessions(t *testing.T) {
	ctx := t.Context()
	a := testAdmission(t, 2, 16, 16)
	got := make(chan *ticket, 8)
	var tks []*ticket
	for range 5 {
		tks = append(tks, waitTurn(t, ctx, a, "edge", got))
	}
	first, second := nextGranted(t, got), nextGranted(t, got)
	noneGranted(t, got)
	if a.waiting() != 3 {
		t.Fatalf("%d waiting, want 3", a.waiting())
	}
	// One edge's requests go in arrival order.
	if first != tks[0] && first != tks[1] || second != tks[0] && second != tks[1] {
		t.Fatal("the first two to arrive were not the first served")
	}
	first.leave()
	if next := nextGranted(t, got); next != tks[2] {
		t.Fatal("the third to arrive was not served third")
	}
	noneGranted(t, got)
	// A session joined as a member takes a slot too: with one joined
	// and one coordinated, the next request still waits. (The member
	// itself never waits: its coordinator already did.)
	leave := a.join()
	second.leave()
	noneGranted(t, got)
	leave()
	if next := nextGranted(t, got); next != tks[3] {
		t.Fatal("the fourth to arrive was not served fourth")
	}
	if a.peakLoad() != 3 {
		t.Fatalf("peak %d sessions computing, want the bound 2 plus the one joined", a.peakLoad())
	}
	// The gauge follows sessions down as well as up.
	if got := gaugeValue(t, a.metrics.computing); got != 2 {
		t.Fatalf("computing gauge %v with two sessions granted, want 2", got)
	}
	for _, tk := range tks[2:4] {
		tk.leave()
	}
	nextGranted(t, got).leave()
	if got := gaugeValue(t, a.metrics.computing); got != 0 {
		t.Fatalf("computing gauge %v once every session ended, want 0", got)
	}
}

// A flood from one identity queued first does not make another wait
// behind all of it: a freed slot goes to the identity served least
// recently.
func TestAdmissionFairShareBetweenIdentities(t *testing.T) {
	ctx := t.Context()
	a := testAdmission(t, 1, 16, 4)
	got := make(chan *ticket, 8)
	for range 4 {
		waitTurn(t, ctx, a, "flood", got)
	}
	running := nextGranted(t, got)
	// The flood's fifth is refused at once: max_queue_per_identity 4.
	if _, err := a.arrive("flood", "k", time.Time{}); !isOverload(err, overloadIdentity) {
		t.Fatalf("flood's fifth request: %v, want refused (identity)", err)
	}
	waitTurn(t, ctx, a, "visitor", got)
	running.leave()
	if next := nextGranted(t, got); next.identity != "visitor" {
		t.Fatalf("%s served before the visitor, who waited behind three of flood's", next.identity)
	}
	if v := metricValue(t, &Node{metrics: a.metrics}, "tkeyless_signer_overloaded_total", "reason", overloadIdentity); v != 1 {
		t.Fatalf("overloaded{reason=identity} = %v, want 1", v)
	}
}

func TestAdmissionQueueFull(t *testing.T) {
	a := testAdmission(t, 1, 3, 3)
	for i := range 3 {
		if _, err := a.arrive(fmt.Sprint("edge", i), "k", time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.arrive("edge9", "k", time.Time{}); !isOverload(err, overloadQueueFull) {
		t.Fatalf("fourth request with max_queue 3: %v, want refused (queue_full)", err)
	}
}

// A request whose deadline ends before a session with its key could is
// refused at once; one with time enough is admitted.
func TestAdmissionRefusesWhatCannotFinish(t *testing.T) {
	a := testAdmission(t, 2, 16, 16)
	if _, err := a.arrive("edge", "k", time.Now().Add(time.Millisecond)); err != nil {
		t.Fatalf("refused with no estimate yet: %v", err)
	}
	a.observe("k", 400*time.Millisecond)
	a.observe("k", 400*time.Millisecond)
	if _, err := a.arrive("edge", "k", time.Now().Add(200*time.Millisecond)); !isOverload(err, overloadDeadline) {
		t.Fatalf("200ms left for a 400ms session: %v, want refused (deadline)", err)
	}
	if _, err := a.arrive("edge", "other", time.Now().Add(200*time.Millisecond)); err != nil {
		t.Fatalf("another key, no estimate: %v", err)
	}
	if _, err := a.arrive("edge", "k", time.Now().Add(2*time.Second)); err != nil {
		t.Fatalf("2s left for a 400ms session: %v", err)
	}
	// An estimate nothing refreshed for estimateStale is not trusted: a
	// request goes through and measures again.
	a.est["k"] = sessionEstimate{d: time.Minute, at: time.Now().Add(-estimateStale - time.Second)}
	if _, err := a.arrive("edge", "k", time.Now().Add(time.Second)); err != nil {
		t.Fatalf("a stale estimate refused a request: %v", err)
	}
}

// Presignature refills come after every live request, and one computing
// gives its slot up when a live request would wait.
func TestAdmissionPresignYieldsToLive(t *testing.T) {
	ctx := t.Context()
	a := testAdmission(t, 1, 16, 16)
	pctx, ps, err := a.acquirePresign(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !a.busy() {
		t.Fatal("not busy with every slot taken: a member would start a presignature")
	}
	got := make(chan *ticket, 4)
	live := waitTurn(t, ctx, a, "edge", got)
	select {
	case <-pctx.Done():
		if !errors.Is(context.Cause(pctx), errPreempted) {
			t.Fatalf("refill cancelled by %v", context.Cause(pctx))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the refill kept its slot while a live request waited")
	}
	ps.release()
	nextGranted(t, got)

	// Both waiting: the live request that arrived last is served first.
	presignGot := make(chan struct{})
	go func() {
		if _, s, err := a.acquirePresign(ctx); err == nil {
			close(presignGot)
			s.release()
		}
	}()
	waitFor(t, 5*time.Second, "refill queued", func() bool { return a.waiting() == 1 })
	later := waitTurn(t, ctx, a, "edge2", got)
	live.leave()
	if next := nextGranted(t, got); next != later {
		t.Fatal("wrong request served")
	}
	select {
	case <-presignGot:
		t.Fatal("refill served before a live request")
	default:
	}
	later.leave()
	select {
	case <-presignGot:
	case <-time.After(5 * time.Second):
		t.Fatal("refill never served")
	}
}

// A request that gives up while waiting leaves the queue.
func TestAdmissionWaiterLeaves(t *testing.T) {
	a := testAdmission(t, 1, 16, 16)
	holder, err := a.arrive("edge", "k", time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	tk, err := a.arrive("edge", "k", time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := tk.wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait past its deadline: %v", err)
	}
	tk.leave()
	if a.waiting() != 0 || a.inProgress() != 1 {
		t.Fatalf("%d waiting, %d in progress after the waiter left", a.waiting(), a.inProgress())
	}
}

func isOverload(err error, reason string) bool {
	var oe *overloadError
	return errors.As(err, &oe) && oe.reason == reason && errors.Is(err, ErrOverloaded)
}

func gaugeValue(t *testing.T, g interface{ Write(*dto.Metric) error }) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}
