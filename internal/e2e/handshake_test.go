package e2e

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const pageBody = "tkeyless e2e page"

func staticSite(t *testing.T) string {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "index.html"), []byte(pageBody), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func rootsFrom(t *testing.T, path string) *x509.CertPool {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatal("no CA in", path)
	}
	return pool
}

// get fetches / from the edge with a given TLS version and session cache,
// and returns the connection state.
func get(t *testing.T, addr string, roots *x509.CertPool, version uint16, cache tls.ClientSessionCache) tls.ConnectionState {
	t.Helper()
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{
			RootCAs: roots, ServerName: "localhost", MinVersion: version, MaxVersion: version,
			ClientSessionCache: cache,
		},
		DialContext:       (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	resp, err := client.Get("https://" + addr + "/")
	if err != nil {
		t.Fatalf("GET over %s: %v", tls.VersionName(version), err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != pageBody {
		t.Fatalf("GET over %s: %d %q", tls.VersionName(version), resp.StatusCode, body)
	}
	if resp.TLS.Version != version {
		t.Fatalf("negotiated %s, want %s", tls.VersionName(resp.TLS.Version), tls.VersionName(version))
	}
	return *resp.TLS
}

// TestHandshakes is the spine, end to end, for every supported (t, n): DKG
// across real signer processes, a CSR the cluster signs, an edge that
// serves HTTPS with it, full handshakes over TLS 1.2 and 1.3 from three
// different clients, and resumption that costs the cluster nothing.
func TestHandshakes(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	for _, tn := range []struct{ t, n int }{{1, 2}, {1, 3}, {2, 3}} {
		t.Run(fmt.Sprintf("t%d-n%d", tn.t, tn.n), func(t *testing.T) {
			c := startCluster(t, tn.t, tn.n)
			certPath, webCA := c.siteCert(t)
			e := startEdge(t, c, certPath, staticSite(t))
			roots := rootsFrom(t, webCA)

			for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
				t.Run("go-"+tls.VersionName(v), func(t *testing.T) {
					before := c.auditCount()
					st := get(t, e.addr, roots, v, nil)
					if st.DidResume {
						t.Fatal("first connection resumed")
					}
					leaf := st.PeerCertificates[0]
					if pub, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(c.publicKey(t)) {
						t.Fatal("leaf certificate key is not the DKG public key")
					}
					if got := c.auditCount() - before; got != 1 {
						t.Fatalf("cluster recorded %d signing requests for one full handshake, want 1", got)
					}
				})
				t.Run("resume-"+tls.VersionName(v), func(t *testing.T) {
					cache := tls.NewLRUClientSessionCache(4)
					get(t, e.addr, roots, v, cache)
					before := c.auditCount()
					st := get(t, e.addr, roots, v, cache)
					if !st.DidResume {
						t.Fatal("second connection did not resume")
					}
					if got := c.auditCount() - before; got != 0 {
						t.Fatalf("resumed handshake caused %d signing requests, want 0", got)
					}
				})
			}
			t.Run("curl", func(t *testing.T) { curlBoth(t, e.addr, webCA) })
			t.Run("openssl", func(t *testing.T) { opensslBoth(t, e.addr, webCA) })
		})
	}
}

func curlBoth(t *testing.T, addr, caPath string) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl not installed (make tools installs it)")
	}
	_, port, _ := net.SplitHostPort(addr)
	for _, v := range [][]string{{"--tlsv1.2", "--tls-max", "1.2"}, {"--tlsv1.3", "--tls-max", "1.3"}} {
		args := append([]string{"-sS", "--max-time", "30", "--cacert", caPath, "--resolve", "localhost:" + port + ":127.0.0.1"}, v...)
		args = append(args, "https://localhost:"+port+"/")
		out, err := exec.Command("curl", args...).CombinedOutput()
		if err != nil || string(out) != pageBody {
			t.Fatalf("curl %v: %v\n%s", v, err, out)
		}
	}
}

func opensslBoth(t *testing.T, addr, caPath string) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed (make tools installs it)")
	}
	for _, v := range []struct{ flag, proto string }{{"-tls1_2", "TLSv1.2"}, {"-tls1_3", "TLSv1.3"}} {
		cmd := exec.Command("openssl", "s_client", "-connect", addr, "-servername", "localhost", v.flag, "-CAfile", caPath, "-verify_return_error", "-brief")
		cmd.Stdin = strings.NewReader("")
		out, err := cmd.CombinedOutput()
		s := string(out)
		if err != nil || !strings.Contains(s, "Protocol version: "+v.proto) || !strings.Contains(s, "Verification: OK") {
			t.Fatalf("openssl s_client %s: %v\n%s", v.flag, err, s)
		}
	}
}
