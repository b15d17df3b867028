package node

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"

	"github.com/tkeyless/tkeyless/internal/pki"
)

// trustSet is the part of a node's configuration that a reload
// (SIGHUP) replaces while the node serves: its own certificate and key, the
// cluster CA, the access list and the revoked identities. They are replaced
// as one value (Node.trust), so a connection or request sees either the old
// set or the new one, never half of each.
//
// Everything that decides whom to trust reads the current value at the
// moment it decides: a new TLS handshake (both endpoints, and this node
// dialing its peers), every keyless request, every peer call, and every
// end-to-end authority a member checks. Connections already open are not
// cut, but each request on them is checked again, so a revoked identity is
// refused from the reload on; sessions already admitted finish.
type trustSet struct {
	cert    tls.Certificate     // this node's identity, Leaf set
	pool    *x509.CertPool      // the cluster CA
	cas     []*x509.Certificate // the same CA certificates, to check a CRL's signature
	access  []Grant
	revoked *revocationList
	// origins holds the node certificates echoes carried that verified
	// against pool (origincache.go); it starts empty with every set.
	origins *originCache
	// server is what both endpoints hand crypto/tls for a new connection.
	server *tls.Config
}

// loadTrust reads and checks the reloadable parts of cfg. Any error
// leaves the caller's current trust set in force.
func (n *Node) loadTrust(cfg Config) (*trustSet, error) {
	caPEM, err := os.ReadFile(cfg.TLS.CA)
	if err != nil {
		return nil, fmt.Errorf("cluster CA: %w", err)
	}
	var cas []*x509.Certificate
	pool := x509.NewCertPool()
	for rest := caPEM; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("cluster CA %s: %w", cfg.TLS.CA, err)
		}
		cas = append(cas, c)
		pool.AddCert(c)
	}
	if len(cas) == 0 {
		return nil, fmt.Errorf("cluster CA %s holds no PEM certificate", cfg.TLS.CA)
	}
	// LoadX509KeyPair refuses a key that does not belong to the certificate.
	cert, err := tls.LoadX509KeyPair(cfg.TLS.Cert, cfg.TLS.Key)
	if err != nil {
		return nil, fmt.Errorf("load identity %s with key %s: %w", cfg.TLS.Cert, cfg.TLS.Key, err)
	}
	if err := checkOwnIdentity(cert.Leaf, cfg.Name); err != nil {
		return nil, fmt.Errorf("%s: %w", cfg.TLS.Cert, err)
	}
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}); err != nil {
		return nil, fmt.Errorf("node certificate %s is not valid under the cluster CA %s (peers would refuse it): %w", cfg.TLS.Cert, cfg.TLS.CA, err)
	}
	revoked, err := loadRevocations(cfg.Revocation, cas)
	if err != nil {
		return nil, err
	}
	if why, ok := revoked.check(cert.Leaf); ok {
		return nil, fmt.Errorf("node certificate %s is itself revoked (%s): every peer would refuse it", cfg.TLS.Cert, why)
	}
	c := &trustSet{cert: cert, pool: pool, cas: cas, access: cfg.Access, revoked: revoked, origins: newOriginCache()}
	c.server = &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		// Revocation is checked against the list current at the
		// handshake, after crypto/tls verified the chain.
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
				return errors.New("no verified client certificate")
			}
			return n.refuseRevoked(cs.VerifiedChains[0][0], "connection")
		},
	}
	return c, nil
}

// current returns the trust set in force.
func (n *Node) current() *trustSet { return n.trust.Load() }

// errRevoked marks an identity on the revocation list.
var errRevoked = errors.New("identity revoked")

// refuseRevoked returns an error wrapping errRevoked, and counts it, if
// cert is revoked by the trust set in force.
func (n *Node) refuseRevoked(cert *x509.Certificate, where string) error {
	c := n.current()
	if c == nil || cert == nil {
		return nil
	}
	why, ok := c.revoked.check(cert)
	if !ok {
		return nil
	}
	n.metrics.refused.WithLabelValues("revoked_" + where).Inc()
	n.log.Warn().Str("identity", cert.Subject.CommonName).Str("serial", serialHex(cert)).Str("why", why).Str("where", where).Msg("revoked identity refused")
	return fmt.Errorf("%q (serial %s): %s: %w", cert.Subject.CommonName, serialHex(cert), why, errRevoked)
}

// serverTLS is the TLS configuration of both endpoints: each new connection
// gets the trust set in force when it arrives (GetConfigForClient). The
// fields beside the callback satisfy the endpoints' own checks at start.
func (n *Node) serverTLS() *tls.Config {
	c := n.current()
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{c.cert},
		ClientCAs:    c.pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return n.current().server, nil
		},
	}
}

// peerTLS is the TLS configuration this node dials peer name with. The
// peer's certificate must be issued for its name: that is what binds a
// connection to a tss party.
//
// crypto/tls verifies a server against a fixed RootCAs, which a reload
// could not change for the connections gRPC reopens over the life of the
// process; so its own verification is replaced (InsecureSkipVerify) by
// VerifyConnection, which does the same checks against the CA in force and
// then the revocation list. Do not remove one without the other.
func (n *Node) peerTLS(name string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         name,
		InsecureSkipVerify: true,
		VerifyConnection:   func(cs tls.ConnectionState) error { return n.verifyPeerServer(cs, name) },
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c := n.current().cert
			return &c, nil
		},
	}
}

// verifyPeerServer checks the certificate a dialed peer presented, as
// crypto/tls would with RootCAs and ServerName, under the credentials in
// force.
func (n *Node) verifyPeerServer(cs tls.ConnectionState, name string) error {
	if len(cs.PeerCertificates) == 0 {
		return fmt.Errorf("peer %s presented no certificate", name)
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	leaf := cs.PeerCertificates[0]
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: n.current().pool, Intermediates: inter, DNSName: name,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return fmt.Errorf("peer %s certificate: %w", name, err)
	}
	return n.refuseRevoked(leaf, "peer_dial")
}

// checkOwnIdentity checks that leaf is a node certificate for name.
func checkOwnIdentity(leaf *x509.Certificate, name string) error {
	id, err := pki.IdentityOf(leaf)
	if err != nil {
		return fmt.Errorf("node certificate: %w", err)
	}
	if id.Role != pki.RoleNode {
		return fmt.Errorf("node certificate has role %s, want node", id.Role)
	}
	if id.Name != name {
		return fmt.Errorf("node certificate is for %q but config name is %q", id.Name, name)
	}
	return nil
}
