package tlsglue

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Defaults of ShedPolicy, documented in cmd/edge's --help.
const (
	// DefaultClientRate and DefaultClientBurst are the full-handshake budget of one client
	// prefix: a browser opening a page makes one full handshake and resumes the rest, a
	// busy NAT a few per second; a flood from one prefix gets this much and no more.
	DefaultClientRate  = 2.0
	DefaultClientBurst = 10
	// DefaultIPv4Prefix and DefaultIPv6Prefix group client addresses into one budget: an
	// attacker holds a /24 or a /64 as easily as one address.
	DefaultIPv4Prefix = 24
	DefaultIPv6Prefix = 64
	// DefaultMaxClients bounds the prefixes tracked at once, so a flood from many addresses
	// cannot grow the edge's memory without bound.
	DefaultMaxClients = 65536
)

// ShedReason says why a handshake was shed, as a metric label.
type ShedReason string

const (
	// ShedClientBudget: the client's prefix spent its full-handshake budget.
	ShedClientBudget ShedReason = "client_budget"
	// ShedQueueFull: every signing slot is busy and the queue for them is full.
	ShedQueueFull ShedReason = "queue_full"
	// ShedDeadline: the handshake could not get a slot while enough of its deadline was left
	// for a signature (as long as signatures take now).
	ShedDeadline ShedReason = "deadline"
	// ShedClientShare: the client's prefix already holds its share of the signing slots and
	// queue, or half the queue, so others always find room.
	ShedClientShare ShedReason = "client_share"
)

// ShedReasons are every ShedReason, for metrics.
var ShedReasons = []ShedReason{ShedClientBudget, ShedClientShare, ShedQueueFull, ShedDeadline}

// ShedError is the error of a handshake shed before any signer was asked.
type ShedError struct {
	Reason ShedReason
	Client netip.Prefix // the budget's prefix, for ShedClientBudget
}

func (e *ShedError) Error() string {
	switch e.Reason {
	case ShedClientBudget:
		return fmt.Sprintf("shed: client %s is over its full-handshake budget", e.Client)
	case ShedQueueFull:
		return "shed: every signing slot is busy and the queue is full"
	case ShedClientShare:
		return fmt.Sprintf("shed: client %s holds its share of the signing slots and queue", e.Client)
	}
	return "shed: no signing slot free in time for the handshake's deadline"
}

// ErrShed matches every ShedError with errors.Is.
var ErrShed = errors.New("shed")

// Is makes errors.Is(err, ErrShed) true for a ShedError.
func (e *ShedError) Is(target error) bool { return target == ErrShed }

// ShedPolicy is the edge's admission control for full handshakes: each costs the signer
// cluster one threshold signature (hundreds of milliseconds of CPU on each quorum member)
// against microseconds for the client, so what the cluster cannot serve in time is refused
// at once, before any signer is asked. Resumed handshakes make no signature and never meet it.
//
// The zero value sheds nothing.
type ShedPolicy struct {
	// MaxInFlight caps the signatures this edge has asked for and not yet received; 0: no cap.
	// Beyond it a handshake waits for a slot: the client with the least in flight and queued
	// first, then in arrival order.
	MaxInFlight int
	// MaxQueue caps the handshakes waiting for a slot; beyond it they are shed at once.
	// 0 with a MaxInFlight: as many as MaxInFlight.
	MaxQueue int

	// ClientRate is the full handshakes per second one client prefix may start, ClientBurst
	// how many it may start at once after a quiet spell. ClientRate 0: no per-client budget.
	ClientRate  float64
	ClientBurst int
	// IPv4Prefix and IPv6Prefix are the prefix lengths a client address is grouped by
	// (0: DefaultIPv4Prefix, DefaultIPv6Prefix; 32 and 128 for one budget per address).
	IPv4Prefix, IPv6Prefix int
	// Allow lists client prefixes without a budget (health checkers, a known proxy); they
	// still take signing slots like anyone.
	Allow []netip.Prefix
	// MaxClients bounds the prefixes tracked (0: DefaultMaxClients). When that many are
	// tracked and none is idle, new prefixes share one overflow budget.
	MaxClients int
	// TargetLatency is how long a signature should take once it has a slot. The number of
	// slots adapts (additive increase, multiplicative decrease) between 1 and MaxInFlight so
	// that signatures stay under it: more in flight than the signers can run at once makes
	// every signature slower until none finishes before its deadline, while the throughput
	// stays the same. 0: a fixed MaxInFlight.
	TargetLatency time.Duration
	// ClientShare caps the signatures one client prefix (not in Allow) may have in flight and
	// queued together, so that a flood within its budget still leaves slots and queue room to
	// everyone else. 0 with a MaxInFlight: half of MaxInFlight + MaxQueue.
	ClientShare int
}

// Shedder applies a ShedPolicy. Make one with NewShedder, one per edge process, and share it
// between configurations: its slots are the edge's.
type Shedder struct {
	p        ShedPolicy
	queued   atomic.Int64
	inFlight atomic.Int64
	// signNanos is a moving average of how long a signature takes once it has a slot, so a
	// waiting handshake gives up as soon as what is left of its deadline would not suffice.
	signNanos atomic.Int64

	// The signing slots: at most limit in flight (adapted between 1 and MaxInFlight), the
	// rest waiting (see grant). running and waiters are the only per-client counts: what a
	// prefix holds against its ClientShare is read from them, under slotMu (see share).
	slotMu  sync.Mutex
	limit   float64
	active  int
	waiters []waiter
	running map[netip.Prefix]inFlight // signatures in flight per client prefix

	mu        sync.Mutex // guards the budgets
	clients   map[netip.Prefix]*rate.Limiter
	overflow  *rate.Limiter
	lastSweep time.Time // a full table is swept at most once a second
}

// waiter is a handshake queued for a signing slot.
type waiter struct {
	granted chan struct{} // closed when granted a slot
	client  netip.Prefix
	limited bool // from an address not in Allow: counts against the prefix's ClientShare
}

// inFlight is one client prefix's signatures in flight: all of them (for grant), and those
// from addresses not in Allow (for ClientShare: an allowed address may share a prefix with
// others, and its signatures are not charged to them).
type inFlight struct{ all, limited int }

// NewShedder checks p and returns its Shedder.
func NewShedder(p ShedPolicy) (*Shedder, error) {
	switch {
	case p.MaxInFlight < 0:
		return nil, fmt.Errorf("shed policy: max in flight %d: want 0 (no cap) or more", p.MaxInFlight)
	case p.MaxQueue < 0:
		return nil, fmt.Errorf("shed policy: max queue %d: want 0 or more", p.MaxQueue)
	case p.ClientRate < 0:
		return nil, fmt.Errorf("shed policy: client rate %g: want 0 (no budget) or more", p.ClientRate)
	case p.ClientRate > 0 && p.ClientBurst < 1:
		return nil, fmt.Errorf("shed policy: client burst %d: want at least 1 with a client rate", p.ClientBurst)
	case p.IPv4Prefix < 0 || p.IPv4Prefix > 32:
		return nil, fmt.Errorf("shed policy: IPv4 prefix /%d: want 1 to 32", p.IPv4Prefix)
	case p.IPv6Prefix < 0 || p.IPv6Prefix > 128:
		return nil, fmt.Errorf("shed policy: IPv6 prefix /%d: want 1 to 128", p.IPv6Prefix)
	case p.MaxClients < 0:
		return nil, fmt.Errorf("shed policy: max clients %d: want 0 (the default) or more", p.MaxClients)
	case p.TargetLatency < 0:
		return nil, fmt.Errorf("shed policy: target latency %v: want 0 (fixed slots) or more", p.TargetLatency)
	case p.ClientShare < 0:
		return nil, fmt.Errorf("shed policy: client share %d: want 0 (the default) or more", p.ClientShare)
	}
	if p.IPv4Prefix == 0 {
		p.IPv4Prefix = DefaultIPv4Prefix
	}
	if p.IPv6Prefix == 0 {
		p.IPv6Prefix = DefaultIPv6Prefix
	}
	if p.MaxClients == 0 {
		p.MaxClients = DefaultMaxClients
	}
	s := &Shedder{p: p, clients: map[netip.Prefix]*rate.Limiter{}, running: map[netip.Prefix]inFlight{}}
	if p.MaxInFlight > 0 {
		if s.p.MaxQueue == 0 {
			s.p.MaxQueue = p.MaxInFlight
		}
		if s.p.ClientShare == 0 {
			s.p.ClientShare = max(1, (s.p.MaxInFlight+s.p.MaxQueue)/2)
		}
		s.limit = float64(p.MaxInFlight)
		if p.TargetLatency > 0 {
			// Start with one slot, as TCP starts with a small window: more in flight than the
			// signers can run at once costs every handshake its deadline, and fast signatures
			// show room within a few.
			s.limit = 1
		}
	}
	if p.ClientRate > 0 {
		s.overflow = rate.NewLimiter(rate.Limit(p.ClientRate), p.ClientBurst)
	}
	return s, nil
}

// Policy returns the policy in force, defaults filled in.
func (s *Shedder) Policy() ShedPolicy { return s.p }

// InFlight is the number of signatures asked for and not yet answered.
func (s *Shedder) InFlight() int { return int(s.inFlight.Load()) }

// Queued is the number of handshakes waiting for a signing slot.
func (s *Shedder) Queued() int { return int(s.queued.Load()) }

// Slots is the number of signatures allowed in flight now (adapted with TargetLatency), 0 if
// there is no cap.
func (s *Shedder) Slots() int {
	s.slotMu.Lock()
	defer s.slotMu.Unlock()
	return int(s.limit)
}

// Admit decides whether a full handshake from remote may ask for a signature. It returns at once
// when the client is over its budget or the queue is full, and otherwise when a slot is free
// (waited is the time spent waiting) or no longer worth waiting for. On success the caller must
// call release when the signature is done, with whether it succeeded.
func (s *Shedder) Admit(ctx context.Context, remote net.Addr) (release func(ok bool), waited time.Duration, err error) {
	ip, pfx, known := s.prefix(remote)
	limited := known && !s.allowed(ip)
	if limited && s.p.ClientRate > 0 && !s.limiter(pfx).Allow() {
		return nil, 0, &ShedError{Reason: ShedClientBudget, Client: pfx}
	}
	if s.p.MaxInFlight == 0 {
		s.inFlight.Add(1)
		return func(bool) { s.inFlight.Add(-1) }, 0, nil
	}
	return s.takeSlot(ctx, pfx, limited)
}

// takeSlot takes a signing slot for client, waiting in the queue if there is room. A limited
// client (not in Allow) is shed if it holds its ClientShare of slots and queue already, and
// queues in at most half the queue. What it takes is in running or waiters only, so release
// (or giving up) undoes exactly that.
func (s *Shedder) takeSlot(ctx context.Context, client netip.Prefix, limited bool) (release func(ok bool), waited time.Duration, err error) {
	start := time.Now()
	s.slotMu.Lock()
	if limited && s.share(client) >= s.p.ClientShare {
		s.slotMu.Unlock()
		return nil, 0, &ShedError{Reason: ShedClientShare, Client: client}
	}
	if s.active < int(s.limit) && len(s.waiters) == 0 {
		s.take(client, limited)
		s.slotMu.Unlock()
	} else {
		if len(s.waiters) >= s.p.MaxQueue {
			s.slotMu.Unlock()
			return nil, 0, &ShedError{Reason: ShedQueueFull}
		}
		if limited && s.queuedBy(client) >= max(1, s.p.MaxQueue/2) {
			// Half the queue stays for other clients, whatever this one's share.
			s.slotMu.Unlock()
			return nil, 0, &ShedError{Reason: ShedClientShare, Client: client}
		}
		granted := make(chan struct{})
		s.waiters = append(s.waiters, waiter{granted, client, limited})
		s.queued.Add(1)
		s.slotMu.Unlock()
		err := s.wait(ctx, granted, client, limited)
		if err != nil {
			return nil, time.Since(start), err
		}
	}
	waited = time.Since(start)
	s.inFlight.Add(1)
	got := time.Now()
	return func(ok bool) {
		d := time.Since(got)
		if ok {
			s.observe(d)
		}
		s.inFlight.Add(-1)
		s.slotMu.Lock()
		defer s.slotMu.Unlock()
		s.free(client, limited)
		s.adapt(ok, d)
		s.grant()
	}, waited, nil
}

// wait blocks until granted is closed, or until the handshake's deadline less the expected
// signing time.
func (s *Shedder) wait(ctx context.Context, granted chan struct{}, client netip.Prefix, limited bool) error {
	var giveUp <-chan time.Time
	if dl, ok := ctx.Deadline(); ok {
		t := time.NewTimer(time.Until(dl) - time.Duration(s.signNanos.Load()))
		defer t.Stop()
		giveUp = t.C
	}
	select {
	case <-granted:
		return nil
	case <-giveUp:
	case <-ctx.Done():
	}
	s.slotMu.Lock()
	defer s.slotMu.Unlock()
	for i, w := range s.waiters {
		if w.granted == granted {
			s.waiters = append(s.waiters[:i], s.waiters[i+1:]...)
			s.queued.Add(-1)
			return &ShedError{Reason: ShedDeadline}
		}
	}
	// Granted while giving up: hand the slot on.
	s.free(client, limited)
	s.grant()
	return &ShedError{Reason: ShedDeadline}
}

// grant gives free slots to waiters: first to those whose client has the fewest signatures
// in flight and queued, and among them the oldest. A flood's queued handshakes therefore
// do not make another client wait behind them. slotMu is held.
func (s *Shedder) grant() {
	for s.active < int(s.limit) && len(s.waiters) > 0 {
		load := make(map[netip.Prefix]int, len(s.waiters))
		for _, w := range s.waiters {
			load[w.client]++
		}
		next := 0
		for i, w := range s.waiters {
			if load[w.client]+s.running[w.client].all < load[s.waiters[next].client]+s.running[s.waiters[next].client].all {
				next = i
			}
		}
		w := s.waiters[next]
		s.waiters = append(s.waiters[:next], s.waiters[next+1:]...)
		s.queued.Add(-1)
		s.take(w.client, w.limited)
		close(w.granted)
	}
}

// queuedBy counts client's waiters. slotMu is held.
func (s *Shedder) queuedBy(client netip.Prefix) int {
	n := 0
	for _, w := range s.waiters {
		if w.client == client {
			n++
		}
	}
	return n
}

// share counts client's signatures from addresses not in Allow, in flight and queued: what
// ClientShare bounds. slotMu is held.
func (s *Shedder) share(client netip.Prefix) int {
	n := s.running[client].limited
	for _, w := range s.waiters {
		if w.client == client && w.limited {
			n++
		}
	}
	return n
}

// take gives client a slot. slotMu is held.
func (s *Shedder) take(client netip.Prefix, limited bool) {
	s.active++
	r := s.running[client]
	r.all++
	if limited {
		r.limited++
	}
	s.running[client] = r
}

// free returns client's slot, taken by take with the same limited. slotMu is held.
func (s *Shedder) free(client netip.Prefix, limited bool) {
	s.active--
	r := s.running[client]
	r.all--
	if limited {
		r.limited--
	}
	if r.all <= 0 {
		delete(s.running, client)
	} else {
		s.running[client] = r
	}
}

// adapt moves the slot limit after a signature that took d: up by one per limit's worth of
// fast signatures, down by a tenth on a slow or failed one. slotMu is held.
func (s *Shedder) adapt(ok bool, d time.Duration) {
	if s.p.TargetLatency <= 0 {
		return
	}
	if ok && d <= s.p.TargetLatency {
		s.limit = min(float64(s.p.MaxInFlight), s.limit+1/s.limit)
	} else {
		s.limit = max(1, s.limit*0.9)
	}
}

// observe folds one signing time into the moving average (weight 1/8: a few signatures
// follow a change of load).
func (s *Shedder) observe(d time.Duration) {
	for {
		old := s.signNanos.Load()
		next := int64(d)
		if old != 0 {
			next = old + (int64(d)-old)/8
		}
		if s.signNanos.CompareAndSwap(old, next) {
			return
		}
	}
}

// prefix is a client's address and the prefix of its budget.
func (s *Shedder) prefix(remote net.Addr) (netip.Addr, netip.Prefix, bool) {
	var ip netip.Addr
	switch a := remote.(type) {
	case *net.TCPAddr:
		ip = a.AddrPort().Addr()
	case nil:
		return ip, netip.Prefix{}, false
	default:
		ap, err := netip.ParseAddrPort(remote.String())
		if err != nil {
			return ip, netip.Prefix{}, false
		}
		ip = ap.Addr()
	}
	ip = ip.Unmap()
	bits := s.p.IPv6Prefix
	if ip.Is4() {
		bits = s.p.IPv4Prefix
	}
	pfx, err := ip.Prefix(bits)
	return ip, pfx, err == nil
}

func (s *Shedder) allowed(ip netip.Addr) bool {
	for _, a := range s.p.Allow {
		if a.Contains(ip) {
			return true
		}
	}
	return false
}

// limiter returns the prefix's bucket, making one if needed. When the table is full, idle
// buckets (full again, so forgetting them changes nothing) are dropped; if none is idle, the
// prefix shares the overflow bucket, so a flood from many prefixes is bounded in memory and,
// beyond the table, in rate too.
func (s *Shedder) limiter(pfx netip.Prefix) *rate.Limiter {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l, ok := s.clients[pfx]; ok {
		return l
	}
	if now := time.Now(); len(s.clients) >= s.p.MaxClients && now.Sub(s.lastSweep) >= time.Second {
		s.lastSweep = now
		for k, l := range s.clients {
			if l.TokensAt(now) >= float64(s.p.ClientBurst) {
				delete(s.clients, k)
			}
		}
	}
	if len(s.clients) >= s.p.MaxClients {
		return s.overflow
	}
	l := rate.NewLimiter(rate.Limit(s.p.ClientRate), s.p.ClientBurst)
	s.clients[pfx] = l
	return l
}
