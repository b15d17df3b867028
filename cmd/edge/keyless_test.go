package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tkeyless/tkeyless/keyless"
	"github.com/tkeyless/tkeyless/tlsglue"
)

// keyBackend is a keyless signer holding the site key in memory, as a stock gokeyless server
// would; with block set it never answers, like a signer whose quorum is gone.
type keyBackend struct {
	key   *ecdsa.PrivateKey
	block atomic.Bool
	signs atomic.Int64
}

func (b *keyBackend) Sign(ctx context.Context, req *keyless.Request) ([]byte, error) {
	if b.block.Load() {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	b.signs.Add(1)
	return b.key.Sign(rand.Reader, req.Digest, req.Hash)
}

// startSigner runs a keyless endpoint on 127.0.0.1 with a server certificate from the site's
// test CA, accepting client certificates from it; it returns its address and the files of an
// edge identity.
func startSigner(t *testing.T, site testSite, backend keyless.Backend) (addr, edgeCert, edgeKey string) {
	t.Helper()
	srvCert, srvKey := issue(t, "signer", site.root, site.rootKey, false)
	cliCert, cliKey := issue(t, "edge", site.root, site.rootKey, false)
	srv, err := keyless.NewServer(keyless.ServerConfig{
		TLS: &tls.Config{
			Certificates: []tls.Certificate{{Certificate: [][]byte{srvCert.Raw}, PrivateKey: srvKey}},
			ClientCAs:    site.pool,
			ClientAuth:   tls.RequireAndVerifyClientCert,
		},
		Backend:        backend,
		RequestTimeout: 10 * time.Second,
		Logger:         zerolog.Nop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	dir := t.TempDir()
	edgeCert = writePEM(t, dir, "edge.pem", "CERTIFICATE", cliCert.Raw)
	der, err := x509.MarshalPKCS8PrivateKey(cliKey)
	if err != nil {
		t.Fatal(err)
	}
	edgeKey = writePEM(t, dir, "edge-key.pem", "PRIVATE KEY", der)
	return ln.Addr().String(), edgeCert, edgeKey
}

// TestServeKeyless runs the edge binary against a keyless endpoint: handshakes sign remotely
// once, resume without signing, fail at --sign-timeout when the signer stops answering, and
// turn /healthz to 503 after five failures in a row: status only on the HTTPS port, the reason
// (signer addresses, key) only on --metrics-listen.
func TestServeKeyless(t *testing.T) {
	site := newTestSite(t)
	backend := &keyBackend{key: site.leafKey}
	signer, edgeCert, edgeKey := startSigner(t, site, backend)
	down := freeAddr(t) // nothing listens there: the edge must fail over
	metricsAddr := freeAddr(t)

	e := startEdge(t, "--cert", site.chainPEM, "--signer", "keyless://"+down+","+signer,
		"--keyless-cert", edgeCert, "--keyless-key", edgeKey, "--keyless-ca", site.caPEM, "--sign-timeout", "1s",
		"--metrics-listen", metricsAddr)
	base := "https://" + e.addr
	ski, err := tlsglue.SKI(&site.leafKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}

	// Keeps a session across the signer outage, to ask /healthz without a signature.
	watcherTLS := site.clientTLS(tls.VersionTLS13)
	watcherTLS.ClientSessionCache = tls.NewLRUClientSessionCache(1)
	watcher := httpClient(watcherTLS, false)

	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		tc := site.clientTLS(v)
		tc.ClientSessionCache = tls.NewLRUClientSessionCache(4)
		client := httpClient(tc, false) // a connection per request
		before := backend.signs.Load()
		resp, body := get(t, client, base+"/")
		if resp.StatusCode != 200 || body != "tkeyless edge\n" || resp.TLS.Version != v || resp.TLS.DidResume {
			t.Fatalf("%s: GET / = %d %q, resumed %v", tls.VersionName(v), resp.StatusCode, body, resp.TLS.DidResume)
		}
		if n := backend.signs.Load() - before; n != 1 {
			t.Errorf("%s: %d remote signatures for one handshake", tls.VersionName(v), n)
		}
		resp, _ = get(t, client, base+"/")
		if !resp.TLS.DidResume || backend.signs.Load()-before != 1 {
			t.Errorf("%s: second connection resumed %v, remote signatures %d", tls.VersionName(v), resp.TLS.DidResume, backend.signs.Load()-before)
		}
	}
	if resp, body := get(t, watcher, base+"/healthz"); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("healthz = %d %q", resp.StatusCode, body)
	}

	backend.block.Store(true)
	for range failuresBeforeUnhealthy {
		start := time.Now()
		if _, err := httpClient(site.clientTLS(tls.VersionTLS13), false).Get(base + "/"); err == nil {
			t.Fatal("handshake succeeded while the signer does not answer")
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("handshake failed after %s; --sign-timeout is 1s", d)
		}
	}
	resp, body := get(t, watcher, base+"/healthz")
	if !resp.TLS.DidResume {
		t.Fatal("watcher did not resume; it cannot see /healthz during the outage")
	}
	if resp.StatusCode != http.StatusServiceUnavailable || body != "cannot sign" {
		t.Errorf("public healthz during the outage = %d %q, want 503 \"cannot sign\"", resp.StatusCode, body)
	}
	for _, secret := range []string{signer, down, ski, "127.0.0.1"} {
		if strings.Contains(body, secret) {
			t.Errorf("public healthz body %q shows %s", body, secret)
		}
	}
	resp, body = get(t, http.DefaultClient, "http://"+metricsAddr+"/healthz")
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "the last 5 handshake signatures failed") || !strings.Contains(body, ski) {
		t.Errorf("metrics healthz during the outage = %d %q, want 503 with the last error", resp.StatusCode, body)
	}
	if !strings.Contains(e.stderr.String(), `"level":"warn","remote":"127.0.0.1:`) {
		t.Error("no warn line for the failed handshakes")
	}

	backend.block.Store(false)
	get(t, httpClient(site.clientTLS(tls.VersionTLS13), false), base+"/")
	if resp, _ := get(t, watcher, base+"/healthz"); resp.StatusCode != 200 {
		t.Errorf("healthz after recovery = %d", resp.StatusCode)
	}
}
