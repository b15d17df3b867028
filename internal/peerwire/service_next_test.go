//go:build peerwire_next

package peerwire

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/tkeyless/tkeyless/internal/peerwire/gen/tkeyless/peer/v2"
)

// olderNode is a peer rolled back to a build that speaks version 3 only,
// as the plain build's service answers: a version-4 message is refused,
// and every answer states the range.
type olderNode struct {
	pb.UnimplementedPeerServiceServer
	mu   sync.Mutex
	seen []int64
}

func (o *olderNode) Run(ctx context.Context, m *pb.RunRequest) (*pb.RunResponse, error) {
	_ = grpc.SetTrailer(ctx, metadata.Pairs(versionsTrailer, "3-3"))
	o.mu.Lock()
	o.seen = append(o.seen, m.GetVersion())
	o.mu.Unlock()
	if m.GetVersion() != 3 {
		return nil, status.Errorf(codes.FailedPrecondition, "peer protocol version %d; this node speaks 3 to 3", m.GetVersion())
	}
	return &pb.RunResponse{Signature: []byte{1}}, nil
}

// TestRetryAfterRollback: a client that negotiated version 4 with a peer
// which then restarted with an older build has its next message refused;
// the refusal states the peer's range and the client sends the message
// again, once, in version 3.
func TestRetryAfterRollback(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	old := &olderNode{}
	gs := grpc.NewServer()
	pb.RegisterPeerServiceServer(gs, old)
	go func() { _ = gs.Serve(l) }()
	defer gs.Stop()
	cc, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := NewClient(cc)
	c.learn(3, 4) // what the peer said before it was rolled back
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Run(ctx, &RunRequest{Version: Version, Session: NewSessionID()})
	if err != nil {
		t.Fatalf("run after rollback: %v", err)
	}
	if len(resp.Signature) != 1 || len(old.seen) != 2 || old.seen[0] != 4 || old.seen[1] != 3 {
		t.Fatalf("peer saw versions %v (want 4 then 3), answer %+v", old.seen, resp)
	}
	if c.Version() != 3 {
		t.Fatalf("link version %d after the rollback, want 3", c.Version())
	}
}

// refusingNode speaks 3 to 4 and refuses every Run for a reason of its own
// that shares the code of a version refusal.
type refusingNode struct {
	pb.UnimplementedPeerServiceServer
	mu    sync.Mutex
	calls int
}

func (r *refusingNode) Run(ctx context.Context, m *pb.RunRequest) (*pb.RunResponse, error) {
	_ = grpc.SetTrailer(ctx, metadata.Pairs(versionsTrailer, "3-4"))
	r.mu.Lock()
	r.calls++
	r.mu.Unlock()
	return nil, status.Error(codes.FailedPrecondition, "unknown session")
}

// TestNoRetryOfOtherRefusals: a first message, sent in MinVersion before
// the link is known, that is refused for another reason is not sent
// again, even though the answer raises the link's version.
func TestNoRetryOfOtherRefusals(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &refusingNode{}
	gs := grpc.NewServer()
	pb.RegisterPeerServiceServer(gs, r)
	go func() { _ = gs.Serve(l) }()
	defer gs.Stop()
	cc, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := NewClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Run(ctx, &RunRequest{Version: Version, Session: NewSessionID()}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("run: %v", err)
	}
	if r.calls != 1 || c.Version() != 4 {
		t.Fatalf("%d calls (want 1), link version %d (want 4)", r.calls, c.Version())
	}
}
