package node

import (
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tkeyless/tkeyless/internal/authority"
	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/internal/pki"
	"github.com/tkeyless/tkeyless/tss"
)

func randomKeyID(t testing.TB) tss.KeyID {
	t.Helper()
	var id tss.KeyID
	if _, err := rand.Read(id[:]); err != nil {
		t.Fatal(err)
	}
	return id
}

// TestKeyStateMergeRules: a key's state changes only on an admin's signed
// statement (here: the verify function) with a higher version, or at the
// same version towards disabled; the result survives a restart, and only
// signed states are passed on to peers.
func TestKeyStateMergeRules(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keystate.json")
	verify := func(key string, st peerwire.KeyState) (string, error) {
		if string(st.Statement) != "signed" {
			return "", errors.New("not signed by an admin")
		}
		return "admin", nil
	}
	ks, err := loadKeyStates(path, verify)
	if err != nil {
		t.Fatal(err)
	}
	key := randomKeyID(t).String()
	signed := func(version uint64, disabled bool) peerwire.KeyState {
		return peerwire.KeyState{Version: version, Disabled: disabled, Statement: []byte("signed"), Changed: time.Now()}
	}
	errOther := errors.New("any other error")
	for _, step := range []struct {
		name         string
		key          string
		st           peerwire.KeyState
		changed      bool
		err          error // nil, errStaleKeyState or errOther
		wantDisabled bool
		wantVersion  uint64
	}{
		{"a key id that is not one", "../../etc", signed(1, true), false, errOther, false, 0},
		{"unsigned", key, peerwire.KeyState{Version: 9, Disabled: true}, false, errOther, false, 0},
		{"first signed state", key, signed(1, false), true, nil, false, 1},
		{"the same again", key, signed(1, false), false, errStaleKeyState, false, 1},
		{"disabled at the same version wins", key, signed(1, true), true, nil, true, 1},
		{"enabled at the same version does not", key, signed(1, false), false, errStaleKeyState, true, 1},
		{"a higher version wins", key, signed(2, false), true, nil, false, 2},
		{"a lower version loses, even disabled", key, signed(1, true), false, errStaleKeyState, false, 2},
		{"the key id in capitals is the same key", strings.ToUpper(key), signed(3, true), true, nil, true, 3},
	} {
		changed, err := ks.merge(step.key, step.st)
		switch {
		case changed != step.changed:
			t.Fatalf("%s: changed = %t, want %t (err %v)", step.name, changed, step.changed, err)
		case step.err == nil && err != nil, step.err != nil && err == nil:
			t.Fatalf("%s: err = %v, want %v", step.name, err, step.err)
		case step.err == errStaleKeyState && !errors.Is(err, errStaleKeyState):
			t.Fatalf("%s: err = %v, want a stale state", step.name, err)
		case step.err == errOther && errors.Is(err, errStaleKeyState):
			t.Fatalf("%s: err = %v, want a refusal, not a stale state", step.name, err)
		}
		if got := ks.get(key); got.Disabled != step.wantDisabled || got.Version != step.wantVersion {
			t.Fatalf("%s: state is disabled=%t version %d, want disabled=%t version %d", step.name, got.Disabled, got.Version, step.wantDisabled, step.wantVersion)
		}
	}
	if by := ks.get(key).By; by != "admin" {
		t.Fatalf("state recorded as by %q, want the admin the statement names", by)
	}

	// A state kept from before states were signed stays in force, but a
	// peer is never handed it.
	legacy := randomKeyID(t).String()
	ks.m[legacy] = peerwire.KeyState{Disabled: true}
	if err := saveJSON(path, ks.m); err != nil {
		t.Fatal(err)
	}
	again, err := loadKeyStates(path, verify)
	if err != nil {
		t.Fatal(err)
	}
	if !again.disabled(key) || again.get(key).Version != 3 || !again.disabled(legacy) {
		t.Fatalf("after a restart: %v", again.m)
	}
	snap := again.snapshot()
	if _, ok := snap[legacy]; ok || len(snap) != 1 {
		t.Fatalf("snapshot for peers = %v: an unsigned state was passed on", snap)
	}

	if err := os.WriteFile(path, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadKeyStates(path, verify); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("a corrupt key state file: %v, want a refusal to start", err)
	}
}

// TestVerifyKeyStateNeedsAdminStatement: the node's own check of a key
// state: signed, by an admin of the cluster CA, over exactly this key,
// version and state, with versions starting at 1.
func TestVerifyKeyStateNeedsAdminStatement(t *testing.T) {
	c := newTestCluster(t, nil)
	roots, err := pki.LoadPool(filepath.Join(c.dir, "pki", "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	n := unitNode(t, "a")
	n.verifier = &authority.Verifier{Roots: roots}
	key := randomKeyID(t).String()
	state := func(by *authority.Signer, stKey string, version uint64, disabled bool) peerwire.KeyState {
		st, err := by.SignStatement(peerwire.KeyStateStatement(stKey, version, disabled))
		if err != nil {
			t.Fatal(err)
		}
		return peerwire.KeyState{Version: version, Disabled: disabled, Statement: st}
	}
	nodeSigner := c.identity("n1", pki.RoleNode)
	for _, tc := range []struct {
		name string
		st   peerwire.KeyState
		want string // "" accepted
	}{
		{"an admin's statement", state(c.admin, key, 4, true), ""},
		{"no statement", peerwire.KeyState{Version: 4, Disabled: true}, "not signed by an admin"},
		{"version 0", state(c.admin, key, 0, true), "version 0"},
		{"statement about another key", state(c.admin, randomKeyID(t).String(), 4, true), "does not cover"},
		{"statement of another version", func() peerwire.KeyState { s := state(c.admin, key, 4, true); s.Version = 5; return s }(), "does not cover"},
		{"statement saying the opposite", func() peerwire.KeyState { s := state(c.admin, key, 4, true); s.Disabled = false; return s }(), "does not cover"},
		{"an edge's statement", state(c.edge, key, 4, false), "not an admin"},
		{"a node's statement", state(nodeSigner, key, 4, false), "not an admin"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			admin, err := n.verifyKeyState(key, tc.st)
			switch {
			case tc.want == "" && (err != nil || admin != "admin"):
				t.Fatalf("verifyKeyState = %q, %v", admin, err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("verifyKeyState: %v, want an error saying %q", err, tc.want)
			}
		})
	}

	// SetKeyState applies an admin's state here even when no peer can be
	// told, and says which peers were not.
	n = unitNode(t, "a")
	n.verifier = &authority.Verifier{Roots: roots}
	id, _ := tss.ParseKeyID(key)
	resp, err := n.SetKeyState(context.Background(), "admin", &peerwire.SetKeyStateRequest{Key: key, State: state(c.admin, key, 1, true)})
	if err != nil || !n.keyDisabled(id) || len(resp.Applied) != 1 || resp.Applied[0] != "a" {
		t.Fatalf("SetKeyState: %+v, %v; disabled %t", resp, err, n.keyDisabled(id))
	}
	if _, err := n.SetKeyState(context.Background(), "admin", &peerwire.SetKeyStateRequest{Key: key, State: state(c.edge, key, 2, false)}); err == nil || !n.keyDisabled(id) {
		t.Fatalf("SetKeyState with an edge's statement: %v; disabled %t", err, n.keyDisabled(id))
	}
	// The same statement again is not an error for the operator's tool.
	if _, err := n.SetKeyState(context.Background(), "admin", &peerwire.SetKeyStateRequest{Key: key, State: n.keyState.get(key)}); err != nil {
		t.Fatalf("SetKeyState with the current state: %v", err)
	}
}
