package tlsglue

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countingKeys is a KeySource over a local key that counts what handshakes ask of it.
type countingKeys struct {
	key     crypto.Signer
	signers atomic.Int64 // Signer calls
	signs   atomic.Int64 // Sign calls
	// deadlines records whether each Signer call's context had a deadline.
	mu        sync.Mutex
	deadlines []time.Duration
}

func (k *countingKeys) Signer(ctx context.Context, pub crypto.PublicKey) (crypto.Signer, error) {
	k.signers.Add(1)
	if dl, ok := ctx.Deadline(); ok {
		k.mu.Lock()
		k.deadlines = append(k.deadlines, time.Until(dl))
		k.mu.Unlock()
	}
	s, err := LocalKey{Key: k.key}.Signer(ctx, pub)
	if err != nil {
		return nil, err
	}
	return countingSigner{s, &k.signs}, nil
}

type countingSigner struct {
	crypto.Signer
	n *atomic.Int64
}

func (s countingSigner) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	s.n.Add(1)
	return s.Signer.Sign(r, d, o)
}

// serveTLS accepts TLS connections on 127.0.0.1 until the test ends; on each it completes the
// handshake, writes "ok" and closes.
func serveTLS(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if err := c.(*tls.Conn).Handshake(); err != nil {
					return
				}
				c.Write([]byte("ok"))
			}()
		}
	}()
	return ln.Addr().String()
}

// fetch dials addr, completes a handshake and reads the server's "ok", which in TLS 1.3 is also
// what makes the client store the session ticket that arrived before it.
func fetch(t *testing.T, addr string, cfg *tls.Config) tls.ConnectionState {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ok" {
		t.Fatalf("read: %q, %v", buf, err)
	}
	return c.ConnectionState()
}

func newTestServer(t *testing.T, opts ServerOptions) (p pkiChain, keys *countingKeys, addr string) {
	t.Helper()
	p = newPKIChain(t, "leaf.test")
	keys = &countingKeys{key: p.leaf.key}
	opts.Chain = &Chain{Leaf: p.leaf.cert, Intermediates: []*x509.Certificate{p.inter.cert}}
	opts.Keys = keys
	cfg, err := ServerConfig(opts)
	if err != nil {
		t.Fatal(err)
	}
	return p, keys, serveTLS(t, cfg)
}

func TestHandshakeAndResumption(t *testing.T) {
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(version), func(t *testing.T) {
			var events []SignEvent
			var mu sync.Mutex
			p, keys, addr := newTestServer(t, ServerOptions{OnSign: func(e SignEvent) {
				mu.Lock()
				defer mu.Unlock()
				events = append(events, e)
			}})
			client := &tls.Config{
				RootCAs:            p.pool(),
				ServerName:         "leaf.test",
				MinVersion:         version,
				MaxVersion:         version,
				NextProtos:         []string{"h2", "http/1.1"},
				ClientSessionCache: tls.NewLRUClientSessionCache(8),
			}

			first := fetch(t, addr, client)
			if first.Version != version || first.DidResume {
				t.Fatalf("first connection: version %s, resumed %v", tls.VersionName(first.Version), first.DidResume)
			}
			if first.NegotiatedProtocol != "h2" {
				t.Errorf("ALPN = %q, want h2", first.NegotiatedProtocol)
			}
			if version == tls.VersionTLS12 && !strings.Contains(tls.CipherSuiteName(first.CipherSuite), "ECDHE_ECDSA") {
				t.Errorf("suite = %s", tls.CipherSuiteName(first.CipherSuite))
			}
			if n := keys.signs.Load(); n != 1 {
				t.Fatalf("full handshake made %d signatures, want 1", n)
			}

			second := fetch(t, addr, client)
			if !second.DidResume {
				t.Fatal("second connection did not resume")
			}
			if n := keys.signs.Load(); n != 1 {
				t.Errorf("resumed handshake signed: %d signatures in all, want 1", n)
			}
			if n := keys.signers.Load(); n != 1 {
				t.Errorf("resumed handshake asked the key source: %d calls in all, want 1", n)
			}

			keys.mu.Lock()
			defer keys.mu.Unlock()
			if len(keys.deadlines) != 1 || keys.deadlines[0] <= 0 || keys.deadlines[0] > DefaultHandshakeTimeout {
				t.Errorf("key source deadlines = %v, want one within %s", keys.deadlines, DefaultHandshakeTimeout)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(events) != 1 || events[0].Err != nil || events[0].ServerName != "leaf.test" || events[0].Remote == "" || events[0].Key == "" {
				t.Errorf("sign events = %+v", events)
			}
		})
	}
}

// slowKeys never signs: its signer waits for the handshake's context, as a remote signer that
// does not answer would.
type slowKeys struct{ pub crypto.PublicKey }

func (k slowKeys) Signer(ctx context.Context, pub crypto.PublicKey) (crypto.Signer, error) {
	return slowSigner{ctx: ctx, pub: k.pub}, nil
}

type slowSigner struct {
	ctx context.Context
	pub crypto.PublicKey
}

func (s slowSigner) Public() crypto.PublicKey { return s.pub }
func (s slowSigner) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	<-s.ctx.Done()
	return nil, s.ctx.Err()
}

func TestHandshakeTimeoutReachesSigner(t *testing.T) {
	p := newPKIChain(t, "leaf.test")
	var got error
	done := make(chan struct{})
	cfg, err := ServerConfig(ServerOptions{
		Chain:            &Chain{Leaf: p.leaf.cert},
		Keys:             slowKeys{pub: p.leaf.key.Public()},
		HandshakeTimeout: 200 * time.Millisecond,
		OnSign:           func(e SignEvent) { got = e.Err; close(done) },
	})
	if err != nil {
		t.Fatal(err)
	}
	addr := serveTLS(t, cfg)
	start := time.Now()
	_, err = tls.Dial("tcp", addr, &tls.Config{RootCAs: p.pool(), ServerName: "leaf.test"})
	if err == nil {
		t.Fatal("handshake succeeded without a signature")
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("signer was not released by the handshake timeout")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("handshake failed after %s, want about 200ms", d)
	}
	if !errors.Is(got, context.DeadlineExceeded) || !strings.Contains(got.Error(), "handshake timeout") || !strings.Contains(got.Error(), "key ") {
		t.Errorf("sign error = %v", got)
	}
}

func TestServerConfigRejects(t *testing.T) {
	p := newPKIChain(t, "leaf.test")
	chain := &Chain{Leaf: p.leaf.cert}
	keys := LocalKey{Key: p.leaf.key}

	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: p.leaf.cert.SerialNumber, Subject: p.leaf.cert.Subject, NotAfter: time.Now().Add(time.Hour)}
	rsaDER, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &rsaKey.PublicKey, rsaKey)
	rsaCert, _ := x509.ParseCertificate(rsaDER)

	tests := []struct {
		name string
		opts ServerOptions
		want string
	}{
		{"no chain", ServerOptions{Keys: keys}, "no certificate chain"},
		{"no keys", ServerOptions{Chain: chain}, "no key source"},
		{"RSA certificate", ServerOptions{Chain: &Chain{Leaf: rsaCert}, Keys: keys}, "ECDSA certificates only"},
		{"short ticket secret", ServerOptions{Chain: chain, Keys: keys, Tickets: &TicketPolicy{Secret: make([]byte, 31)}}, "ticket secret is 31 bytes; it needs at least 32"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ServerConfig(tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestLocalKeyRefusesOtherCertificate(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := (LocalKey{Key: key}).Signer(context.Background(), other.Public()); err == nil {
		t.Error("LocalKey signed for another key's certificate")
	}
	if s, err := (LocalKey{Key: key}).Signer(context.Background(), key.Public()); err != nil || s != key {
		t.Errorf("LocalKey = %v, %v", s, err)
	}
}

func TestTicketKeys(t *testing.T) {
	secret := bytes.Repeat([]byte("s"), 32)
	p := TicketPolicy{Secret: secret, Rotation: time.Hour, Lifetime: 2 * time.Hour}
	now := time.Date(2026, 11, 22, 10, 30, 0, 0, time.UTC)
	a := TicketKeys(p, now)
	b := TicketKeys(TicketPolicy{Secret: append([]byte{}, secret...), Rotation: time.Hour, Lifetime: 2 * time.Hour}, now.Add(20*time.Minute))
	if len(a) != 3 || a[0] != b[0] || a[2] != b[2] {
		t.Fatalf("the same secret in the same epoch must give the same keys (got %d keys)", len(a))
	}
	if a[0] == [32]byte{} || string(a[0][:]) == string(secret) || a[0] == a[1] {
		t.Fatal("keys are not derived per epoch")
	}
	// An hour later the previous epoch's key decrypts, a new one encrypts.
	next := TicketKeys(p, now.Add(time.Hour))
	if next[0] == a[0] || next[1] != a[0] || next[2] != a[1] {
		t.Fatal("rotation must keep the previous keys, current first")
	}
	if c := TicketKeys(TicketPolicy{Secret: bytes.Repeat([]byte("t"), 32)}, now); c[0] == a[0] {
		t.Fatal("different secrets give the same key")
	}
	if TicketKeys(TicketPolicy{Secret: secret[:31]}, now) != nil {
		t.Fatal("short secret accepted")
	}
}

// TestSharedTicketSecret: two edges with the same secret resume each other's sessions; an edge
// with another secret does not.
func TestSharedTicketSecret(t *testing.T) {
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(version), func(t *testing.T) {
			p := newPKIChain(t, "leaf.test")
			chain := &Chain{Leaf: p.leaf.cert, Intermediates: []*x509.Certificate{p.inter.cert}}
			edge := func(secret string) (string, *countingKeys) {
				keys := &countingKeys{key: p.leaf.key}
				cfg, err := ServerConfig(ServerOptions{Chain: chain, Keys: keys, Tickets: &TicketPolicy{Secret: bytes.Repeat([]byte(secret), 32)}})
				if err != nil {
					t.Fatal(err)
				}
				return serveTLS(t, cfg), keys
			}
			addrA, _ := edge("a")
			addrB, keysB := edge("a")
			addrC, _ := edge("c")
			client := &tls.Config{RootCAs: p.pool(), ServerName: "leaf.test", MinVersion: version, MaxVersion: version,
				ClientSessionCache: tls.NewLRUClientSessionCache(8)}

			fetch(t, addrA, client)
			// The session cache is keyed by server name, so the ticket from A is offered to B.
			if !fetch(t, addrB, client).DidResume {
				t.Error("edge B did not resume edge A's session")
			}
			if n := keysB.signs.Load(); n != 0 {
				t.Errorf("edge B signed %d times", n)
			}
			if fetch(t, addrC, client).DidResume {
				t.Error("edge C resumed a session under another secret")
			}
		})
	}
}

func TestLoadTicketSecret(t *testing.T) {
	dir := t.TempDir()
	good := writeFile(t, dir, "good", bytes.Repeat([]byte{7}, 48))
	if s, err := LoadTicketSecret(good); err != nil || len(s) != 48 {
		t.Errorf("LoadTicketSecret = %d bytes, %v", len(s), err)
	}
	short := writeFile(t, dir, "short", []byte("hunter2"))
	if _, err := LoadTicketSecret(short); err == nil || !strings.Contains(err.Error(), "holds 7 bytes; it needs at least 32") {
		t.Errorf("short secret error = %v", err)
	}
}
