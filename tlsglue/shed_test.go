package tlsglue

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func tcpAddr(s string) net.Addr { return net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s)) }

// noRefill is a client rate so slow that no token comes back during a test: the burst is the
// whole budget.
const noRefill = 1e-6

func TestShedClientBudget(t *testing.T) {
	cases := []struct {
		name   string
		policy ShedPolicy
		// admits are tried in order; want says whether each is admitted.
		admits []string
		want   []bool
	}{
		{
			name:   "IPv4 grouped by /24",
			policy: ShedPolicy{ClientRate: noRefill, ClientBurst: 2},
			admits: []string{"10.0.0.1:1", "10.0.0.1:2", "10.0.0.200:3", "10.0.1.1:4"},
			want:   []bool{true, true, false, true},
		},
		{
			name:   "one budget per address with /32",
			policy: ShedPolicy{ClientRate: noRefill, ClientBurst: 1, IPv4Prefix: 32},
			admits: []string{"127.0.0.2:1", "127.0.0.2:2", "127.0.0.3:3"},
			want:   []bool{true, false, true},
		},
		{
			name:   "IPv6 grouped by /64",
			policy: ShedPolicy{ClientRate: noRefill, ClientBurst: 1},
			admits: []string{"[2001:db8::1]:1", "[2001:db8::ffff:1]:2", "[2001:db8:0:1::1]:3"},
			want:   []bool{true, false, true},
		},
		{
			name:   "IPv4-mapped IPv6 is IPv4",
			policy: ShedPolicy{ClientRate: noRefill, ClientBurst: 1},
			admits: []string{"[::ffff:10.0.0.1]:1", "10.0.0.2:2"},
			want:   []bool{true, false},
		},
		{
			name:   "allow list has no budget",
			policy: ShedPolicy{ClientRate: noRefill, ClientBurst: 1, Allow: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}},
			admits: []string{"192.0.2.7:1", "192.0.2.7:2", "192.0.2.8:3", "198.51.100.1:4", "198.51.100.1:5"},
			want:   []bool{true, true, true, true, false},
		},
		{
			name:   "an allowed address inside a budgeted prefix",
			policy: ShedPolicy{ClientRate: noRefill, ClientBurst: 1, Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.9/32")}},
			admits: []string{"10.0.0.9:1", "10.0.0.9:2", "10.0.0.1:3", "10.0.0.2:4"},
			want:   []bool{true, true, true, false},
		},
		{
			name:   "a full table puts new prefixes on one shared budget",
			policy: ShedPolicy{ClientRate: noRefill, ClientBurst: 1, MaxClients: 1},
			admits: []string{"10.0.0.1:1", "10.0.1.1:2", "10.0.2.1:3"},
			want:   []bool{true, true, false},
		},
		{
			name:   "no client rate: no budget",
			policy: ShedPolicy{},
			admits: []string{"10.0.0.1:1", "10.0.0.1:2", "10.0.0.1:3"},
			want:   []bool{true, true, true},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := NewShedder(tc.policy)
			if err != nil {
				t.Fatal(err)
			}
			for i, a := range tc.admits {
				release, _, err := s.Admit(context.Background(), tcpAddr(a))
				if got := err == nil; got != tc.want[i] {
					t.Fatalf("admit %d from %s: err %v, want admitted %v", i, a, err, tc.want[i])
				}
				if err != nil {
					var se *ShedError
					if !errors.As(err, &se) || se.Reason != ShedClientBudget || !errors.Is(err, ErrShed) {
						t.Fatalf("admit %d from %s: %v, want a client_budget ShedError", i, a, err)
					}
					continue
				}
				release(true)
			}
		})
	}
}

func TestShedPolicyRejects(t *testing.T) {
	for _, p := range []ShedPolicy{
		{MaxInFlight: -1},
		{MaxQueue: -1},
		{ClientRate: -1},
		{ClientRate: 1, ClientBurst: 0},
		{IPv4Prefix: 33},
		{IPv6Prefix: 129},
		{MaxClients: -1},
		{ClientShare: -1},
	} {
		if _, err := NewShedder(p); err == nil {
			t.Errorf("NewShedder(%+v) accepted", p)
		}
	}
}

// waitQueued waits until n handshakes are waiting for a slot (a readiness check, not a sleep).
func waitQueued(t *testing.T, s *Shedder, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for s.Queued() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d queued, want %d", s.Queued(), n)
		}
		runtime.Gosched()
	}
}

// With every slot taken, a handshake waits in the queue while the queue has room, and is shed
// at once when it has none; a released slot goes to the waiter.
func TestShedInFlightAndQueue(t *testing.T) {
	s, err := NewShedder(ShedPolicy{MaxInFlight: 1, MaxQueue: 1, ClientShare: 3})
	if err != nil {
		t.Fatal(err)
	}
	client := tcpAddr("10.0.0.1:1")
	releaseA, _, err := s.Admit(context.Background(), client)
	if err != nil {
		t.Fatal(err)
	}
	if s.InFlight() != 1 {
		t.Fatalf("in flight %d, want 1", s.InFlight())
	}
	type result struct {
		release func(bool)
		waited  time.Duration
		err     error
	}
	b := make(chan result, 1)
	go func() {
		r, w, err := s.Admit(context.Background(), client)
		b <- result{r, w, err}
	}()
	waitQueued(t, s, 1)

	start := time.Now()
	_, _, err = s.Admit(context.Background(), client)
	var se *ShedError
	if !errors.As(err, &se) || se.Reason != ShedQueueFull {
		t.Fatalf("third admit with the queue full: %v, want queue_full", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("queue_full took %v; it must be at once", d)
	}

	releaseA(true)
	r := <-b
	if r.err != nil {
		t.Fatalf("queued admit: %v", r.err)
	}
	if r.waited <= 0 {
		t.Errorf("queued admit waited %v", r.waited)
	}
	if s.InFlight() != 1 || s.Queued() != 0 {
		t.Errorf("in flight %d, queued %d; want 1, 0", s.InFlight(), s.Queued())
	}
	r.release(true)
	if s.InFlight() != 0 {
		t.Errorf("in flight %d after every release", s.InFlight())
	}
}

// A waiting handshake gives up when what is left of its deadline is no longer enough for a
// signature, and one that arrives with less left than a signature takes is shed at once.
func TestShedDeadline(t *testing.T) {
	s, err := NewShedder(ShedPolicy{MaxInFlight: 1, MaxQueue: 4})
	if err != nil {
		t.Fatal(err)
	}
	client := tcpAddr("10.0.0.1:1")
	release, _, err := s.Admit(context.Background(), client)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, waited, err := s.Admit(ctx, client)
	var se *ShedError
	if !errors.As(err, &se) || se.Reason != ShedDeadline {
		t.Fatalf("admit past its deadline: %v, want deadline", err)
	}
	if waited > time.Second {
		t.Errorf("waited %v for a 100ms deadline", waited)
	}
	if s.Queued() != 0 {
		t.Errorf("%d still queued", s.Queued())
	}

	// Teach it that signatures take 2 s; a handshake with 1 s left is not worth queueing.
	s.observe(2 * time.Second)
	ctx2, cancel2 := context.WithTimeout(context.Background(), time.Second)
	defer cancel2()
	start := time.Now()
	if _, _, err := s.Admit(ctx2, client); !errors.As(err, &se) || se.Reason != ShedDeadline {
		t.Fatalf("admit with 1s left and 2s signatures: %v, want deadline", err)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("shedding a hopeless handshake took %v; it must be at once", d)
	}
	release(true)
}

// One client prefix holds at most its share of slots and queue together: another client still
// finds room, and the share comes back when a signature is done.
func TestShedClientShare(t *testing.T) {
	s, err := NewShedder(ShedPolicy{MaxInFlight: 2, MaxQueue: 2, Allow: []netip.Prefix{netip.MustParsePrefix("192.0.2.1/32")}})
	if err != nil {
		t.Fatal(err)
	}
	if s.Policy().ClientShare != 2 {
		t.Fatalf("default client share %d, want half of 2 slots + 2 queued", s.Policy().ClientShare)
	}
	flood, visitor := tcpAddr("10.0.0.1:1"), tcpAddr("10.0.1.1:1")
	r1, _, err1 := s.Admit(context.Background(), flood)
	r2, _, err2 := s.Admit(context.Background(), tcpAddr("10.0.0.2:2")) // same /24
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	_, _, err = s.Admit(context.Background(), flood)
	var se *ShedError
	if !errors.As(err, &se) || se.Reason != ShedClientShare || se.Client != netip.MustParsePrefix("10.0.0.0/24") {
		t.Fatalf("third from the flood's prefix: %v, want client_share", err)
	}
	b := make(chan error, 1)
	go func() {
		r, _, err := s.Admit(context.Background(), visitor)
		if err == nil {
			r(true)
		}
		b <- err
	}()
	waitQueued(t, s, 1) // the visitor queues: the flood holds every slot but not the queue
	// An allowed address has no share.
	go func() {
		r, _, err := s.Admit(context.Background(), tcpAddr("192.0.2.1:1"))
		if err == nil {
			r(true)
		}
		b <- err
	}()
	waitQueued(t, s, 2)
	r1(true)
	r2(true)
	for range 2 {
		if err := <-b; err != nil {
			t.Fatalf("queued: %v", err)
		}
	}
	r3, _, err := s.Admit(context.Background(), flood)
	if err != nil {
		t.Fatalf("the flood's prefix after its signatures are done: %v", err)
	}
	r3(true)
}

// Over real TLS: a client over its budget fails its next full handshake without the key source
// being asked, and still resumes the session it has.
func TestShedOverTLS(t *testing.T) {
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(version), func(t *testing.T) {
			shed, err := NewShedder(ShedPolicy{ClientRate: noRefill, ClientBurst: 1, MaxInFlight: 4})
			if err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			var events []SignEvent
			p, keys, addr := newTestServer(t, ServerOptions{Shed: shed, OnSign: func(e SignEvent) {
				mu.Lock()
				defer mu.Unlock()
				events = append(events, e)
			}})
			client := &tls.Config{RootCAs: p.pool(), ServerName: "leaf.test", MinVersion: version, MaxVersion: version,
				ClientSessionCache: tls.NewLRUClientSessionCache(8)}
			if st := fetch(t, addr, client); st.DidResume {
				t.Fatal("first connection resumed")
			}

			fresh := client.Clone()
			fresh.ClientSessionCache = nil
			c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, fresh)
			if err == nil {
				c.Close()
				t.Fatal("a full handshake over the client's budget succeeded")
			}
			if n := keys.signers.Load(); n != 1 {
				t.Errorf("the key source was asked %d times, want 1 (the shed handshake must not reach it)", n)
			}

			if st := fetch(t, addr, client); !st.DidResume {
				t.Error("resumption failed for a client over its full-handshake budget")
			}
			mu.Lock()
			defer mu.Unlock()
			if len(events) != 2 || events[0].Err != nil || !errors.Is(events[1].Err, ErrShed) {
				t.Errorf("sign events = %+v, want one signature and one shed", events)
			}
			if shed.InFlight() != 0 {
				t.Errorf("in flight %d after every handshake", shed.InFlight())
			}
		})
	}
}

// The slot limit falls on slow or failed signatures, never below one, and climbs back on fast
// ones, never above MaxInFlight; a raised limit lets waiters in.
func TestShedAdaptiveSlots(t *testing.T) {
	s, err := NewShedder(ShedPolicy{MaxInFlight: 8, TargetLatency: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if s.Slots() != 1 {
		t.Fatalf("starting slots %d, want 1", s.Slots())
	}
	s.slotMu.Lock()
	for range 3 {
		s.adapt(true, time.Millisecond)
	}
	s.slotMu.Unlock()
	if s.Slots() != 2 {
		t.Fatalf("slots after 3 fast signatures %d, want 2", s.Slots())
	}
	s.slotMu.Lock()
	for range 50 {
		s.adapt(false, time.Second)
	}
	s.slotMu.Unlock()
	if s.Slots() != 1 {
		t.Fatalf("slots after slow signatures %d, want 1", s.Slots())
	}
	client := tcpAddr("10.0.0.1:1")
	release, _, err := s.Admit(context.Background(), client)
	if err != nil {
		t.Fatal(err)
	}
	b := make(chan error, 1)
	go func() {
		r, _, err := s.Admit(context.Background(), tcpAddr("10.0.1.1:1"))
		if err == nil {
			r(true)
		}
		b <- err
	}()
	waitQueued(t, s, 1)
	s.slotMu.Lock()
	for range 100 {
		s.adapt(true, time.Millisecond)
	}
	s.grant()
	s.slotMu.Unlock()
	if err := <-b; err != nil {
		t.Fatalf("waiter after the limit rose: %v", err)
	}
	if s.Slots() != 8 {
		t.Fatalf("slots after fast signatures %d, want the cap 8", s.Slots())
	}
	release(true)

	fixed, _ := NewShedder(ShedPolicy{MaxInFlight: 3})
	fixed.slotMu.Lock()
	fixed.adapt(false, time.Hour)
	fixed.slotMu.Unlock()
	if fixed.Slots() != 3 {
		t.Errorf("without a target latency the slots moved to %d", fixed.Slots())
	}
}

// A slot freed while a flood and a visitor both wait goes to the visitor, whose client has
// less in flight and queued, though the flood's handshakes queued first.
func TestShedFairGrant(t *testing.T) {
	s, err := NewShedder(ShedPolicy{MaxInFlight: 1, MaxQueue: 4, ClientShare: 4})
	if err != nil {
		t.Fatal(err)
	}
	flood, visitor := tcpAddr("10.0.0.1:1"), tcpAddr("10.0.1.1:1")
	release, _, err := s.Admit(context.Background(), flood)
	if err != nil {
		t.Fatal(err)
	}
	order := make(chan string, 3)
	admit := func(who string, a net.Addr) {
		r, _, err := s.Admit(context.Background(), a)
		if err != nil {
			order <- who + ": " + err.Error()
			return
		}
		order <- who
		r(true)
	}
	go admit("flood", flood)
	waitQueued(t, s, 1)
	go admit("flood", flood)
	waitQueued(t, s, 2)
	go admit("visitor", visitor)
	waitQueued(t, s, 3)
	release(true)
	if first := <-order; first != "visitor" {
		t.Fatalf("first granted: %s, want the visitor", first)
	}
	for range 2 {
		if got := <-order; got != "flood" {
			t.Fatalf("then: %s, want the flood", got)
		}
	}
}

// One client queues in at most half the queue, however large its share: the other half stays
// free for everyone else.
func TestShedHalfQueue(t *testing.T) {
	s, err := NewShedder(ShedPolicy{MaxInFlight: 1, MaxQueue: 4, ClientShare: 10})
	if err != nil {
		t.Fatal(err)
	}
	flood := tcpAddr("10.0.0.1:1")
	release, _, err := s.Admit(context.Background(), flood)
	if err != nil {
		t.Fatal(err)
	}
	results := make(chan error, 4)
	admit := func(a net.Addr) {
		r, _, err := s.Admit(context.Background(), a)
		if err == nil {
			r(true)
		}
		results <- err
	}
	go admit(flood)
	waitQueued(t, s, 1)
	go admit(flood)
	waitQueued(t, s, 2)
	var se *ShedError
	if _, _, err := s.Admit(context.Background(), flood); !errors.As(err, &se) || se.Reason != ShedClientShare {
		t.Fatalf("the flood's third queued handshake: %v, want client_share", err)
	}
	go admit(tcpAddr("10.0.1.1:1"))
	go admit(tcpAddr("10.0.2.1:1"))
	waitQueued(t, s, 4)
	release(true)
	for range 4 {
		if err := <-results; err != nil {
			t.Fatalf("queued: %v", err)
		}
	}
}

// An allowed address inside a limited prefix takes slots and queue like anyone, but they are
// not charged to the prefix's share: its other addresses still get theirs.
func TestShedClientShareSkipsAllowedNeighbour(t *testing.T) {
	s, err := NewShedder(ShedPolicy{MaxInFlight: 2, MaxQueue: 4, ClientShare: 1,
		Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.9/32")}})
	if err != nil {
		t.Fatal(err)
	}
	allowed, limited := tcpAddr("10.0.0.9:1"), tcpAddr("10.0.0.1:1")
	var releases []func(bool)
	for range 2 { // the allowed address takes every slot...
		r, _, err := s.Admit(context.Background(), allowed)
		if err != nil {
			t.Fatal(err)
		}
		releases = append(releases, r)
	}
	done := make(chan error, 2)
	go func() { // ...and queues
		r, _, err := s.Admit(context.Background(), allowed)
		if err == nil {
			r(true)
		}
		done <- err
	}()
	waitQueued(t, s, 1)
	go func() { // its neighbour still has its share of one
		r, _, err := s.Admit(context.Background(), limited)
		if err == nil {
			r(true)
		}
		done <- err
	}()
	waitQueued(t, s, 2)
	var se *ShedError
	if _, _, err := s.Admit(context.Background(), tcpAddr("10.0.0.2:1")); !errors.As(err, &se) || se.Reason != ShedClientShare {
		t.Fatalf("a second from the limited addresses of 10.0.0.0/24: %v, want client_share", err)
	}
	for _, r := range releases {
		r(true)
	}
	for range 2 {
		if err := <-done; err != nil {
			t.Fatalf("queued: %v", err)
		}
	}
	if err := checkShedState(s); err != nil || len(s.running) != 0 {
		t.Errorf("after every release: %v, running %v", err, s.running)
	}
}

// checkShedState checks, under slotMu, what the Shedder's own counts say: active and queued
// agree with running and waiters, and no prefix holds more than its ClientShare of slots and
// queue together (counting its addresses not in Allow). It returns the first inconsistency.
func checkShedState(s *Shedder) error {
	s.slotMu.Lock()
	defer s.slotMu.Unlock()
	all := 0
	share := map[netip.Prefix]int{}
	for pfx, r := range s.running {
		if r.all <= 0 || r.limited < 0 || r.limited > r.all {
			return fmt.Errorf("running[%s] = %+v", pfx, r)
		}
		all += r.all
		share[pfx] += r.limited
	}
	if all != s.active {
		return fmt.Errorf("active %d, but running sums to %d", s.active, all)
	}
	if int64(len(s.waiters)) != s.queued.Load() {
		return fmt.Errorf("queued %d, but %d waiters", s.queued.Load(), len(s.waiters))
	}
	for _, w := range s.waiters {
		if w.limited {
			share[w.client]++
		}
	}
	for pfx, n := range share {
		if n > s.p.ClientShare {
			return fmt.Errorf("prefix %s holds %d in flight and queued, over its share %d", pfx, n, s.p.ClientShare)
		}
	}
	return nil
}

// Many handshakes from a few prefixes (one with an allowed address inside it) admit, give up
// (cancelled, or with a deadline too short to wait for), sign and fail, concurrently; run it
// with -race. While it runs, no prefix ever holds more than its ClientShare, as seen by the
// admitted handshakes themselves and as sampled from the Shedder's counts; once all are done,
// nothing is left counted.
func TestShedCountsStayConsistent(t *testing.T) {
	s, err := NewShedder(ShedPolicy{MaxInFlight: 4, MaxQueue: 6, ClientShare: 3, TargetLatency: time.Millisecond,
		Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.9/32")}})
	if err != nil {
		t.Fatal(err)
	}
	addrs := []string{"10.0.0.1:1", "10.0.0.2:1", "10.0.0.9:1", "10.0.1.1:1", "10.0.2.1:1", "[2001:db8::1]:1"}
	var held sync.Map // prefix → *atomic.Int64: admitted and not yet released, limited addresses only
	var over atomic.Int64
	var outcomes [5]atomic.Int64 // admitted, client_share, queue_full, deadline, other

	stop := make(chan struct{})
	sampled := make(chan error, 1)
	go func() {
		var first error
		for {
			if err := checkShedState(s); err != nil && first == nil {
				first = err
			}
			select {
			case <-stop:
				sampled <- first
				return
			default:
				runtime.Gosched()
			}
		}
	}()

	const workers, rounds = 24, 150
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for range rounds {
				a := addrs[rng.IntN(len(addrs))]
				remote := tcpAddr(a)
				ip, pfx, _ := s.prefix(remote)
				limited := !s.allowed(ip)
				// A handshake's deadline: long enough to wait for a slot (a slot leaked by a
				// bug then fails the test instead of hanging it), or too short to be worth
				// waiting for, or just enough; some are cancelled while they may be waiting.
				timeout := 200 * time.Millisecond
				if rng.IntN(3) == 0 {
					timeout = time.Duration(rng.IntN(2000)) * time.Microsecond
				}
				ctx, cancel := context.WithTimeout(context.Background(), timeout)
				if rng.IntN(4) == 0 {
					time.AfterFunc(time.Duration(rng.IntN(300))*time.Microsecond, cancel)
				}
				release, _, err := s.Admit(ctx, remote)
				var se *ShedError
				switch {
				case err == nil:
					outcomes[0].Add(1)
				case errors.As(err, &se) && se.Reason == ShedClientShare:
					outcomes[1].Add(1)
				case errors.As(err, &se) && se.Reason == ShedQueueFull:
					outcomes[2].Add(1)
				case errors.As(err, &se) && se.Reason == ShedDeadline:
					outcomes[3].Add(1)
				default:
					outcomes[4].Add(1)
					t.Errorf("admit from %s: %v", a, err)
				}
				if err == nil {
					var n *atomic.Int64
					if limited {
						v, _ := held.LoadOrStore(pfx, new(atomic.Int64))
						n = v.(*atomic.Int64)
						if n.Add(1) > int64(s.p.ClientShare) {
							over.Add(1)
						}
					}
					time.Sleep(time.Duration(rng.IntN(500)) * time.Microsecond)
					if n != nil {
						n.Add(-1)
					}
					release(rng.IntN(5) != 0) // some signatures fail
				}
				cancel()
			}
		}()
	}
	wg.Wait()
	close(stop)
	if err := <-sampled; err != nil {
		t.Errorf("sampled while running: %v", err)
	}
	if n := over.Load(); n != 0 {
		t.Errorf("%d admissions took a prefix over its client share of %d", n, s.p.ClientShare)
	}
	t.Logf("admitted %d, shed client_share %d, queue_full %d, deadline %d",
		outcomes[0].Load(), outcomes[1].Load(), outcomes[2].Load(), outcomes[3].Load())
	if outcomes[0].Load() == 0 || outcomes[1].Load() == 0 || outcomes[3].Load() == 0 {
		t.Errorf("the load did not exercise admission, client_share and giving up")
	}

	if err := checkShedState(s); err != nil {
		t.Error(err)
	}
	s.slotMu.Lock()
	defer s.slotMu.Unlock()
	if s.active != 0 || len(s.waiters) != 0 || len(s.running) != 0 || s.InFlight() != 0 || s.Queued() != 0 {
		t.Errorf("after every handshake: active %d, waiters %d, running %v, in flight %d, queued %d; want all empty",
			s.active, len(s.waiters), s.running, s.InFlight(), s.Queued())
	}
}
