package node

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"

	"github.com/tkeyless/tkeyless/internal/peerwire"
)

// peerHealth is what this node knows of one peer, from its pings and from
// the sessions they shared. The coordinator reads it to pick quorums.
type peerHealth struct {
	mu        sync.Mutex
	up        bool
	checked   time.Time
	latency   time.Duration // smoothed ping round trip
	lastErr   string
	lastErrAt time.Time
	failures  int       // consecutive session failures blamed on the peer
	inflight  int       // sessions this node runs with the peer right now
	coolUntil time.Time // not chosen for quorums until then, if avoidable
	keys      []string
}

const (
	pingInterval = 2 * time.Second
	pingTimeout  = time.Second
	// coolDown is how long a peer that failed sessions repeatedly is left
	// out of quorums when another quorum is possible.
	coolDown = 30 * time.Second
	// strikes is how many failed sessions in a row earn a cool-down.
	strikes = 3
	// slowMargin is how much slower than the fastest peer (besides twice
	// its latency) a peer must answer pings to be picked only after the
	// others. A signature costs hundreds of milliseconds of the members'
	// CPU, so a few milliseconds of ping (noise on a loaded host) must not
	// decide the quorum; a peer in another region should.
	slowMargin = 25 * time.Millisecond
)

// watchPeers pings every peer until ctx ends, and at once when a peer's
// connection drops.
func (n *Node) watchPeers(ctx context.Context) {
	for _, p := range n.peers {
		go n.watchConn(ctx, p)
	}
	t := time.NewTicker(pingInterval)
	defer t.Stop()
	for {
		var wg sync.WaitGroup
		for _, p := range n.peers {
			wg.Go(func() { n.ping(ctx, p) })
		}
		wg.Wait()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// watchConn pings p as soon as its connection changes in a way health
// should follow. A peer that was killed closes its connections: the ping
// fails at once (it does not wait for a reconnection), so quorums stop
// choosing the peer within milliseconds instead of at the next periodic
// ping, up to three seconds later. A peer that is still there answers and
// stays up; one that reconnected is up again without waiting either.
func (n *Node) watchConn(ctx context.Context, p *peerConn) {
	for {
		// The connection in use now: a redial (reload.go) replaces it and
		// closes this one, which ends the wait.
		cc := p.conn()
		was := cc.GetState()
		if !cc.WaitForStateChange(ctx, was) {
			return
		}
		switch now := cc.GetState(); {
		case was == connectivity.Ready:
			n.ping(ctx, p, failFast)
		case now == connectivity.Ready && !n.reachable(p.name):
			n.ping(ctx, p)
		}
	}
}

func (n *Node) ping(ctx context.Context, p *peerConn, opts ...grpc.CallOption) {
	ctx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	start := time.Now()
	resp, err := p.client().Ping(ctx, &peerwire.PingRequest{Version: peerwire.Version}, opts...)
	rtt := time.Since(start)
	h := p.health
	h.mu.Lock()
	defer h.mu.Unlock()
	wasUp := h.up
	h.checked = time.Now()
	if err != nil {
		h.up = false
		h.lastErr, h.lastErrAt = err.Error(), h.checked
	} else {
		h.up = true
		h.keys = resp.Keys
		defer n.adoptKeyStates(p.name, resp.KeyStates)
		switch {
		case !wasUp:
			// The first ping after a (re)connection pays for the TLS
			// handshake; it says nothing about the peer's usual latency.
			h.latency = 0
		case h.latency == 0:
			h.latency = rtt
		default:
			h.latency = (h.latency*3 + rtt) / 4
		}
	}
	n.metrics.peerUp.WithLabelValues(p.name).Set(boolFloat(h.up))
	if wasUp != h.up {
		ev := n.log.Info()
		if !h.up {
			ev = n.log.Warn().Str("err", h.lastErr)
		}
		ev.Str("peer", p.name).Bool("up", h.up).Msg("peer health changed")
	}
}

// blame records a failed session attributed to a peer; after strikes in a
// row the peer cools down.
func (n *Node) blame(name string, err error) {
	p, ok := n.peers[name]
	if !ok {
		return
	}
	n.metrics.culprits.WithLabelValues(name).Inc()
	h := p.health
	h.mu.Lock()
	defer h.mu.Unlock()
	h.failures++
	h.lastErr, h.lastErrAt = err.Error(), time.Now()
	// A failure past round 1 spent the edge's request on it: the edge
	// must come back with a fresh one, so the peer sits out at once.
	if h.failures >= strikes || errors.Is(err, errAuthoritySpent) {
		h.coolUntil = time.Now().Add(coolDown)
		n.log.Warn().Str("peer", name).Int("failures", h.failures).Dur("cool_down", coolDown).Msg("peer keeps failing sessions; avoiding it in quorums")
	}
}

// credit records a session a peer completed.
func (n *Node) credit(name string) {
	if p, ok := n.peers[name]; ok {
		p.health.mu.Lock()
		p.health.failures = 0
		p.health.mu.Unlock()
	}
}

// rankPeers orders candidate members best first: up and not cooling down;
// then not clearly slower than the fastest such peer; then with fewest
// sessions this node runs with it now. Peers never checked count as up,
// so a fresh node works. Remaining ties keep the caller's (shuffled)
// order, so healthy peers share the load.
func (n *Node) rankPeers(names []string) []string {
	type cand struct {
		name     string
		score    int // 0 best
		lat      time.Duration
		inflight int
		slow     bool
	}
	now := time.Now()
	var cs []cand
	for _, name := range names {
		p, ok := n.peers[name]
		if !ok {
			cs = append(cs, cand{name: name, score: 3})
			continue
		}
		h := p.health
		h.mu.Lock()
		score := 0
		switch {
		case !h.checked.IsZero() && !h.up:
			score = 2
		case now.Before(h.coolUntil):
			score = 1
		}
		cs = append(cs, cand{name: name, score: score, lat: h.latency, inflight: h.inflight})
		h.mu.Unlock()
	}
	fastest := map[int]time.Duration{}
	for _, c := range cs {
		if f, ok := fastest[c.score]; !ok || c.lat < f {
			fastest[c.score] = c.lat
		}
	}
	for i := range cs {
		f := fastest[cs[i].score]
		cs[i].slow = cs[i].lat > 2*f+slowMargin
	}
	slices.SortStableFunc(cs, func(a, b cand) int {
		switch {
		case a.score != b.score:
			return a.score - b.score
		case a.slow != b.slow:
			if a.slow {
				return 1
			}
			return -1
		case a.slow:
			return int(a.lat - b.lat)
		default:
			return a.inflight - b.inflight
		}
	})
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.name
	}
	return out
}

// track counts a session this node starts with members, for rankPeers;
// the returned func ends it.
func (n *Node) track(members []string) (done func()) {
	var hs []*peerHealth
	for _, m := range members {
		if p, ok := n.peers[m]; ok {
			hs = append(hs, p.health)
		}
	}
	for _, h := range hs {
		h.mu.Lock()
		h.inflight++
		h.mu.Unlock()
	}
	return func() {
		for _, h := range hs {
			h.mu.Lock()
			h.inflight--
			h.mu.Unlock()
		}
	}
}

// peerStatuses returns a snapshot of every peer's health, by name.
func (n *Node) peerStatuses() []peerwire.PeerStatus {
	var out []peerwire.PeerStatus
	for _, p := range n.peers {
		h := p.health
		h.mu.Lock()
		ps := peerwire.PeerStatus{Name: p.name, Addr: p.addr, Up: h.up, LatencyMS: float64(h.latency.Microseconds()) / 1000,
			LastError: h.lastErr, LastErrAt: h.lastErrAt, CoolUntil: h.coolUntil, Version: p.client().Version()}
		h.mu.Unlock()
		if c, ok := n.convictions.get(p.name); ok {
			ps.Convicted = &c
		}
		out = append(out, ps)
	}
	slices.SortFunc(out, func(a, b peerwire.PeerStatus) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// reachable reports whether the peer answered its last ping (or has not
// been checked yet).
func (n *Node) reachable(name string) bool {
	p, ok := n.peers[name]
	if !ok {
		return false
	}
	// A peer whose name is revoked here would be refused its part in the
	// session anyway (identityInterceptor): do not pick it.
	if c := n.current(); c != nil && c.revoked.names[name] {
		return false
	}
	p.health.mu.Lock()
	defer p.health.mu.Unlock()
	return p.health.up || p.health.checked.IsZero()
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// coolingDown reports whether a peer is sitting out a cool-down.
func (n *Node) coolingDown(name string) bool {
	p, ok := n.peers[name]
	if !ok {
		return false
	}
	p.health.mu.Lock()
	defer p.health.mu.Unlock()
	return time.Now().Before(p.health.coolUntil)
}
