package authority

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tkeyless/tkeyless/internal/pki"
)

func TestStatement(t *testing.T) {
	admin, v, ca, dir := testCA(t, pki.RoleAdmin)
	st := Statement{Kind: "keygen", Body: []byte("t=1 parties=a,b,c")}
	a, err := admin.SignStatement(st)
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.VerifyStatement(a, st, Once)
	if err != nil {
		t.Fatal(err)
	}
	if c.Identity.Role != pki.RoleAdmin {
		t.Fatalf("claims %+v", c)
	}
	if _, err := v.VerifyStatement(a, st, Once); !errors.Is(err, ErrReplay) {
		t.Fatalf("a ceremony statement used twice: %v", err)
	}
	// Standing statements may be checked any number of times.
	for range 2 {
		if _, err := v.VerifyStatement(a, st, Standing); err != nil {
			t.Fatal(err)
		}
	}

	edge, _ := issue(t, ca, dir, pki.RoleEdge)
	node, _ := issue(t, ca, dir, pki.RoleNode)
	byEdge, _ := edge.SignStatement(st)
	byNode, _ := node.SignStatement(st)
	old := &Signer{Cert: admin.Cert, Key: admin.Key, Now: func() time.Time { return time.Now().Add(-time.Hour) }}
	stale, _ := old.SignStatement(st)
	// A request authority over the same bytes is not a statement.
	req := testRequest()
	asRequest, _ := admin.Sign(req)

	for _, tc := range []struct {
		name  string
		a     []byte
		st    Statement
		fresh Freshness
		want  string
	}{
		{"other body", a, Statement{Kind: "keygen", Body: []byte("t=2 parties=a,b,c")}, Standing, "does not cover"},
		{"other kind", a, Statement{Kind: "reshare", Body: st.Body}, Standing, "does not cover"},
		{"edge identity", byEdge, st, Standing, "not an admin"},
		{"node identity", byNode, st, Standing, "not an admin"},
		{"stale ceremony", stale, st, Once, "outside"},
		{"request authority", asRequest, st, Standing, "does not cover"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := v.VerifyStatement(tc.a, tc.st, tc.fresh)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want error containing %q, got %v", tc.want, err)
			}
		})
	}
	// A standing statement keeps verifying long after it was made.
	if _, err := v.VerifyStatement(stale, st, Standing); err != nil {
		t.Fatalf("an hour-old standing statement: %v", err)
	}
	// And a statement never passes as a request authority.
	if _, err := v.Verify(a, req); err == nil {
		t.Fatal("a statement verified as a request authority")
	}
}

// TestJournalSurvivesRestart: an id used before a restart is a replay after
// it; ids older than twice the window are dropped; a torn last record is
// ignored; an unreadable journal makes the verifier refuse older
// authorities instead of forgetting.
func TestJournalSurvivesRestart(t *testing.T) {
	s, v := testSetup(t, pki.RoleEdge)
	path := filepath.Join(t.TempDir(), "used-ids")
	if err := v.Open(path); err != nil {
		t.Fatal(err)
	}
	req := testRequest()
	a, _ := s.Sign(req)
	c, err := v.Verify(a, req)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.MarkUsed(c); err != nil {
		t.Fatal(err)
	}
	v.Close()
	// A crash mid-write leaves part of a record.
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0o600)
	f.Write([]byte{1, 2, 3})
	f.Close()

	restarted := &Verifier{Roots: v.Roots}
	if err := restarted.Open(path); err != nil {
		t.Fatal(err)
	}
	if _, err := restarted.Verify(a, req); !errors.Is(err, ErrReplay) && (err == nil || !strings.Contains(err.Error(), "replay")) {
		t.Fatalf("after a restart, a used authority: %v", err)
	}
	fresh, _ := s.Sign(req)
	if _, err := restarted.Verify(fresh, req); err != nil {
		t.Fatalf("a fresh authority after the restart: %v", err)
	}
	restarted.Close()

	// Far in the future, every id is outside the window: compacted away.
	later := &Verifier{Roots: v.Roots, Now: func() time.Time { return time.Now().Add(time.Hour) }}
	if err := later.Open(path); err != nil {
		t.Fatal(err)
	}
	later.Close()
	if st, _ := os.Stat(path); st.Size() != 0 {
		t.Fatalf("journal keeps %d bytes of expired ids", st.Size())
	}

	// Unreadable: set aside, and older authorities refused.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(path, 0o700); err != nil { // a directory cannot be read as a journal
		t.Fatal(err)
	}
	earlier := &Signer{Cert: s.Cert, Key: s.Key, Now: func() time.Time { return time.Now().Add(-time.Second) }}
	before, _ := earlier.Sign(req)
	broken := &Verifier{Roots: v.Roots}
	if err := broken.Open(path); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("unreadable journal: %v", err)
	}
	defer broken.Close()
	if _, err := broken.Verify(before, req); err == nil || !strings.Contains(err.Error(), "before this node") {
		t.Fatalf("an authority made before the journal was lost: %v", err)
	}
	after, _ := s.Sign(req)
	if _, err := broken.Verify(after, req); err != nil {
		t.Fatalf("an authority made after: %v", err)
	}
}
