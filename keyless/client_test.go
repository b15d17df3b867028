package keyless

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudflare/gokeyless/protocol"
)

func digests(msg string) map[crypto.Hash][]byte {
	d224, d256, d384, d512 := sha256.Sum224([]byte(msg)), sha256.Sum256([]byte(msg)), sha512.Sum384([]byte(msg)), sha512.Sum512([]byte(msg))
	return map[crypto.Hash][]byte{crypto.SHA224: d224[:], crypto.SHA256: d256[:], crypto.SHA384: d384[:], crypto.SHA512: d512[:]}
}

func TestSignVerifies(t *testing.T) {
	p := newPKI(t)
	k256, k384 := newKey(t, elliptic.P256()), newKey(t, elliptic.P384())
	backend := newKeyBackend(k256, k384)
	srv := startServer(t, p, backend)
	c := newTestClient(t, p, []string{srv.addr}, func(cfg *ClientConfig) {
		cfg.Authorize = func(op protocol.Op, ski protocol.SKI, digest []byte) ([]byte, error) {
			return []byte("authority for " + op.String()), nil
		}
	})
	ctx := context.Background()

	for _, key := range []*ecdsa.PrivateKey{k256, k384} {
		for hash, d := range digests("hello") {
			t.Run(key.Curve.Params().Name+"/"+hash.String(), func(t *testing.T) {
				sig, err := c.Sign(ctx, skiOf(t, key), hash, d)
				if err != nil {
					t.Fatal(err)
				}
				if !ecdsa.VerifyASN1(&key.PublicKey, d, sig) {
					t.Fatal("signature does not verify")
				}
				req := backend.lastRequest()
				if req.Hash != hash || req.Op != ecdsaOps[hash] {
					t.Errorf("backend saw hash %v op %v", req.Hash, req.Op)
				}
				if got := req.Identity.Subject.CommonName; got != "edge-1" {
					t.Errorf("backend saw identity %q, want edge-1", got)
				}
				if want := "authority for " + ecdsaOps[hash].String(); string(req.Authority) != want {
					t.Errorf("backend saw authority %q, want %q", req.Authority, want)
				}
			})
		}
	}

	// The same through crypto.Signer, the way crypto/tls calls it.
	signer, err := c.Signer(ctx, &k256.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if !k256.PublicKey.Equal(signer.Public()) {
		t.Error("Signer.Public is not the key it was made for")
	}
	d := digests("via crypto.Signer")[crypto.SHA256]
	sig, err := signer.Sign(rand.Reader, d, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if !ecdsa.VerifyASN1(&k256.PublicKey, d, sig) {
		t.Fatal("crypto.Signer signature does not verify")
	}
	if err := c.Ping(ctx, srv.addr); err != nil {
		t.Errorf("Ping: %v", err)
	}
	if err := c.Ping(ctx, "127.0.0.1:1"); err == nil {
		t.Error("Ping of an endpoint the client does not have succeeded")
	}
	if n := srv.l.accepted(); n != 1 {
		t.Errorf("%d connections for sequential requests, want 1 pooled", n)
	}
}

func TestSignRemoteErrors(t *testing.T) {
	p := newPKI(t)
	key := newKey(t, elliptic.P256())
	backend := newKeyBackend(key)
	srv := startServer(t, p, backend)
	c := newTestClient(t, p, []string{srv.addr})
	ctx := context.Background()

	t.Run("unknown key", func(t *testing.T) {
		other := newKey(t, elliptic.P256())
		_, err := c.Sign(ctx, skiOf(t, other), crypto.SHA256, make([]byte, 32))
		var re *RemoteError
		if !errors.As(err, &re) || re.Code != protocol.ErrKeyNotFound || re.Endpoint != srv.addr {
			t.Fatalf("got %v, want a RemoteError KeyNotFound from %s", err, srv.addr)
		}
		if !errors.Is(err, protocol.ErrKeyNotFound) {
			t.Error("errors.Is(err, protocol.ErrKeyNotFound) is false")
		}
	})

	t.Run("wrong digest length", func(t *testing.T) {
		before := backend.calls.Load()
		_, err := c.Sign(ctx, skiOf(t, key), crypto.SHA256, make([]byte, 20))
		var re *RemoteError
		if !errors.As(err, &re) || re.Code != protocol.ErrFormat {
			t.Fatalf("got %v, want RemoteError ErrFormat", err)
		}
		if backend.calls.Load() != before {
			t.Error("the backend was called for a digest of the wrong length")
		}
	})

	t.Run("refused locally", func(t *testing.T) {
		if _, err := c.Sign(ctx, skiOf(t, key), crypto.SHA1, make([]byte, 20)); err == nil {
			t.Error("SHA-1 accepted")
		}
		if _, err := c.Signer(ctx, &newRSAKey(t).PublicKey); err == nil {
			t.Error("Signer accepted an RSA key")
		}
		if _, err := c.Signer(ctx, &newKey(t, elliptic.P224()).PublicKey); err == nil {
			t.Error("Signer accepted a P-224 key")
		}
	})

	if _, err := c.Sign(ctx, skiOf(t, key), crypto.SHA256, make([]byte, 32)); err != nil {
		t.Fatalf("after refusals the connection should still sign: %v", err)
	}
}

func newRSAKey(t *testing.T) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestFailover(t *testing.T) {
	p := newPKI(t)
	key := newKey(t, elliptic.P256())
	srv := startServer(t, p, newKeyBackend(key))
	d := digests("failover")[crypto.SHA256]

	t.Run("first endpoint refuses connections", func(t *testing.T) {
		c := newTestClient(t, p, []string{closedPort(t), srv.addr})
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		sig, err := c.Sign(ctx, skiOf(t, key), crypto.SHA256, d)
		if err != nil {
			t.Fatal(err)
		}
		if !ecdsa.VerifyASN1(&key.PublicKey, d, sig) {
			t.Fatal("signature does not verify")
		}
		// The dead endpoint now ranks last.
		if order := c.rank(); order[0].addr != srv.addr {
			t.Errorf("after a failure, %s ranks first", order[0].addr)
		}
	})

	t.Run("all endpoints dead", func(t *testing.T) {
		c := newTestClient(t, p, []string{closedPort(t), closedPort(t)})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := c.Sign(ctx, skiOf(t, key), crypto.SHA256, d)
		if err == nil {
			t.Fatal("signed with no signer")
		}
		if ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("waited for the deadline instead of failing: %v", err)
		}
		var re *RemoteError
		if errors.As(err, &re) {
			t.Fatalf("a connection failure reported as a remote answer: %v", err)
		}
	})

	t.Run("first endpoint hangs", func(t *testing.T) {
		hung := newKeyBackend(key)
		hung.before = func(ctx context.Context, _ *Request) error { <-ctx.Done(); return ctx.Err() }
		slow := startServer(t, p, hung)
		c := newTestClient(t, p, []string{slow.addr, srv.addr})
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		sig, err := c.Sign(ctx, skiOf(t, key), crypto.SHA256, d)
		if err != nil {
			t.Fatalf("a hung signer took the whole deadline: %v", err)
		}
		if !ecdsa.VerifyASN1(&key.PublicKey, d, sig) {
			t.Fatal("signature does not verify")
		}
		if hung.calls.Load() != 1 {
			t.Errorf("hung signer called %d times, want 1 (tried first)", hung.calls.Load())
		}
	})

	t.Run("definitive answers are not retried", func(t *testing.T) {
		other := startServer(t, p, newKeyBackend()) // knows no key
		backend := newKeyBackend(key)
		second := startServer(t, p, backend)
		c := newTestClient(t, p, []string{other.addr, second.addr})
		_, err := c.Sign(context.Background(), skiOf(t, key), crypto.SHA256, d)
		if !errors.Is(err, protocol.ErrKeyNotFound) {
			t.Fatalf("got %v, want KeyNotFound from the first signer", err)
		}
		if backend.calls.Load() != 0 {
			t.Error("KeyNotFound was retried on the next signer")
		}
	})

	t.Run("internal errors are retried", func(t *testing.T) {
		failing := newKeyBackend(key)
		failing.before = func(context.Context, *Request) error { return errors.New("no quorum") }
		first := startServer(t, p, failing)
		c := newTestClient(t, p, []string{first.addr, srv.addr})
		if _, err := c.Sign(context.Background(), skiOf(t, key), crypto.SHA256, d); err != nil {
			t.Fatalf("ErrInternal from the first signer was not failed over: %v", err)
		}
	})
}

// TestBudgetStopsAbandonedSigner: each request carries its attempt's time
// left, so a signer that the client gives up on (and fails over from, its
// connection still open) stops at that moment, not at its own timeout.
func TestBudgetStopsAbandonedSigner(t *testing.T) {
	p := newPKI(t)
	key := newKey(t, elliptic.P256())
	d := digests("budget")[crypto.SHA256]
	stopped := make(chan time.Time, 1)
	hung := newKeyBackend(key)
	hung.before = func(ctx context.Context, _ *Request) error {
		<-ctx.Done()
		stopped <- time.Now()
		return ctx.Err()
	}
	// A minute: without the budget, the hung signer would work on for it.
	slow := startServer(t, p, hung, func(cfg *ServerConfig) { cfg.RequestTimeout = time.Minute })
	good := newKeyBackend(key)
	srv := startServer(t, p, good, func(cfg *ServerConfig) { cfg.RequestTimeout = time.Minute })
	c := newTestClient(t, p, []string{slow.addr, srv.addr})

	const deadline = 3 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	start := time.Now()
	if _, err := c.Sign(ctx, skiOf(t, key), crypto.SHA256, d); err != nil {
		t.Fatal(err)
	}
	signed := time.Since(start)
	first, second := hung.lastRequest(), good.lastRequest()
	if !first.HasBudget || first.Budget > deadline*2/3 || first.Budget < deadline/2 {
		t.Errorf("first attempt's budget %v (present %v), want about two thirds of %v", first.Budget, first.HasBudget, deadline)
	}
	if !second.HasBudget || second.Budget > deadline-signed+time.Second || second.Budget > deadline/3+50*time.Millisecond {
		t.Errorf("second attempt's budget %v (present %v), want the third of %v left", second.Budget, second.HasBudget, deadline)
	}
	select {
	case at := <-stopped:
		if late := at.Sub(start) - deadline*2/3; late > time.Second {
			t.Errorf("the abandoned signer stopped %v after the client gave up on it", late)
		}
	case <-time.After(10 * time.Second): // a bound on a broken test; it should have stopped already
		t.Fatal("the abandoned signer is still working 10 s later")
	}
	// The connection to the abandoned signer stayed open: the budget, not a
	// teardown, stopped it.
	if ep := c.lookup(slow.addr); ep.conn == nil || ep.conn.dead() {
		t.Error("the connection to the abandoned signer was closed")
	}
}

// TestOverloaded: a signer answering ErrOverloaded is passed over for the
// next while the deadline leaves room for a signature there; when it does
// not, or every signer is overloaded, Sign fails at once with ErrOverloaded.
func TestOverloaded(t *testing.T) {
	p := newPKI(t)
	key := newKey(t, elliptic.P256())
	d := digests("overloaded")[crypto.SHA256]
	overloaded := func() (*keyBackend, *testServer) {
		b := newKeyBackend(key)
		b.before = func(context.Context, *Request) error { return ErrOverloaded }
		return b, startServer(t, p, b)
	}

	t.Run("another signer takes it", func(t *testing.T) {
		busy, busySrv := overloaded()
		good := newKeyBackend(key)
		goodSrv := startServer(t, p, good)
		c := newTestClient(t, p, []string{busySrv.addr, goodSrv.addr})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := c.Sign(ctx, skiOf(t, key), crypto.SHA256, d); err != nil {
			t.Fatal(err)
		}
		if busy.calls.Load() != 1 || good.calls.Load() != 1 {
			t.Errorf("calls: overloaded %d, other %d; want 1 and 1", busy.calls.Load(), good.calls.Load())
		}
	})

	t.Run("every signer overloaded: fails at once", func(t *testing.T) {
		a, aSrv := overloaded()
		b, bSrv := overloaded()
		c := newTestClient(t, p, []string{aSrv.addr, bSrv.addr})
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, err := c.Sign(ctx, skiOf(t, key), crypto.SHA256, d)
		var re *RemoteError
		if !errors.Is(err, ErrOverloaded) || !errors.As(err, &re) {
			t.Fatalf("got %v, want a RemoteError ErrOverloaded", err)
		}
		if ctx.Err() != nil {
			t.Fatal("waited for the deadline")
		}
		if a.calls.Load() != 1 || b.calls.Load() != 1 {
			t.Errorf("calls %d and %d, want each signer asked once", a.calls.Load(), b.calls.Load())
		}
		if !strings.Contains(err.Error(), "overloaded") {
			t.Errorf("error %q does not say overloaded", err)
		}
	})

	t.Run("no time for the next signer: fails at once", func(t *testing.T) {
		busy, busySrv := overloaded()
		slow := newKeyBackend(key)
		slowSrv := startServer(t, p, slow)
		c := newTestClient(t, p, []string{busySrv.addr, slowSrv.addr})
		// The other signer took 10 s lately: the 2 s left cannot be enough.
		ep := c.lookup(slowSrv.addr)
		ep.mu.Lock()
		ep.latency, ep.measuredAt = 10*time.Second, time.Now()
		ep.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := c.Sign(ctx, skiOf(t, key), crypto.SHA256, d)
		if !errors.Is(err, ErrOverloaded) || ctx.Err() != nil {
			t.Fatalf("got %v (ctx %v), want ErrOverloaded before the deadline", err, ctx.Err())
		}
		if busy.calls.Load() != 1 || slow.calls.Load() != 0 {
			t.Errorf("calls: overloaded %d, slow %d; want 1 and 0", busy.calls.Load(), slow.calls.Load())
		}
	})
}

func TestDeadline(t *testing.T) {
	p := newPKI(t)
	key := newKey(t, elliptic.P256())
	backend := newKeyBackend(key)
	backend.before = func(ctx context.Context, _ *Request) error { <-ctx.Done(); return ctx.Err() }
	srv := startServer(t, p, backend, func(cfg *ServerConfig) { cfg.RequestTimeout = time.Minute })
	c := newTestClient(t, p, []string{srv.addr})

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Sign(ctx, skiOf(t, key), crypto.SHA256, make([]byte, 32))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want an error wrapping context.DeadlineExceeded", err)
	}
	if elapsed := time.Since(start); elapsed > 30*time.Second {
		t.Fatalf("returned after %v: waited for the server, not the deadline", elapsed)
	}

	// ClientConfig.Timeout applies when ctx has none.
	c2 := newTestClient(t, p, []string{srv.addr}, func(cfg *ClientConfig) { cfg.Timeout = 100 * time.Millisecond })
	if _, err := c2.Sign(context.Background(), skiOf(t, key), crypto.SHA256, make([]byte, 32)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("without a ctx deadline: got %v, want DeadlineExceeded after ClientConfig.Timeout", err)
	}
}

// TestDeadConnection checks that a connection the signer drops fails every
// request in flight on it at once, and that the next request redials.
func TestDeadConnection(t *testing.T) {
	p := newPKI(t)
	key := newKey(t, elliptic.P256())
	backend := newKeyBackend(key)
	entered := make(chan struct{}, 10)
	var blocking sync.Mutex
	block := true
	backend.before = func(ctx context.Context, _ *Request) error {
		blocking.Lock()
		b := block
		blocking.Unlock()
		if b {
			entered <- struct{}{}
			<-ctx.Done()
			return ctx.Err()
		}
		return nil
	}
	srv := startServer(t, p, backend, func(cfg *ServerConfig) { cfg.RequestTimeout = time.Minute })
	c := newTestClient(t, p, []string{srv.addr})
	ep := c.endpoints[0]

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cc, _, err := ep.get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const n = 3
	errs := make(chan error, n)
	op := protocol.Operation{Opcode: protocol.OpECDSASignSHA256, SKI: skiOf(t, key), Payload: make([]byte, 32)}
	for range n {
		go func() {
			_, err := cc.roundTrip(ctx, op, nil)
			errs <- err
		}()
	}
	for range n {
		<-entered
	}
	srv.l.cutAll()
	for range n {
		if err := <-errs; !errors.As(err, new(connError)) {
			t.Fatalf("in-flight request got %v, want a connection error", err)
		}
	}
	if ctx.Err() != nil {
		t.Fatal("in-flight requests waited for their deadline")
	}

	blocking.Lock()
	block = false
	blocking.Unlock()
	d := digests("after redial")[crypto.SHA256]
	sig, err := c.Sign(ctx, skiOf(t, key), crypto.SHA256, d)
	if err != nil {
		t.Fatal(err)
	}
	if !ecdsa.VerifyASN1(&key.PublicKey, d, sig) {
		t.Fatal("signature does not verify")
	}
	if srv.l.accepted() != 2 {
		t.Errorf("%d connections accepted, want 2 (one redial)", srv.l.accepted())
	}
}

// TestIdleCloseRedial: the signer closes an idle connection; the client
// notices and the next request dials again without failing.
func TestIdleCloseRedial(t *testing.T) {
	p := newPKI(t)
	key := newKey(t, elliptic.P256())
	srv := startServer(t, p, newKeyBackend(key), func(cfg *ServerConfig) { cfg.IdleTimeout = 50 * time.Millisecond })
	c := newTestClient(t, p, []string{srv.addr})
	ctx := context.Background()
	if _, err := c.Sign(ctx, skiOf(t, key), crypto.SHA256, make([]byte, 32)); err != nil {
		t.Fatal(err)
	}
	ep := c.endpoints[0]
	eventually(t, "the client notices the idle close", func() bool {
		ep.mu.Lock()
		defer ep.mu.Unlock()
		return ep.conn == nil
	})
	if _, err := c.Sign(ctx, skiOf(t, key), crypto.SHA256, make([]byte, 32)); err != nil {
		t.Fatal(err)
	}
	if srv.l.accepted() != 2 {
		t.Errorf("%d connections accepted, want 2", srv.l.accepted())
	}
}

// TestConcurrentSignsMultiplexed: parallel signatures share one connection
// and reach the backend concurrently.
func TestConcurrentSignsMultiplexed(t *testing.T) {
	p := newPKI(t)
	key := newKey(t, elliptic.P256())
	backend := newKeyBackend(key)
	var mu sync.Mutex
	active, maxActive := 0, 0
	overlap := make(chan struct{})
	backend.before = func(ctx context.Context, _ *Request) error {
		mu.Lock()
		active++
		if active > maxActive {
			maxActive = active
			if maxActive == 2 {
				close(overlap)
			}
		}
		mu.Unlock()
		// Hold every call until two have been inside at once: proof of
		// concurrency with no timing involved.
		select {
		case <-overlap:
		case <-ctx.Done():
		}
		mu.Lock()
		active--
		mu.Unlock()
		return nil
	}
	srv := startServer(t, p, backend)
	c := newTestClient(t, p, []string{srv.addr})

	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	ski := skiOf(t, key)
	for i := range n {
		wg.Go(func() {
			d := sha256.Sum256([]byte{byte(i)})
			sig, err := c.Sign(context.Background(), ski, crypto.SHA256, d[:])
			if err == nil && !ecdsa.VerifyASN1(&key.PublicKey, d[:], sig) {
				err = errors.New("signature does not verify")
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if maxActive < 2 {
		t.Errorf("backend saw at most %d concurrent calls", maxActive)
	}
	if srv.l.accepted() != 1 {
		t.Errorf("%d connections for %d concurrent signatures, want 1 multiplexed", srv.l.accepted(), n)
	}
}

func TestRank(t *testing.T) {
	p := newPKI(t)
	c := newTestClient(t, p, []string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"})
	a, b, d := c.endpoints[0], c.endpoints[1], c.endpoints[2]
	names := func() (s []string) {
		for _, ep := range c.rank() {
			s = append(s, ep.addr)
		}
		return s
	}
	check := func(want ...string) {
		t.Helper()
		got := names()
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("order %v, want %v", got, want)
			}
		}
	}
	check(a.addr, b.addr, d.addr) // all unmeasured: configuration order
	a.observe(300 * time.Millisecond)
	b.observe(100 * time.Millisecond)
	check(d.addr, b.addr, a.addr) // unmeasured first (to measure it), then fastest
	d.observe(200 * time.Millisecond)
	check(b.addr, d.addr, a.addr)
	b.markDown(errors.New("test"))
	check(d.addr, a.addr, b.addr) // failed endpoints last
	b.observe(100 * time.Millisecond)
	check(b.addr, d.addr, a.addr) // recovered
	b.mu.Lock()
	b.measuredAt = time.Now().Add(-2 * latencyStaleAfter)
	b.latency = time.Hour
	b.mu.Unlock()
	check(b.addr) // stale: measured again
}

func TestClientConfigAndClose(t *testing.T) {
	p := newPKI(t)
	for _, cfg := range []ClientConfig{
		{TLS: p.clientTLS()},
		{Endpoints: []string{"127.0.0.1:1"}},
		{Endpoints: []string{"no-port"}, TLS: p.clientTLS()},
	} {
		if _, err := NewClient(cfg); err == nil {
			t.Errorf("NewClient(%+v) accepted", cfg.Endpoints)
		}
	}

	key := newKey(t, elliptic.P256())
	srv := startServer(t, p, newKeyBackend(key))
	c := newTestClient(t, p, []string{srv.addr})
	if _, err := c.Sign(context.Background(), skiOf(t, key), crypto.SHA256, make([]byte, 32)); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := c.Sign(context.Background(), skiOf(t, key), crypto.SHA256, make([]byte, 32)); err == nil {
		t.Fatal("Sign after Close succeeded")
	}
	if g := ourGoroutines(); len(g) > 0 {
		// The server is still up; only its goroutines may remain.
		for _, s := range g {
			if strings.Contains(s, "/keyless/client.go") {
				t.Fatalf("client goroutine alive after Close:\n%s", s)
			}
		}
	}
}
