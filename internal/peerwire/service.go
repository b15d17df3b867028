package peerwire

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/tkeyless/tkeyless/internal/peerwire/gen/tkeyless/peer/v2"
)

// ServiceName is the gRPC service of the peer protocol.
const ServiceName = "tkeyless.peer.v2.PeerService"

// versionsTrailer is the gRPC trailer in which a node states, on every
// answer, the range of protocol versions it speaks ("3-4"), so that a
// caller learns of a peer restarted with another build at its next call,
// not only at its next Ping.
const versionsTrailer = "tkeyless-peer-versions"

// Server is what a node implements for its peers.
type Server interface {
	Ping(context.Context, *PingRequest) (*PingResponse, error)
	Prepare(context.Context, *PrepareRequest) (*PrepareResponse, error)
	Run(context.Context, *RunRequest) (*RunResponse, error)
	Deliver(context.Context, *Envelope) (*DeliverResponse, error)
	Echo(context.Context, *Echo) (*EchoResponse, error)
	KeygenCeremony(context.Context, *KeygenCeremonyRequest) (*KeygenCeremonyResponse, error)
	Status(context.Context, *StatusRequest) (*StatusResponse, error)
	SetKeyState(context.Context, *SetKeyStateRequest) (*SetKeyStateResponse, error)
	ReshareCeremony(context.Context, *ReshareCeremonyRequest) (*ReshareCeremonyResponse, error)
	ImportCeremony(context.Context, *ImportCeremonyRequest) (*KeygenCeremonyResponse, error)
	FinishReshare(context.Context, *FinishReshareRequest) (*FinishReshareResponse, error)
	FinishPresign(context.Context, *FinishPresignRequest) (*RunResponse, error)
	ReshareOutcome(context.Context, *ReshareOutcomeRequest) (*ReshareOutcomeResponse, error)
	Readmit(context.Context, *ReadmitRequest) (*ReadmitResponse, error)
	ResumeKey(context.Context, *ResumeKeyRequest) (*ResumeKeyResponse, error)
}

// Register serves s as the peer service of gs.
func Register(gs grpc.ServiceRegistrar, s Server) {
	pb.RegisterPeerServiceServer(gs, &service{s: s})
}

// service is the generated gRPC service over a Server: it checks each
// message's protocol version, converts between wire and domain types, and
// states this node's version range in every answer's trailer.
type service struct {
	pb.UnimplementedPeerServiceServer
	s Server
}

// Supported says whether this build speaks protocol version v.
func Supported(v int) bool { return v >= MinVersion && v <= Version }

func versionRange() string { return strconv.Itoa(MinVersion) + "-" + strconv.Itoa(Version) }

// errUnsupported is the answer to a message in a version this build does
// not speak. Its code, FailedPrecondition, is what a Client retries on once
// with the range the trailer states.
func errUnsupported(v int64) error {
	return status.Errorf(codes.FailedPrecondition, "peer protocol version %d; this node speaks %d to %d", v, MinVersion, Version)
}

// handle runs one call: version check, decoding, the domain call, encoding.
// A message that fails to decode is the caller's fault (InvalidArgument),
// never a crash.
func handle[M proto.Message, Req any, Resp any, W any](ctx context.Context, m M, version msgVersion,
	from func(M) (*Req, error), call func(context.Context, *Req) (*Resp, error), to func(*Resp) W) (W, error) {
	var zero W
	_ = grpc.SetTrailer(ctx, metadata.Pairs(versionsTrailer, versionRange()))
	if version.versioned && !Supported(int(version.v)) {
		return zero, errUnsupported(version.v)
	}
	if err := inspect(m, version.v); err != nil {
		return zero, status.Error(codes.InvalidArgument, err.Error())
	}
	req, err := from(m)
	if err != nil {
		return zero, status.Error(codes.InvalidArgument, err.Error())
	}
	resp, err := call(ctx, req)
	if err != nil {
		return zero, err
	}
	if resp == nil {
		return zero, status.Error(codes.Internal, "peer service answered nothing")
	}
	return to(resp), nil
}

// msgVersion is the protocol version a call's message states, if it
// states one. Whether it does is kept apart from the value: a sentinel
// such as −1 is a value a peer can send, and once let such a message past
// the version check.
type msgVersion struct {
	v         int64
	versioned bool
}

func versioned(v int64) msgVersion { return msgVersion{v: v, versioned: true} }

// noVersion marks calls whose messages carry no version (operator
// commands, which a node answers in any version, and Ping, which
// negotiates it).
var noVersion = msgVersion{}

func ok[A, B any](f func(A) B) func(A) (B, error) { return func(a A) (B, error) { return f(a), nil } }

func empty[T any, W any](w W) func(*T) W { return func(*T) W { return w } }

func (s *service) Ping(ctx context.Context, m *pb.PingRequest) (*pb.PingResponse, error) {
	return handle(ctx, m, noVersion, ok(pingRequestFromPB), s.s.Ping, func(r *PingResponse) *pb.PingResponse {
		r.MinVersion, r.MaxVersion = MinVersion, Version
		return pingResponseToPB(r)
	})
}

func (s *service) Prepare(ctx context.Context, m *pb.PrepareRequest) (*pb.PrepareResponse, error) {
	return handle(ctx, m, versioned(m.GetVersion()), prepareRequestFromPB, s.s.Prepare, empty[PrepareResponse](&pb.PrepareResponse{}))
}

func (s *service) Run(ctx context.Context, m *pb.RunRequest) (*pb.RunResponse, error) {
	return handle(ctx, m, versioned(m.GetVersion()), runRequestFromPB, s.s.Run, runResponseToPB)
}

func (s *service) Deliver(ctx context.Context, m *pb.Envelope) (*pb.DeliverResponse, error) {
	return handle(ctx, m, versioned(m.GetVersion()), envelopeFromPB, s.s.Deliver, empty[DeliverResponse](&pb.DeliverResponse{}))
}

func (s *service) Echo(ctx context.Context, m *pb.EchoRequest) (*pb.EchoResponse, error) {
	return handle(ctx, m, versioned(m.GetVersion()), echoFromPB, s.s.Echo, empty[EchoResponse](&pb.EchoResponse{}))
}

func (s *service) KeygenCeremony(ctx context.Context, m *pb.KeygenCeremonyRequest) (*pb.KeygenCeremonyResponse, error) {
	return handle(ctx, m, noVersion, ok(keygenCeremonyRequestFromPB), s.s.KeygenCeremony, keygenCeremonyResponseToPB)
}

func (s *service) Status(ctx context.Context, m *pb.StatusRequest) (*pb.StatusResponse, error) {
	return handle(ctx, m, noVersion, ok(func(*pb.StatusRequest) *StatusRequest { return &StatusRequest{} }), s.s.Status, statusResponseToPB)
}

func (s *service) SetKeyState(ctx context.Context, m *pb.SetKeyStateRequest) (*pb.SetKeyStateResponse, error) {
	return handle(ctx, m, noVersion, ok(setKeyStateRequestFromPB), s.s.SetKeyState, setKeyStateResponseToPB)
}

func (s *service) ReshareCeremony(ctx context.Context, m *pb.ReshareCeremonyRequest) (*pb.ReshareCeremonyResponse, error) {
	return handle(ctx, m, noVersion, ok(reshareCeremonyRequestFromPB), s.s.ReshareCeremony, reshareCeremonyResponseToPB)
}

func (s *service) ImportCeremony(ctx context.Context, m *pb.ImportCeremonyRequest) (*pb.KeygenCeremonyResponse, error) {
	return handle(ctx, m, noVersion, ok(importCeremonyRequestFromPB), s.s.ImportCeremony, keygenCeremonyResponseToPB)
}

func (s *service) FinishReshare(ctx context.Context, m *pb.FinishReshareRequest) (*pb.FinishReshareResponse, error) {
	return handle(ctx, m, versioned(m.GetVersion()), finishReshareRequestFromPB, s.s.FinishReshare, empty[FinishReshareResponse](&pb.FinishReshareResponse{}))
}

func (s *service) FinishPresign(ctx context.Context, m *pb.FinishPresignRequest) (*pb.RunResponse, error) {
	return handle(ctx, m, versioned(m.GetVersion()), finishPresignRequestFromPB, s.s.FinishPresign, runResponseToPB)
}

func (s *service) ReshareOutcome(ctx context.Context, m *pb.ReshareOutcomeRequest) (*pb.ReshareOutcomeResponse, error) {
	return handle(ctx, m, versioned(m.GetVersion()), reshareOutcomeRequestFromPB, s.s.ReshareOutcome, reshareOutcomeResponseToPB)
}

func (s *service) Readmit(ctx context.Context, m *pb.ReadmitRequest) (*pb.ReadmitResponse, error) {
	return handle(ctx, m, noVersion, ok(func(m *pb.ReadmitRequest) *ReadmitRequest { return &ReadmitRequest{Peer: m.GetPeer()} }), s.s.Readmit,
		func(r *ReadmitResponse) *pb.ReadmitResponse { return &pb.ReadmitResponse{WasConvicted: r.WasConvicted} })
}

func (s *service) ResumeKey(ctx context.Context, m *pb.ResumeKeyRequest) (*pb.ResumeKeyResponse, error) {
	return handle(ctx, m, noVersion, ok(func(m *pb.ResumeKeyRequest) *ResumeKeyRequest { return &ResumeKeyRequest{Key: m.GetKey()} }), s.s.ResumeKey,
		func(r *ResumeKeyResponse) *pb.ResumeKeyResponse {
			return &pb.ResumeKeyResponse{WasSuspended: r.WasSuspended, Aborts: int64(r.Aborts)}
		})
}

// Client calls a peer. It negotiates the protocol version of its link: a
// Ping learns the peer's range, and so does the trailer of every answer.
// Each message goes out in the highest version both sides speak: a
// message whose Version is above it is lowered to it (node/ fills Version
// with peerwire.Version, "the newest I speak"); one below it goes as it is.
// Until the peer's range is known, messages go in MinVersion.
type Client struct {
	pc pb.PeerServiceClient

	mu   sync.Mutex
	link int // the negotiated version; 0 until the peer stated its range

	// smu guards ds, the link's Deliveries stream (stream.go), nil until
	// first used; noStream is set once the peer answered that it serves
	// none.
	smu      sync.Mutex
	ds       *deliveryStream
	noStream atomic.Bool
}

// NewClient wraps a connection to a peer.
func NewClient(cc grpc.ClientConnInterface) *Client { return &Client{pc: pb.NewPeerServiceClient(cc)} }

// Version is the protocol version of the link to this peer: the highest
// that both speak, or 0 if the peer has not stated its range yet or the
// ranges do not meet (or the Client is nil).
func (c *Client) Version() int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.link
}

// learn records a peer's stated range and returns the link's version, 0
// if they do not meet.
func (c *Client) learn(lo, hi int) int {
	v := min(hi, Version)
	if v < max(lo, MinVersion) {
		v = 0
	}
	c.mu.Lock()
	c.link = v
	c.mu.Unlock()
	return v
}

// learnTrailer reads and records the range a peer stated in an answer's
// trailer, if it stated one.
func (c *Client) learnTrailer(md metadata.MD) (lo, hi int, stated bool) {
	vals := md.Get(versionsTrailer)
	if len(vals) == 0 {
		return 0, 0, false
	}
	l, h, found := strings.Cut(vals[0], "-")
	lo, err1 := strconv.Atoi(l)
	hi, err2 := strconv.Atoi(h)
	if !found || err1 != nil || err2 != nil {
		return 0, 0, false
	}
	c.learn(lo, hi)
	return lo, hi, true
}

// wireVersion is the version a message asking for v goes out in.
func (c *Client) wireVersion(v int) int64 {
	link := c.Version()
	if link == 0 {
		link = MinVersion
	}
	return int64(min(v, link))
}

// call sends one request. A versioned request refused for its version is
// sent once more if the refusal's trailer shows the peer speaks another
// version this side can use (a peer that restarted with an older build).
func call[M proto.Message, R any](ctx context.Context, c *Client, version int, setVersion func(M, int64), m M,
	rpc func(context.Context, M, ...grpc.CallOption) (R, error), opts []grpc.CallOption) (R, error) {
	for attempt := 0; ; attempt++ {
		var wire int64 // stays 0 for a message that states no version
		if setVersion != nil {
			wire = c.wireVersion(version)
			setVersion(m, wire)
		}
		stamp(m, wire)
		var md metadata.MD
		r, err := rpc(ctx, m, append(opts, grpc.Trailer(&md))...)
		lo, hi, stated := c.learnTrailer(md)
		// Retry only a refusal of the version itself: the message's
		// version is outside the range the refusal states (other refusals
		// share the code), and the link now has another.
		versionRefused := status.Code(err) == codes.FailedPrecondition && stated && (wire < int64(lo) || wire > int64(hi))
		if err != nil && attempt == 0 && setVersion != nil && versionRefused && c.wireVersion(version) != wire {
			m.ProtoReflect().SetUnknown(nil)
			continue
		}
		return r, err
	}
}

// fromWire converts an answer, calling a malformed one an error of the
// call.
func fromWire[W any, R any](w W, err error, from func(W) (*R, error)) (*R, error) {
	if err != nil {
		return nil, err
	}
	r, err := from(w)
	if err != nil {
		return nil, fmt.Errorf("peer answer: %w", err)
	}
	return r, nil
}

// Ping calls Ping and negotiates the link's version from the answer. A peer
// with no version in common is an error: it cannot take part in sessions.
func (c *Client) Ping(ctx context.Context, r *PingRequest, opts ...grpc.CallOption) (*PingResponse, error) {
	m := pingRequestToPB(r)
	m.MinVersion, m.MaxVersion = MinVersion, Version
	w, err := call(ctx, c, 0, nil, m, c.pc.Ping, opts)
	resp, err := fromWire(w, err, ok(pingResponseFromPB))
	if err != nil {
		return nil, err
	}
	if c.learn(resp.MinVersion, resp.MaxVersion) == 0 {
		return resp, fmt.Errorf("peer %s speaks protocol versions %d to %d, this node %d to %d: %w",
			resp.Node, resp.MinVersion, resp.MaxVersion, MinVersion, Version, ErrNoCommonVersion)
	}
	return resp, nil
}

// ErrNoCommonVersion says a peer speaks no protocol version this node does.
var ErrNoCommonVersion = errors.New("no common protocol version")

// The versioned requests, for call.
var (
	prepareVersion        = func(m *pb.PrepareRequest, v int64) { m.Version = v }
	runVersion            = func(m *pb.RunRequest, v int64) { m.Version = v }
	envelopeVersion       = func(m *pb.Envelope, v int64) { m.Version = v }
	echoVersion           = func(m *pb.EchoRequest, v int64) { m.Version = v }
	finishReshareVersion  = func(m *pb.FinishReshareRequest, v int64) { m.Version = v }
	finishPresignVersion  = func(m *pb.FinishPresignRequest, v int64) { m.Version = v }
	reshareOutcomeVersion = func(m *pb.ReshareOutcomeRequest, v int64) { m.Version = v }
)

// Prepare calls Prepare.
func (c *Client) Prepare(ctx context.Context, r *PrepareRequest, opts ...grpc.CallOption) (*PrepareResponse, error) {
	w, err := call(ctx, c, r.Version, prepareVersion, prepareRequestToPB(r), c.pc.Prepare, opts)
	return fromWire(w, err, ok(func(*pb.PrepareResponse) *PrepareResponse { return &PrepareResponse{} }))
}

// Run calls Run.
func (c *Client) Run(ctx context.Context, r *RunRequest, opts ...grpc.CallOption) (*RunResponse, error) {
	w, err := call(ctx, c, r.Version, runVersion, runRequestToPB(r), c.pc.Run, opts)
	return fromWire(w, err, ok(runResponseFromPB))
}

// Deliver delivers an envelope: on the link's Deliveries stream when the
// link speaks StreamVersion (stream.go), else in a Deliver call.
func (c *Client) Deliver(ctx context.Context, r *Envelope, opts ...grpc.CallOption) (*DeliverResponse, error) {
	if c.streamed(r) {
		err := c.onStream(func() error { return c.deliverOnce(ctx, r) })
		if !errors.Is(err, errStreamUnsupported) {
			if err != nil {
				return nil, err
			}
			return &DeliverResponse{}, nil
		}
		c.noStream.Store(true)
	}
	w, err := call(ctx, c, r.Version, envelopeVersion, envelopeToPB(r), c.pc.Deliver, opts)
	return fromWire(w, err, ok(func(*pb.DeliverResponse) *DeliverResponse { return &DeliverResponse{} }))
}

// Echo calls Echo.
func (c *Client) Echo(ctx context.Context, r *Echo, opts ...grpc.CallOption) (*EchoResponse, error) {
	w, err := call(ctx, c, r.Version, echoVersion, echoToPB(r), c.pc.Echo, opts)
	return fromWire(w, err, ok(func(*pb.EchoResponse) *EchoResponse { return &EchoResponse{} }))
}

// KeygenCeremony calls KeygenCeremony.
func (c *Client) KeygenCeremony(ctx context.Context, r *KeygenCeremonyRequest) (*KeygenCeremonyResponse, error) {
	w, err := call(ctx, c, 0, nil, keygenCeremonyRequestToPB(r), c.pc.KeygenCeremony, nil)
	return fromWire(w, err, ok(keygenCeremonyResponseFromPB))
}

// Status calls Status.
func (c *Client) Status(ctx context.Context, r *StatusRequest) (*StatusResponse, error) {
	w, err := call(ctx, c, 0, nil, &pb.StatusRequest{}, c.pc.Status, nil)
	return fromWire(w, err, ok(statusResponseFromPB))
}

// SetKeyState calls SetKeyState.
func (c *Client) SetKeyState(ctx context.Context, r *SetKeyStateRequest) (*SetKeyStateResponse, error) {
	w, err := call(ctx, c, 0, nil, setKeyStateRequestToPB(r), c.pc.SetKeyState, nil)
	return fromWire(w, err, ok(setKeyStateResponseFromPB))
}

// ReshareCeremony calls ReshareCeremony.
func (c *Client) ReshareCeremony(ctx context.Context, r *ReshareCeremonyRequest) (*ReshareCeremonyResponse, error) {
	w, err := call(ctx, c, 0, nil, reshareCeremonyRequestToPB(r), c.pc.ReshareCeremony, nil)
	return fromWire(w, err, ok(reshareCeremonyResponseFromPB))
}

// ImportCeremony calls ImportCeremony.
func (c *Client) ImportCeremony(ctx context.Context, r *ImportCeremonyRequest) (*KeygenCeremonyResponse, error) {
	w, err := call(ctx, c, 0, nil, importCeremonyRequestToPB(r), c.pc.ImportCeremony, nil)
	return fromWire(w, err, ok(keygenCeremonyResponseFromPB))
}

// FinishReshare calls FinishReshare.
func (c *Client) FinishReshare(ctx context.Context, r *FinishReshareRequest, opts ...grpc.CallOption) (*FinishReshareResponse, error) {
	w, err := call(ctx, c, r.Version, finishReshareVersion, finishReshareRequestToPB(r), c.pc.FinishReshare, opts)
	return fromWire(w, err, ok(func(*pb.FinishReshareResponse) *FinishReshareResponse { return &FinishReshareResponse{} }))
}

// FinishPresign calls FinishPresign.
func (c *Client) FinishPresign(ctx context.Context, r *FinishPresignRequest, opts ...grpc.CallOption) (*RunResponse, error) {
	w, err := call(ctx, c, r.Version, finishPresignVersion, finishPresignRequestToPB(r), c.pc.FinishPresign, opts)
	return fromWire(w, err, ok(runResponseFromPB))
}

// ReshareOutcome calls ReshareOutcome.
func (c *Client) ReshareOutcome(ctx context.Context, r *ReshareOutcomeRequest, opts ...grpc.CallOption) (*ReshareOutcomeResponse, error) {
	w, err := call(ctx, c, r.Version, reshareOutcomeVersion, reshareOutcomeRequestToPB(r), c.pc.ReshareOutcome, opts)
	return fromWire(w, err, reshareOutcomeResponseFromPB)
}

// Readmit calls Readmit.
func (c *Client) Readmit(ctx context.Context, r *ReadmitRequest) (*ReadmitResponse, error) {
	w, err := call(ctx, c, 0, nil, &pb.ReadmitRequest{Peer: r.Peer}, c.pc.Readmit, nil)
	return fromWire(w, err, ok(func(m *pb.ReadmitResponse) *ReadmitResponse {
		return &ReadmitResponse{WasConvicted: m.GetWasConvicted()}
	}))
}

// ResumeKey calls ResumeKey.
func (c *Client) ResumeKey(ctx context.Context, r *ResumeKeyRequest) (*ResumeKeyResponse, error) {
	w, err := call(ctx, c, 0, nil, &pb.ResumeKeyRequest{Key: r.Key}, c.pc.ResumeKey, nil)
	return fromWire(w, err, ok(func(m *pb.ResumeKeyResponse) *ResumeKeyResponse {
		return &ResumeKeyResponse{WasSuspended: m.GetWasSuspended(), Aborts: int(m.GetAborts())}
	}))
}
