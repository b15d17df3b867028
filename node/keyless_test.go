package node

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/cloudflare/gokeyless/protocol"

	"github.com/tkeyless/tkeyless/internal/authority"
	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/internal/pki"
	"github.com/tkeyless/tkeyless/keyless"
	"github.com/tkeyless/tkeyless/tss"
)

// testKeylessErrorCodes: what an edge is told, by keyless error code, when
// a signer cannot sign for it. A key it may not use looks like no key at
// all; a disabled key says so; a signer that has the key suspended
// answers "internal" so that the edge tries another; a signer that is busy
// answers "overloaded" (the edge tries another while its deadline allows,
// and counts it as overload, not failure); a request
// without end-to-end authority is a configuration error; a signer that
// reaches no quorum says so. The edge's own and a legacy identity's
// requests sign.
func testKeylessErrorCodes(t *testing.T, c *testCluster) {
	a := c.nodes["a"]
	backend := &keylessBackend{n: a}
	legacy := c.identity("legacy", pki.RoleEdge)
	stranger := c.identity("stranger", pki.RoleEdge)
	nodeCert := a.current().cert.Leaf
	share, _ := a.share(c.key)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// The key's state version goes on from whatever the cluster holds.
	setDisabled := func(disabled bool) {
		t.Helper()
		version := a.keyState.get(c.key.String()).Version + 1
		st, err := c.admin.SignStatement(peerwire.KeyStateStatement(c.key.String(), version, disabled))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.SetKeyState(ctx, "test", &peerwire.SetKeyStateRequest{Key: c.key.String(),
			State: peerwire.KeyState{Version: version, Disabled: disabled, Statement: st, Changed: time.Now()}, Propagate: true}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name   string
		cert   *x509.Certificate
		signer *authority.Signer // makes the request's authority; nil: none
		ski    tss.KeyID
		setup  func() (undo func())
		want   error // nil: a signature
	}{
		{name: "the edge's own request", cert: c.edge.Cert, signer: c.edge},
		{name: "a legacy identity without authority", cert: legacy.Cert},
		{name: "no tkeyless identity", cert: nil, signer: c.edge, want: protocol.ErrKeyNotFound},
		{name: "a node identity", cert: nodeCert, signer: c.edge, want: protocol.ErrKeyNotFound},
		{name: "a key the cluster does not hold", cert: c.edge.Cert, signer: c.edge, ski: randomKeyID(t), want: protocol.ErrKeyNotFound},
		{name: "an identity not granted the key", cert: stranger.Cert, signer: stranger, want: protocol.ErrKeyNotFound},
		{name: "no end-to-end authority", cert: c.edge.Cert, want: protocol.ErrRemoteConfiguration},
		{name: "an authority from another identity", cert: c.edge.Cert, signer: c.admin, want: protocol.ErrRemoteConfiguration},
		{name: "the key disabled", cert: c.edge.Cert, signer: c.edge, want: keyless.ErrKeyDisabled, setup: func() func() {
			setDisabled(true)
			return func() { setDisabled(false) }
		}},
		{name: "the key suspended here", cert: c.edge.Cert, signer: c.edge, want: protocol.ErrInternal, setup: func() func() {
			for range a.budget.limit {
				a.chargeAbort(c.key.String(), peerwire.NewSessionID(), errors.New("test: unattributed"))
			}
			return func() { _, _ = a.resumeKey(c.key.String(), "test") }
		}},
		{name: "the signer overloaded", cert: c.edge.Cert, signer: c.edge, want: keyless.ErrOverloaded, setup: func() func() {
			var held []*ticket
			for a.admission.inProgress() < a.cfg.MaxQueue {
				tk, err := a.admission.arrive(fmt.Sprint("filler-", len(held)), c.key.String(), time.Time{})
				if err != nil {
					t.Fatal(err)
				}
				held = append(held, tk)
			}
			return func() {
				for _, tk := range held {
					tk.leave()
				}
			}
		}},
		{name: "no quorum", cert: c.edge.Cert, signer: c.edge, want: keyless.ErrNoQuorum, setup: func() func() {
			a.convict("b", peerwire.NewSessionID(), c.key.String(), tss.ErrMisbehaved)
			a.convict("c", peerwire.NewSessionID(), c.key.String(), tss.ErrMisbehaved)
			return func() { _, _ = a.readmit("b", "test"); _, _ = a.readmit("c", "test") }
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				defer tc.setup()()
			}
			ski := c.key
			if tc.ski != (tss.KeyID{}) {
				ski = tc.ski
			}
			d := digest("keyless " + tc.name)
			req := &keyless.Request{ID: 7, Identity: tc.cert, Op: protocol.OpECDSASignSHA256, Hash: crypto.SHA256, SKI: protocol.SKI(ski), Digest: d}
			if tc.signer != nil {
				var err error
				if req.Authority, err = tc.signer.Sign(authority.Request{Op: byte(protocol.OpECDSASignSHA256), SKI: ski, Digest: d}); err != nil {
					t.Fatal(err)
				}
			}
			sig, err := backend.Sign(ctx, req)
			switch {
			case tc.want == nil && err != nil:
				t.Fatalf("not signed: %v", err)
			case tc.want == nil && !ecdsa.VerifyASN1(share.PublicKey(), d, sig):
				t.Fatal("the signature does not verify")
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Fatalf("keyless error %v, want %v", err, tc.want)
			}
		})
	}
}
