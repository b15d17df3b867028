package tlsglue

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testClock is a clock a test moves by hand, shared by the server (tls.Config.Time, which
// tlsglue's ticket policy also reads) and the client.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// TestTicketLifetime: a client that keeps resuming is sent back to a full handshake once
// --ticket-lifetime has passed since its ORIGINAL full handshake, not since the ticket it
// presents was issued. crypto/tls re-issues a ticket on every resumption (TLS 1.2 keeping the
// session's creation time but not SessionState.Extra, TLS 1.3 keeping neither), so a policy
// that stamped each new ticket would let a session live for ever.
func TestTicketLifetime(t *testing.T) {
	const lifetime = time.Hour
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(version), func(t *testing.T) {
			p := newPKIChain(t, "leaf.test")
			keys := &countingKeys{key: p.leaf.key}
			var hellos atomic.Int64
			cfg, err := ServerConfig(ServerOptions{
				Chain: &Chain{Leaf: p.leaf.cert, Intermediates: []*x509.Certificate{p.inter.cert}},
				Keys:  keys,
				// The edge's own ClientHello hook runs before the ticket policy's.
				OnClientHello: func(*tls.ClientHelloInfo) { hellos.Add(1) },
				// A rotation far longer than the test: the keys stay those derived at start,
				// whatever the wall clock does meanwhile.
				Tickets: &TicketPolicy{Secret: bytes.Repeat([]byte{1}, 32), Lifetime: lifetime, Rotation: 1000 * time.Hour},
			})
			if err != nil {
				t.Fatal(err)
			}
			clock := &testClock{t: time.Now()}
			cfg.Time = clock.now
			addr := serveTLS(t, cfg)
			client := &tls.Config{RootCAs: p.pool(), ServerName: "leaf.test", MinVersion: version, MaxVersion: version,
				ClientSessionCache: tls.NewLRUClientSessionCache(8), Time: clock.now}

			// Minutes since the original full handshake, and whether the connection must resume.
			steps := []struct {
				at     time.Duration
				resume bool
			}{
				{0, false},
				{25 * time.Minute, true},
				{50 * time.Minute, true},  // its ticket was re-issued at 25 min
				{75 * time.Minute, false}, // 25 min after the last re-issue, but 75 after the full handshake
				{100 * time.Minute, true}, // the full handshake at 75 min started a new session
				{125 * time.Minute, true},
				{150 * time.Minute, false},
			}
			start := clock.now()
			for _, s := range steps {
				clock.advance(start.Add(s.at).Sub(clock.now()))
				signsBefore := keys.signs.Load()
				st := fetch(t, addr, client)
				if st.DidResume != s.resume {
					t.Fatalf("at %v: resumed = %v, want %v", s.at, st.DidResume, s.resume)
				}
				if signed := keys.signs.Load() - signsBefore; signed != 0 == s.resume {
					t.Fatalf("at %v: %d signatures for a handshake that resumed = %v", s.at, signed, st.DidResume)
				}
			}
			if n := hellos.Load(); n != int64(len(steps)) {
				t.Errorf("OnClientHello saw %d ClientHellos, want %d", n, len(steps))
			}
		})
	}
}

// TestTicketReissueFailsSafe: when a handshake bypasses the per-connection hook (someone
// replaced GetConfigForClient), a ticket re-issued on resumption cannot be stamped with its
// session's age, so it must not resume: the session ends early instead of living for ever.
func TestTicketReissueFailsSafe(t *testing.T) {
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(version), func(t *testing.T) {
			p := newPKIChain(t, "leaf.test")
			cfg, err := ServerConfig(ServerOptions{
				Chain:   &Chain{Leaf: p.leaf.cert, Intermediates: []*x509.Certificate{p.inter.cert}},
				Keys:    &countingKeys{key: p.leaf.key},
				Tickets: &TicketPolicy{Secret: bytes.Repeat([]byte{2}, 32)},
			})
			if err != nil {
				t.Fatal(err)
			}
			cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) { return nil, nil }
			addr := serveTLS(t, cfg)
			client := &tls.Config{RootCAs: p.pool(), ServerName: "leaf.test", MinVersion: version, MaxVersion: version,
				ClientSessionCache: tls.NewLRUClientSessionCache(8)}
			for i, want := range []bool{false, true, false, true} {
				if got := fetch(t, addr, client).DidResume; got != want {
					t.Fatalf("connection %d: resumed = %v, want %v", i+1, got, want)
				}
			}
		})
	}
}
