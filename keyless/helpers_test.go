package keyless

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudflare/gokeyless/protocol"
	"github.com/rs/zerolog"

	"github.com/tkeyless/tkeyless/internal/testpki"
)

// TestMain fails the run if any goroutine started by this package's code is
// still alive once every test has closed its clients and servers.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if leaks := waitNoLeaks(5 * time.Second); len(leaks) > 0 {
			fmt.Fprintf(os.Stderr, "goroutines left running by package keyless:\n\n%s\n", strings.Join(leaks, "\n\n"))
			code = 1
		}
	}
	os.Exit(code)
}

// ourGoroutines returns the stacks of goroutines running code from
// client.go or server.go (test code lives in _test.go files).
func ourGoroutines() []string {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "/keyless/client.go") || strings.Contains(g, "/keyless/server.go") {
			out = append(out, g)
		}
	}
	return out
}

// waitNoLeaks polls until none of our goroutines remain, or gives up after
// limit. Goroutines end asynchronously after Close returns only for
// timers that were firing, so this normally returns at once.
func waitNoLeaks(limit time.Duration) []string {
	deadline := time.Now().Add(limit)
	for {
		g := ourGoroutines()
		if len(g) == 0 || time.Now().After(deadline) {
			return g
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// eventually polls cond until it holds or fails the test after 5 s. It waits
// for state changes that have no event to wait on (a connection noticed dead).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// pkiFixture is one throwaway CA with a signer and an edge certificate.
type pkiFixture struct {
	ca     *testpki.CA
	server tls.Certificate
	client tls.Certificate
}

func newPKI(t testing.TB) *pkiFixture {
	t.Helper()
	ca := testpki.NewCA(t)
	return &pkiFixture{ca: ca, server: ca.Issue(t, "signer-a", true), client: ca.Issue(t, "edge-1", false)}
}

func (p *pkiFixture) serverTLS() *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{p.server},
		ClientCAs:    p.ca.Pool(),
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	}
}

func (p *pkiFixture) clientTLS() *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{p.client},
		RootCAs:      p.ca.Pool(),
		MinVersion:   tls.VersionTLS12,
	}
}

// keyBackend signs with in-memory keys. before, if set, runs first and may
// block, panic or fail the request.
type keyBackend struct {
	mu     sync.Mutex
	keys   map[protocol.SKI]*ecdsa.PrivateKey
	before func(ctx context.Context, req *Request) error
	calls  atomic.Int32
	last   *Request
}

func newKeyBackend(keys ...*ecdsa.PrivateKey) *keyBackend {
	b := &keyBackend{keys: map[protocol.SKI]*ecdsa.PrivateKey{}}
	for _, k := range keys {
		ski, err := protocol.GetSKI(&k.PublicKey)
		if err != nil {
			panic(err)
		}
		b.keys[ski] = k
	}
	return b
}

func (b *keyBackend) Sign(ctx context.Context, req *Request) ([]byte, error) {
	b.calls.Add(1)
	b.mu.Lock()
	r := *req
	r.Digest = bytes.Clone(req.Digest)
	r.Authority = bytes.Clone(req.Authority)
	b.last = &r
	before := b.before
	b.mu.Unlock()
	if before != nil {
		if err := before(ctx, req); err != nil {
			return nil, err
		}
	}
	key := b.keys[req.SKI]
	if key == nil {
		return nil, protocol.ErrKeyNotFound
	}
	return ecdsa.SignASN1(rand.Reader, key, req.Digest)
}

func (b *keyBackend) lastRequest() *Request {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.last
}

func newKey(t testing.TB, curve elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func skiOf(t testing.TB, k *ecdsa.PrivateKey) protocol.SKI {
	t.Helper()
	ski, err := protocol.GetSKI(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return ski
}

// trackingListener counts accepted connections and can cut them all from the
// server side, as a crashed or restarted signer would.
type trackingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

func (l *trackingListener) accepted() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

func (l *trackingListener) cutAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
}

type testServer struct {
	*Server
	addr string
	l    *trackingListener
	logs *syncBuffer
}

// startServer serves backend on a fresh 127.0.0.1 port until the test ends.
// The listener exists before Serve is called, so clients may dial at once.
func startServer(t testing.TB, p *pkiFixture, backend Backend, modify ...func(*ServerConfig)) *testServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	cfg := ServerConfig{
		TLS:     p.serverTLS(),
		Backend: backend,
		Logger:  zerolog.New(logs).Level(zerolog.DebugLevel),
	}
	for _, m := range modify {
		m(&cfg)
	}
	s, err := NewServer(cfg)
	if err != nil {
		l.Close()
		t.Fatal(err)
	}
	tl := &trackingListener{Listener: l}
	done := make(chan error, 1)
	go func() { done <- s.Serve(tl) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve after Close: %v, want nil", err)
		}
	})
	return &testServer{Server: s, addr: l.Addr().String(), l: tl, logs: logs}
}

func newTestClient(t testing.TB, p *pkiFixture, endpoints []string, modify ...func(*ClientConfig)) *Client {
	t.Helper()
	cfg := ClientConfig{Endpoints: endpoints, TLS: p.clientTLS()}
	for _, m := range modify {
		m(&cfg)
	}
	c, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedPort returns a 127.0.0.1 address nothing listens on.
func closedPort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
