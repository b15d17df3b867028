package peerwire

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/tkeyless/tkeyless/internal/peerwire/gen/tkeyless/peer/v2"
)

// refusals collects what Post's failed callbacks report.
type refusals struct {
	mu  sync.Mutex
	got map[string]error
	c   chan string
}

func newRefusals() *refusals { return &refusals{got: map[string]error{}, c: make(chan string, 64)} }

func (r *refusals) failed(name string) func(error) {
	return func(err error) {
		r.mu.Lock()
		_, twice := r.got[name]
		r.got[name] = err
		r.mu.Unlock()
		if twice {
			panic("failed called twice for " + name)
		}
		r.c <- name
	}
}

func (r *refusals) await(t *testing.T, ctx context.Context) (string, error) {
	t.Helper()
	select {
	case name := <-r.c:
		r.mu.Lock()
		defer r.mu.Unlock()
		return name, r.got[name]
	case <-ctx.Done():
		t.Fatal("no refusal reported")
		return "", nil
	}
}

// TestPost: posted envelopes reach the node on the stream without waiting
// for it; an accepted one is not answered at all, a refused one comes back
// to its failed callback with the node's code and text, and the link's
// waiting Deliver calls keep their answers.
func TestPost(t *testing.T) {
	rec := &streamRecorder{recorder: recorder{ping: &PingResponse{Node: "b"}}, streamed: map[string]bool{}}
	cc := serve(t, rec)
	c := NewClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Ping(ctx, &PingRequest{Version: Version}); err != nil {
		t.Fatal(err)
	}
	// The stream's first envelope waits for its answer: only that shows
	// the peer serves the stream.
	if _, err := c.Deliver(ctx, &Envelope{Version: Version, Type: "first"}); err != nil {
		t.Fatal(err)
	}
	ref := newRefusals()
	for i := range 20 {
		name := fmt.Sprint("m", i)
		if err := c.Post(ctx, &Envelope{Version: Version, Type: name}, ref.failed(name)); err != nil {
			t.Fatalf("post %s: %v", name, err)
		}
	}
	if err := c.Post(ctx, &Envelope{Version: Version, Type: "refuse"}, ref.failed("refuse")); err != nil {
		t.Fatalf("post refuse: %v", err)
	}
	// Answers come in order: once this call is answered, every posted
	// envelope before it was handled.
	if _, err := c.Deliver(ctx, &Envelope{Version: Version, Type: "last"}); err != nil {
		t.Fatal(err)
	}
	name, err := ref.await(t, ctx)
	if name != "refuse" || status.Code(err) != codes.FailedPrecondition || status.Convert(err).Message() != "session x: duplicate refuse from a" {
		t.Fatalf("refusal reported for %q: %v; want the node's own refusal of \"refuse\"", name, err)
	}
	rec.mu.Lock()
	for i := range 20 {
		if !rec.streamed[fmt.Sprint("m", i)] {
			t.Errorf("posted envelope m%d did not come on the stream", i)
		}
	}
	rec.mu.Unlock()
	select {
	case name := <-ref.c:
		t.Fatalf("accepted envelope %s reported as refused", name)
	default:
	}
	c.smu.Lock()
	ds := c.ds
	c.smu.Unlock()
	ds.mu.Lock()
	left := len(ds.posted)
	ds.mu.Unlock()
	if left != 20 {
		t.Fatalf("%d posted envelopes tracked; want the 20 accepted ones, until their context ends", left)
	}
	cancel()
	if !waitFor(func() bool { ds.mu.Lock(); defer ds.mu.Unlock(); return len(ds.posted) == 0 }) {
		t.Fatal("posted envelopes still tracked after their context ended")
	}
}

// TestPostUnanswered checks the wire: the node answers an accepted
// failures_only envelope with nothing, so the next answer on the stream is
// the next envelope's.
func TestPostUnanswered(t *testing.T) {
	rec := &streamRecorder{recorder: recorder{ping: &PingResponse{Node: "b"}}, streamed: map[string]bool{}}
	cc := serve(t, rec)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := pb.NewPeerServiceClient(cc).Deliveries(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range []struct {
		typ   string
		quiet bool
	}{{"quiet", true}, {"refuse", true}, {"loud", false}} {
		m := envelopeToPB(&Envelope{Version: Version, Type: e.typ})
		m.Seq, m.FailuresOnly = uint64(i+1), e.quiet
		stamp(m, Version)
		if err := st.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []struct {
		seq  uint64
		code codes.Code
	}{{2, codes.FailedPrecondition}, {3, codes.OK}} {
		d, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if d.GetSeq() != want.seq || codes.Code(d.GetCode()) != want.code {
			t.Fatalf("answer seq %d code %v; want seq %d code %v", d.GetSeq(), codes.Code(d.GetCode()), want.seq, want.code)
		}
	}
}

// scriptedNode serves Ping at this build's version and a Deliveries stream
// that deliveries drives.
type scriptedNode struct {
	pb.UnimplementedPeerServiceServer
	deliveries func(pb.PeerService_DeliveriesServer) error
}

func (s *scriptedNode) Ping(context.Context, *pb.PingRequest) (*pb.PingResponse, error) {
	return &pb.PingResponse{Node: "b", MinVersion: MinVersion, MaxVersion: Version}, nil
}

func (s *scriptedNode) Deliveries(stream pb.PeerService_DeliveriesServer) error {
	return s.deliveries(stream)
}

func scriptedClient(t *testing.T, ctx context.Context, deliveries func(pb.PeerService_DeliveriesServer) error) *Client {
	t.Helper()
	node := &scriptedNode{deliveries: deliveries}
	c := NewClient(serveWire(t, func(gs *grpc.Server) { pb.RegisterPeerServiceServer(gs, node) }))
	if _, err := c.Ping(ctx, &PingRequest{Version: Version}); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestPostOlderPeer: a peer that predates failures_only answers every
// envelope; accepted ones are not reported, and their tracking ends with
// the answer.
func TestPostOlderPeer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := scriptedClient(t, ctx, func(st pb.PeerService_DeliveriesServer) error {
		for {
			m, err := st.Recv()
			if err != nil {
				return err
			}
			d := &pb.Delivered{Seq: m.GetSeq()}
			if m.GetType() == "refuse" {
				d.Code, d.Error = int32(codes.PermissionDenied), "no"
			}
			if err := st.Send(d); err != nil {
				return err
			}
		}
	})
	ref := newRefusals()
	for _, name := range []string{"a", "b", "refuse", "c"} {
		if err := c.Post(ctx, &Envelope{Version: Version, Type: name}, ref.failed(name)); err != nil {
			t.Fatal(err)
		}
	}
	name, err := ref.await(t, ctx)
	if name != "refuse" || status.Code(err) != codes.PermissionDenied {
		t.Fatalf("refusal reported for %q: %v; want refuse's PermissionDenied", name, err)
	}
	c.smu.Lock()
	ds := c.ds
	c.smu.Unlock()
	if !waitFor(func() bool { ds.mu.Lock(); defer ds.mu.Unlock(); return len(ds.posted) == 0 }) {
		t.Fatal("answered envelopes still tracked")
	}
	select {
	case name := <-ref.c:
		t.Fatalf("accepted envelope %s reported as refused", name)
	default:
	}
}

// TestPostStreamEnds: a stream that ends reports nothing about the
// envelopes posted on it (accepted ones are never answered, so its end
// cannot tell them from lost ones), and the next envelope goes on a new
// stream, whose first envelope waits for its answer.
func TestPostStreamEnds(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got := make(chan string, 8)
	end := make(chan struct{})
	streams := 0
	c := scriptedClient(t, ctx, func(st pb.PeerService_DeliveriesServer) error {
		streams++
		first := streams == 1
		for {
			m, err := st.Recv()
			if err != nil {
				return err
			}
			got <- m.GetType()
			if !m.GetFailuresOnly() {
				if err := st.Send(&pb.Delivered{Seq: m.GetSeq()}); err != nil {
					return err
				}
			}
			if first && m.GetType() == "posted" {
				<-end
				return status.Error(codes.Unavailable, "node going away")
			}
		}
	})
	next := func() string {
		t.Helper()
		select {
		case typ := <-got:
			return typ
		case <-ctx.Done():
			t.Fatal("the node got nothing")
			return ""
		}
	}
	ref := newRefusals()
	for _, typ := range []string{"first", "posted"} {
		if err := c.Post(ctx, &Envelope{Version: Version, Type: typ}, ref.failed(typ)); err != nil {
			t.Fatal(err)
		}
		if got := next(); got != typ {
			t.Fatalf("node got %q; want %q", got, typ)
		}
	}
	c.smu.Lock()
	old := c.ds
	c.smu.Unlock()
	close(end)
	<-old.done
	if err := c.Post(ctx, &Envelope{Version: Version, Type: "after"}, ref.failed("after")); err != nil {
		t.Fatalf("post after the stream ended: %v", err)
	}
	if got := next(); got != "after" {
		t.Fatalf("node got %q; want \"after\"", got)
	}
	if streams != 2 {
		t.Fatalf("%d streams; want a new one after the first ended", streams)
	}
	select {
	case name := <-ref.c:
		t.Fatalf("%s reported as refused", name)
	default:
	}
}

// TestPostWithoutStream: to a peer that serves no stream, Post is a
// Deliver call and returns the refusal itself.
func TestPostWithoutStream(t *testing.T) {
	node := &oneShotNode{noStream: true}
	c := NewClient(serveWire(t, func(gs *grpc.Server) { pb.RegisterPeerServiceServer(gs, node) }))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Ping(ctx, &PingRequest{Version: Version}); err != nil {
		t.Fatal(err)
	}
	ref := newRefusals()
	for i := range 3 {
		if err := c.Post(ctx, &Envelope{Version: Version, Type: fmt.Sprint("m", i)}, ref.failed(fmt.Sprint("m", i))); err != nil {
			t.Fatal(err)
		}
	}
	node.mu.Lock()
	defer node.mu.Unlock()
	if node.calls != 3 {
		t.Fatalf("%d calls; want every posted envelope in a call", node.calls)
	}
}

// waitFor polls cond for up to 10 s.
func waitFor(cond func() bool) bool {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}
