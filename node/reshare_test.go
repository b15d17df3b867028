package node

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/internal/pki"
)

// testCeremonyRefusals: a coordinator refuses a ceremony it cannot run
// before asking anyone: a threshold that is not 1 ≤ t < n, a key it holds
// no share of, a private key that is not P-256 or that it would not hold a
// share of. A private key handed to it is zeroed whatever the outcome.
func testCeremonyRefusals(t *testing.T, c *testCluster) {
	a := c.nodes["a"]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p256, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8 := func(k any) []byte {
		b, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	sec1, err := x509.MarshalECPrivateKey(p256)
	if err != nil {
		t.Fatal(err)
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	before := a.sessions.count()
	for _, tc := range []struct {
		name string
		run  func() error
		want string
	}{
		{"a key generation with t = 0", func() error {
			_, err := a.Keygen(ctx, &peerwire.KeygenCeremonyRequest{Threshold: 0, Parties: []string{"a", "b", "c"}})
			return err
		}, "threshold 0 with 3 parties"},
		{"a key generation with t = n", func() error {
			_, err := a.Keygen(ctx, &peerwire.KeygenCeremonyRequest{Threshold: 3})
			return err
		}, "threshold 3 with 3 parties"},
		{"a resharing of a malformed key id", func() error {
			_, err := a.Reshare(ctx, &peerwire.ReshareCeremonyRequest{Key: "zz"})
			return err
		}, "key id"},
		{"a resharing of a key this node does not hold", func() error {
			_, err := a.Reshare(ctx, &peerwire.ReshareCeremonyRequest{Key: randomKeyID(t).String()})
			return err
		}, "run the command on a node holding a share"},
		{"a resharing to t = n", func() error {
			_, err := a.Reshare(ctx, &peerwire.ReshareCeremonyRequest{Key: c.key.String(), NewParties: []string{"a", "b"}, NewThreshold: 2})
			return err
		}, "threshold 2 with 2 parties"},
		{"an import of bytes that are no key", func() error {
			_, err := a.Import(ctx, &peerwire.ImportCeremonyRequest{PrivateKey: []byte("not a key"), Threshold: 1})
			return err
		}, "neither PKCS#8"},
		{"an import of a P-384 key", func() error {
			_, err := a.Import(ctx, &peerwire.ImportCeremonyRequest{PrivateKey: pkcs8(p384), Threshold: 1})
			return err
		}, "want an ECDSA P-256 private key"},
		{"an import of an Ed25519 key", func() error {
			_, err := a.Import(ctx, &peerwire.ImportCeremonyRequest{PrivateKey: pkcs8(ed), Threshold: 1})
			return err
		}, "want an ECDSA P-256 private key"},
		{"an import on a node that would hold no share", func() error {
			_, err := a.Import(ctx, &peerwire.ImportCeremonyRequest{PrivateKey: slices.Clone(sec1), Threshold: 1, Parties: []string{"b", "c"}})
			return err
		}, "this node (a) is not one"},
		{"an import with t = n", func() error {
			_, err := a.Import(ctx, &peerwire.ImportCeremonyRequest{PrivateKey: pkcs8(p256), Threshold: 3})
			return err
		}, "threshold 3 with 3 parties"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.run(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%v, want a refusal saying %q", err, tc.want)
			}
		})
	}
	if n := a.sessions.count(); n != before {
		t.Fatalf("refused ceremonies left %d sessions", n-before)
	}
	handed := pkcs8(p256)
	_, _ = a.Import(ctx, &peerwire.ImportCeremonyRequest{PrivateKey: handed, Threshold: 3})
	if !bytes.Equal(handed, make([]byte, len(handed))) {
		t.Fatal("the private key handed to Import was not zeroed")
	}
}

// stagePending makes node name await the outcome of a resharing of the
// cluster key as if it had run one: its current share staged as the new
// one, and (if confirmed) its own signed confirmation of it. It returns
// the session.
func stagePending(t *testing.T, c *testCluster, name string, newParties []string, confirmed bool) peerwire.SessionID {
	t.Helper()
	n := c.nodes[name]
	share, _ := n.share(c.key)
	sid := peerwire.NewSessionID()
	p := pendingReshare{Session: sid, Coordinator: "a", Staged: confirmed, Since: time.Now().UTC(),
		Members: []string{"a", "b", "c"}, NewParties: newParties, NewThreshold: 1}
	if confirmed {
		if err := n.store.Stage(share); err != nil {
			t.Fatal(err)
		}
		conf, err := n.confirmReshare(sid, c.key.String(), share.Fingerprint(), newParties, 1)
		if err != nil {
			t.Fatal(err)
		}
		p.Confirmation = conf
	}
	if err := n.pending.set(c.key, p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = n.store.Discard(c.key)
		_ = n.pending.clear(c.key)
	})
	return sid
}

// testReshareDiscardRules: a member that confirmed a resharing never
// discards its staged share on a node's word, the coordinator's included
// (a commit may exist somewhere); an admin's discard works, and the
// current share stays in use. A member that did not confirm discards on
// its coordinator's word only. A commit must prove itself with every new
// member's confirmation.
func testReshareDiscardRules(t *testing.T, c *testCluster) {
	cn := c.nodes["c"]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	before, _ := cn.share(c.key)
	sid := stagePending(t, c, "c", []string{"a", "b", "c"}, true)
	pendingOnC := func() bool { p, ok := cn.pending.get(c.key); return ok && p.Session == sid }
	staged := func() bool { ids, _ := cn.store.Staged(); return slices.Contains(ids, c.key) }
	if st := cn.Status(); st.Keys[0].ResharePending != sid.String() {
		t.Fatalf("status does not show the pending resharing: %+v", st.Keys[0])
	}
	discard := &peerwire.FinishReshareRequest{Version: peerwire.Version, Session: sid, Key: c.key.String()}
	onlyC := &peerwire.FinishReshareRequest{Version: peerwire.Version, Session: sid, Key: c.key.String(), Commit: true,
		NewParties: []string{"a", "b", "c"}, NewThreshold: 1, Fingerprint: before.Fingerprint(), Confirmations: []peerwire.ReshareConfirmation{*mustPending(t, cn, c).Confirmation}}
	forged := *onlyC
	forgedConf := *mustPending(t, cn, c).Confirmation
	forgedConf.Node = "b" // c's signature, passed off as b's
	forged.Confirmations = append(slices.Clone(onlyC.Confirmations), forgedConf)
	for _, tc := range []struct {
		name, by string
		req      *peerwire.FinishReshareRequest
		want     string
	}{
		{"the coordinator's discard", "a", discard, "confirmed"},
		{"another member's discard", "b", discard, "confirmed"},
		{"a commit with one confirmation of three", "a", onlyC, "1 of 3 new members confirmed"},
		{"a commit with a confirmation passed off as another node's", "b", &forged, "confirmation from b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.peerClient(tc.by, "c").FinishReshare(ctx, tc.req)
			if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("FinishReshare: %v, want a refusal saying %q", err, tc.want)
			}
			if !pendingOnC() || !staged() {
				t.Fatalf("c gave up its staged share on a node's word (pending %t, staged %t)", pendingOnC(), staged())
			}
		})
	}
	other := *discard
	other.Session = peerwire.NewSessionID()
	if _, err := c.adminClient("c").FinishReshare(ctx, &other); status.Code(err) != codes.NotFound {
		t.Fatalf("the admin discarding another session: %v", err)
	}
	if _, err := c.adminClient("c").FinishReshare(ctx, discard); err != nil {
		t.Fatalf("the admin's discard: %v", err)
	}
	if pendingOnC() || staged() {
		t.Fatalf("after the admin's discard: pending %t, staged %t", pendingOnC(), staged())
	}
	if after, _ := cn.share(c.key); !bytes.Equal(after.Fingerprint(), before.Fingerprint()) {
		t.Fatal("the discard changed the share in use")
	}
	if _, err := c.adminClient("c").FinishReshare(ctx, discard); status.Code(err) != codes.NotFound {
		t.Fatalf("a second discard: %v", err)
	}

	// b did not confirm (it would have left the committee): its
	// coordinator's discard is enough, another node's is not.
	bn := c.nodes["b"]
	sid2 := stagePending(t, c, "b", []string{"a", "c"}, false)
	discard2 := &peerwire.FinishReshareRequest{Version: peerwire.Version, Session: sid2, Key: c.key.String()}
	if _, err := c.peerClient("c", "b").FinishReshare(ctx, discard2); err == nil || !strings.Contains(err.Error(), "coordinated by a, not c") {
		t.Fatalf("c discarding a's resharing on b: %v", err)
	}
	if _, err := c.peerClient("a", "b").FinishReshare(ctx, discard2); err != nil {
		t.Fatalf("the coordinator's discard on a member that did not confirm: %v", err)
	}
	if _, pending := bn.pending.get(c.key); pending {
		t.Fatal("b still awaits the outcome")
	}
}

func mustPending(t *testing.T, n *Node, c *testCluster) pendingReshare {
	t.Helper()
	p, ok := n.pending.get(c.key)
	if !ok || p.Confirmation == nil {
		t.Fatal("no confirmed resharing pending")
	}
	return p
}

// testPendingReshareCommits: a member awaiting a resharing's outcome asks
// the other members; once it holds every new member's confirmation of the
// same shares, that is a commit, which it applies and then hands to anyone
// who asks.
func testPendingReshareCommits(t *testing.T, c *testCluster) {
	bn, cn := c.nodes["b"], c.nodes["c"]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	newParties := []string{"b", "c"}
	sid := stagePending(t, c, "c", newParties, true)
	cShare, _ := cn.share(c.key)
	outcome := func(of string, session peerwire.SessionID, key string) *peerwire.ReshareOutcomeResponse {
		t.Helper()
		o, err := c.peerClient("a", of).ReshareOutcome(ctx, &peerwire.ReshareOutcomeRequest{Version: peerwire.Version, Session: session, Key: key})
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	if o := outcome("b", sid, c.key.String()); o.State != peerwire.OutcomeUnknown {
		t.Fatalf("b, which took no part, answers %+v", o)
	}
	cn.resolvePending(ctx)
	if _, pending := cn.pending.get(c.key); !pending {
		t.Fatal("c committed without b's confirmation")
	}

	bConf, err := bn.confirmReshare(sid, c.key.String(), cShare.Fingerprint(), newParties, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := bn.reshares.update(sid, c.key.String(), func(r *reshareRecord) { r.Confirmation = bConf }); err != nil {
		t.Fatal(err)
	}
	if o := outcome("b", sid, c.key.String()); o.State != peerwire.OutcomeConfirmed || o.Confirmation == nil || o.Confirmation.Node != "b" {
		t.Fatalf("b's outcome after confirming: %+v", o)
	}
	if o := outcome("b", sid, randomKeyID(t).String()); o.State != peerwire.OutcomeUnknown {
		t.Fatalf("b's outcome for another key: %+v", o)
	}
	cn.resolvePending(ctx)
	waitFor(t, 10*time.Second, "c commits", func() bool { _, pending := cn.pending.get(c.key); return !pending })
	if ids, _ := cn.store.Staged(); slices.Contains(ids, c.key) {
		t.Fatal("c's staged share is still staged after the commit")
	}
	o := outcome("c", sid, c.key.String())
	if o.State != peerwire.OutcomeCommitted || o.Finish == nil || len(o.Finish.Confirmations) != 2 || !o.Finish.Commit {
		t.Fatalf("c's outcome after committing: %+v", o)
	}
	if err := cn.checkCommit(o.Finish, newParties, 1); err != nil {
		t.Fatalf("the commit c hands out does not prove itself: %v", err)
	}
	if s, _ := cn.share(c.key); !bytes.Equal(s.Fingerprint(), cShare.Fingerprint()) {
		t.Fatal("c's share is not the one confirmed")
	}
	// The commit, applied, is not applied twice.
	if err := cn.applyFinish(pki.Identity{Name: "c", Role: pki.RoleNode}, o.Finish); !errors.Is(err, errNothingPending) {
		t.Fatalf("the commit again: %v", err)
	}
}
