package node

import (
	"crypto"
	"errors"
	"fmt"
	"slices"

	"github.com/cloudflare/gokeyless/protocol"

	"github.com/tkeyless/tkeyless/internal/authority"
	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/tss"
)

// opcodes maps a hash to the keyless operation an edge signs for: the
// authority covers the opcode, so a member rebuilds it from the request.
var opcodes = map[crypto.Hash]protocol.Op{
	crypto.SHA224: protocol.OpECDSASignSHA224,
	crypto.SHA256: protocol.OpECDSASignSHA256,
	crypto.SHA384: protocol.OpECDSASignSHA384,
	crypto.SHA512: protocol.OpECDSASignSHA512,
}

// errUnauthorized marks a request this node refused to sign for.
var errUnauthorized = errors.New("not authorized")

// errNoAuthority marks a request refused for lacking end-to-end authority.
var errNoAuthority = errors.New("request carries no end-to-end authority and its identity is not marked legacy")

// errNotGranted marks a request from an identity not granted the key.
var errNotGranted = errors.New("identity is not granted this key")

// grant returns the access grant of identity for key, if any.
func (n *Node) grant(identity string, key tss.KeyID) (Grant, bool) {
	access := n.cfg.Access
	if c := n.current(); c != nil {
		access = c.access // reloaded
	}
	if len(access) == 0 {
		return Grant{Identity: identity, Keys: []string{"*"}}, true
	}
	for _, g := range access {
		if g.Identity == identity && (slices.Contains(g.Keys, "*") || slices.Contains(g.Keys, key.String())) {
			return g, true
		}
	}
	return Grant{}, false
}

// authorize decides, on this node alone, whether it may take part in
// signing req: the edge's own signature over the request (not the
// coordinator's word) must name this key, hash and digest, be fresh and
// unused, and come from an identity granted the key. A legacy identity
// without authority is taken on the coordinator's word.
//
// The returned claims are nil for a legacy request.
func (n *Node) authorize(key tss.KeyID, hash crypto.Hash, req *peerwire.SignRequest) (*authority.Claims, error) {
	if len(req.Authority) == 0 {
		// Only the coordinator saw a legacy edge's certificate; a name
		// revoked here is refused all the same.
		if c := n.current(); c != nil && c.revoked.names[req.Edge] {
			return nil, fmt.Errorf("edge %q: name listed in the revocation list: %w", req.Edge, errRevoked)
		}
		g, ok := n.grant(req.Edge, key)
		if !ok {
			return nil, fmt.Errorf("edge %q, key %s: %w", req.Edge, key, errNotGranted)
		}
		if !g.Legacy {
			return nil, fmt.Errorf("edge %q: %w", req.Edge, errNoAuthority)
		}
		return nil, nil
	}
	claims, err := n.verifier.Verify(req.Authority, authority.Request{Op: byte(opcodes[hash]), SKI: key, Digest: req.Digest})
	if err != nil {
		return nil, err
	}
	// The authority's certificate, not the coordinator's word, is checked
	// against the revocations in force here: a coordinator that has not
	// reloaded yet, or lies, cannot forward a revoked edge's request.
	if err := n.refuseRevoked(claims.Identity.Cert, "authority"); err != nil {
		return nil, fmt.Errorf("request authority: %w", err)
	}
	if claims.Identity.Name != req.Edge {
		return nil, fmt.Errorf("authority is from %q but the coordinator says the request came from %q", claims.Identity.Name, req.Edge)
	}
	if _, ok := n.grant(claims.Identity.Name, key); !ok {
		return nil, fmt.Errorf("edge %q, key %s: %w", claims.Identity.Name, key, errNotGranted)
	}
	return &claims, nil
}
