// Package wan puts a wide-area network between the processes of a local
// tkeyless deployment: every directed link (edge → signer, signer →
// signer) goes through its own toxiproxy proxy, whose latency, jitter and
// loss are set per class of link, and any one link can be made to go
// half-open. The kernel here has no netem qdisc, so the network is shaped
// in user space, one TCP proxy per link.
//
// Bench measures full handshakes through such a network for each (t,n),
// on the full and the presigned path, beside a model of the sequential
// round trips the protocol needs (Rounds).
package wan

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/Shopify/toxiproxy/v2/toxics"
	"github.com/rs/zerolog"
)

// Class is a kind of link, shaped as a whole.
type Class string

const (
	// EdgeLinks carry keyless requests from the edge to the signers.
	EdgeLinks Class = "edge"
	// PeerLinks carry the signers' gRPC between each other.
	PeerLinks Class = "peer"
)

// Shape is what a class of links does to the bytes crossing it.
type Shape struct {
	// RTT is the round-trip time the link adds: half each way.
	RTT time.Duration
	// Jitter varies each one-way delay by up to ± Jitter/2.
	Jitter time.Duration
	// Loss is the probability (0–1) that a chunk of bytes is lost once.
	// The links are TCP, so a loss shows as what TCP makes of it: the
	// chunk, and the stream behind it, arrive one retransmission timeout
	// late (Linux's minimum, 200 ms, or 2 RTT if larger).
	Loss float64
}

// Link is one directed link: From dials To through a proxy at Addr.
type Link struct {
	Class    Class
	From, To string
	Addr     string // where From dials
	Upstream string // where To listens
	proxy    *toxiproxy.Proxy
}

// Network is a set of links, each a toxiproxy proxy in this process.
// Close stops them all.
type Network struct {
	mu     sync.Mutex
	server *toxiproxy.ApiServer
	links  []*Link
	shapes map[Class]Shape
}

// NewNetwork makes an empty network; every link added to it starts with
// the shape of its class (default: none).
func NewNetwork() *Network {
	return &Network{
		server: toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop()),
		shapes: map[Class]Shape{},
	}
}

// Add starts a proxy for the directed link from → to (which listens on
// upstream) and returns the address from must dial instead.
func (n *Network) Add(class Class, from, to, upstream string) (string, error) {
	name := fmt.Sprintf("%s:%s->%s", class, from, to)
	p := toxiproxy.NewProxy(n.server, name, "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		return "", fmt.Errorf("proxy %s: %w", name, err)
	}
	l := &Link{Class: class, From: from, To: to, Addr: p.Listen, Upstream: upstream, proxy: p}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.links = append(n.links, l)
	if err := l.shape(n.shapes[class]); err != nil {
		return "", err
	}
	return l.Addr, nil
}

// Links lists the links of class (all if class is "").
func (n *Network) Links(class Class) []*Link {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []*Link
	for _, l := range n.links {
		if class == "" || l.Class == class {
			out = append(out, l)
		}
	}
	return out
}

// Shape sets the shape of every link of class, the open connections
// included.
func (n *Network) Shape(class Class, s Shape) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.shapes[class] = s
	for _, l := range n.links {
		if l.Class == class {
			if err := l.shape(s); err != nil {
				return err
			}
		}
	}
	return nil
}

// Find returns the link from → to of class, or nil.
func (n *Network) Find(class Class, from, to string) *Link {
	for _, l := range n.Links(class) {
		if l.From == from && l.To == to {
			return l
		}
	}
	return nil
}

// Close stops every proxy and closes its connections.
func (n *Network) Close() {
	for _, l := range n.Links("") {
		l.proxy.Stop()
	}
}

// Direction is one way along a link.
type Direction string

const (
	// Forward is what From sends to To (toxiproxy's "upstream").
	Forward Direction = "upstream"
	// Back is what To answers From (toxiproxy's "downstream").
	Back Direction = "downstream"
)

// HalfOpen makes the link swallow, in direction dir, every byte after the
// next afterBytes, while the connection stays open and the other direction
// still flows: what a one-way route failure or a dead NAT mapping looks
// like mid-session. Nothing is reset, so only a deadline notices.
func (l *Link) HalfOpen(dir Direction, afterBytes int64) error {
	return l.set("half_open_"+string(dir), halfOpenType, string(dir), map[string]any{"after_bytes": afterBytes})
}

// Heal undoes HalfOpen in both directions.
func (l *Link) Heal() error {
	for _, dir := range []Direction{Forward, Back} {
		if err := l.remove("half_open_" + string(dir)); err != nil {
			return err
		}
	}
	return nil
}

// Mute half-opens every link of class around node so that, after
// afterBytes more on each, nothing node sends arrives anywhere, while
// everything sent to it still does.
func (n *Network) Mute(class Class, node string, afterBytes int64) error {
	for _, l := range n.Links(class) {
		var err error
		switch node {
		case l.From:
			err = l.HalfOpen(Forward, afterBytes)
		case l.To:
			err = l.HalfOpen(Back, afterBytes)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// shape applies s to both directions of l: half the RTT each way.
func (l *Link) shape(s Shape) error {
	for _, dir := range []string{"upstream", "downstream"} {
		if err := l.set("latency_"+dir, "latency", dir, map[string]any{
			"latency": (s.RTT / 2).Milliseconds(), "jitter": (s.Jitter / 2).Milliseconds(),
		}); err != nil {
			return err
		}
		rto := max(200*time.Millisecond, 2*s.RTT)
		if err := l.set("loss_"+dir, lossType, dir, map[string]any{"probability": s.Loss, "rto_ms": rto.Milliseconds()}); err != nil {
			return err
		}
	}
	return nil
}

// set adds or updates the toxic called name.
func (l *Link) set(name, typ, stream string, attrs map[string]any) error {
	if l.proxy.Toxics.GetToxic(name) != nil {
		b, _ := json.Marshal(map[string]any{"attributes": attrs, "toxicity": 1.0})
		if _, err := l.proxy.Toxics.UpdateToxicJson(name, bytes.NewReader(b)); err != nil {
			return fmt.Errorf("link %s→%s: update %s: %w", l.From, l.To, name, err)
		}
		return nil
	}
	b, _ := json.Marshal(map[string]any{"name": name, "type": typ, "stream": stream, "toxicity": 1.0, "attributes": attrs})
	if _, err := l.proxy.Toxics.AddToxicJson(bytes.NewReader(b)); err != nil {
		return fmt.Errorf("link %s→%s: add %s: %w", l.From, l.To, name, err)
	}
	return nil
}

func (l *Link) remove(name string) error {
	if l.proxy.Toxics.GetToxic(name) == nil {
		return nil
	}
	return l.proxy.Toxics.RemoveToxic(context.Background(), name)
}

const (
	lossType     = "tcp_loss"
	halfOpenType = "half_open"
)

// lossToxic holds a chunk back one retransmission timeout with the given
// probability: toxiproxy sits above TCP, so a lost segment is seen as the
// delay its retransmission costs, the stream behind it waiting too.
type lossToxic struct {
	Probability float64 `json:"probability"`
	RTOms       int64   `json:"rto_ms"`
}

func (t *lossToxic) Pipe(stub *toxics.ToxicStub) {
	for {
		select {
		case <-stub.Interrupt:
			return
		case c := <-stub.Input:
			if c == nil {
				stub.Close()
				return
			}
			if t.Probability > 0 && rand.Float64() < t.Probability {
				select {
				case <-time.After(time.Duration(t.RTOms) * time.Millisecond):
				case <-stub.Interrupt:
					stub.Output <- c
					return
				}
			}
			stub.Output <- c
		}
	}
}

// halfOpenToxic passes AfterBytes bytes, then swallows everything and
// never closes: the other side waits for bytes that do not come.
type halfOpenToxic struct {
	AfterBytes int64 `json:"after_bytes"`
}

func (t *halfOpenToxic) Pipe(stub *toxics.ToxicStub) {
	passed := int64(0)
	for {
		select {
		case <-stub.Interrupt:
			return
		case c := <-stub.Input:
			if c == nil {
				stub.Close()
				return
			}
			if room := t.AfterBytes - passed; room > 0 {
				if int64(len(c.Data)) > room {
					c.Data = c.Data[:room]
				}
				passed += int64(len(c.Data))
				stub.Output <- c
			}
		}
	}
}

func init() {
	toxics.Register(lossType, new(lossToxic))
	toxics.Register(halfOpenType, new(halfOpenToxic))
}
