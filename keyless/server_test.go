package keyless

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cloudflare/gokeyless/protocol"

	"github.com/tkeyless/tkeyless/internal/keylesswire"
)

// rawConn is an mTLS connection speaking frames by hand, to send what a
// well-behaved client would not.
type rawConn struct {
	t *testing.T
	*tls.Conn
}

func dialRaw(t *testing.T, p *pkiFixture, addr string) *rawConn {
	t.Helper()
	cfg := p.clientTLS()
	cfg.ServerName = "127.0.0.1"
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second)) // a bound on a broken test, not a wait
	return &rawConn{t: t, Conn: c}
}

func (c *rawConn) send(id uint32, op protocol.Operation, authority []byte) {
	c.t.Helper()
	c.sendExtras(id, op, keylesswire.Extras{Authority: authority})
}

func (c *rawConn) sendExtras(id uint32, op protocol.Operation, extras keylesswire.Extras) {
	c.t.Helper()
	frame, err := keylesswire.MarshalRequest(id, op, extras)
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := c.Write(frame); err != nil {
		c.t.Fatal(err)
	}
}

func (c *rawConn) recv() (uint32, protocol.Operation) {
	c.t.Helper()
	hdr, op, _, err := keylesswire.ReadRequest(c, 0)
	if err != nil {
		c.t.Fatalf("reading response: %v", err)
	}
	return hdr.ID, op
}

// closedByServer reads until the server closes the connection.
func (c *rawConn) closedByServer() bool {
	_, err := io.ReadAll(c)
	return err == nil || errors.Is(err, io.EOF) || strings.Contains(err.Error(), "reset by peer")
}

func TestServerOperations(t *testing.T) {
	p := newPKI(t)
	key := newKey(t, elliptic.P256())
	srv := startServer(t, p, newKeyBackend(key))
	c := dialRaw(t, p, srv.addr)
	ski := skiOf(t, key)
	d := digests("server")

	for i, tc := range []struct {
		name     string
		op       protocol.Operation
		wantOp   protocol.Op
		wantCode protocol.Error
	}{
		{"ping echoes", protocol.Operation{Opcode: protocol.OpPing, Payload: []byte("echo me")}, protocol.OpPong, 0},
		{"sha224", protocol.Operation{Opcode: protocol.OpECDSASignSHA224, SKI: ski, Payload: d[crypto.SHA224]}, protocol.OpResponse, 0},
		{"sha224 op, sha256-sized digest", protocol.Operation{Opcode: protocol.OpECDSASignSHA224, SKI: ski, Payload: d[crypto.SHA256]}, protocol.OpError, protocol.ErrFormat},
		{"sha256", protocol.Operation{Opcode: protocol.OpECDSASignSHA256, SKI: ski, Payload: d[crypto.SHA256]}, protocol.OpResponse, 0},
		{"sha384", protocol.Operation{Opcode: protocol.OpECDSASignSHA384, SKI: ski, Payload: d[crypto.SHA384]}, protocol.OpResponse, 0},
		{"sha512", protocol.Operation{Opcode: protocol.OpECDSASignSHA512, SKI: ski, Payload: d[crypto.SHA512]}, protocol.OpResponse, 0},
		{"sha384 op, sha256-sized digest", protocol.Operation{Opcode: protocol.OpECDSASignSHA384, SKI: ski, Payload: d[crypto.SHA256]}, protocol.OpError, protocol.ErrFormat},
		{"empty digest", protocol.Operation{Opcode: protocol.OpECDSASignSHA256, SKI: ski}, protocol.OpError, protocol.ErrFormat},
		{"no SKI", protocol.Operation{Opcode: protocol.OpECDSASignSHA256, Payload: d[crypto.SHA256]}, protocol.OpError, protocol.ErrKeyNotFound},
		{"ecdsa sha1", protocol.Operation{Opcode: protocol.OpECDSASignSHA1, SKI: ski, Payload: make([]byte, 20)}, protocol.OpError, protocol.ErrBadOpcode},
		{"rsa", protocol.Operation{Opcode: protocol.OpRSASignSHA256, SKI: ski, Payload: d[crypto.SHA256]}, protocol.OpError, protocol.ErrBadOpcode},
		{"rsa decrypt", protocol.Operation{Opcode: protocol.OpRSADecrypt, SKI: ski, Payload: []byte("x")}, protocol.OpError, protocol.ErrBadOpcode},
		{"seal", protocol.Operation{Opcode: protocol.OpSeal, Payload: []byte("x")}, protocol.OpError, protocol.ErrBadOpcode},
		{"unknown opcode", protocol.Operation{Opcode: 0x77}, protocol.OpError, protocol.ErrBadOpcode},
		{"response opcode", protocol.Operation{Opcode: protocol.OpResponse, Payload: []byte("x")}, protocol.OpError, protocol.ErrUnexpectedOpcode},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := uint32(100 + i)
			c.send(id, tc.op, nil)
			gotID, resp := c.recv()
			if gotID != id {
				t.Fatalf("response id %d, want %d", gotID, id)
			}
			if resp.Opcode != tc.wantOp {
				t.Fatalf("response %v %x, want %v", resp.Opcode, resp.Payload, tc.wantOp)
			}
			switch tc.wantOp {
			case protocol.OpError:
				if resp.GetError() != tc.wantCode {
					t.Fatalf("error %v, want %v", resp.GetError(), tc.wantCode)
				}
			case protocol.OpPong:
				if string(resp.Payload) != string(tc.op.Payload) {
					t.Fatalf("pong payload %q, want %q", resp.Payload, tc.op.Payload)
				}
			case protocol.OpResponse:
				if !ecdsa.VerifyASN1(&key.PublicKey, tc.op.Payload, resp.Payload) {
					t.Fatal("signature does not verify")
				}
			}
		})
	}
}

// TestServerAnswersOutOfOrder: a slow request does not hold up a fast one
// sent after it on the same connection.
func TestServerAnswersOutOfOrder(t *testing.T) {
	p := newPKI(t)
	key := newKey(t, elliptic.P256())
	backend := newKeyBackend(key)
	release := make(chan struct{})
	backend.before = func(ctx context.Context, req *Request) error {
		if req.ID == 1 {
			select {
			case <-release:
			case <-ctx.Done():
			}
		}
		return nil
	}
	srv := startServer(t, p, backend)
	c := dialRaw(t, p, srv.addr)
	op := protocol.Operation{Opcode: protocol.OpECDSASignSHA256, SKI: skiOf(t, key), Payload: make([]byte, 32)}
	c.send(1, op, nil)
	c.send(2, op, nil)
	if id, _ := c.recv(); id != 2 {
		t.Fatalf("first answer is for %d, want 2 (1 is still signing)", id)
	}
	close(release)
	if id, _ := c.recv(); id != 1 {
		t.Fatalf("second answer is for %d, want 1", id)
	}
}

// TestServerBadFrameClosesOnlyThatConnection: bytes that are not a frame
// cost the connection they came on, nothing else.
func TestServerBadFrameClosesOnlyThatConnection(t *testing.T) {
	p := newPKI(t)
	key := newKey(t, elliptic.P256())
	srv := startServer(t, p, newKeyBackend(key))
	client := newTestClient(t, p, []string{srv.addr})
	ski := skiOf(t, key)
	sign := func(t *testing.T) {
		t.Helper()
		if _, err := client.Sign(context.Background(), ski, crypto.SHA256, make([]byte, 32)); err != nil {
			t.Fatalf("another client stopped signing: %v", err)
		}
	}
	sign(t)

	header := func(major byte, length uint16) []byte {
		h := []byte{major, 0, 0, 0, 0, 0, 0, 1}
		binary.BigEndian.PutUint16(h[2:4], length)
		return h
	}
	opcode := []byte{byte(protocol.TagOpcode), 0, 1, byte(protocol.OpPing)}
	auth := []byte{byte(keylesswire.TagAuthority), 0, 1, 'a'}
	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{"wrong version", append(header(9, 16), "not a keyless op"...)},
		{"oversize", append(header(1, 0xFFFF), make([]byte, 64)...)},
		{"item past end of body", append(header(1, 8), 0x12, 0x10, 0x00, 1, 2, 3, 4, 5)},
		{"duplicate authority", append(header(1, uint16(len(opcode)+2*len(auth))), append(append(opcode, auth...), auth...)...)},
		{"deadline item of 3 bytes", append(header(1, uint16(len(opcode)+6)), append(slices.Clone(opcode), byte(keylesswire.TagDeadline), 0, 3, 1, 2, 3)...)},
		{"http", []byte("GET / HTTP/1.1\r\nHost: signer\r\n\r\n")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRaw(t, p, srv.addr)
			if _, err := c.Write(tc.in); err != nil {
				t.Fatal(err)
			}
			if !c.closedByServer() {
				t.Fatal("the server did not close the connection")
			}
			sign(t)
			local := c.LocalAddr().String()
			if logs := srv.logs.String(); !hasLogLine(logs, "warn", "remote", local) {
				t.Errorf("no warn log with remote %s:\n%s", local, logs)
			}
		})
	}
	if n := srv.l.accepted(); n != 7 {
		t.Errorf("%d connections accepted, want 7: the good client's one survived", n)
	}
}

// hasLogLine reports whether a JSON log line has the level and field value.
func hasLogLine(logs, level, field, value string) bool {
	for _, line := range strings.Split(logs, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil {
			continue
		}
		if m["level"] == level && m[field] == value {
			return true
		}
	}
	return false
}

func TestServerBackendPanic(t *testing.T) {
	p := newPKI(t)
	key := newKey(t, elliptic.P256())
	backend := newKeyBackend(key)
	backend.before = func(_ context.Context, req *Request) error {
		if req.Digest[0] == 0xEE {
			panic("backend bug")
		}
		return nil
	}
	srv := startServer(t, p, backend)
	c := newTestClient(t, p, []string{srv.addr})
	bad := make([]byte, 32)
	bad[0] = 0xEE
	_, err := c.Sign(context.Background(), skiOf(t, key), crypto.SHA256, bad)
	var re *RemoteError
	if !errors.As(err, &re) || re.Code != protocol.ErrInternal {
		t.Fatalf("got %v, want RemoteError ErrInternal", err)
	}
	if _, err := c.Sign(context.Background(), skiOf(t, key), crypto.SHA256, make([]byte, 32)); err != nil {
		t.Fatalf("after a backend panic: %v", err)
	}
	if n := srv.l.accepted(); n != 1 {
		t.Errorf("%d connections, want 1: the panic must not cost the connection", n)
	}
	if !hasLogLine(srv.logs.String(), "error", "panic", "backend bug") {
		t.Error("the panic was not logged")
	}
}

func TestServerErrorMapping(t *testing.T) {
	p := newPKI(t)
	key := newKey(t, elliptic.P256())
	for _, tc := range []struct {
		err  error
		want protocol.Error
	}{
		{protocol.ErrCrypto, protocol.ErrCrypto},
		{protocol.ErrKeyNotFound, protocol.ErrKeyNotFound},
		{errors.Join(errors.New("quorum"), protocol.ErrKeyNotFound), protocol.ErrKeyNotFound},
		{errors.New("peer b: round 3: deadline exceeded"), protocol.ErrInternal},
		{context.DeadlineExceeded, protocol.ErrInternal},
		{protocol.ErrNone, protocol.ErrInternal},
		{fmt.Errorf("sign key k: %w", ErrOverloaded), ErrOverloaded},
	} {
		t.Run(tc.err.Error(), func(t *testing.T) {
			backend := newKeyBackend(key)
			backend.before = func(context.Context, *Request) error { return tc.err }
			srv := startServer(t, p, backend)
			c := dialRaw(t, p, srv.addr)
			c.send(1, protocol.Operation{Opcode: protocol.OpECDSASignSHA256, SKI: skiOf(t, key), Payload: make([]byte, 32)}, nil)
			if _, resp := c.recv(); resp.Opcode != protocol.OpError || resp.GetError() != tc.want {
				t.Fatalf("response %v %x, want error %v", resp.Opcode, resp.Payload, tc.want)
			}
		})
	}
}

// TestServerRequestTimeout: the backend's context carries RequestTimeout.
func TestServerRequestTimeout(t *testing.T) {
	p := newPKI(t)
	key := newKey(t, elliptic.P256())
	backend := newKeyBackend(key)
	backend.before = func(ctx context.Context, _ *Request) error {
		if _, ok := ctx.Deadline(); !ok {
			return errors.New("no deadline")
		}
		<-ctx.Done()
		return ctx.Err()
	}
	srv := startServer(t, p, backend, func(cfg *ServerConfig) { cfg.RequestTimeout = 50 * time.Millisecond })
	c := dialRaw(t, p, srv.addr)
	c.send(1, protocol.Operation{Opcode: protocol.OpECDSASignSHA256, SKI: skiOf(t, key), Payload: make([]byte, 32)}, nil)
	if _, resp := c.recv(); resp.GetError() != protocol.ErrInternal {
		t.Fatalf("response %v %x, want ErrInternal", resp.Opcode, resp.Payload)
	}
}

// TestServerDeadlineFromBudget: the backend's deadline is the request's
// arrival plus the edge's budget (tag 0xC1), capped by RequestTimeout, so a
// signer stops when the edge stops waiting.
func TestServerDeadlineFromBudget(t *testing.T) {
	p := newPKI(t)
	key := newKey(t, elliptic.P256())
	left := make(chan time.Duration, 1)
	backend := newKeyBackend(key)
	backend.before = func(ctx context.Context, req *Request) error {
		d, ok := ctx.Deadline()
		if !ok || !d.Equal(req.Deadline) {
			return fmt.Errorf("ctx deadline %v (%v), Request.Deadline %v", d, ok, req.Deadline)
		}
		left <- time.Until(d)
		return errors.New("measured")
	}
	srv := startServer(t, p, backend, func(cfg *ServerConfig) { cfg.RequestTimeout = time.Minute })
	op := protocol.Operation{Opcode: protocol.OpECDSASignSHA256, SKI: skiOf(t, key), Payload: make([]byte, 32)}
	for _, tc := range []struct {
		name     string
		extras   keylesswire.Extras
		min, max time.Duration // bounds on the time left when the backend is called
	}{
		{"no budget: RequestTimeout", keylesswire.Extras{}, 50 * time.Second, time.Minute},
		{"budget shorter than RequestTimeout", keylesswire.Extras{Budget: 800 * time.Millisecond, HasBudget: true}, time.Nanosecond, 800 * time.Millisecond},
		{"absurd budget: capped", keylesswire.Extras{Budget: keylesswire.MaxBudget, HasBudget: true}, 50 * time.Second, time.Minute},
		{"zero budget: already late", keylesswire.Extras{Budget: 0, HasBudget: true}, -time.Minute, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRaw(t, p, srv.addr)
			c.sendExtras(1, op, tc.extras)
			if _, resp := c.recv(); resp.Opcode != protocol.OpError {
				t.Fatalf("response %v, want the backend's error", resp.Opcode)
			}
			select {
			case got := <-left:
				if got < tc.min || got > tc.max {
					t.Errorf("backend called with %v left, want between %v and %v", got, tc.min, tc.max)
				}
			default:
				t.Fatal("backend not called, or its deadline was not the request's")
			}
		})
	}
}

func TestServerLogs(t *testing.T) {
	p := newPKI(t)
	key := newKey(t, elliptic.P256())
	srv := startServer(t, p, newKeyBackend(key))
	c := newTestClient(t, p, []string{srv.addr})
	d := digests("a digest that must not be logged")[crypto.SHA256]
	sig, err := c.Sign(context.Background(), skiOf(t, key), crypto.SHA256, d)
	if err != nil {
		t.Fatal(err)
	}
	other := newKey(t, elliptic.P256())
	if _, err := c.Sign(context.Background(), skiOf(t, other), crypto.SHA256, d); err == nil {
		t.Fatal("unknown key signed")
	}

	logs := srv.logs.String()
	for _, secret := range [][]byte{d, sig} {
		for _, enc := range []string{hex.EncodeToString(secret), base64.StdEncoding.EncodeToString(secret), string(secret)} {
			if strings.Contains(logs, enc) {
				t.Fatalf("logs contain a digest or signature:\n%s", logs)
			}
		}
	}
	var found bool
	for _, line := range strings.Split(logs, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil || m["level"] != "warn" {
			continue
		}
		found = true
		for _, f := range []string{"remote", "identity", "ski", "op", "dur_ms", "err"} {
			if _, ok := m[f]; !ok {
				t.Errorf("failed-sign log has no %q field: %s", f, line)
			}
		}
		if m["identity"] != "edge-1" || m["ski"] != skiOf(t, other).String() {
			t.Errorf("log fields: %s", line)
		}
	}
	if !found {
		t.Fatalf("no warn log for the failed signature:\n%s", logs)
	}
}

func TestNewServerRefusesLaxConfig(t *testing.T) {
	p := newPKI(t)
	backend := newKeyBackend()
	lax := func(f func(*tls.Config)) *tls.Config {
		c := p.serverTLS()
		f(c)
		return c
	}
	for name, cfg := range map[string]ServerConfig{
		"no TLS":            {Backend: backend},
		"no backend":        {TLS: p.serverTLS()},
		"client cert asked": {TLS: lax(func(c *tls.Config) { c.ClientAuth = tls.RequestClientCert }), Backend: backend},
		"any client cert":   {TLS: lax(func(c *tls.Config) { c.ClientAuth = tls.RequireAnyClientCert }), Backend: backend},
		"no client CAs":     {TLS: lax(func(c *tls.Config) { c.ClientCAs = nil }), Backend: backend},
		"no certificate":    {TLS: lax(func(c *tls.Config) { c.Certificates = nil }), Backend: backend},
	} {
		if _, err := NewServer(cfg); err == nil {
			t.Errorf("%s: NewServer accepted it", name)
		}
	}
}

func TestServerRefusesClientWithoutCertificate(t *testing.T) {
	p := newPKI(t)
	srv := startServer(t, p, newKeyBackend())
	cfg := p.clientTLS()
	cfg.Certificates = nil
	cfg.ServerName = "127.0.0.1"
	c, err := tls.Dial("tcp", srv.addr, cfg)
	if err != nil {
		return // TLS 1.2: refused in the handshake
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	frame, _ := keylesswire.MarshalRequest(1, protocol.Operation{Opcode: protocol.OpPing}, keylesswire.Extras{})
	c.Write(frame)
	if _, _, _, err := keylesswire.ReadRequest(c, 0); err == nil {
		t.Fatal("a client without a certificate got an answer")
	}
}

// TestServerCloseCancelsRequests: Close does not wait for a backend's own
// deadline; it cancels the request context and returns.
func TestServerCloseCancelsRequests(t *testing.T) {
	p := newPKI(t)
	key := newKey(t, elliptic.P256())
	backend := newKeyBackend(key)
	entered := make(chan struct{})
	cancelled := make(chan error, 1)
	backend.before = func(ctx context.Context, _ *Request) error {
		close(entered)
		<-ctx.Done()
		cancelled <- ctx.Err()
		return ctx.Err()
	}
	srv := startServer(t, p, backend, func(cfg *ServerConfig) { cfg.RequestTimeout = time.Hour })
	c := dialRaw(t, p, srv.addr)
	c.send(1, protocol.Operation{Opcode: protocol.OpECDSASignSHA256, SKI: skiOf(t, key), Payload: make([]byte, 32)}, nil)
	<-entered
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-cancelled; !errors.Is(err, context.Canceled) {
		t.Fatalf("backend context ended with %v, want Canceled", err)
	}
	if !c.closedByServer() {
		t.Fatal("connection still open after Close")
	}
}
