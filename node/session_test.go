package node

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
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

// TestPrepareRefusesMalformedRequests: a member checks a Prepare on its
// own before it sets anything up: the protocol version, that the request
// is the kind it says, that it names this node, the coordinator and only
// nodes it knows, that a resharing's public key is the key's and leaves at
// least two signers, that a session id runs once, and that a ceremony
// carries an admin's statement.
func TestPrepareRefusesMalformedRequests(t *testing.T) {
	pubKey := func() (tss.KeyID, []byte) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		return tss.KeyIDOf(&k.PublicKey), der
	}
	key, pkix := pubKey()
	_, otherPKIX := pubKey()
	reshare := func(change func(*peerwire.ReshareRequest)) *peerwire.PrepareRequest {
		r := &peerwire.ReshareRequest{Key: key.String(), PublicKey: pkix, OldParties: []string{"a", "b"}, OldThreshold: 1, NewParties: []string{"a", "b", "c"}, NewThreshold: 1}
		if change != nil {
			change(r)
		}
		return &peerwire.PrepareRequest{Version: peerwire.Version, Session: peerwire.NewSessionID(), Kind: peerwire.KindReshare, Reshare: r}
	}
	ran := reshare(nil)
	keygen := func(parties ...string) *peerwire.PrepareRequest {
		return &peerwire.PrepareRequest{Version: peerwire.Version, Session: peerwire.NewSessionID(), Kind: peerwire.KindKeygen,
			Keygen: &peerwire.KeygenRequest{Threshold: 1, Parties: parties}}
	}
	kind := func(k peerwire.Kind) *peerwire.PrepareRequest {
		return &peerwire.PrepareRequest{Version: peerwire.Version, Session: peerwire.NewSessionID(), Kind: k}
	}
	for _, tc := range []struct {
		name string
		req  *peerwire.PrepareRequest
		want string // a substring of the error, or "unauthorized" for errUnauthorized
	}{
		{"another protocol version", &peerwire.PrepareRequest{Version: peerwire.MinVersion - 1, Kind: peerwire.KindSign}, "protocol version"},
		{"a sign session without its request", kind(peerwire.KindSign), "without a sign request"},
		{"a key generation without its request", kind(peerwire.KindKeygen), "without a keygen request"},
		{"a presignature without its request", kind(peerwire.KindPresign), "without a presign request"},
		{"a resharing without its request", kind(peerwire.KindReshare), "without a reshare request"},
		{"an unknown kind", kind("mint"), `unknown session kind "mint"`},
		{"a signature with a key this node holds no share of", func() *peerwire.PrepareRequest {
			r := kind(peerwire.KindSign)
			r.Sign = &peerwire.SignRequest{Key: key.String(), Quorum: []string{"a", "b"}}
			return r
		}(), "holds no share"},
		{"a signature with a malformed key id", func() *peerwire.PrepareRequest {
			r := kind(peerwire.KindSign)
			r.Sign = &peerwire.SignRequest{Key: "../keys", Quorum: []string{"a", "b"}}
			return r
		}(), "key id"},
		{"a presignature with a key this node holds no share of", func() *peerwire.PrepareRequest {
			r := kind(peerwire.KindPresign)
			r.Presign = &peerwire.PresignRequest{Key: key.String(), Quorum: []string{"a", "b"}}
			return r
		}(), "holds no share"},
		{"a key generation without this node", keygen("a", "c"), "must include this node"},
		{"a key generation with a node this one does not know", keygen("a", "b", "z"), `party "z" is not a node this one knows`},
		{"a key generation without an admin's statement", keygen("a", "b", "c"), "unauthorized"},
		{"a resharing whose public key is another key's", reshare(func(r *peerwire.ReshareRequest) { r.PublicKey = otherPKIX }), "not that key's"},
		{"a resharing with a malformed public key", reshare(func(r *peerwire.ReshareRequest) { r.PublicKey = []byte("x") }), "public key"},
		{"a resharing without this node", reshare(func(r *peerwire.ReshareRequest) { r.OldParties, r.NewParties = []string{"a", "c"}, []string{"a", "c"} }), "must include this node"},
		{"a resharing that lets one node sign alone", reshare(func(r *peerwire.ReshareRequest) { r.NewThreshold = 0 }), "at least two parties must sign"},
		{"a resharing session that already ran here", ran, "replay"},
		{"a resharing without an admin's statement", reshare(nil), "unauthorized"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := unitNode(t, "b", "a", "c")
			if err := n.reshares.update(ran.Session, key.String(), func(*reshareRecord) {}); err != nil {
				t.Fatal(err)
			}
			err := n.prepare("a", tc.req)
			switch {
			case err == nil:
				t.Fatal("prepared")
			case tc.want == "unauthorized" && !errors.Is(err, errUnauthorized):
				t.Fatalf("prepare: %v, want a refusal for want of authority", err)
			case tc.want != "unauthorized" && !strings.Contains(err.Error(), tc.want):
				t.Fatalf("prepare: %v, want an error saying %q", err, tc.want)
			}
			if n.sessions.count() != 0 {
				t.Fatal("a refused Prepare left a session behind")
			}
		})
	}
}

// testPrepareChecksSignRequest: what a member checks on its own before it
// joins a signing session another node coordinates (here a, asked by c):
// it holds a share of the key, the quorum names it and the coordinator,
// the digest fits the hash, an edge is named, and that edge's own fresh,
// unused authority covers this very request.
func testPrepareChecksSignRequest(t *testing.T, c *testCluster) {
	a := c.nodes["a"]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rogue := c.peerClient("c", "a")
	used := c.signRequest(digest("used once"))
	claims, err := a.verifier.Verify(used.Authority, authority.Request{Op: byte(protocol.OpECDSASignSHA256), SKI: c.key, Digest: used.Digest})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.verifier.MarkUsed(claims); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		change func(*peerwire.SignRequest)
		want   string // "" prepared
	}{
		{"an edge's request", nil, ""},
		{"a quorum without this node", func(r *peerwire.SignRequest) { r.Quorum = []string{"b", "c"} }, "must include this node"},
		{"a quorum without the coordinator", func(r *peerwire.SignRequest) { r.Quorum = []string{"a", "b"} }, "must include this node (a) and the coordinator (c)"},
		{"a hash not supported", func(r *peerwire.SignRequest) { r.Hash = "MD5" }, `hash "MD5" not supported`},
		{"a digest of another length", func(r *peerwire.SignRequest) { r.Hash = "SHA-384" }, "digest"},
		{"no edge named", func(r *peerwire.SignRequest) { r.Edge = "" }, "names no edge"},
		{"another digest than the edge's", func(r *peerwire.SignRequest) { r.Digest = digest("something else") }, "not authorized"},
		{"another edge than the authority's", func(r *peerwire.SignRequest) { r.Edge = "legacy" }, "not authorized"},
		{"an authority already used here", func(r *peerwire.SignRequest) { r.Digest, r.Authority = used.Digest, used.Authority }, "replay"},
		{"a key this node holds no share of", func(r *peerwire.SignRequest) { r.Key = randomKeyID(t).String() }, "holds no share"},
		{"a key id that is not one", func(r *peerwire.SignRequest) { r.Key = "../../etc/passwd" }, "key id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := c.signRequest(digest("prepare " + tc.name))
			sr := &peerwire.SignRequest{Key: c.key.String(), Quorum: []string{"a", "c"}, Hash: "SHA-256", Digest: req.Digest, Edge: "edge", Authority: req.Authority}
			if tc.change != nil {
				tc.change(sr)
			}
			pr := &peerwire.PrepareRequest{Version: peerwire.Version, Session: peerwire.NewSessionID(), Kind: peerwire.KindSign, Sign: sr}
			_, err := rogue.Prepare(ctx, pr)
			defer a.sessions.abort(pr.Session)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Prepare: %v, want a refusal saying %q", err, tc.want)
			}
			if _, err := a.sessions.get(pr.Session); (err == nil) != (tc.want == "") {
				t.Fatalf("session registered: %t", err == nil)
			}
		})
	}
}

// testRunOnlyByCoordinator: a prepared session is started only by the node
// that prepared it.
func testRunOnlyByCoordinator(t *testing.T, c *testCluster) {
	a := c.nodes["a"]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req := c.signRequest(digest("run only by its coordinator"))
	pr := &peerwire.PrepareRequest{Version: peerwire.Version, Session: peerwire.NewSessionID(), Kind: peerwire.KindSign,
		Sign: &peerwire.SignRequest{Key: c.key.String(), Quorum: []string{"a", "c"}, Hash: "SHA-256", Digest: req.Digest, Edge: "edge", Authority: req.Authority}}
	if _, err := c.peerClient("c", "a").Prepare(ctx, pr); err != nil {
		t.Fatal(err)
	}
	defer a.sessions.abort(pr.Session)
	_, err := c.peerClient("b", "a").Run(ctx, &peerwire.RunRequest{Version: peerwire.Version, Session: pr.Session})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "prepared by c, not b") {
		t.Fatalf("b starting c's session: %v", err)
	}
	s, err := a.sessions.get(pr.Session)
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	state := s.state
	s.mu.Unlock()
	if state != statePrepared {
		t.Fatalf("after b's Run the session is %s", state)
	}
	if _, err := c.peerClient("c", "a").Run(ctx, &peerwire.RunRequest{Version: peerwire.Version, Session: peerwire.NewSessionID()}); status.Code(err) != codes.NotFound {
		t.Fatalf("running an unknown session: %v", err)
	}
}

// testPresignRefusedWhenDepthZero: a member whose own presign.depth is 0
// holds no presignature for anyone, whatever a coordinator asks.
func testPresignRefusedWhenDepthZero(t *testing.T, c *testCluster) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, to := range []string{"b", "c"} {
		pr := &peerwire.PrepareRequest{Version: peerwire.Version, Session: peerwire.NewSessionID(), Kind: peerwire.KindPresign,
			Presign: &peerwire.PresignRequest{Key: c.key.String(), Quorum: []string{"a", to}, TTL: time.Minute}}
		_, err := c.peerClient("a", to).Prepare(ctx, pr)
		if err == nil || !strings.Contains(err.Error(), "presigning is off") {
			t.Fatalf("%s, presign.depth 0, asked to presign: %v", to, err)
		}
		if n := c.nodes[to].sessions.count(); n != 0 {
			t.Fatalf("%s holds %d sessions", to, n)
		}
	}
}

// TestContextEnded: a deadline counts as passed at a time past it even
// before the context's timer has fired (an audit written then says
// "cancelled", not "failed").
func TestContextEnded(t *testing.T) {
	deadline := time.Now().Add(time.Hour)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	if contextEnded(ctx, deadline.Add(-time.Millisecond)) {
		t.Fatal("ended before its deadline")
	}
	if ctx.Err() != nil || !contextEnded(ctx, deadline) {
		t.Fatal("not ended at its deadline")
	}
	cancel()
	if !contextEnded(ctx, deadline.Add(-time.Minute)) {
		t.Fatal("a cancelled context not ended")
	}
	if contextEnded(context.Background(), deadline) {
		t.Fatal("a context without deadline ended")
	}
}
