package keyless

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"

	"github.com/cloudflare/gokeyless/protocol"

	"github.com/tkeyless/tkeyless/internal/authority"
	"github.com/tkeyless/tkeyless/internal/pki"
)

// IdentityAuthority returns an Authorize function that signs every request
// (key, operation, digest, a fresh request id and the time) with the key of
// cert, the client's own mTLS identity. Each tkeyless signer in a quorum
// checks that signature itself, so the signer the client happens to reach
// cannot invent or alter a request. It returns nil when cert is not a
// tkeyless edge or admin identity, which then sends no authority.
func IdentityAuthority(cert tls.Certificate) func(protocol.Op, protocol.SKI, []byte) ([]byte, error) {
	leaf := cert.Leaf
	if leaf == nil && len(cert.Certificate) > 0 {
		leaf, _ = x509.ParseCertificate(cert.Certificate[0])
	}
	key, ok := cert.PrivateKey.(crypto.Signer)
	if leaf == nil || !ok {
		return nil
	}
	id, err := pki.IdentityOf(leaf)
	if err != nil || (id.Role != pki.RoleEdge && id.Role != pki.RoleAdmin) {
		return nil
	}
	s := &authority.Signer{Cert: leaf, Key: key}
	return func(op protocol.Op, ski protocol.SKI, digest []byte) ([]byte, error) {
		return s.Sign(authority.Request{Op: byte(op), SKI: ski, Digest: digest})
	}
}
