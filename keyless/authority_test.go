package keyless

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudflare/gokeyless/protocol"

	"github.com/tkeyless/tkeyless/internal/authority"
	"github.com/tkeyless/tkeyless/internal/pki"
)

// TestFailoverFreshAuthority: every signer the client tries gets its own authority, with its
// own request id. A tkeyless signer consumes an authority for good once its session is under
// way, even if the session then fails, so a failover that resent the first authority would be
// refused as a replay by any quorum member the two attempts share.
func TestFailoverFreshAuthority(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.InitCA(dir, "test cluster CA")
	if err != nil {
		t.Fatal(err)
	}
	caPath := filepath.Join(dir, "ca.pem")
	for name, role := range map[string]pki.Role{"signer-a": pki.RoleNode, "edge-1": pki.RoleEdge} {
		if _, _, err := ca.IssueIdentity(dir, name, role, []string{"127.0.0.1"}); err != nil {
			t.Fatal(err)
		}
	}
	tlsOf := func(name string) func(*ServerConfig) {
		return func(cfg *ServerConfig) {
			c, err := pki.MutualTLS(caPath, filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem"))
			if err != nil {
				t.Fatal(err)
			}
			cfg.TLS = c
		}
	}
	roots, err := pki.LoadPool(caPath)
	if err != nil {
		t.Fatal(err)
	}

	// One quorum member that both attempts reach: it checks each authority and spends its
	// request id for good, whatever the session's outcome.
	verifier := &authority.Verifier{Roots: roots}
	var mu sync.Mutex
	var ids [][16]byte
	consume := func(req *Request) error {
		claims, err := verifier.Verify(req.Authority, authority.Request{Op: byte(req.Op), SKI: req.SKI, Digest: req.Digest})
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		if slices.Contains(ids, claims.RequestID) {
			return fmt.Errorf("request id %s already spent: replay", claims.RequestIDString())
		}
		ids = append(ids, claims.RequestID)
		return nil
	}
	key := newKey(t, elliptic.P256())
	failing := newKeyBackend(key)
	failing.before = func(_ context.Context, req *Request) error {
		if err := consume(req); err != nil {
			return err
		}
		return errors.New("session failed after round 1") // an internal error: the client fails over
	}
	signing := newKeyBackend(key)
	signing.before = func(_ context.Context, req *Request) error { return consume(req) }
	// The test PKI's server TLS is replaced by the cluster identity's.
	first := startServer(t, newPKI(t), failing, tlsOf("signer-a"))
	second := startServer(t, newPKI(t), signing, tlsOf("signer-a"))

	edgeTLS, err := pki.MutualTLS(caPath, filepath.Join(dir, "edge-1.pem"), filepath.Join(dir, "edge-1-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	// Authorize left nil: an edge identity signs its authorities itself (IdentityAuthority).
	c, err := NewClient(ClientConfig{Endpoints: []string{first.addr, second.addr}, TLS: edgeTLS})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	d := digests("fresh authority")[crypto.SHA256]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sig, err := c.Sign(ctx, skiOf(t, key), crypto.SHA256, d)
	if err != nil {
		t.Fatalf("sign after failover: %v", err)
	}
	if !ecdsa.VerifyASN1(&key.PublicKey, d, sig) {
		t.Fatal("signature does not verify")
	}
	if failing.calls.Load() != 1 || signing.calls.Load() != 1 {
		t.Fatalf("signers asked %d and %d times, want 1 each (the failing one first)", failing.calls.Load(), signing.calls.Load())
	}
	mu.Lock()
	defer mu.Unlock()
	if len(ids) != 2 || ids[0] == ids[1] {
		t.Fatalf("request ids of the two attempts: %x, want two different ones", ids)
	}
}

// TestAuthorizeErrorAsksNoSigner: when the client cannot vouch for a request, no signer hears
// of it, and the error says that authorizing failed.
func TestAuthorizeErrorAsksNoSigner(t *testing.T) {
	p := newPKI(t)
	key := newKey(t, elliptic.P256())
	backend := newKeyBackend(key)
	srv := startServer(t, p, backend)
	c := newTestClient(t, p, []string{srv.addr, closedPort(t)}, func(cfg *ClientConfig) {
		cfg.Authorize = func(protocol.Op, protocol.SKI, []byte) ([]byte, error) {
			return nil, errors.New("identity key unavailable")
		}
	})
	_, err := c.Sign(context.Background(), skiOf(t, key), crypto.SHA256, digests("x")[crypto.SHA256])
	if err == nil || !strings.Contains(err.Error(), "authorize: identity key unavailable") {
		t.Fatalf("got %v, want the authorize error", err)
	}
	if n := srv.l.accepted(); n != 0 || backend.calls.Load() != 0 {
		t.Errorf("%d connections and %d requests reached a signer", n, backend.calls.Load())
	}
}

// TestNoQuorumRetriedOnceWithFreshAuthority: a signer that answers "no
// quorum" has spent the request's authority on the members that took part
// and left the failed one out; the client asks it once more, with a fresh
// authority, even when it is the only endpoint — and only once.
func TestNoQuorumRetriedOnceWithFreshAuthority(t *testing.T) {
	p := newPKI(t)
	key := newKey(t, elliptic.P256())
	var mu sync.Mutex
	var seen [][]byte
	backend := newKeyBackend(key)
	backend.before = func(_ context.Context, req *Request) error {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, req.Authority)
		if len(seen) == 1 {
			return ErrNoQuorum
		}
		return nil
	}
	srv := startServer(t, p, backend)
	c := newTestClient(t, p, []string{srv.addr}, func(cfg *ClientConfig) {
		n := 0
		cfg.Authorize = func(protocol.Op, protocol.SKI, []byte) ([]byte, error) { n++; return []byte{byte(n)}, nil }
	})
	d := digests("no quorum, then a quorum")[crypto.SHA256]
	sig, err := c.Sign(context.Background(), skiOf(t, key), crypto.SHA256, d)
	if err != nil {
		t.Fatalf("sign after one no-quorum answer: %v", err)
	}
	if !ecdsa.VerifyASN1(&key.PublicKey, d, sig) {
		t.Fatal("signature does not verify")
	}
	mu.Lock()
	if len(seen) != 2 || string(seen[0]) == string(seen[1]) {
		t.Fatalf("authorities sent: %x; want two, different", seen)
	}
	mu.Unlock()

	// A signer that keeps answering "no quorum" is asked twice, not more.
	backend.before = func(context.Context, *Request) error { return ErrNoQuorum }
	before := backend.calls.Load()
	if _, err := c.Sign(context.Background(), skiOf(t, key), crypto.SHA256, d); err == nil {
		t.Fatal("signed although every answer was no quorum")
	}
	if got := backend.calls.Load() - before; got != 2 {
		t.Fatalf("asked %d times, want 2", got)
	}
}
