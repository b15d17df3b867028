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

// streamRecorder records, for each envelope, whether it came on the
// Deliveries stream, and refuses those of type "refuse" as a node would.
type streamRecorder struct {
	recorder
	mu       sync.Mutex
	streamed map[string]bool // envelope type → came on the stream
}

func (s *streamRecorder) Deliver(ctx context.Context, r *Envelope) (*DeliverResponse, error) {
	s.mu.Lock()
	s.streamed[r.Type] = Streamed(ctx)
	s.mu.Unlock()
	if r.Type == "refuse" {
		return nil, status.Error(codes.FailedPrecondition, "session x: duplicate refuse from a")
	}
	return s.recorder.Deliver(ctx, r)
}

// TestDeliveriesStream: on a link at StreamVersion, envelopes (many at
// once, as a session's outboxes send them) go on one Deliveries stream,
// each answered as a Deliver call would be, refusals with their code and
// text; before the link's version is known they go in calls.
func TestDeliveriesStream(t *testing.T) {
	rec := &streamRecorder{recorder: recorder{ping: &PingResponse{Node: "b"}}, streamed: map[string]bool{}}
	c := NewClient(serve(t, rec))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Deliver(ctx, &Envelope{Version: Version, Type: "before the ping"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Ping(ctx, &PingRequest{Version: Version}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 40 {
		wg.Go(func() {
			if _, err := c.Deliver(ctx, &Envelope{Version: Version, Type: fmt.Sprint("m", i), Payload: []byte{byte(i)}}); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("deliver on the stream: %v", err)
	}
	_, err := c.Deliver(ctx, &Envelope{Version: Version, Type: "refuse"})
	if status.Code(err) != codes.FailedPrecondition || status.Convert(err).Message() != "session x: duplicate refuse from a" {
		t.Fatalf("refused envelope: %v; want the node's own refusal", err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.streamed["before the ping"] {
		t.Fatal("an envelope went on the stream before the link's version was known")
	}
	for i := range 40 {
		if !rec.streamed[fmt.Sprint("m", i)] {
			t.Fatalf("envelope m%d did not come on the stream", i)
		}
	}
	if !rec.streamed["refuse"] {
		t.Fatal("the refused envelope did not come on the stream")
	}
}

// oneShotNode serves Ping at this build's version, Deliver calls, and a
// Deliveries stream that ends after each envelope it answers (as when the
// peer restarts between messages) — or, with noStream, no stream at all,
// as a build that predates it.
type oneShotNode struct {
	pb.UnimplementedPeerServiceServer
	noStream bool
	mu       sync.Mutex
	calls    int
	streamed int
}

func (o *oneShotNode) Ping(context.Context, *pb.PingRequest) (*pb.PingResponse, error) {
	return &pb.PingResponse{Node: "b", MinVersion: MinVersion, MaxVersion: Version}, nil
}

func (o *oneShotNode) Deliver(context.Context, *pb.Envelope) (*pb.DeliverResponse, error) {
	o.mu.Lock()
	o.calls++
	o.mu.Unlock()
	return &pb.DeliverResponse{}, nil
}

func (o *oneShotNode) Deliveries(stream pb.PeerService_DeliveriesServer) error {
	if o.noStream {
		return status.Error(codes.Unimplemented, "method Deliveries not implemented")
	}
	m, err := stream.Recv()
	if err != nil {
		return err
	}
	o.mu.Lock()
	o.streamed++
	o.mu.Unlock()
	return stream.Send(&pb.Delivered{Seq: m.GetSeq()})
}

// TestDeliveriesStreamEnds: a stream that ended is replaced by a new one
// for the next envelope (5 envelopes, 5 streams), and a peer that serves
// no stream gets calls.
func TestDeliveriesStreamEnds(t *testing.T) {
	for _, noStream := range []bool{false, true} {
		t.Run(fmt.Sprintf("noStream=%t", noStream), func(t *testing.T) {
			node := &oneShotNode{noStream: noStream}
			c := NewClient(serveWire(t, func(gs *grpc.Server) { pb.RegisterPeerServiceServer(gs, node) }))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if _, err := c.Ping(ctx, &PingRequest{Version: Version}); err != nil {
				t.Fatal(err)
			}
			for i := range 5 {
				if _, err := c.Deliver(ctx, &Envelope{Version: Version, Type: fmt.Sprint("m", i)}); err != nil {
					t.Fatalf("envelope %d: %v", i, err)
				}
				if noStream {
					continue
				}
				// The peer ended the stream after answering; the next
				// envelope comes once this side saw it end, as after a
				// restart. (One sent while the end is on its way fails as
				// a call to a restarting peer would.)
				c.smu.Lock()
				ds := c.ds
				c.smu.Unlock()
				select {
				case <-ds.done:
				case <-ctx.Done():
					t.Fatal("the ended stream was never noticed")
				}
			}
			node.mu.Lock()
			defer node.mu.Unlock()
			if noStream && (node.calls != 5 || node.streamed != 0) {
				t.Fatalf("%d calls, %d streamed; want every envelope in a call", node.calls, node.streamed)
			}
			if !noStream && (node.streamed != 5 || node.calls != 0) {
				t.Fatalf("%d streamed, %d calls; want every envelope on a stream", node.streamed, node.calls)
			}
		})
	}
}

// deafNode opens the Deliveries stream and then never reads from it, as a
// compromised peer could: its flow-control window fills and a Send blocks.
type deafNode struct {
	pb.UnimplementedPeerServiceServer
}

func (deafNode) Ping(context.Context, *pb.PingRequest) (*pb.PingResponse, error) {
	return &pb.PingResponse{Node: "m", MinVersion: MinVersion, MaxVersion: Version}, nil
}

func (deafNode) Deliveries(stream pb.PeerService_DeliveriesServer) error {
	<-stream.Context().Done()
	return nil
}

// TestDeliveriesPeerStopsReading: a peer that stops reading its stream
// holds no envelope past its deadline (plus stuckSend): each Deliver fails
// in time, and the link is not stuck for good.
func TestDeliveriesPeerStopsReading(t *testing.T) {
	c := NewClient(serveWire(t, func(gs *grpc.Server) { pb.RegisterPeerServiceServer(gs, deafNode{}) }))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Ping(ctx, &PingRequest{Version: Version}); err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, 256<<10) // a few fill any window
	for i := range 8 {
		mctx, mcancel := context.WithTimeout(ctx, 100*time.Millisecond)
		done := make(chan error, 1)
		go func() {
			_, err := c.Deliver(mctx, &Envelope{Version: Version, Type: fmt.Sprint("m", i), Payload: payload})
			done <- err
		}()
		select {
		case err := <-done:
			if err == nil {
				t.Fatalf("envelope %d was answered by a peer that reads nothing", i)
			}
		case <-time.After(10 * stuckSend):
			t.Fatalf("envelope %d: Deliver still blocked %v after its deadline", i, 10*stuckSend)
		}
		mcancel()
	}
}
