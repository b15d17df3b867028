package peerwire

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/tkeyless/tkeyless/internal/peerwire/gen/tkeyless/peer/v2"
)

// The Deliveries stream (version StreamVersion) carries a link's envelopes.
//
// A signing session's messages were a Deliver call each: per message a new
// HTTP/2 stream, its headers both ways, a handler goroutine growing its
// stack, and the call's wakeups, which together cost more CPU than the
// message's own checks (docs/bench/presign-online-profile.txt). On a link
// at version 4 or later, a Client sends every envelope on one long-lived
// stream instead, and the peer answers each, in order, with a Delivered
// naming its seq and what a Deliver call would have answered. The sender
// still waits for that answer, so nothing about a session's flow changes:
// only the transport of its messages.

// deliveryStream is one open Deliveries stream of a Client.
type deliveryStream struct {
	send   sync.Mutex // a gRPC stream takes one Send at a time
	stream pb.PeerService_DeliveriesClient
	cancel context.CancelFunc

	mu      sync.Mutex
	next    uint64
	pending map[uint64]chan *pb.Delivered
	err     error         // why the stream ended; set once, with done closed
	done    chan struct{} // closed when the stream ended
}

// errStreamUnsupported marks a peer that answered the stream as an
// unimplemented method: a build that predates it, reached on a link that
// claims version 4 (it cannot, unless the peer was swapped meanwhile).
var errStreamUnsupported = errors.New("peer does not serve the Deliveries stream")

// deliveries returns the link's open stream, opening one if there is none
// (first use, or the last one ended).
func (c *Client) deliveries() (*deliveryStream, error) {
	c.smu.Lock()
	defer c.smu.Unlock()
	if c.ds != nil {
		select {
		case <-c.ds.done:
		default:
			return c.ds, nil
		}
	}
	// The stream lives as long as the connection, not as one message's
	// context; the connection closing ends it.
	ctx, cancel := context.WithCancel(context.Background())
	st, err := c.pc.Deliveries(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	ds := &deliveryStream{stream: st, cancel: cancel, pending: map[uint64]chan *pb.Delivered{}, done: make(chan struct{})}
	go ds.receive()
	c.ds = ds
	return ds, nil
}

// receive hands each answer to the envelope waiting for it, until the
// stream ends; then every envelope still waiting fails.
func (ds *deliveryStream) receive() {
	for {
		d, err := ds.stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = status.Error(codes.Unavailable, "peer closed the deliveries stream")
			}
			ds.end(err)
			return
		}
		ds.mu.Lock()
		ch, ok := ds.pending[d.GetSeq()]
		delete(ds.pending, d.GetSeq())
		ds.mu.Unlock()
		if ok {
			ch <- d
		}
	}
}

// end records why the stream ended and releases every waiter.
func (ds *deliveryStream) end(err error) {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	if ds.err != nil {
		return
	}
	ds.err = err
	close(ds.done)
	ds.cancel()
}

// deliverOnStream sends one envelope on the link's stream and waits for
// its answer, within ctx. errStreamUnsupported says to use a call. An
// envelope the stream refused to take (it had ended: the peer restarted,
// the connection was replaced) goes once more on a new stream; one taken
// and then left unanswered is not sent again (the peer may have it).
func (c *Client) deliverOnStream(ctx context.Context, r *Envelope) error {
	err := c.deliverOnce(ctx, r)
	if errors.Is(err, errStreamEnded) {
		err = c.deliverOnce(ctx, r)
	}
	if errors.Is(err, errStreamEnded) {
		return status.Error(codes.Unavailable, err.Error())
	}
	return err
}

// errStreamEnded marks an envelope a stream could not take.
var errStreamEnded = errors.New("deliveries stream ended before the envelope went out")

func (c *Client) deliverOnce(ctx context.Context, r *Envelope) error {
	ds, err := c.deliveries()
	if err != nil {
		return err
	}
	m := envelopeToPB(r)
	wire := c.wireVersion(r.Version)
	m.Version = wire
	stamp(m, wire)
	ch := make(chan *pb.Delivered, 1)
	ds.mu.Lock()
	if ds.err != nil {
		ds.mu.Unlock()
		return fmt.Errorf("%w: %w", errStreamEnded, ds.err)
	}
	ds.next++
	m.Seq = ds.next
	ds.pending[m.Seq] = ch
	ds.mu.Unlock()
	forget := func() {
		ds.mu.Lock()
		delete(ds.pending, m.Seq)
		ds.mu.Unlock()
	}
	err = ds.sendWithin(ctx, m)
	if err != nil {
		forget()
		if errors.Is(err, io.EOF) {
			// The stream had ended; Recv has the reason.
			<-ds.done
			err = ds.err
		}
		ds.end(err)
		if status.Code(err) == codes.Unimplemented {
			return errStreamUnsupported
		}
		return fmt.Errorf("%w: %w", errStreamEnded, err)
	}
	select {
	case d := <-ch:
		if d.GetCode() != 0 {
			return status.Error(codes.Code(d.GetCode()), d.GetError())
		}
		return nil
	case <-ds.done:
		forget()
		if status.Code(ds.err) == codes.Unimplemented {
			return errStreamUnsupported
		}
		return ds.err
	case <-ctx.Done():
		forget()
		return status.FromContextError(ctx.Err()).Err()
	}
}

// stuckSend is how long a Send may stay blocked past its envelope's
// deadline before the stream is given up: a gRPC Send takes no context,
// and blocks once the peer stops reading (its flow-control window full).
const stuckSend = time.Second

// sendWithin sends m, waiting for its turn and for the peer's window. A
// peer that stops reading would hold every later envelope of the link
// forever; so once ctx has ended and the Send is still blocked stuckSend
// later, the stream ends (every waiter fails, the next envelope opens a
// new stream). A Send merely in progress when ctx ends is left alone:
// ending the stream then would fail other sessions' envelopes.
func (ds *deliveryStream) sendWithin(ctx context.Context, m *pb.Envelope) error {
	var blocked atomic.Bool
	blocked.Store(true)
	stop := context.AfterFunc(ctx, func() {
		time.AfterFunc(stuckSend, func() {
			if blocked.Load() {
				ds.end(status.Error(codes.DeadlineExceeded, "peer stopped reading its deliveries stream"))
			}
		})
	})
	defer stop()
	ds.send.Lock()
	defer ds.send.Unlock()
	err := ds.stream.Send(m)
	blocked.Store(false)
	return err
}

// Deliveries serves a peer's stream: each envelope is handled exactly as a
// Deliver call (version, decoding, the domain call) and answered in order.
// An answer that cannot be sent ends the stream; the peer opens another.
func (s *service) Deliveries(stream pb.PeerService_DeliveriesServer) error {
	ctx := context.WithValue(stream.Context(), streamedKey{}, true)
	for {
		m, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		d := &pb.Delivered{Seq: m.GetSeq()}
		if _, err := s.deliverOne(ctx, m); err != nil {
			st := status.Convert(err)
			d.Code, d.Error = int32(st.Code()), st.Message()
		}
		if err := stream.Send(d); err != nil {
			return err
		}
	}
}

// deliverOne is one Deliver, without a call's trailer.
func (s *service) deliverOne(ctx context.Context, m *pb.Envelope) (*pb.DeliverResponse, error) {
	if !Supported(int(m.GetVersion())) {
		return nil, errUnsupported(m.GetVersion())
	}
	if err := inspect(m, m.GetVersion()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	env, err := envelopeFromPB(m)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if _, err := s.s.Deliver(ctx, env); err != nil {
		return nil, err
	}
	return &pb.DeliverResponse{}, nil
}

type streamedKey struct{}

// Streamed reports whether a Deliver came on a Deliveries stream rather
// than in a call of its own.
func Streamed(ctx context.Context) bool {
	v, _ := ctx.Value(streamedKey{}).(bool)
	return v
}
