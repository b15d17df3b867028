package main

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/pflag"

	"github.com/tkeyless/tkeyless/tlsglue"
)

func TestParseKeyRef(t *testing.T) {
	tests := []struct {
		in   string
		want string // fmt of the keyRef, or "error: substring"
	}{
		{"keyless://a:2407,b:2408", "keyless [a:2407 b:2408]  "},
		{"keyless://a,b:1/", "keyless [a:2407 b:1]  "},
		{"keyless://[::1]:7201,127.0.0.1:7202", "keyless [[::1]:7201 127.0.0.1:7202]  "},
		{"keyless://a:1/?ski=ABCDEF", "keyless [a:1] ABCDEF "},
		{"file:///etc/key.pem", "file []  /etc/key.pem"},
		{"file://localhost/etc/key.pem", "file []  /etc/key.pem"},
		{"file:key.pem", "file []  key.pem"},
		{"file://./key.pem", "file []  ./key.pem"},
		{"keyless://", "error: no signer endpoints"},
		{"keyless://a:1?foo=1", `error: unknown parameter "foo"`},
		{"https://a", `error: unknown scheme "https"`},
		{"/etc/key.pem", "error: want keyless://"},
		{"file://", "error: no key file path"},
	}
	for _, tt := range tests {
		ref, err := parseKeyRef(tt.in)
		got := fmt.Sprintf("%s %v %s %s", ref.scheme, ref.endpoints, ref.ski, ref.path)
		if err != nil {
			got = "error: " + err.Error()
			if strings.HasPrefix(tt.want, "error: ") && strings.Contains(got, strings.TrimPrefix(tt.want, "error: ")) {
				continue
			}
		}
		if got != tt.want {
			t.Errorf("parseKeyRef(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

func TestConfigFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "edge.yaml")
	os.WriteFile(path, []byte(`
listen: 0.0.0.0:9443
cert: [site.pem, /abs/inter.pem]
signer: keyless://a:1,b:2
sign-timeout: 2s
static: www
log-format: console
`), 0o600)

	cmd := rootCmd()
	serve, _, err := cmd.Find([]string{"serve"})
	if err != nil {
		t.Fatal(err)
	}
	// What cobra does before RunE: merge the persistent flags and parse the command line.
	if err := serve.ParseFlags([]string{"--listen", "127.0.0.1:1", "--log-level", "warn"}); err != nil {
		t.Fatal(err)
	}
	if err := applyConfigFile(serve.Flags(), path); err != nil {
		t.Fatal(err)
	}
	get := func(name string) string { return serve.Flags().Lookup(name).Value.String() }
	for name, want := range map[string]string{
		"listen":       "127.0.0.1:1", // the command line wins
		"cert":         fmt.Sprintf("[%s,/abs/inter.pem]", filepath.Join(dir, "site.pem")),
		"signer":       "keyless://a:1,b:2",
		"sign-timeout": "2s",
		"static":       filepath.Join(dir, "www"),
		"log-format":   "console",
		"log-level":    "warn",
	} {
		if got := get(name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}

	os.WriteFile(path, []byte("listen: x\nlistne: y\n"), 0o600)
	if err := applyConfigFile(rootServeFlags(t), path); err == nil || !strings.Contains(err.Error(), `unknown key "listne"`) {
		t.Errorf("unknown key: %v", err)
	}
	os.WriteFile(path, []byte("cert: {a: b}\n"), 0o600)
	if err := applyConfigFile(rootServeFlags(t), path); err == nil || !strings.Contains(err.Error(), "cert: want a value or a list") {
		t.Errorf("map value: %v", err)
	}
	os.WriteFile(path, []byte(""), 0o600)
	if err := applyConfigFile(rootServeFlags(t), path); err != nil {
		t.Errorf("empty file: %v", err)
	}
}

// rootServeFlags returns the flags of a fresh edge serve, as cobra has them in RunE.
func rootServeFlags(t *testing.T) *pflag.FlagSet {
	t.Helper()
	serve, _, err := rootCmd().Find([]string{"serve"})
	if err != nil {
		t.Fatal(err)
	}
	if err := serve.ParseFlags(nil); err != nil {
		t.Fatal(err)
	}
	return serve.Flags()
}

func TestExampleConfig(t *testing.T) {
	if err := applyConfigFile(rootServeFlags(t), "../../examples/edge.yaml"); err != nil {
		t.Fatal(err)
	}
}

func TestHandshakeLog(t *testing.T) {
	var buf bytes.Buffer
	h := &handshakeLog{log: zerolog.New(&buf).Level(zerolog.InfoLevel)}
	h.sni.Store("10.0.0.1:5555", "www.example.com")
	fmt.Fprintf(h, "http: TLS handshake error from 10.0.0.1:5555: tls: failed to sign handshake: key ab: deadline exceeded\n")
	fmt.Fprintf(h, "http: TLS handshake error from [::1]:6666: tls: no cipher suite supported by both client and server\n")
	fmt.Fprintf(h, "http: TLS handshake error from 10.0.0.2:7777: EOF\n") // debug: not shown at info
	fmt.Fprintf(h, "http: Accept error: too many open files\n")
	want := `{"level":"warn","remote":"10.0.0.1:5555","sni":"www.example.com","err":"tls: failed to sign handshake: key ab: deadline exceeded","message":"TLS handshake failed"}
{"level":"warn","remote":"[::1]:6666","sni":"","err":"tls: no cipher suite supported by both client and server","message":"TLS handshake failed"}
{"level":"warn","component":"http","err":"http: Accept error: too many open files","message":"http server error"}
`
	if got := buf.String(); got != want {
		t.Errorf("logs:\n%s\nwant:\n%s", got, want)
	}
}

func TestSignHealth(t *testing.T) {
	h := &signHealth{log: zerolog.Nop()}
	status := func(view http.Handler) (int, string) {
		rec := httptest.NewRecorder()
		view.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
		return rec.Code, rec.Body.String()
	}
	for name, view := range map[string]http.Handler{"public": h.public(), "detail": h.detail()} {
		if code, body := status(view); code != 200 || body != "ok" {
			t.Fatalf("%s, idle: %d %q", name, code, body)
		}
	}
	const signer, key = "10.9.8.7:2407", "3f2a91bc"
	fail := tlsglue.SignEvent{Key: key, Err: errors.New("key " + key + ": keyless signer " + signer + ": connection refused")}
	for range failuresBeforeUnhealthy - 1 {
		h.record(fail)
	}
	if code, body := status(h.public()); code != 200 || body != "ok" {
		t.Fatalf("public, after %d failures: %d %q", failuresBeforeUnhealthy-1, code, body)
	}
	if code, body := status(h.detail()); code != 200 || !strings.Contains(body, "connection refused") {
		t.Fatalf("detail, after %d failures: %d %q", failuresBeforeUnhealthy-1, code, body)
	}
	h.record(fail)
	code, body := status(h.public())
	if code != http.StatusServiceUnavailable || body != "cannot sign" {
		t.Fatalf("public, after %d failures: %d %q", failuresBeforeUnhealthy, code, body)
	}
	if strings.Contains(body, signer) || strings.Contains(body, key) {
		t.Fatalf("public body %q names the signer or the key", body)
	}
	if code, body := status(h.detail()); code != http.StatusServiceUnavailable || !strings.Contains(body, signer) || !strings.Contains(body, key) {
		t.Fatalf("detail, after %d failures: %d %q, want the last error", failuresBeforeUnhealthy, code, body)
	}
	h.record(tlsglue.SignEvent{Duration: time.Millisecond})
	for name, view := range map[string]http.Handler{"public": h.public(), "detail": h.detail()} {
		if code, body := status(view); code != 200 || body != "ok" {
			t.Fatalf("%s, after a success: %d %q", name, code, body)
		}
	}
}

func TestCheckCommand(t *testing.T) {
	site := newTestSite(t)
	other := newTestSite(t)
	run := func(args ...string) (string, error) {
		cmd := rootCmd()
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		cmd.SetArgs(append([]string{"check"}, args...))
		err := cmd.Execute()
		return out.String(), err
	}

	out, err := run("--cert", site.chainPEM, "--signer", "file://"+site.keyPEM)
	if err != nil {
		t.Fatalf("check: %v\n%s", err, out)
	}
	for _, want := range []string{"leaf:     CN=localhost", "names:    localhost, 127.0.0.1", "key:      ECDSA P-256", "SKI:      ",
		"days left", "1. CN=Edge Test Intermediate", "issued by CN=Edge Test Root", "holds the certificate's key"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	if _, err := run("--cert", site.chainPEM, "--signer", "file://"+other.keyPEM); err == nil || !strings.Contains(err.Error(), "does not match cluster key") {
		t.Errorf("other key: %v", err)
	}
	if _, err := run("--cert", site.keyPEM); err == nil || !strings.Contains(err.Error(), "holds a private key") {
		t.Errorf("key as certificate: %v", err)
	}
	if _, err := run(); err == nil || !strings.Contains(err.Error(), "--cert") {
		t.Errorf("no --cert: %v", err)
	}
}

// TestRenewOnSIGHUP: in ACME mode a SIGHUP alone does not order a certificate that is not due;
// with the request file it does, once, and removes the file; a second request within the
// interval is refused and logged.
func TestRenewOnSIGHUP(t *testing.T) {
	site := newTestSite(t)
	storage := t.TempDir()
	acme, err := tlsglue.NewACME(tlsglue.ACMEOptions{CA: "https://acme.invalid/directory", Names: []string{"localhost"},
		StorageDir: storage, Logger: zerolog.Nop()}, site.leafKey)
	if err != nil {
		t.Fatal(err)
	}
	// The stored chain is what the edge serves; it was issued just now, so it is not due.
	chainPEM, err := os.ReadFile(site.chainPEM)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(storage, "tkeyless-localhost.pem"), chainPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := acme.Load(); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	logger := zerolog.New(&logs)
	request := filepath.Join(storage, renewRequestFile)
	hup := func(withRequest bool, want string) {
		t.Helper()
		if withRequest {
			if err := os.WriteFile(request, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		logs.Reset()
		renewOnSIGHUP(acme, storage, logger)
		if !strings.Contains(logs.String(), want) {
			t.Fatalf("SIGHUP (request file %v) logged:\n%s\nwant %q", withRequest, logs.String(), want)
		}
		if _, err := os.Stat(request); !os.IsNotExist(err) {
			t.Fatalf("the request file is still there after SIGHUP: %v", err)
		}
	}
	hup(false, `"message":"SIGHUP: the ACME certificate is not due for renewal; to renew it anyway, create the request file and send SIGHUP again"`)
	hup(true, `"forced":true,"message":"SIGHUP: renewing the ACME certificate now"`)
	hup(true, `"level":"warn","forced":true,"reason":"at most one requested renewal every 10m0s","retry_after":`)
}
