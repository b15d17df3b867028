package node

import (
	"slices"
	"testing"
	"time"
)

// nodeWithPeers is a Node with only the health state rankPeers reads.
func nodeWithPeers(hs map[string]*peerHealth) *Node {
	n := &Node{peers: map[string]*peerConn{}}
	for name, h := range hs {
		n.peers[name] = &peerConn{name: name, health: h}
	}
	return n
}

func TestRankPeers(t *testing.T) {
	checked := time.Now()
	up := func(lat time.Duration) *peerHealth { return &peerHealth{up: true, checked: checked, latency: lat} }
	for _, tc := range []struct {
		name  string
		peers map[string]*peerHealth
		want  []string // exact order, whatever the input order
	}{
		{"down last", map[string]*peerHealth{"b": {checked: checked}, "c": up(time.Millisecond)}, []string{"c", "b"}},
		{"cooling after up", map[string]*peerHealth{"b": {up: true, checked: checked, coolUntil: time.Now().Add(time.Minute)}, "c": up(40 * time.Millisecond)}, []string{"c", "b"}},
		{"clearly slow last", map[string]*peerHealth{"b": up(80 * time.Millisecond), "c": up(2 * time.Millisecond)}, []string{"c", "b"}},
		{"least busy first", map[string]*peerHealth{"b": {up: true, checked: checked, inflight: 2}, "c": {up: true, checked: checked, inflight: 1, latency: 9 * time.Millisecond}}, []string{"c", "b"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := nodeWithPeers(tc.peers)
			for range 20 {
				if got := n.rankPeers([]string{"b", "c"}); !slices.Equal(got, tc.want) {
					t.Fatalf("rankPeers = %v, want %v", got, tc.want)
				}
				if got := n.rankPeers([]string{"c", "b"}); !slices.Equal(got, tc.want) {
					t.Fatalf("rankPeers = %v, want %v", got, tc.want)
				}
			}
		})
	}
	// Ping noise of a loaded host (a few milliseconds) is not a reason to
	// always pick the same peer: the caller's shuffle decides.
	n := nodeWithPeers(map[string]*peerHealth{"b": up(time.Millisecond), "c": up(12 * time.Millisecond)})
	if got := n.rankPeers([]string{"c", "b"}); got[0] != "c" {
		t.Fatalf("rankPeers = %v: a peer 11 ms slower on ping was put behind", got)
	}
	done := n.track([]string{"a", "c"})
	if got := n.rankPeers([]string{"c", "b"}); got[0] != "b" {
		t.Fatalf("rankPeers = %v while a session runs with c", got)
	}
	done()
	if n.peers["c"].health.inflight != 0 {
		t.Fatal("track did not end the session")
	}
}
