package node

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/tss"
)

// TestAbortBudgetSuspendsKey: a key's signing sessions that fail naming no
// culprit are counted on disk; the one that reaches the budget suspends
// the key, which stays suspended (across a restart) until it is reset,
// and a reset starts the count afresh.
func TestAbortBudgetSuspendsKey(t *testing.T) {
	dir := t.TempDir()
	b, err := loadAbortBudget(dir, 3)
	if err != nil {
		t.Fatal(err)
	}
	key, other := randomKeyID(t).String(), randomKeyID(t).String()
	fail := errors.New("joint signature does not verify")
	for i, want := range []struct {
		count     int
		suspended bool
	}{{1, false}, {2, false}, {3, true}, {4, false}} {
		sid := peerwire.NewSessionID()
		count, suspended, err := b.charge(key, sid, fail)
		if err != nil {
			t.Fatal(err)
		}
		if count != want.count || suspended != want.suspended {
			t.Fatalf("abort %d: count %d, suspended now %t; want %d, %t", i+1, count, suspended, want.count, want.suspended)
		}
		aborts, why := b.state(key)
		if aborts != want.count || (why != "") != (i >= 2) {
			t.Fatalf("abort %d: state %d, %q", i+1, aborts, why)
		}
		if i == 2 && (!strings.Contains(why, "budget 3") || !strings.Contains(why, sid.String()) || !strings.Contains(why, "signer key resume")) {
			t.Fatalf("suspension reason %q: want the budget, the last session and what to do", why)
		}
	}
	if aborts, why := b.state(other); aborts != 0 || why != "" {
		t.Fatalf("another key was charged: %d, %q", aborts, why)
	}

	b, err = loadAbortBudget(dir, 3)
	if err != nil {
		t.Fatal(err)
	}
	if aborts, why := b.state(key); aborts != 4 || why == "" {
		t.Fatalf("after a restart: %d aborts, suspended %q; the budget must survive restarts", aborts, why)
	}
	was, err := b.reset(key)
	if err != nil || was.Aborts != 4 || was.Suspended == "" || was.LastError != fail.Error() {
		t.Fatalf("reset returned %+v, %v", was, err)
	}
	if was, err := b.reset(other); err != nil || was.Aborts != 0 {
		t.Fatalf("reset of a key never charged: %+v, %v", was, err)
	}
	b, _ = loadAbortBudget(dir, 3)
	if aborts, why := b.state(key); aborts != 0 || why != "" {
		t.Fatalf("after a reset and a restart: %d, %q", aborts, why)
	}
	if _, _, err := b.charge(key, peerwire.NewSessionID(), fail); err != nil {
		t.Fatal(err)
	}
	if aborts, why := b.state(key); aborts != 1 || why != "" {
		t.Fatalf("a reset key is suspended again after one abort: %d, %q", aborts, why)
	}
}

// TestChargeAbortSuspendsNode: on a node, the budget's last abort makes
// the key refuse to sign with ErrKeySuspended, raises the metric, and only
// resumeKey (an admin's call) lifts it.
func TestChargeAbortSuspendsNode(t *testing.T) {
	n := unitNode(t, "a", "b")
	n.budget.limit = 2
	key := randomKeyID(t)
	for range 2 {
		if err := n.keySuspended(key); err != nil {
			t.Fatalf("suspended before the budget ran out: %v", err)
		}
		n.chargeAbort(key.String(), peerwire.NewSessionID(), errors.New("unattributed"))
	}
	if err := n.keySuspended(key); !errors.Is(err, ErrKeySuspended) || !strings.Contains(err.Error(), key.String()) {
		t.Fatalf("keySuspended after the budget = %v", err)
	}
	if v := metricValue(t, n, "tkeyless_signer_key_suspended", "key", key.String()); v != 1 {
		t.Fatalf("suspended metric %v", v)
	}
	if v := metricValue(t, n, "tkeyless_signer_unattributed_aborts_total", "key", key.String()); v != 2 {
		t.Fatalf("unattributed aborts metric %v", v)
	}
	if _, err := n.resumeKey("not a key", "admin"); err == nil {
		t.Fatal("resumeKey accepted a malformed key id")
	}
	resp, err := n.resumeKey(key.String(), "admin")
	if err != nil || !resp.WasSuspended || resp.Aborts != 2 {
		t.Fatalf("resumeKey = %+v, %v", resp, err)
	}
	if err := n.keySuspended(key); err != nil {
		t.Fatalf("still suspended after resumeKey: %v", err)
	}
	if v := metricValue(t, n, "tkeyless_signer_key_suspended", "key", key.String()); v != 0 {
		t.Fatalf("suspended metric after resume %v", v)
	}
	if resp, _ := n.resumeKey(key.String(), "admin"); resp.WasSuspended {
		t.Fatal("a second resume says the key was suspended")
	}
}

// TestSessionFailedConvictsAndCharges: what a failed session teaches its
// member: a proven cheat is convicted; an abort naming nobody is charged to
// the key's budget if the session was signing (a ceremony's is not); any
// other failure teaches nothing.
func TestSessionFailedConvictsAndCharges(t *testing.T) {
	key := randomKeyID(t).String()
	for _, tc := range []struct {
		name      string
		kind      peerwire.Kind
		err       error
		convicted []string
		charged   int
	}{
		{"a proven cheat", peerwire.KindSign, &tss.SessionError{Culprits: []string{"b"}, Convicted: []string{"b"}, Err: tss.ErrMisbehaved}, []string{"b"}, 0},
		{"a suspect only", peerwire.KindSign, &tss.SessionError{Culprits: []string{"b"}, Waiting: []string{"b"}, Err: errors.New("stalled")}, nil, 0},
		{"unattributed signing", peerwire.KindSign, &tss.SessionError{Unattributed: true, Err: errors.New("signature does not verify")}, nil, 1},
		{"unattributed presigning", peerwire.KindPresign, &tss.SessionError{Unattributed: true, Err: errors.New("round 4")}, nil, 1},
		{"unattributed key generation", peerwire.KindKeygen, &tss.SessionError{Unattributed: true, Err: errors.New("round 3")}, nil, 0},
		{"not a session error", peerwire.KindSign, errors.New("context canceled"), nil, 0},
		{"a cheat named this node itself or a stranger", peerwire.KindSign, &tss.SessionError{Convicted: []string{"a", "z"}, Err: tss.ErrMisbehaved}, nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := unitNode(t, "a", "b", "c")
			n.sessionFailed(&session{id: peerwire.NewSessionID(), kind: tc.kind, key: key}, tc.err)
			var convicted []string
			for _, p := range []string{"a", "b", "c", "z"} {
				if n.convicted(p) {
					convicted = append(convicted, p)
				}
			}
			if strings.Join(convicted, ",") != strings.Join(tc.convicted, ",") {
				t.Fatalf("convicted %v, want %v", convicted, tc.convicted)
			}
			if aborts, _ := n.budget.state(key); aborts != tc.charged {
				t.Fatalf("budget charged %d, want %d", aborts, tc.charged)
			}
		})
	}
}

// testAbortBudgetSuspendsKeyInCluster: once a node has seen abort_budget
// signing sessions with a key fail without a culprit, the key neither
// signs through it nor joins its sessions there, status, health and
// metrics say why; the other nodes, whose budgets were not spent, still
// sign with it.
func testAbortBudgetSuspendsKeyInCluster(t *testing.T, c *testCluster) {
	a := c.nodes["a"]
	key := c.key.String()
	for range a.budget.limit {
		a.chargeAbort(key, peerwire.NewSessionID(), errors.New("test: the joint signature does not verify"))
	}
	defer a.resumeKey(key, "test")

	if err := c.sign("a", "while suspended"); !errors.Is(err, ErrKeySuspended) {
		t.Fatalf("a signing with its budget spent: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pr := signPrepare(c, "joining while suspended", "a", "c")
	if _, err := c.peerClient("c", "a").Prepare(ctx, pr); err == nil || !strings.Contains(err.Error(), "suspended") {
		a.sessions.abort(pr.Session)
		t.Fatalf("a joining c's session with the key suspended: %v", err)
	}

	st, err := c.adminClient("a").Status(ctx, &peerwire.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	k := st.Keys[0]
	if k.Suspended == "" || k.Aborts != 3 || k.Budget != 3 || k.Available {
		t.Fatalf("status of the key: %+v; want it suspended after 3 of 3 aborts, unavailable", k)
	}
	if a.Healthy() {
		t.Fatal("a reports healthy with its only key suspended")
	}
	h := a.HTTPHandler()
	for _, tc := range []struct{ path, want string }{
		{"/healthz", "503"},
		{"/status", `"suspended": "3 signing sessions failed`},
		{"/metrics", `tkeyless_signer_key_suspended{key="` + key + `"} 1`},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tc.path, nil))
		if body := fmt.Sprint(rec.Code) + " " + rec.Body.String(); !strings.Contains(body, tc.want) {
			t.Errorf("GET %s: %.300s; want %q in it", tc.path, body, tc.want)
		}
	}
	if err := c.sign("b", "through b while a's budget is spent"); err != nil {
		t.Fatalf("b cannot sign: %v", err)
	}
}

// testResumeKeyNeedsAdmin: only an admin resumes a suspended key; a node
// cannot, not even the one whose budget it is. Resumed, it signs.
func testResumeKeyNeedsAdmin(t *testing.T, c *testCluster) {
	a := c.nodes["a"]
	key := c.key.String()
	for range a.budget.limit {
		a.chargeAbort(key, peerwire.NewSessionID(), errors.New("test: unattributed"))
	}
	defer a.resumeKey(key, "test")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, by := range []string{"a", "b"} {
		if _, err := c.peerClient(by, "a").ResumeKey(ctx, &peerwire.ResumeKeyRequest{Key: key}); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("node %s resuming the key: %v", by, err)
		}
	}
	if err := a.keySuspended(c.key); err == nil {
		t.Fatal("a node resumed the key")
	}
	if _, err := c.adminClient("a").ResumeKey(ctx, &peerwire.ResumeKeyRequest{Key: "not-a-key"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("resuming a malformed key id: %v", err)
	}
	resp, err := c.adminClient("a").ResumeKey(ctx, &peerwire.ResumeKeyRequest{Key: key})
	if err != nil || !resp.WasSuspended || resp.Aborts != 3 {
		t.Fatalf("the admin resuming the key: %+v, %v", resp, err)
	}
	if !a.Healthy() {
		t.Fatal("a is not healthy after the key was resumed")
	}
	if err := c.sign("a", "resumed"); err != nil {
		t.Fatalf("a cannot sign after the key was resumed: %v", err)
	}
}
