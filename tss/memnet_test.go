package tss

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// deliverer is what both session kinds accept.
type deliverer interface {
	Deliver(from string, broadcast bool, payload []byte) error
}

// memnet is the in-memory transport: every member's outbox delivers
// straight into the other members' sessions. It is what tss tests and
// benchmarks use instead of gRPC, so their figures show the engine alone.
type memnet struct {
	mu       sync.Mutex
	sessions map[string]deliverer
	// tamper, if set, may rewrite or drop (nil) a payload in flight.
	tamper func(from, to string, m Outgoing) []byte
}

func newMemnet() *memnet { return &memnet{sessions: map[string]deliverer{}} }

func (n *memnet) join(name string, d deliverer) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.sessions[name] = d
}

func (n *memnet) outbox(from string) Outbox {
	return OutboxFunc(func(ctx context.Context, m Outgoing) error {
		for _, to := range m.To {
			n.mu.Lock()
			d := n.sessions[to]
			n.mu.Unlock()
			if d == nil {
				return fmt.Errorf("memnet: no session for %q", to)
			}
			payload := m.Payload
			if n.tamper != nil {
				if payload = n.tamper(from, to, m); payload == nil {
					continue
				}
			}
			if err := d.Deliver(from, m.Broadcast, payload); err != nil && err != ErrSessionClosed {
				return err
			}
		}
		return nil
	})
}

// testPreParams loads the committed, test-only pre-parameters: generating
// safe primes takes 10–30 s per party.
func testPreParams(t testing.TB, i int) *PreParams {
	t.Helper()
	p, err := LoadPreParams(filepath.Join("testdata", "preparams", fmt.Sprintf("party-%d.json", i)), nil)
	if err != nil {
		t.Fatalf("test pre-parameters: %v", err)
	}
	return p
}

var partyNames = []string{"a", "b", "c"}

// runKeygen runs a whole (t, n) ceremony in memory.
func runKeygen(t testing.TB, threshold, n int) []*Share {
	t.Helper()
	names := partyNames[:n]
	net := newMemnet()
	sessions := make([]*KeygenSession, n)
	for i, name := range names {
		s, err := NewKeygenSession(threshold, names, name, testPreParams(t, i), net.outbox(name))
		if err != nil {
			t.Fatal(err)
		}
		sessions[i] = s
		net.join(name, s)
	}
	shares := make([]*Share, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, s := range sessions {
		wg.Go(func() { shares[i], errs[i] = s.Run(context.Background()) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("keygen party %s: %v", names[i], err)
		}
	}
	return shares
}

// fixtureShares returns the shares of a test key for (t, n), made by a real
// in-memory ceremony on first use in this test binary and reused after.
func fixtureShares(t testing.TB, threshold, n int) []*Share {
	t.Helper()
	fixtureMu.Lock()
	defer fixtureMu.Unlock()
	k := [2]int{threshold, n}
	if s, ok := fixtures[k]; ok {
		return s
	}
	fixtures[k] = runKeygen(t, threshold, n)
	return fixtures[k]
}

var (
	fixtureMu sync.Mutex
	fixtures  = map[[2]int][]*Share{}
)

// runSign signs digest with the quorum's shares in memory.
func runSign(t testing.TB, shares []*Share, digest []byte, net *memnet) ([]byte, error) {
	t.Helper()
	var quorum []string
	for _, s := range shares {
		quorum = append(quorum, s.Self)
	}
	if net == nil {
		net = newMemnet()
	}
	sessions := make([]*SignSession, len(shares))
	for i, sh := range shares {
		s, err := NewSignSession(sh, quorum, digest, net.outbox(sh.Self))
		if err != nil {
			return nil, err
		}
		sessions[i] = s
		net.join(sh.Self, s)
	}
	sigs := make([][]byte, len(shares))
	errs := make([]error, len(shares))
	var wg sync.WaitGroup
	for i, s := range sessions {
		wg.Go(func() {
			// A bound, so a test whose session goes wrong fails instead of hanging.
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			sigs[i], errs[i] = s.Run(ctx)
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	for _, sig := range sigs[1:] {
		if string(sig) != string(sigs[0]) {
			return nil, fmt.Errorf("quorum members returned different signatures")
		}
	}
	return sigs[0], nil
}
