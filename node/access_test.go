package node

import (
	"crypto"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloudflare/gokeyless/protocol"

	"github.com/tkeyless/tkeyless/internal/authority"
	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/internal/pki"
)

// TestAuthorizeRules: what a member requires, on its own, before it signs
// for an edge: the edge's own signature over this key, operation and
// digest, fresh and unused, by the identity the coordinator names, which
// the access list grants the key. Without an authority only an identity
// marked legacy is taken on the coordinator's word.
func TestAuthorizeRules(t *testing.T) {
	c := newTestCluster(t, nil)
	roots, err := pki.LoadPool(filepath.Join(c.dir, "pki", "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	nodeID := c.identity("n1", pki.RoleNode)
	key, otherKey := randomKeyID(t), randomKeyID(t)
	d := digest("hello")
	auth := func(by *authority.Signer, op protocol.Op, ski [20]byte, dg []byte) []byte {
		a, err := by.Sign(authority.Request{Op: byte(op), SKI: ski, Digest: dg})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	good := func() []byte { return auth(c.edge, protocol.OpECDSASignSHA256, key, d) }
	used := good()
	all := []Grant{{Identity: "edge", Keys: []string{"*"}}, {Identity: "edge2", Keys: []string{"*"}}}
	for _, tc := range []struct {
		name      string
		access    []Grant
		edge      string // as the coordinator names it
		authority []byte
		hash      crypto.Hash
		want      error  // nil authorized
		wantMsg   string // a substring of a refusal
		legacy    bool   // authorized on the coordinator's word (no claims)
	}{
		{name: "the edge's own authority, no access list", edge: "edge", authority: good()},
		{name: "the edge's own authority, granted every key", access: all, edge: "edge", authority: good()},
		{name: "the edge's own authority, granted this key", access: []Grant{{Identity: "edge", Keys: []string{key.String()}}}, edge: "edge", authority: good()},
		{name: "the admin's authority", edge: "admin", authority: auth(c.admin, protocol.OpECDSASignSHA256, key, d)},
		{name: "over another digest", edge: "edge", authority: auth(c.edge, protocol.OpECDSASignSHA256, key, digest("other")), wantMsg: "does not cover"},
		{name: "for another hash", edge: "edge", authority: auth(c.edge, protocol.OpECDSASignSHA384, key, d), wantMsg: "does not cover"},
		{name: "for another key", edge: "edge", authority: auth(c.edge, protocol.OpECDSASignSHA256, otherKey, d), wantMsg: "does not cover"},
		{name: "the coordinator names another edge", access: all, edge: "edge2", authority: good(), wantMsg: "coordinator says"},
		{name: "an identity not in the access list", access: []Grant{{Identity: "edge2", Keys: []string{"*"}}}, edge: "edge", authority: good(), want: errNotGranted},
		{name: "an identity granted other keys", access: []Grant{{Identity: "edge", Keys: []string{otherKey.String()}}}, edge: "edge", authority: good(), want: errNotGranted},
		{name: "a node identity", edge: "n1", authority: auth(nodeID, protocol.OpECDSASignSHA256, key, d), wantMsg: "may not request signatures"},
		{name: "a used authority", edge: "edge", authority: used, wantMsg: "replay"},
		{name: "garbage", edge: "edge", authority: []byte{1, 2, 3}, wantMsg: "authority"},
		{name: "no authority, not legacy", edge: "edge", want: errNoAuthority},
		{name: "no authority, not granted", access: []Grant{{Identity: "edge2", Keys: []string{"*"}, Legacy: true}}, edge: "edge", want: errNotGranted},
		{name: "no authority, legacy", access: []Grant{{Identity: "edge", Keys: []string{"*"}, Legacy: true}}, edge: "edge", legacy: true},
		{name: "no authority, legacy for another key", access: []Grant{{Identity: "edge", Keys: []string{otherKey.String()}, Legacy: true}}, edge: "edge", want: errNotGranted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := unitNode(t, "a")
			n.cfg.Access = tc.access
			n.verifier = &authority.Verifier{Roots: roots}
			if c, err := n.verifier.Verify(used, authority.Request{Op: byte(protocol.OpECDSASignSHA256), SKI: key, Digest: d}); err == nil {
				_ = n.verifier.MarkUsed(c)
			}
			hash := tc.hash
			if hash == 0 {
				hash = crypto.SHA256
			}
			claims, err := n.authorize(key, hash, &peerwire.SignRequest{Key: key.String(), Digest: d, Edge: tc.edge, Authority: tc.authority})
			refused := tc.want != nil || tc.wantMsg != ""
			switch {
			case !refused && err != nil:
				t.Fatalf("refused: %v", err)
			case !refused && tc.legacy && claims != nil:
				t.Fatal("a request without authority came back with claims")
			case !refused && !tc.legacy && (claims == nil || claims.Identity.Name != tc.edge):
				t.Fatalf("claims %+v, want the edge's", claims)
			case refused && err == nil:
				t.Fatal("authorized")
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Fatalf("authorize: %v, want %v", err, tc.want)
			case tc.wantMsg != "" && !strings.Contains(err.Error(), tc.wantMsg):
				t.Fatalf("authorize: %v, want a refusal saying %q", err, tc.wantMsg)
			}
		})
	}
}
