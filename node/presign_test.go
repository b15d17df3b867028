package node

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/tss"
)

// TestPresignRules runs the presigning rules on one cluster of two nodes
// that each keep presign.depth 2 presignatures of the key for the requests
// they coordinate. The order matters where a rule leaves members holding
// halves; see each subtest.
func TestPresignRules(t *testing.T) {
	const depth = 2
	c := newTestCluster(t, []string{"a", "b"}, func(cfg *Config) {
		cfg.Presign = PresignConfig{Depth: depth, MaxAge: Duration(5 * time.Minute)}
		cfg.AbortBudget = 2
	})
	c.keygen(1)
	a, key := c.nodes["a"], c.key
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	full := func(n *Node) func() bool { return func() bool { return n.pool.depth(key) == depth } }
	sreq := func(what string) *peerwire.SignRequest {
		r := c.signRequest(digest(what))
		return &peerwire.SignRequest{Key: key.String(), Quorum: []string{"a", "b"}, Hash: "SHA-256", Digest: r.Digest, Edge: "edge", Authority: r.Authority}
	}
	// held counts the halves b holds for presignatures a coordinates.
	held := func() int { _, _, n := c.nodes["b"].sessions.load("a", key.String()); return n }
	// busy holds a request's place in a's queue, as a request taking a
	// presignature does: a does not refill while it is held (a refill
	// would displace, on b, the half about to be finished).
	busy := func() (done func()) {
		tk, err := a.admission.arrive("busy", key.String(), time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		return tk.leave
	}

	t.Run("PoolFillsToDepth", func(t *testing.T) {
		waitFor(t, 2*time.Minute, "a's pool fills", full(a))
		waitFor(t, 2*time.Minute, "b's pool fills", full(c.nodes["b"]))
		if st := a.Status(); st.Keys[0].Presignatures != depth || st.Keys[0].PresignTarget != depth {
			t.Fatalf("status: %+v", st.Keys[0])
		}
	})

	// A coordinator asking a member for more presignatures than the
	// member's depth has lost some it had (a restart, a drained pool): its
	// own oldest half there makes room, so the member never holds more
	// than its depth for it, and the coordinator refills at once.
	t.Run("PrepareBeyondDepthDisplacesOldest", func(t *testing.T) {
		b := c.nodes["b"]
		waitFor(t, time.Minute, "b holds a's halves", func() bool { return held() == depth })
		var oldest *session
		b.sessions.mu.Lock()
		for _, s := range b.sessions.sessions {
			if s.kind == peerwire.KindPresign && s.coordinator == "a" && (oldest == nil || s.created.Before(oldest.created)) {
				oldest = s
			}
		}
		b.sessions.mu.Unlock()
		pr := &peerwire.PrepareRequest{Version: peerwire.Version, Session: peerwire.NewSessionID(), Kind: peerwire.KindPresign,
			Presign: &peerwire.PresignRequest{Key: key.String(), Quorum: []string{"a", "b"}, TTL: time.Hour}}
		if _, err := c.peerClient("a", "b").Prepare(ctx, pr); err != nil {
			t.Fatalf("a presignature beyond b's depth: %v", err)
		}
		defer b.sessions.abort(pr.Session)
		if _, err := b.sessions.get(oldest.id); err == nil {
			t.Fatal("b's oldest half for a is still there")
		}
		if held() != depth {
			t.Fatalf("b holds %d halves for a; its depth is %d", held(), depth)
		}
		// a's presignature whose half b gave up cannot be finished: drop
		// it, as a would on its first use.
		a.pool.mu.Lock()
		for _, e := range a.pool.entries[key] {
			if e.id == oldest.id {
				e.ps.Abort(&tss.SessionError{Err: errors.New("its half on b was displaced")})
			}
		}
		a.pool.mu.Unlock()
	})

	// A half the coordinator lost (here: prepared on b by a refill that
	// then failed on a) is dropped when the coordinator next asks for one,
	// since it lists the presignatures it still holds: b's valid halves
	// are not displaced in its place, and a's pool keeps working. Before
	// the list, b evicted its oldest half at the cap, a valid one, and a's
	// next request fell back to the full path.
	t.Run("LostHalfDroppedNotValidOnes", func(t *testing.T) {
		b := c.nodes["b"]
		waitFor(t, 2*time.Minute, "a's pool fills", full(a))
		waitFor(t, time.Minute, "b holds a's halves", func() bool { return held() == depth })
		share, ok := b.share(key)
		if !ok {
			t.Fatal("b holds no share")
		}
		lost := peerwire.NewSessionID()
		ps, err := tss.NewPresignSession(share, []string{"a", "b"}, b.outbox(lost, peerwire.KindPresign, key.String(), 2))
		if err != nil {
			t.Fatal(err)
		}
		orphan := &session{id: lost, kind: peerwire.KindPresign, key: key.String(), members: []string{"a", "b"}, coordinator: "a", party: ps, keep: true}
		if err := b.sessions.add(orphan); err != nil {
			t.Fatal(err)
		}
		// It stays, as a ready half whose coordinator failed would, until
		// its lifetime (max_age) ends: long after this test.
		orphan.mu.Lock()
		orphan.expiry.Stop()
		orphan.mu.Unlock()
		// One request uses a presignature; a refills, listing the one left.
		if err := c.sign("a", "before the refill"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 2*time.Minute, "a's pool refills", full(a))
		if _, err := b.sessions.get(lost); err == nil {
			t.Fatal("b still holds the half a lost")
		}
		fallbacks := metricValue(t, a, "tkeyless_signer_presign_total", "event", "fallback")
		hits := metricValue(t, a, "tkeyless_signer_presign_total", "event", "hit")
		for i := range depth {
			if err := c.sign("a", fmt.Sprintf("after the refill %d", i)); err != nil {
				t.Fatal(err)
			}
		}
		if got := metricValue(t, a, "tkeyless_signer_presign_total", "event", "hit"); got != hits+depth {
			t.Errorf("presign hits %v → %v over %d requests", hits, got, depth)
		}
		if got := metricValue(t, a, "tkeyless_signer_presign_total", "event", "fallback"); got != fallbacks {
			t.Errorf("presign fallbacks %v → %v: a presignature's half was gone on b", fallbacks, got)
		}
	})

	t.Run("SignUsesPresignature", func(t *testing.T) {
		waitFor(t, 2*time.Minute, "a's pool fills", full(a))
		hits := metricValue(t, a, "tkeyless_signer_presign_total", "event", "hit")
		if err := c.sign("a", "presigned"); err != nil {
			t.Fatal(err)
		}
		if got := metricValue(t, a, "tkeyless_signer_presign_total", "event", "hit"); got != hits+1 {
			t.Fatalf("presign hits %v → %v: the request did not use a presignature", hits, got)
		}
	})

	// Every half a refused Finish reaches is destroyed, so b holds no
	// stale half of a's afterwards.
	t.Run("FinishPresignRules", func(t *testing.T) {
		waitFor(t, 2*time.Minute, "a's pool fills", full(a))
		done := busy()
		e := a.pool.take(key, func(string) bool { return true })
		if e == nil {
			t.Fatal("no presignature to take")
		}
		defer e.ps.Abort(&tss.SessionError{Err: errors.New("test done")})
		bHolds := func(id peerwire.SessionID) bool { _, err := c.nodes["b"].sessions.get(id); return err == nil }
		if !bHolds(e.id) {
			t.Fatal("b does not hold its half")
		}
		// Only its coordinator finishes a presignature; anyone else's
		// attempt leaves it intact.
		_, err := c.peerClient("b", "b").FinishPresign(ctx, &peerwire.FinishPresignRequest{Version: peerwire.Version, Session: e.id, Sign: sreq("by b")})
		if status.Code(err) != codes.Aborted || !strings.Contains(err.Error(), "belongs to a, not b") || !bHolds(e.id) {
			t.Fatalf("b finishing a's presignature: %v (half kept: %t)", err, bHolds(e.id))
		}
		if _, err := c.peerClient("a", "b").FinishPresign(ctx, &peerwire.FinishPresignRequest{Version: peerwire.Version, Session: peerwire.NewSessionID(), Sign: sreq("unknown")}); status.Code(err) != codes.NotFound {
			t.Fatalf("finishing an unknown presignature: %v", err)
		}
		// A request the member refuses uses its half up.
		other := sreq("another quorum")
		other.Quorum = []string{"a"}
		_, err = c.peerClient("a", "b").FinishPresign(ctx, &peerwire.FinishPresignRequest{Version: peerwire.Version, Session: e.id, Sign: other})
		if err == nil || !strings.Contains(err.Error(), "does not match presignature") {
			t.Fatalf("a request for another quorum: %v", err)
		}
		waitFor(t, 10*time.Second, "b destroys its half", func() bool { return !bHolds(e.id) })
		done()

		for _, tc := range []struct {
			name string
			req  *peerwire.SignRequest
			want string
		}{
			{"no signing request", nil, "without a signing request"},
			{"no end-to-end authority", func() *peerwire.SignRequest { r := sreq("no authority"); r.Authority = nil; return r }(), "not authorized"},
			{"a digest the authority does not cover", func() *peerwire.SignRequest { r := sreq("covered"); r.Digest = digest("not covered"); return r }(), "not authorized"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				waitFor(t, 2*time.Minute, "a's pool fills", full(a))
				defer busy()()
				e := a.pool.take(key, func(string) bool { return true })
				defer e.ps.Abort(&tss.SessionError{Err: errors.New("test done")})
				_, err := c.peerClient("a", "b").FinishPresign(ctx, &peerwire.FinishPresignRequest{Version: peerwire.Version, Session: e.id, Sign: tc.req})
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("FinishPresign: %v, want a refusal saying %q", err, tc.want)
				}
				waitFor(t, 10*time.Second, "b destroys its half", func() bool { return !bHolds(e.id) })
			})
		}
	})

	t.Run("TakeDestroysEntriesWithUnusableMember", func(t *testing.T) {
		waitFor(t, 2*time.Minute, "a's pool fills", full(a))
		a.pool.mu.Lock()
		taken := append([]*presignEntry(nil), a.pool.entries[key]...)
		a.pool.mu.Unlock()
		if e := a.pool.take(key, func(m string) bool { return m != "b" }); e != nil {
			t.Fatalf("took a presignature with b, which is not usable: %v", e.quorum)
		}
		for _, e := range taken {
			if e.ps.Ready() {
				t.Fatal("a presignature with an unusable member was kept alive")
			}
		}
	})

	// Conviction drops every presignature with the convicted peer.
	t.Run("ConvictionDropsPresignatures", func(t *testing.T) {
		b := c.nodes["b"]
		waitFor(t, 2*time.Minute, "b's pool fills", full(b))
		b.convict("a", peerwire.NewSessionID(), key.String(), tss.ErrMisbehaved)
		defer b.readmit("a", "test")
		if d := b.pool.depth(key); d != 0 {
			t.Fatalf("b's pool holds %d presignatures with a, convicted", d)
		}
		if _, err := b.Sign(ctx, c.signRequest(digest("a convicted"))); !errors.Is(err, ErrNoQuorum) {
			t.Fatalf("b signing with a convicted: %v", err)
		}
		pr := &peerwire.PrepareRequest{Version: peerwire.Version, Session: peerwire.NewSessionID(), Kind: peerwire.KindPresign,
			Presign: &peerwire.PresignRequest{Key: key.String(), Quorum: []string{"a", "b"}}}
		if _, err := c.peerClient("a", "b").Prepare(ctx, pr); err == nil || !strings.Contains(err.Error(), "convicted") {
			t.Fatalf("a presignature Prepare from a, convicted: %v", err)
		}
	})

	t.Run("SuspensionDrainsPool", func(t *testing.T) {
		waitFor(t, 2*time.Minute, "a's pool fills", full(a))
		for range a.budget.limit {
			a.chargeAbort(key.String(), peerwire.NewSessionID(), errors.New("test: unattributed"))
		}
		defer a.resumeKey(key.String(), "test")
		if d := a.pool.depth(key); d != 0 {
			t.Fatalf("a keeps %d presignatures of a suspended key", d)
		}
		if err := c.sign("a", "suspended"); !errors.Is(err, ErrKeySuspended) {
			t.Fatalf("signing with the key suspended: %v", err)
		}
		pr := &peerwire.PrepareRequest{Version: peerwire.Version, Session: peerwire.NewSessionID(), Kind: peerwire.KindPresign,
			Presign: &peerwire.PresignRequest{Key: key.String(), Quorum: []string{"a", "b"}}}
		if _, err := c.peerClient("b", "a").Prepare(ctx, pr); err == nil || !strings.Contains(err.Error(), "suspended") {
			t.Fatalf("a presignature Prepare for a suspended key: %v", err)
		}
	})

	// A member that lost its half (it restarted) is not blamed, and the
	// request is signed the full way within the same deadline, with the
	// same authority: the coordinator's half had sent no more than its
	// round-5 commitment. (a's round-5 messages to b are dropped here, so
	// that b's "unknown presignature" answer is what a hears first. Were
	// b's refusal of that message to reach a first, a's own half would
	// fail first, and a would not learn that b had lost its half: the
	// outcome would depend on which answer came first.)
	t.Run("LostHalfFallsBackToFullPath", func(t *testing.T) {
		waitFor(t, 2*time.Minute, "a's pool fills", full(a))
		restartAndWait(ctx, t, c, a, "b")
		tamperOutgoing = func(to string, env *peerwire.Envelope) bool {
			return !(env.From == "a" && to == "b" && env.Kind == peerwire.KindPresign && env.Round >= 5)
		}
		defer func() { tamperOutgoing = nil }()
		fallbacks := metricValue(t, a, "tkeyless_signer_presign_total", "event", "fallback")
		if err := c.sign("a", "b lost its half"); err != nil {
			t.Fatalf("the request failed: %v", err)
		}
		if got := metricValue(t, a, "tkeyless_signer_presign_total", "event", "fallback"); got != fallbacks+1 {
			t.Fatalf("presign fallbacks %v → %v: the lost half was not what failed", fallbacks, got)
		}
		if a.coolingDown("b") {
			t.Fatal("b, which only restarted, is cooling down")
		}
	})
}

// TestPresignLostHalfThreeMembers is LostHalfFallsBackToFullPath with a
// third member: b restarted and lost its half, c still held its own and
// began finishing it (checking the request's authority, and sending its
// round-5 commitment) before the session stopped. The full path then asks
// c again with the same request, which c must not refuse as a replay: its
// half is destroyed and nothing that depends on the digest left c.
func TestPresignLostHalfThreeMembers(t *testing.T) {
	if testing.Short() {
		t.Skip("fills (2,3) presignature pools")
	}
	c := newTestCluster(t, []string{"a", "b", "c"}, func(cfg *Config) {
		cfg.Presign = PresignConfig{Depth: 1, MaxAge: Duration(5 * time.Minute)}
	})
	c.keygen(2)
	a := c.nodes["a"]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	waitFor(t, 2*time.Minute, "a's pool fills", func() bool { return a.pool.depth(c.key) == 1 })
	restartAndWait(ctx, t, c, a, "b")
	fallbacks := metricValue(t, a, "tkeyless_signer_presign_total", "event", "fallback")
	if err := c.sign("a", "b lost its half, c had begun"); err != nil {
		t.Fatalf("the request failed: %v", err)
	}
	if got := metricValue(t, a, "tkeyless_signer_presign_total", "event", "fallback"); got != fallbacks+1 {
		t.Fatalf("presign fallbacks %v → %v: the lost half was not what failed", fallbacks, got)
	}
}

func TestFinishTracker(t *testing.T) {
	var f finishTracker
	if f.wait("a", time.Hour) {
		t.Fatal("wait with no finish under way reported one")
	}
	endA := f.start("a", peerwire.NewSessionID())
	endB := f.start("b", peerwire.NewSessionID())
	defer endB()
	if f.wait("c", time.Hour) {
		t.Fatal("another coordinator's finishes counted")
	}
	start := time.Now()
	if !f.wait("a", 20*time.Millisecond) {
		t.Fatal("a finish under way not reported")
	}
	if took := time.Since(start); took < 20*time.Millisecond {
		t.Fatalf("returned after %v, before the finish ended or the bound", took)
	}
	// Ended while (or before) it is waited for: the wait returns then, not
	// at its one-hour bound.
	go endA()
	f.wait("a", time.Hour)
	if f.wait("a", time.Hour) {
		t.Fatal("an ended finish still counted")
	}
	// A coordinator's Prepares wait for its finishes at most
	// maxFinishWaiters at a time; the next one is refused at once.
	var waiting sync.WaitGroup
	release := f.start("a", peerwire.NewSessionID())
	for range maxFinishWaiters {
		waiting.Go(func() { f.wait("a", time.Hour) })
	}
	waitFor(t, 10*time.Second, "the waiters are counted", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.waiting["a"] == maxFinishWaiters
	})
	if f.wait("a", time.Hour) {
		t.Fatal("a waiter beyond maxFinishWaiters waited")
	}
	release()
	waiting.Wait()
}

// restartAndWait restarts member (which loses every presignature half it
// held) and waits until observer has seen it back: a ping answered, its
// health checked since the restart, the connection ready.
func restartAndWait(ctx context.Context, t *testing.T, c *testCluster, observer *Node, member string) {
	t.Helper()
	at := time.Now()
	c.restart(member)
	p := observer.peers[member]
	waitFor(t, 30*time.Second, observer.cfg.Name+" sees "+member+" back", func() bool {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		if _, err := p.client().Ping(pctx, &peerwire.PingRequest{Version: peerwire.Version}, grpc.WaitForReady(false)); err != nil {
			return false
		}
		p.health.mu.Lock()
		defer p.health.mu.Unlock()
		return p.health.up && p.health.checked.After(at) && p.conn().GetState() == connectivity.Ready
	})
}
