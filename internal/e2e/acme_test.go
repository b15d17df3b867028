package e2e

import (
	"crypto/ecdsa"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// pebbleVersion is the ACME test server the e2e tests run.
const pebbleVersion = "v2.8.0"

var (
	pebbleOnce sync.Once
	pebblePath string
	pebbleDir  string // its module source: test certificates
	pebbleErr  error
)

// pebble builds Pebble once per test binary, in a throwaway module so its
// dependencies stay out of tkeyless's go.mod.
func pebble(t *testing.T) (bin, src string) {
	t.Helper()
	pebbleOnce.Do(func() {
		dir, err := os.MkdirTemp("", "pebble-build-")
		if err != nil {
			pebbleErr = err
			return
		}
		mod := "module pebblebuild\n\ngo 1.26\n\nrequire github.com/letsencrypt/pebble/v2 " + pebbleVersion + "\n"
		if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte(mod), 0o644); err != nil {
			pebbleErr = err
			return
		}
		env := append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off")
		build := exec.Command("go", "build", "-o", filepath.Join(dir, "pebble"), "github.com/letsencrypt/pebble/v2/cmd/pebble")
		build.Dir, build.Env = dir, env
		if out, err := build.CombinedOutput(); err != nil {
			pebbleErr = fmt.Errorf("build pebble %s: %v\n%s", pebbleVersion, err, out)
			return
		}
		list := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/letsencrypt/pebble/v2")
		list.Dir, list.Env = dir, env
		out, err := list.Output()
		if err != nil {
			pebbleErr = fmt.Errorf("locate pebble source: %v", err)
			return
		}
		pebblePath, pebbleDir = filepath.Join(dir, "pebble"), strings.TrimSpace(string(out))
	})
	if pebbleErr != nil {
		t.Fatal(pebbleErr)
	}
	return pebblePath, pebbleDir
}

// startPebble runs Pebble on 127.0.0.1 with validation switched off (it
// would dial the names' port 80) and returns its directory URL, the PEM of
// the CA that signs its own TLS certificate, and the PEM file of the root
// it issues under.
func startPebble(t *testing.T, dir string) (directory, tlsRoots, issuingRoot string) {
	t.Helper()
	bin, src := pebble(t)
	addrs := freeAddrs(t, 4)
	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress": addrs[0], "managementListenAddress": addrs[1],
		"certificate": filepath.Join(src, "test/certs/localhost/cert.pem"), "privateKey": filepath.Join(src, "test/certs/localhost/key.pem"),
		"httpPort": portNum(addrs[2]), "tlsPort": portNum(addrs[3]), "ocspResponderURL": "", "externalAccountBindingRequired": false,
		// Short-lived certificates: renewal is due at once in a test.
		"profiles": map[string]any{"default": map[string]any{"description": "test", "validityPeriod": 3600}},
	}}
	b, _ := json.Marshal(cfg)
	cfgPath := filepath.Join(dir, "pebble.json")
	os.WriteFile(cfgPath, b, 0o644)
	p := startPath(t, t, "pebble", bin, []string{"PEBBLE_VA_ALWAYS_VALID=1", "PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0"}, "-config", cfgPath)
	waitListening(t, p, addrs[0], addrs[1])
	tlsRoots = filepath.Join(src, "test/certs/pebble.minica.pem")
	// The issuing root, from the management interface.
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: rootsFrom(t, tlsRoots), ServerName: "localhost"}}}
	resp, err := client.Get("https://" + addrs[1] + "/roots/0")
	if err != nil {
		t.Fatalf("pebble root: %v", err)
	}
	defer resp.Body.Close()
	root, _ := io.ReadAll(resp.Body)
	issuingRoot = filepath.Join(dir, "pebble-root.pem")
	os.WriteFile(issuingRoot, root, 0o644)
	return "https://localhost:" + portOf(addrs[0]) + "/dir", tlsRoots, issuingRoot
}

func portOf(addr string) string { return addr[strings.LastIndex(addr, ":")+1:] }

func portNum(addr string) int {
	n, _ := strconv.Atoi(portOf(addr))
	return n
}

// TestACME obtains a certificate for the cluster's threshold key from a
// real ACME server (Pebble), the CSR signed by the cluster; serves it to
// Go, curl, openssl and (when installed) Chromium; and renews it on an
// operator's request (request file and SIGHUP), rate-limited, without a
// restart.
func TestACME(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	c := startCluster(t, 1, 2)
	directory, tlsRoots, issuingRoot := startPebble(t, c.dir)
	httpPort := portOf(freeAddrs(t, 1)[0])
	storage := filepath.Join(c.dir, "acme")
	acmeArgs := []string{"--acme-domain", "localhost", "--acme-ca", directory, "--acme-ca-roots", tlsRoots,
		"--acme-storage", storage, "--acme-http-port", httpPort, "--public-key", c.pubPath}
	e := startEdge(t, c, "", staticSite(t), acmeArgs...)
	roots := rootsFrom(t, issuingRoot)
	var serial string
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		st := get(t, e.addr, roots, v, nil)
		leaf := st.PeerCertificates[0]
		if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(c.publicKey(t)) {
			t.Fatal("the ACME certificate is not for the cluster key")
		}
		if !strings.Contains(leaf.Issuer.CommonName, "Pebble") {
			t.Fatalf("issuer %q, want Pebble's", leaf.Issuer)
		}
		serial = leaf.SerialNumber.String()
	}
	t.Run("curl", func(t *testing.T) { curlBoth(t, e.addr, issuingRoot) })
	t.Run("openssl", func(t *testing.T) { opensslBoth(t, e.addr, issuingRoot) })
	t.Run("chromium", func(t *testing.T) { chromiumLoads(t, e.addr, issuingRoot) })

	// Forced renewal, no restart: the operator's request file and SIGHUP; new handshakes get a
	// new certificate. A SIGHUP alone does nothing, the certificate is not due.
	hup := func() {
		t.Helper()
		if err := e.proc.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	hup()
	waitFor(t, 10*time.Second, func() bool { return strings.Contains(e.proc.Output(), "the ACME certificate is not due for renewal") })
	renewRequest := filepath.Join(storage, "renew")
	if err := os.WriteFile(renewRequest, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	hup()
	waitFor(t, 60*time.Second, func() bool { return strings.Count(e.proc.Output(), "ACME certificate obtained") >= 2 })
	if _, err := os.Stat(renewRequest); !os.IsNotExist(err) {
		t.Errorf("the renewal request file is still there after the renewal: %v", err)
	}
	// The new chain is swapped in just after that line is logged.
	var st tls.ConnectionState
	waitFor(t, 10*time.Second, func() bool {
		st = get(t, e.addr, roots, tls.VersionTLS13, nil)
		return st.PeerCertificates[0].SerialNumber.String() != serial
	})
	// A second request within the interval is refused and logged; nothing is ordered.
	if err := os.WriteFile(renewRequest, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	hup()
	waitFor(t, 10*time.Second, func() bool { return strings.Contains(e.proc.Output(), "ACME renewal refused by the rate limit") })
	if n := strings.Count(e.proc.Output(), "ACME certificate obtained"); n != 2 {
		t.Fatalf("%d certificates obtained after a refused request, want 2", n)
	}
	// A restart serves the stored certificate instead of ordering again.
	renewed := st.PeerCertificates[0].SerialNumber.String()
	e.proc.stop()
	e = startEdge(t, c, "", staticSite(t), acmeArgs...)
	if !strings.Contains(e.proc.Output(), "ACME certificate loaded from storage") || strings.Contains(e.proc.Output(), "ACME certificate obtained") {
		t.Fatalf("the restarted edge did not reuse its stored certificate:\n%s", tail(e.proc.Output(), 2000))
	}
	if st := get(t, e.addr, roots, tls.VersionTLS12, nil); st.PeerCertificates[0].SerialNumber.String() != renewed {
		t.Fatal("the restarted edge serves another certificate than the stored one")
	}
}

// chromiumLoads loads the edge's page in headless Chromium with root
// trusted through an NSS database, as a user's browser would trust a CA.
func chromiumLoads(t *testing.T, addr, root string) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium not installed (make tools installs it)")
	}
	certutil, err := exec.LookPath("certutil")
	if err != nil {
		t.Skip("certutil not installed (libnss3-tools; make tools installs it)")
	}
	home := t.TempDir()
	nss := filepath.Join(home, ".pki", "nssdb")
	os.MkdirAll(nss, 0o700)
	if out, err := exec.Command(certutil, "-d", "sql:"+nss, "-N", "--empty-password").CombinedOutput(); err != nil {
		t.Fatalf("certutil -N: %v\n%s", err, out)
	}
	if out, err := exec.Command(certutil, "-d", "sql:"+nss, "-A", "-t", "C,,", "-n", "e2e-root", "-i", root).CombinedOutput(); err != nil {
		t.Fatalf("certutil -A: %v\n%s", err, out)
	}
	cmd := exec.Command(chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--user-data-dir="+filepath.Join(home, "profile"),
		"--host-resolver-rules=MAP localhost 127.0.0.1", "--dump-dom", "https://localhost:"+portOf(addr)+"/")
	cmd.Env = append(os.Environ(), "HOME="+home)
	done := make(chan struct{})
	var out []byte
	go func() { out, err = cmd.Output(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatal("chromium did not finish within 60 s")
	}
	if err != nil || !strings.Contains(string(out), strings.TrimSpace(pageBody)) {
		t.Fatalf("chromium: %v\n%s", err, out)
	}
}
