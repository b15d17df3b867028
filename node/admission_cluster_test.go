package node

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudflare/gokeyless/protocol"

	"github.com/tkeyless/tkeyless/internal/authority"
	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/internal/pki"
)

// TestAdmissionCluster shows admission control with real sessions: a (1,2)
// cluster whose nodes compute one session at a time
// (max_concurrent_sessions 1), with an abort budget of one, so a single
// cancellation wrongly charged as an unattributed abort would suspend the
// key.
func TestAdmissionCluster(t *testing.T) {
	c := newTestCluster(t, []string{"a", "b"}, func(cfg *Config) {
		cfg.MaxConcurrentSessions = 1
		cfg.MaxQueuePerIdentity = 3
		cfg.AbortBudget = 1
	})
	c.keygen(1)
	a, b := c.nodes["a"], c.nodes["b"]
	edge2 := c.identity("edge2", pki.RoleEdge)
	share, _ := a.share(c.key)
	signAs := func(ctx context.Context, who *authority.Signer, what string) error {
		d := digest(what)
		auth, err := who.Sign(authority.Request{Op: byte(protocol.OpECDSASignSHA256), SKI: c.key, Digest: d})
		if err != nil {
			return err
		}
		sig, err := a.Sign(ctx, SignRequest{Key: c.key, Hash: crypto.SHA256, Digest: d, Edge: who.Cert.Subject.CommonName, Authority: auth, RequestID: what})
		if err == nil && !ecdsa.VerifyASN1(share.PublicKey(), d, sig) {
			return fmt.Errorf("%s: signature does not verify", what)
		}
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// estimate is a's estimate of a session, after one if it has none yet
	// (a subtest run on its own).
	estimate := func(t *testing.T) time.Duration {
		if a.admission.estimate(c.key.String()) == 0 {
			if err := signAs(ctx, c.edge, "measure"); err != nil {
				t.Fatal(err)
			}
		}
		return a.admission.estimate(c.key.String())
	}

	// Three requests at once: a computes one session at a time, the others
	// wait their turn, and all three are signed.
	t.Run("QueueBound", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make([]error, 3)
		for i := range errs {
			wg.Go(func() { errs[i] = signAs(ctx, c.edge, fmt.Sprint("queued ", i)) })
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		if p := a.admission.peakLoad(); p != 1 {
			t.Fatalf("a computed %d sessions at once, max_concurrent_sessions 1", p)
		}
		if metricValue(t, a, "tkeyless_signer_admission_queue_length") != 0 || a.admission.inProgress() != 0 {
			t.Fatal("the queue is not empty after every request ended")
		}
	})

	// A deadline shorter than a session is refused at once, and no member
	// hears of it.
	t.Run("DeadlineRefusedAtOnce", func(t *testing.T) {
		est := estimate(t)
		before := b.sessions.count()
		prepared := metricValue(t, b, "tkeyless_signer_admission_computing")
		ctx, cancel := context.WithTimeout(ctx, est/2)
		defer cancel()
		start := time.Now()
		err := signAs(ctx, c.edge, "too late")
		if !isOverload(err, overloadDeadline) {
			t.Fatalf("%v left for a session of about %v: %v, want refused (deadline)", est/2, est, err)
		}
		if took := time.Since(start); took > est/4 {
			t.Fatalf("refused after %v, not at once", took)
		}
		if b.sessions.count() != before || metricValue(t, b, "tkeyless_signer_admission_computing") != prepared {
			t.Fatal("b was asked to take part")
		}
		if v := metricValue(t, a, "tkeyless_signer_overloaded_total", "reason", overloadDeadline); v != 1 {
			t.Fatalf("overloaded{reason=deadline} = %v, want 1", v)
		}
	})

	// The requester leaves mid-session: the member's part stops at once
	// (not after its stall timeout, 10 s here), nobody is blamed, and the
	// key's abort budget (one) is not charged.
	t.Run("CancelStopsMembers", func(t *testing.T) {
		// The second request is left a third of a session after b started
		// its part: mid-session, however fast sessions run here.
		for i, delay := range []time.Duration{0, min(150*time.Millisecond, estimate(t)/3)} {
			rctx, rcancel := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- signAs(rctx, c.edge, fmt.Sprint("abandoned ", i)) }()
			waitFor(t, 30*time.Second, "b runs its part", func() bool {
				return len(b.sessions.where(func(s *session) bool {
					s.mu.Lock()
					defer s.mu.Unlock()
					return s.kind == peerwire.KindSign && s.state == stateRunning
				})) > 0
			})
			time.Sleep(delay) // into round 2 or later: not a readiness wait
			rcancel()
			cancelled := time.Now()
			waitFor(t, 3*time.Second, "b's part stops", func() bool { return b.sessions.active() == 0 })
			stopped := time.Since(cancelled)
			if err := <-done; !errors.Is(err, context.Canceled) {
				t.Fatalf("abandoned request: %v, want cancelled", err)
			}
			t.Logf("b's part stopped %v after the requester left", stopped)
		}
		if v := metricValue(t, b, "tkeyless_signer_sessions_cancelled_total", "role", "member"); v != 2 {
			t.Errorf("b counted %v member sessions cancelled, want 2", v)
		}
		if v := metricValue(t, a, "tkeyless_signer_sessions_cancelled_total", "role", "coordinator"); v != 2 {
			t.Errorf("a counted %v requests cancelled, want 2", v)
		}
		for _, n := range []*Node{a, b} {
			if err := n.keySuspended(c.key); err != nil {
				t.Fatalf("%s: %v", n.cfg.Name, err)
			}
			if v := metricValue(t, n, "tkeyless_signer_unattributed_aborts_total", "key", c.key.String()); v != 0 {
				t.Fatalf("%s charged %v cancellations to the abort budget", n.cfg.Name, v)
			}
		}
		if v := metricValue(t, a, "tkeyless_signer_culprits_total", "peer", "b"); v != 0 {
			t.Fatalf("a blamed b %v times for sessions its requester abandoned", v)
		}
		if err := signAs(ctx, c.edge, "after the cancellations"); err != nil {
			t.Fatal(err)
		}
	})

	// A deadline that passes mid-session stops it on every member, and the
	// audit logs say when: each side's past_deadline_ms is well under a
	// session time.
	t.Run("DeadlineStopsMembersAuditLog", func(t *testing.T) {
		est := estimate(t)
		// Forget the estimate so this request is started, then let its
		// deadline pass in the middle of the session.
		a.admission.estMu.Lock()
		delete(a.admission.est, c.key.String())
		a.admission.estMu.Unlock()
		dctx, dcancel := context.WithTimeout(ctx, est/3)
		defer dcancel()
		if err := signAs(dctx, c.edge, "deadline mid-session"); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%v", err)
		}
		waitFor(t, 3*time.Second, "b's part stops", func() bool { return b.sessions.active() == 0 })
		coord := auditLine(t, c.logs["a"], "sign", "deadline mid-session")
		member := auditLine(t, c.logs["b"], "member_sign", "deadline mid-session")
		for who, l := range map[string]map[string]any{"coordinator": coord, "member": member} {
			if l["outcome"] != "cancelled" {
				t.Errorf("%s's audit outcome %v (%v), want cancelled", who, l["outcome"], l["err"])
			}
			for _, f := range []string{"deadline_unix_ms", "ended_unix_ms", "past_deadline_ms", "dur_ms"} {
				if _, ok := l[f]; !ok {
					t.Errorf("%s's audit has no %s: %v", who, f, l)
				}
			}
			if past := time.Duration(l["past_deadline_ms"].(float64)) * time.Millisecond; past > est {
				t.Errorf("%s worked %v past the deadline, a session takes %v", who, past, est)
			}
		}
		if _, ok := coord["queue_ms"]; !ok {
			t.Errorf("coordinator's audit has no queue_ms: %v", coord)
		}
		if err := n0(a.keySuspended(c.key), b.keySuspended(c.key)); err != nil {
			t.Fatal(err)
		}
	})

	// One edge floods a with requests; another edge's request, arriving
	// behind them, is served next, not last.
	t.Run("FairShareBetweenIdentities", func(t *testing.T) {
		if testing.Short() {
			t.Skip("four sessions; TestAdmissionFairShareBetweenIdentities shows the rule on the queue alone")
		}
		var mu sync.Mutex
		var order []string
		var wg sync.WaitGroup
		run := func(who *authority.Signer, what string) {
			wg.Go(func() {
				if err := signAs(ctx, who, what); err != nil {
					t.Errorf("%s: %v", what, err)
				}
				mu.Lock()
				order = append(order, what)
				mu.Unlock()
			})
		}
		for i := range 3 {
			run(c.edge, fmt.Sprint("flood ", i))
		}
		waitFor(t, 30*time.Second, "flood queued", func() bool { return a.admission.waiting() == 2 })
		// The flood's fourth: refused at once (max_queue_per_identity 3).
		if err := signAs(ctx, c.edge, "flood 3"); !isOverload(err, overloadIdentity) {
			t.Fatalf("flood's fourth request: %v, want refused (identity)", err)
		}
		run(edge2, "visitor")
		wg.Wait()
		if len(order) != 4 || order[1] != "visitor" {
			t.Fatalf("served in order %v: the visitor waited behind the flood", order)
		}
	})

	// A presignature being made gives its slot to a live request.
	t.Run("PresignRefillYieldsToLive", func(t *testing.T) {
		if testing.Short() {
			t.Skip("restarts the cluster with presigning on")
		}
		for _, name := range []string{"a", "b"} {
			cfg := c.cfgs[name]
			cfg.Presign = PresignConfig{Depth: 1, MaxAge: Duration(time.Minute)}
			c.cfgs[name] = cfg
			c.restart(name)
		}
		a = c.nodes["a"]
		waitFor(t, time.Minute, "a makes a presignature", func() bool {
			a.admission.mu.Lock()
			defer a.admission.mu.Unlock()
			return len(a.admission.presigns) > 0
		})
		// The pool is empty (the refill is making its first), so this live
		// request signs the full way and needs the refill's slot.
		if a.pool.depth(c.key) != 0 {
			t.Skip("the refill finished before the request arrived")
		}
		if err := signAs(ctx, c.edge, "live during a refill"); err != nil {
			t.Fatal(err)
		}
		if v := metricValue(t, a, "tkeyless_signer_presign_total", "event", "preempted"); v < 1 {
			t.Fatal("the refill kept its slot while a live request waited")
		}
		if v := metricValue(t, a, "tkeyless_signer_culprits_total", "peer", "b"); v != 0 {
			t.Fatalf("a blamed b %v times for a refill it cancelled", v)
		}
	})
}

// n0 is the first non-nil error.
func n0(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// auditLine finds the audit record of event for request in a node's log.
func auditLine(t *testing.T, log *lockedBuffer, event, request string) map[string]any {
	t.Helper()
	for _, l := range log.lines() {
		if !strings.Contains(l, `"audit"`) {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			continue
		}
		if m["event"] == event && m["request"] == request {
			return m
		}
	}
	t.Fatalf("no %s audit record for request %q", event, request)
	return nil
}
