package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// edgeBinary is built once per test run by TestMain; tests that run it are skipped with -short
// (unit tests only, no processes).
var edgeBinary string

func TestMain(m *testing.M) {
	flag.Parse()
	code := func() int {
		if testing.Short() {
			return m.Run()
		}
		dir, err := os.MkdirTemp("", "edge-test-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		edgeBinary = filepath.Join(dir, "edge")
		out, err := exec.Command("go", "build", "-o", edgeBinary, ".").CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "go build ./cmd/edge: %v\n%s", err, out)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

func needBinary(t *testing.T) {
	if edgeBinary == "" {
		t.Skip("-short: no processes")
	}
}

// syncBuffer collects a process's stderr while tests read it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// edgeProc is a running `edge serve`.
type edgeProc struct {
	addr   string
	cmd    *exec.Cmd
	stderr *syncBuffer
	exited chan struct{}
	err    error // valid after exited is closed
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startEdge runs edge serve on a free 127.0.0.1 port with args added, and returns once the port
// accepts TCP connections.
func startEdge(t *testing.T, args ...string) *edgeProc {
	t.Helper()
	needBinary(t)
	p := &edgeProc{addr: freeAddr(t), stderr: &syncBuffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(edgeBinary, append([]string{"serve", "--listen", p.addr, "--log-level", "debug"}, args...)...)
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("edge stderr:\n%s", p.stderr)
		}
	})

	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", p.addr, time.Second)
		if err == nil {
			c.Close()
			return p
		}
		select {
		case <-p.exited:
			t.Fatalf("edge exited before listening: %v\n%s", p.err, p.stderr)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("edge did not listen on %s within 15s\n%s", p.addr, p.stderr)
		}
	}
}

// get fetches url with a fresh client for the TLS version; h2 selects HTTP/2 or HTTP/1.1.
func get(t *testing.T, client *http.Client, url string) (*http.Response, string) {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

func httpClient(tc *tls.Config, h2 bool) *http.Client {
	tr := &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: h2, DisableKeepAlives: true}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func TestServeFileKey(t *testing.T) {
	site := newTestSite(t)
	www := t.TempDir()
	if err := os.WriteFile(filepath.Join(www, "index.html"), []byte("hello from tkeyless\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e := startEdge(t, "--cert", site.chainPEM, "--signer", "file://"+site.keyPEM, "--static", www)
	base := "https://" + e.addr

	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		for _, h2 := range []bool{true, false} {
			t.Run(fmt.Sprintf("go %s h2=%v", tls.VersionName(v), h2), func(t *testing.T) {
				resp, body := get(t, httpClient(site.clientTLS(v), h2), base+"/")
				if resp.StatusCode != 200 || body != "hello from tkeyless\n" {
					t.Fatalf("GET / = %d %q", resp.StatusCode, body)
				}
				if resp.TLS.Version != v {
					t.Errorf("TLS version %s", tls.VersionName(resp.TLS.Version))
				}
				if want := map[bool]int{true: 2, false: 1}[h2]; resp.ProtoMajor != want {
					t.Errorf("protocol %s, want HTTP/%d", resp.Proto, want)
				}
			})
		}
	}

	t.Run("healthz", func(t *testing.T) {
		resp, body := get(t, httpClient(site.clientTLS(tls.VersionTLS13), true), base+"/healthz")
		if resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("GET /healthz = %d %q", resp.StatusCode, body)
		}
	})

	t.Run("resumption", func(t *testing.T) {
		for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
			tc := site.clientTLS(v)
			tc.ClientSessionCache = tls.NewLRUClientSessionCache(4)
			client := httpClient(tc, false) // one connection per request
			get(t, client, base+"/")
			// Reading the response body also made a TLS 1.3 client store its ticket.
			resp, _ := get(t, client, base+"/")
			if !resp.TLS.DidResume {
				t.Errorf("%s: second connection did not resume", tls.VersionName(v))
			}
		}
	})

	t.Run("curl", func(t *testing.T) {
		curl, err := exec.LookPath("curl")
		if err != nil {
			t.Skip("curl not installed")
		}
		for _, v := range []string{"1.2", "1.3"} {
			out, err := exec.Command(curl, "-sS", "--fail", "--max-time", "10", "--cacert", site.caPEM,
				"--tlsv"+v, "--tls-max", v, "-w", "\n%{http_version}", base+"/").CombinedOutput()
			if err != nil {
				t.Fatalf("curl TLS %s: %v\n%s", v, err, out)
			}
			if !strings.HasPrefix(string(out), "hello from tkeyless\n") {
				t.Errorf("curl TLS %s: %q", v, out)
			}
		}
	})

	t.Run("handshake failure logged", func(t *testing.T) {
		// A TLS 1.2 client that only speaks RSA suites cannot meet an ECDSA-only edge.
		tc := site.clientTLS(tls.VersionTLS12)
		tc.ServerName = "localhost"
		tc.CipherSuites = []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}
		if c, err := tls.Dial("tcp", e.addr, tc); err == nil {
			c.Close()
			t.Fatal("handshake succeeded")
		}
		deadline := time.Now().Add(5 * time.Second)
		for !strings.Contains(e.stderr.String(), `"level":"warn","remote":"127.0.0.1:`) ||
			!strings.Contains(e.stderr.String(), `"sni":"localhost","err":"tls: no cipher suite supported by both client and server`) {
			if time.Now().After(deadline) {
				t.Fatal("no warn line with remote, sni and err for the failed handshake")
			}
			time.Sleep(10 * time.Millisecond)
		}
	})

	t.Run("logs", func(t *testing.T) {
		var ready map[string]any
		for line := range strings.SplitSeq(e.stderr.String(), "\n") {
			var m map[string]any
			if line == "" {
				continue
			}
			if err := json.Unmarshal([]byte(line), &m); err != nil {
				t.Fatalf("log line is not JSON: %q", line)
			}
			if m[zerolog.MessageFieldName] == "edge ready" {
				ready = m
			}
		}
		if ready == nil || ready["addr"] != e.addr || ready["key"] == "" {
			t.Errorf("edge ready line = %v", ready)
		}
		if strings.Contains(e.stderr.String(), "PRIVATE KEY") {
			t.Error("key material in the logs")
		}
	})

	t.Run("graceful shutdown", func(t *testing.T) {
		if err := e.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case <-e.exited:
		case <-time.After(15 * time.Second):
			t.Fatal("edge did not exit within 15s of SIGTERM")
		}
		if e.err != nil {
			t.Errorf("edge exit: %v", e.err)
		}
		if !strings.Contains(e.stderr.String(), `"`+zerolog.MessageFieldName+`":"edge stopped"`) {
			t.Errorf("no edge stopped line")
		}
	})
}

func TestServeUpstream(t *testing.T) {
	site := newTestSite(t)
	type seen struct{ xff, proto, host, path string }
	got := make(chan seen, 1)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- seen{r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Forwarded-Proto"), r.Header.Get("X-Forwarded-Host"), r.URL.Path}
		io.WriteString(w, "from upstream")
	}))
	defer upstream.Close()

	e := startEdge(t, "--cert", site.chainPEM, "--signer", "file://"+site.keyPEM, "--upstream", upstream.URL+"/app")
	req, _ := http.NewRequestWithContext(context.Background(), "GET", "https://"+e.addr+"/x", nil)
	req.Header.Set("X-Forwarded-For", "6.6.6.6") // a client's claim; must not reach upstream
	resp, err := httpClient(site.clientTLS(tls.VersionTLS13), true).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "from upstream" {
		t.Fatalf("body %q", body)
	}
	s := <-got
	if s.xff != "127.0.0.1" || s.proto != "https" || s.host != e.addr || s.path != "/app/x" {
		t.Errorf("upstream saw %+v", s)
	}
}

func TestServeRefusesBadInput(t *testing.T) {
	needBinary(t)
	site := newTestSite(t)
	other := newTestSite(t)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"key for another certificate", []string{"--cert", site.chainPEM, "--signer", "file://" + other.keyPEM},
			"certificate public key does not match cluster key"},
		{"key where the certificate belongs", []string{"--cert", site.keyPEM, "--signer", "file://" + site.keyPEM},
			"holds a private key"},
		{"no signer", []string{"--cert", site.chainPEM}, "--signer: give the key reference"},
		{"bad scheme", []string{"--cert", site.chainPEM, "--signer", "pkcs11:foo"}, "want keyless://"},
		{"keyless without identity", []string{"--cert", site.chainPEM, "--signer", "keyless://127.0.0.1:1"}, "--keyless-cert and --keyless-key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(edgeBinary, append([]string{"serve", "--listen", "127.0.0.1:0"}, tt.args...)...)
			out, err := cmd.CombinedOutput()
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
				t.Fatalf("exit: %v\n%s", err, out)
			}
			if !strings.Contains(string(out), tt.want) {
				t.Errorf("output %q\nwant it to contain %q", out, tt.want)
			}
		})
	}
}
