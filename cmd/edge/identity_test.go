package main

import (
	"context"
	"crypto"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"

	"github.com/tkeyless/tkeyless/internal/authority"
	"github.com/tkeyless/tkeyless/internal/pki"
	"github.com/tkeyless/tkeyless/keyless"
)

// authorityBackend is a keyless signer that, like a tkeyless node, verifies each request's
// authority against the cluster CA, and records who asked: the mTLS identity of the connection
// and the identity whose key signed the authority.
type authorityBackend struct {
	keyBackend
	verifier *authority.Verifier

	mu            sync.Mutex
	tlsSerial     string // serial of the connection's client certificate
	authorityName string // name of the identity that signed the authority
}

func (b *authorityBackend) Sign(ctx context.Context, req *keyless.Request) ([]byte, error) {
	claims, err := b.verifier.Verify(req.Authority, authority.Request{Op: byte(req.Op), SKI: req.SKI, Digest: req.Digest})
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.tlsSerial, b.authorityName = req.Identity.SerialNumber.String(), claims.Identity.Name
	b.mu.Unlock()
	return b.keyBackend.Sign(ctx, req)
}

func (b *authorityBackend) last() (serial, name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.tlsSerial, b.authorityName
}

// waitLog waits until the edge's stderr holds n lines containing s, or fails.
func waitLog(t *testing.T, e *edgeProc, s string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(e.stderr.String(), s) < n {
		if time.Now().After(deadline) {
			t.Fatalf("edge did not log %q (%d times) within 10s", s, n)
		}
		select {
		case <-e.exited:
			t.Fatalf("edge exited: %v", e.err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func serialOf(t *testing.T, certPath string) string {
	t.Helper()
	c, err := tls.LoadX509KeyPair(certPath, strings.TrimSuffix(certPath, ".pem")+"-key.pem")
	if err != nil {
		t.Fatal(err)
	}
	return c.Leaf.SerialNumber.String()
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	// Write and rename, as an operator's tooling should: the edge never reads half a file.
	if err := os.WriteFile(to+".tmp", b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(to+".tmp", to); err != nil {
		t.Fatal(err)
	}
}

// TestIdentityReloadOnSIGHUP rotates the edge's keyless identity by SIGHUP: the next full
// handshake reaches the signer over a connection presenting the new certificate, with an
// authority signed by the new key; a corrupt key file then keeps the new identity serving, with
// an error logged and counted.
func TestIdentityReloadOnSIGHUP(t *testing.T) {
	needBinary(t)
	site := newTestSite(t)
	dir := t.TempDir()
	ca, err := pki.InitCA(filepath.Join(dir, "ca"), "identity test CA")
	if err != nil {
		t.Fatal(err)
	}
	caPath := filepath.Join(dir, "ca", "ca.pem")
	signerCert, signerKey, err := ca.IssueIdentity(dir, "signer", pki.RoleNode, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	oldCert, _, err := ca.IssueIdentity(dir, "edge-old", pki.RoleEdge, nil)
	if err != nil {
		t.Fatal(err)
	}
	newCert, _, err := ca.IssueIdentity(dir, "edge-new", pki.RoleEdge, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The files the edge is given; the test rewrites them.
	edgeCert, edgeKey := filepath.Join(dir, "edge.pem"), filepath.Join(dir, "edge-key.pem")
	copyFile(t, oldCert, edgeCert)
	copyFile(t, strings.TrimSuffix(oldCert, ".pem")+"-key.pem", edgeKey)

	stc, err := pki.MutualTLS(caPath, signerCert, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	roots, err := pki.LoadPool(caPath)
	if err != nil {
		t.Fatal(err)
	}
	backend := &authorityBackend{keyBackend: keyBackend{key: site.leafKey}, verifier: &authority.Verifier{Roots: roots}}
	srv, err := keyless.NewServer(keyless.ServerConfig{TLS: stc, Backend: backend, RequestTimeout: 10 * time.Second, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	metricsAddr := freeAddr(t)
	e := startEdge(t, "--cert", site.chainPEM, "--signer", "keyless://"+ln.Addr().String(),
		"--keyless-cert", edgeCert, "--keyless-key", edgeKey, "--keyless-ca", caPath, "--metrics-listen", metricsAddr)
	fullHandshake := func(when string) {
		t.Helper()
		resp, body := get(t, httpClient(site.clientTLS(tls.VersionTLS13), false), "https://"+e.addr+"/")
		if resp.StatusCode != 200 || resp.TLS.DidResume {
			t.Fatalf("%s: GET / = %d %q, resumed %v", when, resp.StatusCode, body, resp.TLS.DidResume)
		}
	}
	expect := func(when, certPath, name string) {
		t.Helper()
		serial, who := backend.last()
		if want := serialOf(t, certPath); serial != want || who != name {
			t.Errorf("%s: signer saw client certificate %s and authority by %q; want %s (%s) and %q", when, serial, who, want, certPath, name)
		}
	}

	fullHandshake("before the rotation")
	expect("before the rotation", oldCert, "edge-old")

	copyFile(t, newCert, edgeCert)
	copyFile(t, strings.TrimSuffix(newCert, ".pem")+"-key.pem", edgeKey)
	e.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, e, "keyless identity reloaded", 1)
	fullHandshake("after the rotation")
	expect("after the rotation", newCert, "edge-new")

	// A corrupt key: refused, logged, counted; the new identity keeps signing.
	if err := os.WriteFile(edgeKey, []byte("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, e, "keyless identity reload refused", 1)
	fullHandshake("after a corrupt key file")
	expect("after a corrupt key file", newCert, "edge-new")
	if !strings.Contains(e.stderr.String(), edgeKey) {
		t.Error("the refusal does not name the bad file")
	}
	// The signer's health comes from a ping sent when the edge starts: wait for it.
	waitMetrics(t, "http://"+metricsAddr+"/metrics",
		`tkeyless_edge_keyless_identity_reloads_total{outcome="ok"} 1`,
		`tkeyless_edge_keyless_identity_reloads_total{outcome="refused"} 1`,
		fmt.Sprintf(`tkeyless_edge_signer_up{signer=%q} 1`, ln.Addr().String()))
}

// gateBackend holds every signature until release is closed, and says when one has arrived.
type gateBackend struct {
	keyBackend
	arrived chan struct{}
	release chan struct{}
}

func (b *gateBackend) Sign(ctx context.Context, req *keyless.Request) ([]byte, error) {
	b.arrived <- struct{}{}
	select {
	case <-b.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return b.keyBackend.Sign(ctx, req)
}

// TestIdentityReloadLetsInFlightFinish reloads the identity while a signature is in flight on the
// old client: it completes, the old client closes after it, and the next signature, even from a
// signer obtained before the reload, goes through the new client. The per-signer
// health comes from the same source: up for the signer, down for an address nobody serves.
func TestIdentityReloadLetsInFlightFinish(t *testing.T) {
	site := newTestSite(t)
	backend := &gateBackend{keyBackend: keyBackend{key: site.leafKey}, arrived: make(chan struct{}, 4), release: make(chan struct{})}
	addr, certPath, keyPath := startSigner(t, site, backend)
	down := freeAddr(t)
	ref, err := parseKeyRef("keyless://" + addr + "," + down)
	if err != nil {
		t.Fatal(err)
	}
	src, err := newKeylessSource(ref, keylessTLS{cert: certPath, key: keyPath, ca: site.caPEM}, 5*time.Second, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()

	signer, err := src.Signer(context.Background(), &site.leafKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	digest := make([]byte, 32)
	done := make(chan error, 1)
	go func() {
		_, err := signer.Sign(nil, digest, crypto.SHA256)
		done <- err
	}()
	<-backend.arrived
	before := src.currentClient()
	if _, err := src.Reload(); err != nil {
		t.Fatal(err)
	}
	if src.currentClient() == before {
		t.Fatal("Reload kept the old client")
	}
	close(backend.release)
	if err := <-done; err != nil {
		t.Fatalf("the signature in flight during the reload failed: %v", err)
	}
	// The old client closed once its last signature returned...
	if err := before.Ping(context.Background(), addr); err == nil {
		t.Error("the replaced client still answers after its last signature returned")
	}
	// ...and a signer obtained before the reload (as the ACME CSR signer is) uses the new one.
	if _, err := signer.Sign(nil, digest, crypto.SHA256); err != nil {
		t.Fatalf("signature after the reload: %v", err)
	}
	<-backend.arrived

	// A bad CA file: refused, naming the file; the current client stays.
	cur := src.currentClient()
	bad := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(bad, []byte("no certificate here"), 0o600)
	src.files.ca = bad
	if _, err := src.Reload(); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("reload with a bad CA: %v, want an error naming %s", err, bad)
	}
	if src.currentClient() != cur {
		t.Error("a refused reload replaced the client")
	}

	m := newEdgeMetrics(nil)
	newSignerWatch(src, ref.endpoints, m, zerolog.Nop()).probe(context.Background())
	if got := gaugeValue(t, m.signerUp.WithLabelValues(addr)); got != 1 {
		t.Errorf("signer_up{%s} = %v, want 1", addr, got)
	}
	if got := gaugeValue(t, m.signerUp.WithLabelValues(down)); got != 0 {
		t.Errorf("signer_up{%s} = %v, want 0", down, got)
	}
	if got := gaugeValue(t, m.signerLastError.WithLabelValues(down)); got < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("signer_last_error_timestamp_seconds{%s} = %v, want about now", down, got)
	}
	if got := gaugeValue(t, m.signerLastError.WithLabelValues(addr)); got != 0 {
		t.Errorf("signer_last_error_timestamp_seconds{%s} = %v, want 0", addr, got)
	}
}

func gaugeValue(t *testing.T, g prometheus.Gauge) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}

// waitMetrics polls a /metrics URL until it shows every one of want, or fails after 10s.
func waitMetrics(t *testing.T, url string, want ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, body := get(t, http.DefaultClient, url)
		missing := ""
		for _, w := range want {
			if !strings.Contains(body, w) {
				missing = w
				break
			}
		}
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not show %s within 10s:\n%s", url, missing, body)
		}
		time.Sleep(20 * time.Millisecond) // polling for a condition, not standing in for one
	}
}
