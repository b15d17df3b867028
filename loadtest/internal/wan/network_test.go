package wan

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// echoServer answers every byte it reads with the same byte.
func echoServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	return l.Addr().String()
}

// ping writes one byte through addr and times its echo; it fails if none
// comes back within limit.
func ping(c net.Conn, limit time.Duration) (time.Duration, error) {
	start := time.Now()
	if err := c.SetDeadline(start.Add(limit)); err != nil {
		return 0, err
	}
	if _, err := c.Write([]byte{1}); err != nil {
		return 0, err
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// TestLinkShapes drives real TCP through one link of a Network: the RTT
// is added once per round trip, a lost chunk costs a retransmission
// timeout, and a half-open link delivers nothing back without closing.
func TestLinkShapes(t *testing.T) {
	n := NewNetwork()
	defer n.Close()
	addr, err := n.Add(PeerLinks, "a", "b", echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if d, err := ping(c, 5*time.Second); err != nil || d > 30*time.Millisecond {
		t.Fatalf("unshaped: %v, %v", d, err)
	}

	const rtt = 60 * time.Millisecond
	if err := n.Shape(PeerLinks, Shape{RTT: rtt}); err != nil {
		t.Fatal(err)
	}
	// The open connection takes the new shape too.
	if d, err := ping(c, 5*time.Second); err != nil || d < rtt || d > rtt+200*time.Millisecond {
		t.Fatalf("RTT %v: a ping took %v (%v)", rtt, d, err)
	}
	// Another class is left alone.
	if err := n.Shape(EdgeLinks, Shape{RTT: time.Second}); err != nil {
		t.Fatal(err)
	}
	if d, err := ping(c, 5*time.Second); err != nil || d > rtt+200*time.Millisecond {
		t.Fatalf("edge links shaped, peer link ping took %v (%v)", d, err)
	}

	// Jitter 40 ms: each way 20 ms ± 20 ms, so a round trip between 0 and
	// 80 ms (plus scheduling), and not always the same.
	if err := n.Shape(PeerLinks, Shape{RTT: 40 * time.Millisecond, Jitter: 40 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	lo, hi := time.Hour, time.Duration(0)
	for range 12 {
		d, err := ping(c, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		lo, hi = min(lo, d), max(hi, d)
	}
	if hi > 280*time.Millisecond || hi-lo < 2*time.Millisecond {
		t.Fatalf("RTT 40 ms ± 20 ms: pings between %v and %v", lo, hi)
	}

	// Every chunk lost once, both ways: at least two retransmission
	// timeouts (200 ms each) on top of the RTT.
	if err := n.Shape(PeerLinks, Shape{RTT: rtt, Loss: 1}); err != nil {
		t.Fatal(err)
	}
	if d, err := ping(c, 5*time.Second); err != nil || d < rtt+400*time.Millisecond {
		t.Fatalf("loss 1: a ping took %v (%v), want ≥ %v", d, err, rtt+400*time.Millisecond)
	}
	if err := n.Shape(PeerLinks, Shape{}); err != nil {
		t.Fatal(err)
	}

	// Half-open after 3 bytes back: three pings answer, the fourth never
	// does, and the connection is not closed either (a timeout, not EOF).
	link := n.Find(PeerLinks, "a", "b")
	if err := link.HalfOpen(Back, 3); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := ping(c, 5*time.Second); err != nil {
			t.Fatalf("half-open after 3 bytes: ping %d: %v", i+1, err)
		}
	}
	if _, err := ping(c, 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("half-open: 4th ping: %v, want a timeout", err)
	}
	if err := link.Heal(); err != nil {
		t.Fatal(err)
	}
	c2, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, err := ping(c2, 5*time.Second); err != nil {
		t.Fatalf("healed: %v", err)
	}
}
