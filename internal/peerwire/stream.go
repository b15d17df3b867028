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
//
// Post goes one step further: its envelope is marked failures_only, the
// peer answers it only if it refuses it, and the sender does not wait. An
// accepted envelope then costs one write on one side and one read on the
// other, where an answered one cost two of each and the wakeups of the
// goroutine waiting for the answer (docs/bench/before-after.md has the
// measured effect). A refusal still comes back, by seq, to the sender's
// failed callback.

// deliveryStream is one open Deliveries stream of a Client.
type deliveryStream struct {
	send   sync.Mutex // a gRPC stream takes one Send at a time
	stream pb.PeerService_DeliveriesClient
	cancel context.CancelFunc

	mu      sync.Mutex
	next    uint64
	pending map[uint64]chan *pb.Delivered
	posted  map[uint64]func(error) // envelopes sent by Post, until refused, forgotten or the stream ends
	// answered is set by the peer's first answer: the stream is served
	// (a build without it fails the stream only then, as unimplemented).
	answered atomic.Bool
	err      error         // why the stream ended; set once, with done closed
	done     chan struct{} // closed when the stream ended
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
	ds := &deliveryStream{stream: st, cancel: cancel, pending: map[uint64]chan *pb.Delivered{}, posted: map[uint64]func(error){}, done: make(chan struct{})}
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
		ds.answered.Store(true)
		ds.mu.Lock()
		ch, ok := ds.pending[d.GetSeq()]
		delete(ds.pending, d.GetSeq())
		failed, posted := ds.posted[d.GetSeq()]
		delete(ds.posted, d.GetSeq())
		ds.mu.Unlock()
		if ok {
			ch <- d
		}
		// A peer that predates failures_only answers a posted envelope
		// it accepted as well: nothing to report.
		if posted && d.GetCode() != 0 {
			failed(status.Error(codes.Code(d.GetCode()), d.GetError()))
		}
	}
}

// end records why the stream ended and releases every waiter. Posted
// envelopes are not failed: an accepted one is never answered, so the
// stream's end says nothing about it (Post).
func (ds *deliveryStream) end(err error) {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	if ds.err != nil {
		return
	}
	ds.err = err
	close(ds.done)
	ds.cancel()
	ds.posted = nil
}

// streamed reports whether r goes on the link's Deliveries stream: the
// link speaks StreamVersion and the peer has not answered the stream as
// unimplemented.
func (c *Client) streamed(r *Envelope) bool {
	return r.Version >= StreamVersion && c.Version() >= StreamVersion && !c.noStream.Load()
}

// onStream sends one envelope on the link's stream with once (deliverOnce
// or postOnce). errStreamUnsupported says to use a call. An envelope the
// stream refused to take (it had ended: the peer restarted, the connection
// was replaced) goes once more on a new stream; one taken and then left
// unanswered is not sent again (the peer may have it).
func (c *Client) onStream(once func() error) error {
	err := once()
	if errors.Is(err, errStreamEnded) {
		err = once()
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
	ch := make(chan *pb.Delivered, 1)
	m, forget, err := ds.number(c.toWire(r, false), func(seq uint64) { ds.pending[seq] = ch }, func(seq uint64) { delete(ds.pending, seq) })
	if err != nil {
		return err
	}
	if err := ds.sendWithin(ctx, m); err != nil {
		forget()
		return ds.sendFailed(err)
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

// Post sends r without waiting for the peer to take it. On a link with a
// Deliveries stream the envelope is marked failures_only: the peer answers
// only a refusal, and failed is called with it, at most once, never after
// ctx ended (r's session is over then), and from the stream's own
// goroutine, so it must not block.
//
// A stream that ends reports nothing about the envelopes posted on it:
// accepted ones are never answered, so its end cannot tell those from ones
// the peer never read, and a session's half kept for minutes (a pooled
// presignature) must not fail because its link was replaced. A peer that
// went away mid-session is caught where it always was: its refusal of the
// session's next envelope (it has no such session), the coordinator's
// call to it failing, or the session's stall bound.
//
// Until a stream has carried one answer, Post waits for its envelope's
// (only an answer shows the peer serves the stream at all). Without a
// stream (a link below StreamVersion, or a peer that serves none) Post is
// Deliver: it waits, and returns the refusal. An error from Post itself
// means r did not go out.
func (c *Client) Post(ctx context.Context, r *Envelope, failed func(error)) error {
	if c.streamed(r) {
		err := c.onStream(func() error { return c.postOnce(ctx, r, failed) })
		if !errors.Is(err, errStreamUnsupported) {
			return err
		}
		c.noStream.Store(true)
	}
	_, err := c.Deliver(ctx, r)
	return err
}

func (c *Client) postOnce(ctx context.Context, r *Envelope, failed func(error)) error {
	ds, err := c.deliveries()
	if err != nil {
		return err
	}
	if !ds.answered.Load() {
		// Until the peer has answered once, it may not serve the stream
		// at all; only an answer tells, so this envelope waits for one.
		return c.deliverOnce(ctx, r)
	}
	report := func(err error) {
		if ctx.Err() == nil {
			failed(err)
		}
	}
	m, forget, err := ds.number(c.toWire(r, true), func(seq uint64) { ds.posted[seq] = report }, func(seq uint64) { delete(ds.posted, seq) })
	if err != nil {
		return err
	}
	if err := ds.sendWithin(ctx, m); err != nil {
		forget()
		return ds.sendFailed(err)
	}
	// Accepted envelopes are never answered: the entry goes with the
	// session (ctx), not with an answer.
	context.AfterFunc(ctx, forget)
	return nil
}

// toWire is r as this link writes it on the stream.
func (c *Client) toWire(r *Envelope, failuresOnly bool) *pb.Envelope {
	m := envelopeToPB(r)
	wire := c.wireVersion(r.Version)
	m.Version, m.FailuresOnly = wire, failuresOnly
	stamp(m, wire)
	return m
}

// number gives m the stream's next seq and records it with add, both under
// ds.mu; forget undoes the record with remove. A stream that has ended
// numbers nothing (errStreamEnded).
func (ds *deliveryStream) number(m *pb.Envelope, add, remove func(seq uint64)) (_ *pb.Envelope, forget func(), err error) {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	if ds.err != nil {
		return nil, nil, fmt.Errorf("%w: %w", errStreamEnded, ds.err)
	}
	ds.next++
	m.Seq = ds.next
	add(m.Seq)
	return m, func() {
		ds.mu.Lock()
		defer ds.mu.Unlock()
		remove(m.Seq)
	}, nil
}

// sendFailed ends the stream after a Send of it failed with err and says
// what to do: errStreamUnsupported (use calls), or errStreamEnded (the
// envelope did not go out; a new stream may take it).
func (ds *deliveryStream) sendFailed(err error) error {
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
// Deliver call (version, decoding, the domain call) and answered in order,
// except that one marked failures_only is answered only if refused. An
// answer that cannot be sent ends the stream; the peer opens another.
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
		if d.Code == 0 && m.GetFailuresOnly() {
			continue
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
