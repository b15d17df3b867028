//go:build peerwire_next

package peerwire

import (
	"context"
	"fmt"
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

// olderNode is a peer rolled back to a build that speaks up to the plain
// build's version (older), as the plain build's service answers: a message
// in this build's Version is refused, and every answer states the range.
type olderNode struct {
	pb.UnimplementedPeerServiceServer
	mu   sync.Mutex
	seen []int64
}

func (o *olderNode) Run(ctx context.Context, m *pb.RunRequest) (*pb.RunResponse, error) {
	_ = grpc.SetTrailer(ctx, metadata.Pairs(versionsTrailer, fmt.Sprintf("%d-%d", MinVersion, older)))
	o.mu.Lock()
	o.seen = append(o.seen, m.GetVersion())
	o.mu.Unlock()
	if m.GetVersion() > older {
		return nil, status.Errorf(codes.FailedPrecondition, "peer protocol version %d; this node speaks %d to %d", m.GetVersion(), MinVersion, older)
	}
	return &pb.RunResponse{Signature: []byte{1}}, nil
}

// older is the plain build's version, which this build's follows.
const older = Version - 1

// TestRetryAfterRollback: a client that negotiated this build's version
// with a peer which then restarted with an older build has its next
// message refused; the refusal states the peer's range and the client
// sends the message again, once, in the older version.
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
	c.learn(MinVersion, Version) // what the peer said before it was rolled back
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Run(ctx, &RunRequest{Version: Version, Session: NewSessionID()})
	if err != nil {
		t.Fatalf("run after rollback: %v", err)
	}
	if len(resp.Signature) != 1 || len(old.seen) != 2 || old.seen[0] != Version || old.seen[1] != older {
		t.Fatalf("peer saw versions %v (want %d then %d), answer %+v", old.seen, Version, older, resp)
	}
	if c.Version() != older {
		t.Fatalf("link version %d after the rollback, want %d", c.Version(), older)
	}
}

// refusingNode speaks MinVersion to Version and refuses every Run for a reason of its own
// that shares the code of a version refusal.
type refusingNode struct {
	pb.UnimplementedPeerServiceServer
	mu    sync.Mutex
	calls int
}

func (r *refusingNode) Run(ctx context.Context, m *pb.RunRequest) (*pb.RunResponse, error) {
	_ = grpc.SetTrailer(ctx, metadata.Pairs(versionsTrailer, fmt.Sprintf("%d-%d", MinVersion, Version)))
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
	if r.calls != 1 || c.Version() != Version {
		t.Fatalf("%d calls (want 1), link version %d (want %d)", r.calls, c.Version(), Version)
	}
}
