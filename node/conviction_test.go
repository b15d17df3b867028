package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/tss"
)

// TestConvictionsSurviveRestart: a conviction is recorded once (the first
// reason stands), kept on disk, aborts at once every live session with the
// convicted peer, and ends only on readmit, which also clears the peer's
// cool-down.
func TestConvictionsSurviveRestart(t *testing.T) {
	n := unitNode(t, "a", "b", "c")
	withB, withoutB := &fakeParty{}, &fakeParty{}
	sb := &session{id: peerwire.NewSessionID(), kind: peerwire.KindSign, members: []string{"a", "b"}, coordinator: "a", party: withB}
	sc := &session{id: peerwire.NewSessionID(), kind: peerwire.KindSign, members: []string{"a", "c"}, coordinator: "c", party: withoutB}
	for _, s := range []*session{sb, sc} {
		if err := n.sessions.add(s); err != nil {
			t.Fatal(err)
		}
	}
	first := peerwire.NewSessionID()
	n.convict("b", first, "k1", fmt.Errorf("%w: MtA answer out of range", tss.ErrMisbehaved))
	n.convict("b", peerwire.NewSessionID(), "k2", errors.New("a later reason"))
	n.convict("a", peerwire.NewSessionID(), "k1", errors.New("this node itself"))
	n.convict("z", peerwire.NewSessionID(), "k1", errors.New("a name this node does not know"))

	if !n.convicted("b") || n.convicted("a") || n.convicted("z") || n.convicted("c") {
		t.Fatalf("convicted: b %t, a %t, z %t, c %t; want only b", n.convicted("b"), n.convicted("a"), n.convicted("z"), n.convicted("c"))
	}
	if _, err := n.sessions.get(sb.id); err == nil {
		t.Fatal("a session with the convicted peer is still live")
	}
	if e := withB.lastAbort(); e == nil || !slices.Equal(e.Culprits, []string{"b"}) || !errors.Is(e, errConvicted) {
		t.Fatalf("the session with b was aborted with %v, want b named as convicted", e)
	}
	if _, err := n.sessions.get(sc.id); err != nil {
		t.Fatalf("a session without the convicted peer was aborted: %v", err)
	}
	if _, aborted := withoutB.counts(); aborted != 0 {
		t.Fatal("a session without the convicted peer was aborted")
	}
	if v := metricValue(t, n, "tkeyless_signer_peer_convicted", "peer", "b"); v != 1 {
		t.Fatalf("convicted metric %v", v)
	}
	if v := metricValue(t, n, "tkeyless_signer_convictions_total", "peer", "b"); v != 1 {
		t.Fatalf("convictions counted %v times, want once", v)
	}

	again, err := loadConvictions(n.cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	c, ok := again.get("b")
	if !ok || c.Session != first.String() || c.Key != "k1" || c.Reason == "" || time.Since(c.At) > time.Minute {
		t.Fatalf("after a restart, b's conviction is %+v (found %t); want the first one, kept", c, ok)
	}

	h := n.peers["b"].health
	h.mu.Lock()
	h.failures, h.coolUntil = 5, time.Now().Add(time.Hour)
	h.mu.Unlock()
	was, err := n.readmit("b", "admin")
	if err != nil || !was {
		t.Fatalf("readmit = %t, %v", was, err)
	}
	if n.convicted("b") || n.coolingDown("b") {
		t.Fatalf("after readmit: convicted %t, cooling down %t", n.convicted("b"), n.coolingDown("b"))
	}
	if was, _ := n.readmit("b", "admin"); was {
		t.Fatal("a second readmit says b was convicted")
	}
	again, _ = loadConvictions(n.cfg.DataDir)
	if _, ok := again.get("b"); ok {
		t.Fatal("a readmitted peer is convicted again after a restart")
	}
}

// TestBlameCoolsPeerAfterStrikes: a peer blamed for three failed sessions
// in a row sits out of quorums for a while; one blamed for a failure that
// spent an edge's authority sits out at once; a success clears the count;
// status shows all of it.
func TestBlameCoolsPeerAfterStrikes(t *testing.T) {
	n := unitNode(t, "a", "b", "c", "d")
	fail := errors.New("prepare: deadline exceeded")
	for i := 1; i <= strikes; i++ {
		if n.coolingDown("b") {
			t.Fatalf("b cools down after %d failures; strikes is %d", i-1, strikes)
		}
		n.blame("b", fail)
	}
	if !n.coolingDown("b") {
		t.Fatalf("b does not cool down after %d failures", strikes)
	}
	n.blame("c", fmt.Errorf("round 3: %w", errAuthoritySpent))
	if !n.coolingDown("c") {
		t.Fatal("a member whose failure spent the authority does not sit out at once")
	}
	n.blame("d", fail)
	n.blame("d", fail)
	n.credit("d")
	n.blame("d", fail)
	n.blame("d", fail)
	if n.coolingDown("d") {
		t.Fatal("failures before a success still count towards a cool-down")
	}
	n.blame("z", fail) // not a peer: ignored
	n.credit("z")
	if n.coolingDown("z") || n.reachable("z") {
		t.Fatal("a name that is no peer is cooling down or reachable")
	}
	down := n.downPeers()
	slices.Sort(down)
	if !slices.Equal(down, []string{"b", "c"}) {
		t.Fatalf("downPeers = %v, want the two cooling down", down)
	}
	n.convict("d", peerwire.NewSessionID(), "", tss.ErrMisbehaved)
	st := n.peerStatuses()
	if len(st) != 3 || st[0].Name != "b" || st[1].Name != "c" || st[2].Name != "d" {
		t.Fatalf("peer statuses not sorted by name: %+v", st)
	}
	if st[0].CoolUntil.IsZero() || st[0].LastError != fail.Error() || st[2].Convicted == nil || st[0].Convicted != nil {
		t.Fatalf("peer statuses do not show what happened: %+v", st)
	}
	if v := metricValue(t, n, "tkeyless_signer_culprits_total", "peer", "b"); v != strikes {
		t.Fatalf("culprits metric %v", v)
	}
}

// TestAbortReasonNamesTheFailure: a failed session is counted as a
// deadline, a member's failure or a protocol failure, in that order.
func TestAbortReasonNamesTheFailure(t *testing.T) {
	for _, tc := range []struct {
		err  error
		bad  []string
		want string
	}{
		{fmt.Errorf("round 2: %w", context.DeadlineExceeded), []string{"b"}, "deadline"},
		{errors.New("refused"), []string{"b"}, "member"},
		{errors.New("signature does not verify"), nil, "protocol"},
	} {
		if got := abortReason(tc.err, tc.bad); got != tc.want {
			t.Errorf("abortReason(%v, %v) = %q, want %q", tc.err, tc.bad, got, tc.want)
		}
	}
	me := &memberError{member: "b", err: errAuthoritySpent}
	if me.Error() != "member b: "+errAuthoritySpent.Error() || !errors.Is(me, errAuthoritySpent) {
		t.Fatalf("memberError %q does not name the member or unwrap", me)
	}
	if spentIf(fmt.Errorf("x: %w", errAuthoritySpent)) != errAuthoritySpent || spentIf(errors.New("x")) != nil {
		t.Fatal("spentIf")
	}
	if got := dedupe([]string{"c", "b", "c"}); !slices.Equal(got, []string{"b", "c"}) {
		t.Fatalf("dedupe = %v", got)
	}
}
