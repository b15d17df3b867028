package e2e

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// handshake makes one TLS connection to addr and returns its state.
func handshake(addr string, roots *x509.CertPool, version uint16, cache tls.ClientSessionCache) (tls.ConnectionState, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{RootCAs: roots, ServerName: "localhost",
		MinVersion: version, MaxVersion: version, ClientSessionCache: cache})
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer c.Close()
	// TLS 1.3 tickets arrive after the handshake: read until the edge
	// answers, so the ticket is in the cache.
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")); err != nil {
		return tls.ConnectionState{}, err
	}
	buf := make([]byte, 1)
	if _, err := c.Read(buf); err != nil {
		return tls.ConnectionState{}, err
	}
	return c.ConnectionState(), nil
}

// TestFleetTickets runs two edges with one ticket secret: a session from
// edge A resumes on edge B, without a signature; once the ticket lifetime
// has passed it is refused and a full handshake follows.
func TestFleetTickets(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	c := startCluster(t, 1, 2)
	certPath, webCA := c.siteCert(t)
	roots := rootsFrom(t, webCA)
	secret := filepath.Join(c.dir, "ticket.key")
	if err := os.WriteFile(secret, bytes.Repeat([]byte("fleet secret "), 4), 0o600); err != nil {
		t.Fatal(err)
	}
	fleet := []string{"--ticket-secret", secret, "--ticket-rotation", "1s", "--ticket-lifetime", "2s"}
	a := startEdge(t, c, certPath, staticSite(t), fleet...)
	b := startEdge(t, c, certPath, staticSite(t), fleet...)
	other := startEdge(t, c, certPath, staticSite(t)) // no shared secret
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(v), func(t *testing.T) {
			cache := tls.NewLRUClientSessionCache(4)
			st, err := handshake(a.addr, roots, v, cache)
			if err != nil || st.DidResume {
				t.Fatalf("first handshake on A: %v (resumed %v)", err, st.DidResume)
			}
			issued := time.Now()
			signs := c.auditCount()
			if st, err := handshake(b.addr, roots, v, cache); err != nil || !st.DidResume {
				t.Fatalf("edge B did not resume edge A's session: %v", err)
			}
			if n := c.auditCount(); n != signs {
				t.Fatalf("the resumed handshake on B cost %d signatures", n-signs)
			}
			if st, err := handshake(other.addr, roots, v, tls.NewLRUClientSessionCache(4)); err != nil || st.DidResume {
				t.Fatalf("an edge without the secret: %v (resumed %v)", err, st.DidResume)
			}
			signs = c.auditCount()
			// Past the lifetime (2 s) and two rotations, the ticket is refused.
			time.Sleep(time.Until(issued.Add(3 * time.Second)))
			st, err = handshake(b.addr, roots, v, cache)
			if err != nil {
				t.Fatalf("handshake after expiry: %v", err)
			}
			if st.DidResume {
				t.Fatal("edge B resumed a session older than the ticket lifetime")
			}
			if n := c.auditCount(); n != signs+1 {
				t.Fatalf("the full handshake after expiry made %d signatures, want 1", n-signs)
			}
		})
	}
}

// TestSignerOutage stops every signer: new full handshakes fail within the
// edge's signing deadline, with the reason logged, while sessions resume.
func TestSignerOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	c := startCluster(t, 1, 2)
	certPath, webCA := c.siteCert(t)
	roots := rootsFrom(t, webCA)
	metricsAddr := freeAddrs(t, 1)[0]
	e := startEdge(t, c, certPath, staticSite(t), "--sign-timeout", "2s", "--metrics-listen", metricsAddr)
	caches := map[uint16]tls.ClientSessionCache{}
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		caches[v] = tls.NewLRUClientSessionCache(4)
		if _, err := handshake(e.addr, roots, v, caches[v]); err != nil {
			t.Fatal(err)
		}
	}
	for _, sn := range c.nodes {
		sn.proc.stop()
	}
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		start := time.Now()
		_, err := handshake(e.addr, roots, v, nil)
		took := time.Since(start)
		if err == nil {
			t.Fatalf("%s: a full handshake succeeded with every signer down", tls.VersionName(v))
		}
		if took > 4*time.Second {
			t.Fatalf("%s: the failing handshake took %v; the deadline is 2 s", tls.VersionName(v), took)
		}
		t.Logf("%s full handshake failed in %v: %v", tls.VersionName(v), took.Round(time.Millisecond), err)
		st, err := handshake(e.addr, roots, v, caches[v])
		if err != nil || !st.DidResume {
			t.Fatalf("%s: resumption with every signer down: %v (resumed %v)", tls.VersionName(v), err, st.DidResume)
		}
	}
	if out := e.proc.Output(); !strings.Contains(out, "sign") || !strings.Contains(out, "error") {
		t.Fatalf("the edge logged no reason for the failed handshakes:\n%s", tail(out, 3000))
	}
	_, metrics := httpGet(t, "http://"+metricsAddr+"/metrics")
	for _, want := range []string{
		`tkeyless_edge_handshakes_total{kind="full",version="TLS 1.3"} 1`,
		`tkeyless_edge_handshakes_total{kind="full",version="TLS 1.2"} 1`,
		`tkeyless_edge_handshakes_total{kind="resumed",version="TLS 1.3"} 1`,
		`tkeyless_edge_handshakes_total{kind="resumed",version="TLS 1.2"} 1`,
		`tkeyless_edge_signer_errors_total 2`,
		`tkeyless_edge_sign_duration_seconds_count{outcome="ok"} 2`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("edge /metrics lacks %s", want)
		}
	}
	if code, _ := httpGet(t, "http://"+metricsAddr+"/healthz"); code != 200 {
		t.Errorf("edge /healthz = %d after two failures (it turns 503 after five)", code)
	}
}

// TestCertificateReload replaces the edge's certificate file and sends
// SIGHUP: new handshakes get the new certificate, an open connection keeps
// working, and a broken file is refused with the old chain kept.
func TestCertificateReload(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	c := startCluster(t, 1, 2)
	certPath, webCA := c.siteCert(t)
	roots := rootsFrom(t, webCA)
	e := startEdge(t, c, certPath, staticSite(t))
	serial := func() string {
		st, err := handshake(e.addr, roots, tls.VersionTLS13, nil)
		if err != nil {
			t.Fatal(err)
		}
		return st.PeerCertificates[0].SerialNumber.String()
	}
	before := serial()
	open, err := tls.Dial("tcp", e.addr, &tls.Config{RootCAs: roots, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()

	// The same key, a new certificate from the same CA.
	run(t, "signer", "pki", "sign-csr", "--dir", filepath.Join(c.dir, "webca"), "--csr", filepath.Join(c.dir, "site.csr"), "--out", certPath)
	if err := e.proc.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() bool { return strings.Contains(e.proc.Output(), "certificates reloaded") })
	if after := serial(); after == before {
		t.Fatal("still serving the old certificate after SIGHUP")
	}
	if _, err := open.Write([]byte("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")); err != nil {
		t.Fatalf("the connection opened before the reload broke: %v", err)
	}
	buf := make([]byte, 12)
	if _, err := io.ReadFull(open, buf); err != nil || string(buf) != "HTTP/1.1 200" {
		t.Fatalf("the connection opened before the reload: %q, %v", buf, err)
	}

	current := serial()
	if err := os.WriteFile(certPath, []byte("-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.proc.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, 10*time.Second, func() bool { return strings.Contains(e.proc.Output(), "certificate reload refused") })
	if serial() != current {
		t.Fatal("a broken certificate file replaced the served chain")
	}
}
