package e2e

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cloudflare/gokeyless/protocol"

	"github.com/tkeyless/tkeyless/internal/authority"
	"github.com/tkeyless/tkeyless/internal/keylesswire"
	"github.com/tkeyless/tkeyless/internal/pki"
	"github.com/tkeyless/tkeyless/keyless"
)

// hangup sends every node SIGHUP and waits until each has counted one more
// reload with result (ok or failed).
func (c *cluster) hangup(t *testing.T, result string) {
	t.Helper()
	series := `tkeyless_signer_reloads_total{result="` + result + `"}`
	before := map[*signerNode]float64{}
	for _, sn := range c.nodes {
		before[sn] = metric(t, "http://"+sn.httpAddr+"/metrics", series)
		if err := sn.proc.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	for _, sn := range c.nodes {
		waitFor(t, 30*time.Second, func() bool { return metric(t, "http://"+sn.httpAddr+"/metrics", series) > before[sn] })
	}
}

// skiOf is the cluster key's SKI.
func skiOf(t *testing.T, c *cluster) protocol.SKI {
	t.Helper()
	b, err := hex.DecodeString(c.keyID)
	if err != nil || len(b) != len(protocol.SKI{}) {
		t.Fatalf("key id %q: %v", c.keyID, err)
	}
	return protocol.SKI(b)
}

// rawKeyless is one edge connection to one signer's keyless endpoint.
type rawKeyless struct {
	conn   *tls.Conn
	signer *authority.Signer
	ski    protocol.SKI
	id     uint32
}

func dialRawKeyless(t *testing.T, c *cluster, sn *signerNode, certPath, keyPath string) *rawKeyless {
	t.Helper()
	tc, err := pki.MutualTLS(c.caPath, certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	tc.ServerName = sn.name
	conn, err := tls.Dial("tcp", sn.keylessAddr, tc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	pair, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	return &rawKeyless{conn: conn, signer: &authority.Signer{Cert: pair.Leaf, Key: pair.PrivateKey.(crypto.Signer)}, ski: skiOf(t, c)}
}

// sign sends one signing request on the connection and reads its answer.
// It reports every failure as its error rather than through a testing.T, so
// it can run off the test goroutine; callers check the error as strictly.
func (r *rawKeyless) sign(d []byte) ([]byte, error) {
	a, err := r.signer.Sign(authority.Request{Op: byte(protocol.OpECDSASignSHA256), SKI: r.ski, Digest: d})
	if err != nil {
		return nil, fmt.Errorf("signing the request's authority: %w", err)
	}
	r.id++
	frame, err := keylesswire.MarshalRequest(r.id, protocol.Operation{Opcode: protocol.OpECDSASignSHA256, SKI: r.ski, Payload: d}, keylesswire.Extras{Authority: a})
	if err != nil {
		return nil, fmt.Errorf("marshalling the request: %w", err)
	}
	if _, err := r.conn.Write(frame); err != nil {
		return nil, fmt.Errorf("writing the request: %w", err)
	}
	if err := r.conn.SetReadDeadline(time.Now().Add(time.Minute)); err != nil {
		return nil, fmt.Errorf("setting the read deadline: %w", err)
	}
	_, op, _, err := keylesswire.ReadRequest(r.conn, 0)
	if err != nil {
		return nil, fmt.Errorf("reading the answer: %w", err)
	}
	if op.Opcode == protocol.OpError {
		return nil, op.GetError()
	}
	return op.Payload, nil
}

// TestRevokeEdgeBySIGHUP: the operator adds a CRL of the cluster CA that
// revokes an edge to every signer's configuration and sends SIGHUP. A
// signature in flight at that moment completes; from then on the edge is
// refused on the connection it holds and on new ones, while another edge
// signs. A truncated CRL reloaded afterwards is refused and changes
// nothing.
func TestRevokeEdgeBySIGHUP(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	c := startClusterWith(t, 1, 2, `access:
  - {identity: edge, keys: ["*"]}
  - {identity: keeper, keys: ["*"]}
`)
	pub := c.publicKey(t).(*ecdsa.PublicKey)
	pkiDir := filepath.Join(c.dir, "pki")
	run(t, "signer", "pki", "issue", "--dir", pkiDir, "--name", "keeper", "--role", "edge")
	edgeConn := dialRawKeyless(t, c, c.nodes[0], c.edgeCert, c.edgeKey)
	d := sha256.Sum256([]byte("before"))
	if sig, err := edgeConn.sign(d[:]); err != nil || !ecdsa.VerifyASN1(pub, d[:], sig) {
		t.Fatalf("before the reload: %v", err)
	}

	// The operator revokes the edge with the CA (here the development
	// CA's CRL) and adds the CRL to every node's configuration file.
	run(t, "signer", "pki", "revoke", "--dir", pkiDir, "--cert", c.edgeCert)
	crlPath := filepath.Join(pkiDir, "ca.crl")
	crlPEM, err := os.ReadFile(crlPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, sn := range c.nodes {
		appendFile(t, sn.config, "revocation: {crl: pki/ca.crl}\n")
	}

	// A signature in flight on the edge's open connection when the
	// signers reload.
	type result struct {
		sig []byte
		err error
	}
	inFlight := make(chan result, 1)
	d = sha256.Sum256([]byte("in flight"))
	go func() {
		sig, err := edgeConn.sign(d[:])
		inFlight <- result{sig, err}
	}()
	waitFor(t, time.Minute, func() bool { return sessionsLive(t, c.nodes[0]) > 0 && sessionsLive(t, c.nodes[1]) > 0 })
	c.hangup(t, "ok")
	r := <-inFlight
	if r.err != nil || !ecdsa.VerifyASN1(pub, d[:], r.sig) {
		t.Fatalf("the signature in flight at the reload: %v", r.err)
	}

	// From now on: refused on the open connection, through the edge's
	// client (new connections, every signer), while another edge signs.
	if _, err := edgeConn.sign([]byte(strings.Repeat("x", 32))); !errors.Is(err, protocol.ErrKeyNotFound) {
		t.Fatalf("the revoked edge's open connection: %v, want %v", err, protocol.ErrKeyNotFound)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ski := skiOf(t, c)
	edgeClient := keylessClient(t, c, 20*time.Second)
	d = sha256.Sum256([]byte("after"))
	if _, err := edgeClient.Sign(ctx, ski, crypto.SHA256, d[:]); err == nil {
		t.Fatal("the revoked edge signed through a new client")
	}
	keeperSigns := func(what string) {
		t.Helper()
		tc, err := pki.MutualTLS(c.caPath, filepath.Join(pkiDir, "keeper.pem"), filepath.Join(pkiDir, "keeper-key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		kc, err := keyless.NewClient(keyless.ClientConfig{Endpoints: c.keylessAddrs(), TLS: tc, Timeout: 20 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer kc.Close()
		d := sha256.Sum256([]byte(what))
		sig, err := kc.Sign(ctx, ski, crypto.SHA256, d[:])
		if err != nil || !ecdsa.VerifyASN1(pub, d[:], sig) {
			t.Fatalf("%s: another edge does not sign: %v", what, err)
		}
	}
	keeperSigns("keeper after the reload")

	// A truncated CRL: the reload fails, the previous one stays in force.
	if err := os.WriteFile(crlPath, crlPEM[:len(crlPEM)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	c.hangup(t, "failed")
	for _, sn := range c.nodes {
		if !strings.Contains(sn.proc.Output(), "reload failed") {
			t.Fatalf("signer %s logged no reload failure", sn.name)
		}
	}
	if _, err := edgeClient.Sign(ctx, ski, crypto.SHA256, d[:]); err == nil {
		t.Fatal("after a failed reload, the revoked edge signs again")
	}
	keeperSigns("keeper after a failed reload")
}
