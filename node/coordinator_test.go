package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cloudflare/gokeyless/protocol"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tkeyless/tkeyless/internal/authority"
	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/tss"
)

// signPrepare is a Prepare of a signing session for an edge's fresh
// request, with quorum.
func signPrepare(c *testCluster, what string, quorum ...string) *peerwire.PrepareRequest {
	req := c.signRequest(digest(what))
	return &peerwire.PrepareRequest{Version: peerwire.Version, Session: peerwire.NewSessionID(), Kind: peerwire.KindSign,
		Sign: &peerwire.SignRequest{Key: c.key.String(), Quorum: quorum, Hash: "SHA-256", Digest: req.Digest, Edge: "edge", Authority: req.Authority}}
}

// testQuorumSkipsConvictedPeer: once a node convicted a peer, none of its
// quorums includes the peer, it joins no session the peer coordinates or
// is a member of, and status and metrics say so; it still signs with the
// others.
func testQuorumSkipsConvictedPeer(t *testing.T, c *testCluster) {
	a := c.nodes["a"]
	a.convict("b", peerwire.NewSessionID(), c.key.String(), fmt.Errorf("%w: MtA answer out of range", tss.ErrMisbehaved))
	defer a.readmit("b", "test")
	share, _ := a.share(c.key)
	for range 20 {
		q, ok := a.pickQuorum(share, nil)
		if !ok || !slices.Equal(q, []string{"a", "c"}) {
			t.Fatalf("quorum %v (%t) with b convicted", q, ok)
		}
	}
	if q, ok := a.pickQuorum(share, []string{"c"}); ok {
		t.Fatalf("quorum %v without c: only b is left, and it is convicted", q)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, tc := range []struct {
		name, from string
		quorum     []string
	}{
		{"coordinated by the convicted peer", "b", []string{"a", "b"}},
		{"naming the convicted peer", "c", []string{"a", "c", "b"}},
	} {
		pr := signPrepare(c, tc.name, tc.quorum...)
		_, err := c.peerClient(tc.from, "a").Prepare(ctx, pr)
		if err == nil || !strings.Contains(err.Error(), "convicted") {
			a.sessions.abort(pr.Session)
			t.Fatalf("a Prepare %s: %v", tc.name, err)
		}
	}

	st := a.Status()
	var bStatus *peerwire.PeerStatus
	for i := range st.Peers {
		if st.Peers[i].Name == "b" {
			bStatus = &st.Peers[i]
		}
	}
	if bStatus == nil || bStatus.Convicted == nil || !strings.Contains(bStatus.Convicted.Reason, "out of range") {
		t.Fatalf("status of b: %+v", bStatus)
	}
	if len(st.Keys) != 1 || !st.Keys[0].Available {
		t.Fatalf("key status %+v: a and c still make a quorum", st.Keys)
	}
	if v := metricValue(t, a, "tkeyless_signer_peer_convicted", "peer", "b"); v != 1 {
		t.Fatalf("convicted metric %v", v)
	}
	if err := c.sign("a", "with b convicted"); err != nil {
		t.Fatalf("a cannot sign with c: %v", err)
	}
}

// testReadmitNeedsAdmin: only an admin ends a conviction; neither another
// node nor the convicted node itself can. A readmitted peer is chosen
// again.
func testReadmitNeedsAdmin(t *testing.T, c *testCluster) {
	a := c.nodes["a"]
	a.convict("b", peerwire.NewSessionID(), c.key.String(), tss.ErrMisbehaved)
	defer a.readmit("b", "test")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, by := range []string{"b", "c"} {
		if _, err := c.peerClient(by, "a").Readmit(ctx, &peerwire.ReadmitRequest{Peer: "b"}); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("node %s readmitting b: %v", by, err)
		}
		if !a.convicted("b") {
			t.Fatalf("node %s readmitted b", by)
		}
	}
	resp, err := c.adminClient("a").Readmit(ctx, &peerwire.ReadmitRequest{Peer: "b"})
	if err != nil || !resp.WasConvicted {
		t.Fatalf("the admin readmitting b: %+v, %v", resp, err)
	}
	if a.convicted("b") {
		t.Fatal("b is still convicted")
	}
	share, _ := a.share(c.key)
	if q, ok := a.pickQuorum(share, []string{"c"}); !ok || !slices.Equal(q, []string{"a", "b"}) {
		t.Fatalf("quorum without c after readmitting b: %v, %t", q, ok)
	}
	if v := metricValue(t, a, "tkeyless_signer_peer_convicted", "peer", "b"); v != 0 {
		t.Fatalf("convicted metric %v after readmit", v)
	}
	resp, err = c.adminClient("a").Readmit(ctx, &peerwire.ReadmitRequest{Peer: "b"})
	if err != nil || resp.WasConvicted {
		t.Fatalf("readmitting b again: %+v, %v", resp, err)
	}
}

// testCoordinatorRetriesWithoutRefusingMember: when a member of the chosen
// quorum refuses to prepare (here b, which convicted a), the coordinator
// blames it and signs with a quorum without it, within the same request
// and with the same authority (nothing was spent).
func testCoordinatorRetriesWithoutRefusingMember(t *testing.T, c *testCluster) {
	a, b := c.nodes["a"], c.nodes["b"]
	b.convict("a", peerwire.NewSessionID(), c.key.String(), tss.ErrMisbehaved)
	defer b.readmit("a", "test")
	c.coolDown("a", "c") // so that a asks b first
	if err := c.sign("a", "b refuses, c signs"); err != nil {
		t.Fatalf("a did not sign through c: %v", err)
	}
	h := a.peers["b"].health
	h.mu.Lock()
	failures, lastErr := h.failures, h.lastErr
	h.mu.Unlock()
	if failures != 1 || !strings.Contains(lastErr, "convicted") {
		t.Fatalf("a's record of b: %d failures, last %q; want b blamed once for refusing", failures, lastErr)
	}
	if v := metricValue(t, a, "tkeyless_signer_session_aborts_total", "reason", "member"); v < 1 {
		t.Fatal("the failed attempt was not counted as a member's failure")
	}
}

// testAuthoritySpentAfterRound1: a signing session that fails after its
// first round has spent the edge's authority on every member that got
// there, for good: the coordinator does not retry with it (the edge comes
// back with a fresh one), the failing member sits out of quorums at once,
// and a second use of the authority is refused as a replay. A member's
// failure is not an unattributed abort: the key's budget is not charged.
func testAuthoritySpentAfterRound1(t *testing.T, c *testCluster) {
	a := c.nodes["a"]
	c.coolDown("a", "c") // so that a picks b
	tamperOutgoing = func(to string, env *peerwire.Envelope) bool {
		if env.From == "b" && env.Kind == peerwire.KindSign && env.Round == 3 {
			env.Payload = []byte("not a tss-lib message") // b breaks down in round 3
		}
		return true
	}
	defer func() { tamperOutgoing = nil }()
	req := c.signRequest(digest("spent in round 3"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := a.Sign(ctx, req)
	tamperOutgoing = nil
	if !errors.Is(err, ErrNoQuorum) || !errors.Is(err, errAuthoritySpent) {
		t.Fatalf("Sign: %v, want no quorum, the authority spent", err)
	}
	if !a.coolingDown("b") {
		t.Fatal("b, whose failure spent the authority, is not cooling down")
	}
	areq := authority.Request{Op: byte(protocol.OpECDSASignSHA256), SKI: c.key, Digest: req.Digest}
	for _, member := range []string{"a", "b"} {
		if _, err := c.nodes[member].verifier.Verify(req.Authority, areq); err == nil || !strings.Contains(err.Error(), "replay") {
			t.Fatalf("%s still accepts the authority: %v", member, err)
		}
	}
	if _, err := c.nodes["c"].verifier.Verify(req.Authority, areq); err != nil {
		t.Fatalf("c was asked to sign with the spent authority (the coordinator retried): %v", err)
	}
	if aborts, _ := a.budget.state(c.key.String()); aborts != 0 {
		t.Fatalf("a member's failure was charged to the abort budget (%d)", aborts)
	}
	c.resetHealth("a")
	if _, err := a.Sign(ctx, req); !errors.Is(err, errUnauthorized) || !strings.Contains(err.Error(), "replay") {
		t.Fatalf("the spent authority again: %v", err)
	}
}

// testNoQuorumWithoutHealthyMembers: with c stopped, a and b still sign
// together; with b convicted on a as well, a answers ErrNoQuorum at once
// (a down member costs a brief Prepare, not the request's deadline).
func testNoQuorumWithoutHealthyMembers(t *testing.T, c *testCluster) {
	a := c.nodes["a"]
	c.halt("c")
	waitFor(t, 10*time.Second, "a sees c gone", func() bool { return !a.reachable("c") })
	if err := c.sign("a", "with c stopped"); err != nil {
		t.Fatalf("a and b cannot sign with c stopped: %v", err)
	}
	a.convict("b", peerwire.NewSessionID(), c.key.String(), tss.ErrMisbehaved)
	defer a.readmit("b", "test")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	_, err := a.Sign(ctx, c.signRequest(digest("no quorum left")))
	if !errors.Is(err, ErrNoQuorum) {
		t.Fatalf("Sign with c stopped and b convicted: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("no quorum took %v to find out", d)
	}
	if st := a.Status(); st.Keys[0].Available || a.Healthy() {
		t.Fatalf("status says the key is available: %+v", st.Keys[0])
	}
}
