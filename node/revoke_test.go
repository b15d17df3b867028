package node

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloudflare/gokeyless/protocol"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/tkeyless/tkeyless/internal/authority"
	"github.com/tkeyless/tkeyless/internal/keylesswire"
	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/internal/pki"
)

// keylessEdge is one edge's raw keyless connection to a node: one TLS
// connection, requests sent one at a time, so a test knows which
// connection a request travels on.
type keylessEdge struct {
	t      testing.TB
	c      *testCluster
	signer *authority.Signer
	conn   *tls.Conn
	nextID uint32
}

// serveKeyless runs node name's keyless endpoint (built as Serve builds
// it) on an in-memory listener of its own.
func serveKeyless(t testing.TB, n *Node) *bufconn.Listener {
	t.Helper()
	ks, err := n.keylessServer()
	if err != nil {
		t.Fatal(err)
	}
	l := bufconn.Listen(1 << 16)
	go func() { _ = ks.Serve(l) }()
	t.Cleanup(func() { ks.Close() })
	return l
}

// dialKeyless opens a keyless connection to l as identity name, or returns
// the handshake's error.
func (c *testCluster) dialKeyless(l *bufconn.Listener, node, name string, signer *authority.Signer) (*keylessEdge, error) {
	c.t.Helper()
	tc, err := pki.MutualTLS(c.cfgs[node].TLS.CA, filepath.Join(c.dir, "pki", name+".pem"), filepath.Join(c.dir, "pki", name+"-key.pem"))
	if err != nil {
		c.t.Fatal(err)
	}
	tc.ServerName = node
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	raw, err := l.DialContext(ctx)
	if err != nil {
		return nil, err
	}
	conn := tls.Client(raw, tc)
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	c.t.Cleanup(func() { raw.Close() })
	return &keylessEdge{t: c.t, c: c, signer: signer, conn: conn}, nil
}

// send writes one signing request for d with the edge's authority.
func (e *keylessEdge) send(d []byte) error {
	a, err := e.signer.Sign(authority.Request{Op: byte(protocol.OpECDSASignSHA256), SKI: e.c.key, Digest: d})
	if err != nil {
		e.t.Fatal(err)
	}
	e.nextID++
	frame, err := keylesswire.MarshalRequest(e.nextID, protocol.Operation{Opcode: protocol.OpECDSASignSHA256, SKI: protocol.SKI(e.c.key), Payload: d}, keylesswire.Extras{Authority: a})
	if err != nil {
		e.t.Fatal(err)
	}
	_, err = e.conn.Write(frame)
	return err
}

// receive reads the answer to the last request: the signature, or the
// keyless error code, or the connection's error.
func (e *keylessEdge) receive() ([]byte, error) {
	_ = e.conn.SetReadDeadline(time.Now().Add(time.Minute))
	hdr, op, _, err := keylesswire.ReadRequest(e.conn, 0)
	if err != nil {
		return nil, err
	}
	if hdr.ID != e.nextID {
		e.t.Fatalf("answer to request %d, want %d", hdr.ID, e.nextID)
	}
	if op.Opcode == protocol.OpError {
		return nil, op.GetError()
	}
	return op.Payload, nil
}

func (e *keylessEdge) sign(d []byte) ([]byte, error) {
	if err := e.send(d); err != nil {
		return nil, err
	}
	return e.receive()
}

// revokeByCRL writes a CRL of the cluster CA revoking certs and returns its
// path.
func (c *testCluster) revokeByCRL(certs ...*x509.Certificate) string {
	c.t.Helper()
	tmpl := &x509.RevocationList{Number: big.NewInt(time.Now().UnixNano()), ThisUpdate: time.Now().Add(-time.Minute), NextUpdate: time.Now().Add(time.Hour)}
	for _, cert := range certs {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{SerialNumber: cert.SerialNumber, RevocationTime: time.Now()})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, c.ca.Cert, c.ca.Key)
	if err != nil {
		c.t.Fatal(err)
	}
	path := filepath.Join(c.dir, "pki", "ca.crl")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o644); err != nil {
		c.t.Fatal(err)
	}
	return path
}

// reload has node name reload its configuration with change applied, as
// SIGHUP does with the file.
func (c *testCluster) reload(name string, change func(*Config)) error {
	cfg := c.cfgs[name]
	change(&cfg)
	c.cfgs[name] = cfg
	return c.nodes[name].Reload(cfg)
}

// TestRevokeEdgeByReload: an edge signs through a; the member b, then the
// coordinator a, reload a CRL of the cluster CA that revokes it. A session
// in flight at b's reload finishes; from then on b refuses the edge's authority even when a coordinator that has not
// reloaded forwards it; once the coordinator reloads, both a request on the
// edge's open connection and a new connection are refused, while another
// edge still signs.
func TestRevokeEdgeByReload(t *testing.T) {
	c := newTestCluster(t, []string{"a", "b"}, func(cfg *Config) {
		cfg.Access = []Grant{{Identity: "edge", Keys: []string{"*"}}, {Identity: "keeper", Keys: []string{"*"}}}
	})
	keeper := c.identity("keeper", pki.RoleEdge)
	c.keygen(1)
	a := c.nodes["a"]
	share, _ := a.share(c.key)
	l := serveKeyless(t, a)
	verify := func(what string, d, sig []byte) {
		t.Helper()
		if !ecdsa.VerifyASN1(share.PublicKey(), d, sig) {
			t.Fatalf("%s: the signature does not verify", what)
		}
	}

	edge, err := c.dialKeyless(l, "a", "edge", c.edge)
	if err != nil {
		t.Fatal(err)
	}
	d := digest("before the reload")
	sig, err := edge.sign(d)
	if err != nil {
		t.Fatalf("before the reload: %v", err)
	}
	verify("before the reload", d, sig)

	// A session in flight: the members have authorized it when they
	// reload.
	crl := c.revokeByCRL(c.edge.Cert)
	d = digest("in flight")
	if err := edge.send(d); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "a session started on a and b", func() bool {
		return a.sessions.count() > 0 && c.nodes["b"].sessions.count() > 0
	})
	if err := c.reload("b", func(cfg *Config) { cfg.Revocation.CRL = crl }); err != nil {
		t.Fatalf("reload b: %v", err)
	}
	if a.sessions.count() == 0 {
		t.Fatal("the session ended before the member reloaded: nothing was in flight")
	}
	sig, err = edge.receive()
	if err != nil {
		t.Fatalf("the session in flight at the reload: %v", err)
	}
	verify("in flight", d, sig)

	// The coordinator has not reloaded: it forwards the edge's request,
	// and the member refuses the authority on its own.
	refusedBefore := metricValue(t, c.nodes["b"], "tkeyless_signer_refused_total", "what", "revoked_authority")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := a.Sign(ctx, c.signRequest(digest("forwarded"))); !errors.Is(err, ErrNoQuorum) {
		t.Fatalf("a coordinator that has not reloaded forwards a revoked edge: %v, want no quorum (members refuse)", err)
	}
	if got := metricValue(t, c.nodes["b"], "tkeyless_signer_refused_total", "what", "revoked_authority"); got <= refusedBefore {
		t.Fatalf("the member counted %v refusals of a revoked authority, want more than %v", got, refusedBefore)
	}
	c.resetHealth("a")

	if err := c.reload("a", func(cfg *Config) { cfg.Revocation.CRL = crl }); err != nil {
		t.Fatalf("reload a: %v", err)
	}
	if _, err := edge.sign(digest("open connection")); !errors.Is(err, protocol.ErrKeyNotFound) {
		t.Fatalf("a request on the revoked edge's open connection: %v, want %v", err, protocol.ErrKeyNotFound)
	}
	if e2, err := c.dialKeyless(l, "a", "edge", c.edge); err == nil {
		// TLS 1.3: the client finishes its handshake before the server
		// has checked its certificate; the refusal comes on the first read.
		if _, err := e2.sign(digest("new connection")); err == nil {
			t.Fatal("a new connection of the revoked edge signed")
		}
	}
	k, err := c.dialKeyless(l, "a", "keeper", keeper)
	if err != nil {
		t.Fatalf("another edge, new connection: %v", err)
	}
	d = digest("keeper")
	if sig, err = k.sign(d); err != nil {
		t.Fatalf("another edge after the reload: %v", err)
	}
	verify("keeper", d, sig)
	if got := metricValue(t, a, "tkeyless_signer_reloads_total", "result", "ok"); got != 1 {
		t.Fatalf("reloads ok on a: %v, want 1", got)
	}
	if got := metricValue(t, a, "tkeyless_signer_config_last_reload_success_timestamp_seconds"); got < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Fatalf("last reload time %v, want about now", got)
	}
}

// TestRevokePeerByReload: a signer revoked by name (the plain list) is
// refused on the peer endpoint, on the connection and the Deliveries
// stream it already has and on a new one, and left out of quorums.
func TestRevokePeerByReload(t *testing.T) {
	c := newTestCluster(t, []string{"a", "b", "c"})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	fromC := c.peerClient("c", "a")
	if _, err := fromC.Ping(ctx, &peerwire.PingRequest{Version: peerwire.Version}); err != nil {
		t.Fatalf("before the reload: %v", err)
	}
	// c's Deliveries stream to a is open: an envelope on it reaches a's
	// session table (and finds no such session).
	env := func() *peerwire.Envelope {
		return &peerwire.Envelope{Version: peerwire.Version, Session: peerwire.NewSessionID(), Kind: peerwire.KindSign, From: "c"}
	}
	if _, err := fromC.Deliver(ctx, env()); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), ErrUnknownSession.Error()) {
		t.Fatalf("an envelope before the reload: %v, want an unknown session", err)
	}
	if got := metricValue(t, c.nodes["a"], "tkeyless_signer_peer_messages_total", "via", "stream"); got != 1 {
		t.Fatalf("%v envelopes on a stream, want the one", got)
	}
	list := filepath.Join(c.dir, "revoked.txt")
	if err := os.WriteFile(list, []byte("# c's host was lost\nname c\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := c.reload("a", func(cfg *Config) { cfg.Revocation.List = list }); err != nil {
		t.Fatal(err)
	}
	if _, err := fromC.Deliver(ctx, env()); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("c on its open stream: %v, want PermissionDenied", err)
	}
	if _, err := fromC.Ping(ctx, &peerwire.PingRequest{Version: peerwire.Version}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("c on its open connection: %v, want PermissionDenied", err)
	}
	short, cancelShort := context.WithTimeout(ctx, 3*time.Second)
	defer cancelShort()
	if _, err := c.peerClient("c", "a").Ping(short, &peerwire.PingRequest{Version: peerwire.Version}); err == nil {
		t.Fatal("c on a new connection: accepted")
	}
	if _, err := c.peerClient("b", "a").Ping(ctx, &peerwire.PingRequest{Version: peerwire.Version}); err != nil {
		t.Fatalf("b, not revoked: %v", err)
	}
	if c.nodes["a"].reachable("c") {
		t.Fatal("a still counts revoked c as a quorum candidate")
	}
}

// TestReloadFailureKeepsConfig: a reload that cannot be put in force
// changes nothing, says why and is counted; a good one afterwards works.
func TestReloadFailureKeepsConfig(t *testing.T) {
	c := newTestCluster(t, []string{"a"})
	n := c.nodes["a"]
	pkiDir := filepath.Join(c.dir, "pki")
	if _, _, err := c.ca.IssueIdentity(pkiDir, "b", pki.RoleNode, nil); err != nil {
		t.Fatal(err)
	}
	other, err := pki.InitCA(filepath.Join(c.dir, "other-ca"), "another CA")
	if err != nil {
		t.Fatal(err)
	}
	otherCert, otherKey, err := other.IssueIdentity(filepath.Join(c.dir, "other-ca"), "a", pki.RoleNode, nil)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) string {
		p := filepath.Join(c.dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := c.revokeByCRL(c.edge.Cert)
	goodPEM, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	otherCRL := func() string {
		der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: time.Now(), NextUpdate: time.Now().Add(time.Hour)}, other.Cert, other.Key.(crypto.Signer))
		if err != nil {
			t.Fatal(err)
		}
		return write("other.crl", string(pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})))
	}()
	for _, tc := range []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"a missing certificate", func(cfg *Config) { cfg.TLS.Cert = filepath.Join(c.dir, "nope.pem") }, "nope.pem"},
		{"a key for another certificate", func(cfg *Config) { cfg.TLS.Key = filepath.Join(pkiDir, "b-key.pem") }, "private key does not match"},
		{"a certificate for another node", func(cfg *Config) {
			cfg.TLS.Cert, cfg.TLS.Key = filepath.Join(pkiDir, "b.pem"), filepath.Join(pkiDir, "b-key.pem")
		}, `certificate is for "b" but config name is "a"`},
		{"a certificate from another CA", func(cfg *Config) { cfg.TLS.Cert, cfg.TLS.Key = otherCert, otherKey }, "not valid under the cluster CA"},
		{"a CA file with no certificate", func(cfg *Config) { cfg.TLS.CA = write("empty-ca.pem", "nothing here\n") }, "holds no PEM certificate"},
		{"a truncated CRL", func(cfg *Config) { cfg.Revocation.CRL = write("truncated.crl", string(goodPEM[:len(goodPEM)/2])) }, "truncated"},
		{"a CRL of another CA", func(cfg *Config) { cfg.Revocation.CRL = otherCRL }, "not signed by the cluster CA"},
		{"a bad list line", func(cfg *Config) { cfg.Revocation.List = write("bad.txt", "name edge\nserial xyz\n") }, "line 2"},
		{"a revocation of this node itself", func(cfg *Config) { cfg.Revocation.List = write("self.txt", "name a\n") }, "itself revoked"},
		{"another name", func(cfg *Config) { cfg.Name = "b" }, "cannot change while it runs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := n.current()
			failed := metricValue(t, n, "tkeyless_signer_reloads_total", "result", "failed")
			cfg := c.cfgs["a"]
			tc.change(&cfg)
			err := n.Reload(cfg)
			if err == nil {
				t.Fatal("the reload succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("reload: %v, want an error saying %q", err, tc.want)
			}
			if n.current() != before {
				t.Fatal("a failed reload changed the configuration in force")
			}
			if got := metricValue(t, n, "tkeyless_signer_reloads_total", "result", "failed"); got != failed+1 {
				t.Fatalf("failed reloads: %v, want %v", got, failed+1)
			}
		})
	}
	if err := n.refuseRevoked(c.edge.Cert, "test"); err != nil {
		t.Fatalf("the edge is refused after failed reloads only: %v", err)
	}
	if err := c.reload("a", func(cfg *Config) { cfg.Revocation.CRL = good }); err != nil {
		t.Fatalf("a good reload after the failures: %v", err)
	}
	if err := n.refuseRevoked(c.edge.Cert, "test"); !errors.Is(err, errRevoked) {
		t.Fatalf("the edge after a good reload: %v, want revoked", err)
	}
}

// TestRevocationListEntries: what the plain list and a CRL revoke, and
// what they leave alone.
func TestRevocationListEntries(t *testing.T) {
	c := newTestCluster(t, nil)
	other := c.identity("other", pki.RoleEdge)
	bySerial := c.identity("by-serial", pki.RoleEdge)
	byCRL := c.identity("by-crl", pki.RoleEdge)
	otherCA, err := pki.InitCA(filepath.Join(c.dir, "other-ca"), "another CA")
	if err != nil {
		t.Fatal(err)
	}
	// A certificate of another CA with byCRL's serial: a CRL revokes a
	// serial of its own issuer only.
	foreignPath, _, err := otherCA.IssueIdentity(filepath.Join(c.dir, "other-ca"), "by-crl", pki.RoleEdge, nil)
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := tls.LoadX509KeyPair(foreignPath, filepath.Join(c.dir, "other-ca", "by-crl-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	foreign.Leaf.SerialNumber = byCRL.Cert.SerialNumber
	list := filepath.Join(c.dir, "revoked.txt")
	serial := byteColons(bySerial.Cert.SerialNumber.Bytes())
	if err := os.WriteFile(list, []byte("# revoked\nname edge   # the lost host\n\nserial "+serial+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cas := []*x509.Certificate{c.ca.Cert}
	l, err := loadRevocations(Revocation{List: list, CRL: c.revokeByCRL(byCRL.Cert)}, cas)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		cert    *x509.Certificate
		revoked bool
	}{
		{"listed by name", c.edge.Cert, true},
		{"listed by serial (openssl's colon form)", bySerial.Cert, true},
		{"in the CRL", byCRL.Cert, true},
		{"the CRL's serial from another issuer", foreign.Leaf, false},
		{"not listed", other.Cert, false},
		{"the admin", c.admin.Cert, false},
	} {
		if _, got := l.check(tc.cert); got != tc.revoked {
			t.Errorf("%s: revoked %v, want %v", tc.name, got, tc.revoked)
		}
	}
	if _, ok := (*revocationList)(nil).check(c.edge.Cert); ok {
		t.Error("no list revokes something")
	}
}

// byteColons writes b as openssl prints a serial: hex pairs joined by
// colons, upper case.
func byteColons(b []byte) string {
	var sb strings.Builder
	for i, x := range b {
		if i > 0 {
			sb.WriteByte(':')
		}
		fmt.Fprintf(&sb, "%02X", x)
	}
	return sb.String()
}

// TestReloadRotatesCertificateAndCA: after a reload, new connections get
// the node's new certificate, and an edge issued by a CA added to the
// bundle is let in; the connection opened before keeps working.
func TestReloadRotatesCertificateAndCA(t *testing.T) {
	c := newTestCluster(t, []string{"a"})
	n := c.nodes["a"]
	l := serveKeyless(t, n)
	before, err := c.dialKeyless(l, "a", "edge", c.edge)
	if err != nil {
		t.Fatal(err)
	}
	oldSerial := before.conn.ConnectionState().PeerCertificates[0].SerialNumber

	// A new CA joins the bundle; the node gets a new certificate.
	newCA, err := pki.InitCA(filepath.Join(c.dir, "new-ca"), "next CA")
	if err != nil {
		t.Fatal(err)
	}
	newDir := filepath.Join(c.dir, "new-ca")
	if _, _, err := newCA.IssueIdentity(newDir, "edge2", pki.RoleEdge, nil); err != nil {
		t.Fatal(err)
	}
	certPath, keyPath, err := c.ca.IssueIdentity(filepath.Join(c.dir, "renewed"), "a", pki.RoleNode, nil)
	if err != nil {
		t.Fatal(err)
	}
	oldCA, err := os.ReadFile(c.cfgs["a"].TLS.CA)
	if err != nil {
		t.Fatal(err)
	}
	nextCA, err := os.ReadFile(filepath.Join(newDir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(c.dir, "bundle.pem")
	if err := os.WriteFile(bundle, append(oldCA, nextCA...), 0o644); err != nil {
		t.Fatal(err)
	}
	// An edge of the new CA is refused before the reload.
	edge2 := func() (*tls.Conn, error) {
		tc, err := pki.MutualTLS(bundle, filepath.Join(newDir, "edge2.pem"), filepath.Join(newDir, "edge2-key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		tc.ServerName = "a"
		raw, err := l.Dial()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { raw.Close() })
		conn := tls.Client(raw, tc)
		if err := conn.Handshake(); err != nil {
			return nil, err
		}
		// TLS 1.3: the server's verdict on the client comes with the
		// first read; a ping gets it.
		frame, err := keylesswire.MarshalRequest(1, protocol.Operation{Opcode: protocol.OpPing}, keylesswire.Extras{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Write(frame); err != nil {
			return nil, err
		}
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, op, _, err := keylesswire.ReadRequest(conn, 0); err != nil || op.Opcode != protocol.OpPong {
			return nil, fmt.Errorf("ping: %v, %v", op.Opcode, err)
		}
		return conn, nil
	}
	if _, err := edge2(); err == nil {
		t.Fatal("an edge of a CA not yet in the bundle got in")
	}
	if err := c.reload("a", func(cfg *Config) { cfg.TLS.CA, cfg.TLS.Cert, cfg.TLS.Key = bundle, certPath, keyPath }); err != nil {
		t.Fatal(err)
	}
	conn, err := edge2()
	if err != nil {
		t.Fatalf("an edge of the CA added by the reload: %v", err)
	}
	if got := conn.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(oldSerial) == 0 {
		t.Fatal("a new connection still gets the certificate from before the reload")
	}
	if err := before.send(digest("old connection")); err != nil {
		t.Fatalf("the connection opened before the reload: %v", err)
	}
	if _, err := before.receive(); err != nil && !errors.Is(err, protocol.ErrKeyNotFound) {
		t.Fatalf("the connection opened before the reload: %v", err)
	}
}

// TestVerifyPeerServer: what this node accepts from a peer it dials, now
// that it checks the peer's certificate itself (peerTLS): issued by the
// cluster CA for the peer's name, and not revoked.
func TestVerifyPeerServer(t *testing.T) {
	c := newTestCluster(t, []string{"a"})
	n := c.nodes["a"]
	b := c.identity("b", pki.RoleNode)
	other, err := pki.InitCA(filepath.Join(c.dir, "other-ca"), "another CA")
	if err != nil {
		t.Fatal(err)
	}
	fakePath, fakeKey, err := other.IssueIdentity(filepath.Join(c.dir, "other-ca"), "b", pki.RoleNode, nil)
	if err != nil {
		t.Fatal(err)
	}
	fake, err := tls.LoadX509KeyPair(fakePath, fakeKey)
	if err != nil {
		t.Fatal(err)
	}
	state := func(certs ...*x509.Certificate) tls.ConnectionState {
		return tls.ConnectionState{PeerCertificates: certs}
	}
	for _, tc := range []struct {
		name  string
		state tls.ConnectionState
		peer  string
		ok    bool
	}{
		{"b's certificate, dialing b", state(b.Cert), "b", true},
		{"b's certificate, dialing c", state(b.Cert), "c", false},
		{"a certificate for b from another CA", state(fake.Leaf), "b", false},
		{"no certificate", state(), "b", false},
	} {
		if err := n.verifyPeerServer(tc.state, tc.peer); (err == nil) != tc.ok {
			t.Errorf("%s: %v, want accepted %v", tc.name, err, tc.ok)
		}
	}
	list := filepath.Join(c.dir, "revoked.txt")
	if err := os.WriteFile(list, []byte("name b\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := c.reload("a", func(cfg *Config) { cfg.Revocation.List = list }); err != nil {
		t.Fatal(err)
	}
	if err := n.verifyPeerServer(state(b.Cert), "b"); !errors.Is(err, errRevoked) {
		t.Errorf("revoked b: %v, want refused as revoked", err)
	}
}

// TestRevokedAdminStartsNoCeremony: a key generation signed by an admin
// identity revoked here is refused.
func TestRevokedAdminStartsNoCeremony(t *testing.T) {
	c := newTestCluster(t, []string{"a", "b"})
	list := filepath.Join(c.dir, "revoked.txt")
	if err := os.WriteFile(list, []byte("name admin\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a", "b"} {
		if err := c.reload(name, func(cfg *Config) { cfg.Revocation.List = list }); err != nil {
			t.Fatal(err)
		}
	}
	parties := []string{"a", "b"}
	auth, err := c.admin.SignStatement(peerwire.KeygenStatement(1, parties))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = c.nodes["a"].Keygen(ctx, &peerwire.KeygenCeremonyRequest{Threshold: 1, Parties: parties, Authority: auth})
	if err == nil || !strings.Contains(err.Error(), errRevoked.Error()) {
		t.Fatalf("keygen signed by a revoked admin: %v, want refused as revoked", err)
	}
}

// TestReloadNewKeyThreeMembers: a reload that gives a its new certificate
// and a new key redials a's peer connections. In a session of three, a
// member checks a's broadcast signatures against the certificate of the
// connection they come on; over a connection opened before the reload that
// is a's old certificate, and every session would abort blaming a.
func TestReloadNewKeyThreeMembers(t *testing.T) {
	if testing.Short() {
		t.Skip("(2,3) keygen and signing")
	}
	c := newTestCluster(t, []string{"a", "b", "c"})
	c.keygen(2)
	if err := c.sign("a", "before the reload"); err != nil {
		t.Fatal(err)
	}
	certPath, keyPath, err := c.ca.IssueIdentity(filepath.Join(c.dir, "renewed"), "a", pki.RoleNode, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.reload("a", func(cfg *Config) { cfg.TLS.Cert, cfg.TLS.Key = certPath, keyPath }); err != nil {
		t.Fatal(err)
	}
	for _, coordinator := range []string{"a", "b"} {
		if err := c.sign(coordinator, "after a's new key, coordinated by "+coordinator); err != nil {
			t.Fatalf("signing coordinated by %s after a's new key: %v", coordinator, err)
		}
	}
}
