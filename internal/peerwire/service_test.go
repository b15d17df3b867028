package peerwire

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	pb "github.com/tkeyless/tkeyless/internal/peerwire/gen/tkeyless/peer/v2"
)

// recorder is a Server that keeps what it was sent and answers with
// canned responses: the peer protocol's own test double, for testing the
// boundary (node/ tests the real service).
type recorder struct {
	mu   sync.Mutex
	got  []any
	ping *PingResponse
	run  *RunResponse
	st   *StatusResponse
	out  *ReshareOutcomeResponse
}

func (s *recorder) keep(v any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got = append(s.got, v)
}

func (s *recorder) last() any {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.got[len(s.got)-1]
}

func (s *recorder) Ping(_ context.Context, r *PingRequest) (*PingResponse, error) {
	s.keep(r)
	return s.ping, nil
}
func (s *recorder) Prepare(_ context.Context, r *PrepareRequest) (*PrepareResponse, error) {
	s.keep(r)
	if r.Kind == "refuse" {
		return nil, status.Error(codes.PermissionDenied, "refused")
	}
	return &PrepareResponse{}, nil
}
func (s *recorder) Run(_ context.Context, r *RunRequest) (*RunResponse, error) {
	s.keep(r)
	return s.run, nil
}
func (s *recorder) Deliver(_ context.Context, r *Envelope) (*DeliverResponse, error) {
	s.keep(r)
	return &DeliverResponse{}, nil
}
func (s *recorder) Echo(_ context.Context, r *Echo) (*EchoResponse, error) {
	s.keep(r)
	return &EchoResponse{}, nil
}
func (s *recorder) KeygenCeremony(_ context.Context, r *KeygenCeremonyRequest) (*KeygenCeremonyResponse, error) {
	s.keep(r)
	return &KeygenCeremonyResponse{Key: "k", PublicKey: []byte{1}}, nil
}
func (s *recorder) Status(_ context.Context, r *StatusRequest) (*StatusResponse, error) {
	s.keep(r)
	return s.st, nil
}
func (s *recorder) SetKeyState(_ context.Context, r *SetKeyStateRequest) (*SetKeyStateResponse, error) {
	s.keep(r)
	return &SetKeyStateResponse{Applied: []string{"a"}}, nil
}
func (s *recorder) ReshareCeremony(_ context.Context, r *ReshareCeremonyRequest) (*ReshareCeremonyResponse, error) {
	s.keep(r)
	return &ReshareCeremonyResponse{Key: r.Key}, nil
}
func (s *recorder) ImportCeremony(_ context.Context, r *ImportCeremonyRequest) (*KeygenCeremonyResponse, error) {
	s.keep(r)
	return &KeygenCeremonyResponse{Key: "i"}, nil
}
func (s *recorder) FinishReshare(_ context.Context, r *FinishReshareRequest) (*FinishReshareResponse, error) {
	s.keep(r)
	return &FinishReshareResponse{}, nil
}
func (s *recorder) FinishPresign(_ context.Context, r *FinishPresignRequest) (*RunResponse, error) {
	s.keep(r)
	return s.run, nil
}
func (s *recorder) ReshareOutcome(_ context.Context, r *ReshareOutcomeRequest) (*ReshareOutcomeResponse, error) {
	s.keep(r)
	return s.out, nil
}
func (s *recorder) Readmit(_ context.Context, r *ReadmitRequest) (*ReadmitResponse, error) {
	s.keep(r)
	return &ReadmitResponse{WasConvicted: true}, nil
}
func (s *recorder) ResumeKey(_ context.Context, r *ResumeKeyRequest) (*ResumeKeyResponse, error) {
	s.keep(r)
	return &ResumeKeyResponse{WasSuspended: true, Aborts: 3}, nil
}

// serve runs srv as the peer service on a loopback port and returns a
// connection to it.
func serve(t *testing.T, srv Server) *grpc.ClientConn {
	t.Helper()
	return serveWire(t, func(gs *grpc.Server) { Register(gs, srv) })
}

// serveWire runs the gRPC services register puts on a server on a
// loopback port and returns a connection to it: for peers that answer the
// wire messages themselves (older, newer or broken builds).
func serveWire(t *testing.T, register func(*grpc.Server)) *grpc.ClientConn {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	register(gs)
	go func() { _ = gs.Serve(l) }()
	t.Cleanup(gs.Stop)
	cc, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func randomValue[T any](r *rand.Rand) *T {
	v := new(T)
	fill(r, reflect.ValueOf(v).Elem())
	return v
}

// TestServiceCarriesEverything sends random requests of every method over
// gRPC and checks each arrives as sent (its version lowered to the link's)
// and each answer comes back as given.
func TestServiceCarriesEverything(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	rec := &recorder{
		ping: randomValue[PingResponse](r),
		run:  randomValue[RunResponse](r),
		st:   randomValue[StatusResponse](r),
		out:  randomValue[ReshareOutcomeResponse](r),
	}
	c := NewClient(serve(t, rec))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	pr, err := c.Ping(ctx, &PingRequest{Version: Version})
	if err != nil {
		t.Fatal(err)
	}
	want := *rec.ping
	want.MinVersion, want.MaxVersion = MinVersion, Version
	if !reflect.DeepEqual(pr, &want) {
		t.Fatalf("ping answer changed:\n got %+v\nwant %+v", pr, &want)
	}
	if c.Version() != Version {
		t.Fatalf("link version %d after a ping, want %d", c.Version(), Version)
	}

	// Each request carries a Version in range, so it arrives unchanged.
	check := func(name string, sent any, answer, wantAnswer any, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := rec.last(); !reflect.DeepEqual(got, sent) {
			t.Fatalf("%s: request changed:\n got %+v\nsent %+v", name, got, sent)
		}
		if wantAnswer != nil && !reflect.DeepEqual(answer, wantAnswer) {
			t.Fatalf("%s: answer changed:\n got %+v\nwant %+v", name, answer, wantAnswer)
		}
	}
	for range 50 {
		prep := randomValue[PrepareRequest](r)
		prep.Version = Version
		resp1, err := c.Prepare(ctx, prep)
		check("Prepare", prep, resp1, &PrepareResponse{}, err)
		run := &RunRequest{Version: Version, Session: NewSessionID()}
		resp2, err := c.Run(ctx, run)
		check("Run", run, resp2, rec.run, err)
		env := randomValue[Envelope](r)
		env.Version = Version
		resp3, err := c.Deliver(ctx, env)
		check("Deliver", env, resp3, &DeliverResponse{}, err)
		echo := randomValue[Echo](r)
		echo.Version = Version
		resp4, err := c.Echo(ctx, echo)
		check("Echo", echo, resp4, &EchoResponse{}, err)
		kg := randomValue[KeygenCeremonyRequest](r)
		resp5, err := c.KeygenCeremony(ctx, kg)
		check("KeygenCeremony", kg, resp5, &KeygenCeremonyResponse{Key: "k", PublicKey: []byte{1}}, err)
		resp6, err := c.Status(ctx, &StatusRequest{})
		check("Status", &StatusRequest{}, resp6, rec.st, err)
		sk := randomValue[SetKeyStateRequest](r)
		resp7, err := c.SetKeyState(ctx, sk)
		check("SetKeyState", sk, resp7, &SetKeyStateResponse{Applied: []string{"a"}}, err)
		rc := randomValue[ReshareCeremonyRequest](r)
		resp8, err := c.ReshareCeremony(ctx, rc)
		check("ReshareCeremony", rc, resp8, &ReshareCeremonyResponse{Key: rc.Key}, err)
		ic := randomValue[ImportCeremonyRequest](r)
		resp9, err := c.ImportCeremony(ctx, ic)
		check("ImportCeremony", ic, resp9, &KeygenCeremonyResponse{Key: "i"}, err)
		fr := randomValue[FinishReshareRequest](r)
		fr.Version = Version
		resp10, err := c.FinishReshare(ctx, fr)
		check("FinishReshare", fr, resp10, &FinishReshareResponse{}, err)
		fp := randomValue[FinishPresignRequest](r)
		fp.Version = Version
		resp11, err := c.FinishPresign(ctx, fp)
		check("FinishPresign", fp, resp11, rec.run, err)
		ro := randomValue[ReshareOutcomeRequest](r)
		ro.Version = Version
		resp12, err := c.ReshareOutcome(ctx, ro)
		check("ReshareOutcome", ro, resp12, rec.out, err)
		ra := randomValue[ReadmitRequest](r)
		resp13, err := c.Readmit(ctx, ra)
		check("Readmit", ra, resp13, &ReadmitResponse{WasConvicted: true}, err)
		rk := randomValue[ResumeKeyRequest](r)
		resp14, err := c.ResumeKey(ctx, rk)
		check("ResumeKey", rk, resp14, &ResumeKeyResponse{WasSuspended: true, Aborts: 3}, err)
	}

	// A domain error keeps its gRPC status.
	if _, err := c.Prepare(ctx, &PrepareRequest{Version: Version, Kind: "refuse"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("refused Prepare: %v, want PermissionDenied", err)
	}
}

// TestVersionNegotiation pins the rules of the link version: a message
// asking for a newer version than the link goes out in the link's; an
// unknown link uses MinVersion; a version outside the receiver's range is
// refused with FailedPrecondition before the node sees it; and the range
// is learnt from any answer, not only a Ping.
func TestVersionNegotiation(t *testing.T) {
	rec := &recorder{ping: &PingResponse{Node: "b"}, run: &RunResponse{}}
	cc := serve(t, rec)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	c := NewClient(cc)
	if c.Version() != 0 {
		t.Fatalf("link version %d before any answer, want 0", c.Version())
	}
	// Before any answer: MinVersion, whatever the message asks for.
	if _, err := c.Run(ctx, &RunRequest{Version: Version + 5, Session: NewSessionID()}); err != nil {
		t.Fatal(err)
	}
	if got := rec.last().(*RunRequest).Version; got != MinVersion {
		t.Fatalf("first message went out in version %d, want MinVersion %d", got, MinVersion)
	}
	// The answer's trailer stated the range: the link is negotiated.
	if c.Version() != Version {
		t.Fatalf("link version %d after an answer, want %d", c.Version(), Version)
	}
	if _, err := c.Run(ctx, &RunRequest{Version: Version + 5, Session: NewSessionID()}); err != nil {
		t.Fatal(err)
	}
	if got := rec.last().(*RunRequest).Version; got != Version {
		t.Fatalf("message went out in version %d, want the link's %d", got, Version)
	}
	// Below the receiver's range: refused, and the node never sees it.
	n := len(rec.got)
	_, err := c.Run(ctx, &RunRequest{Version: MinVersion - 1, Session: NewSessionID()})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "protocol version") {
		t.Fatalf("old version: %v, want FailedPrecondition naming the protocol version", err)
	}
	if len(rec.got) != n {
		t.Fatal("a message in an unsupported version reached the node")
	}

	// Ranges that meet and do not.
	for _, tc := range []struct{ lo, hi, want int }{
		{MinVersion, Version, Version},
		{MinVersion, Version + 3, Version},
		{MinVersion - 2, MinVersion, MinVersion},
		{Version + 1, Version + 2, 0},
		{MinVersion - 3, MinVersion - 1, 0},
	} {
		if got := NewClient(cc).learn(tc.lo, tc.hi); got != tc.want {
			t.Errorf("peer speaking %d to %d: link version %d, want %d", tc.lo, tc.hi, got, tc.want)
		}
	}
}

// TestVersionNegotiationWire speaks to the service as a node of another
// build would, with raw protobuf: a newer node's Ping, a message in a
// version from the future, and one carrying a field this build does not
// know (ignored, as protobuf does).
func TestVersionNegotiationWire(t *testing.T) {
	rec := &recorder{ping: &PingResponse{Node: "b"}}
	pc := pb.NewPeerServiceClient(serve(t, rec))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	resp, err := pc.Ping(ctx, &pb.PingRequest{Version: Version + 1, MinVersion: MinVersion, MaxVersion: Version + 1})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetMinVersion() != MinVersion || resp.GetMaxVersion() != Version {
		t.Fatalf("ping states range %d to %d, want %d to %d", resp.GetMinVersion(), resp.GetMaxVersion(), MinVersion, Version)
	}
	_, err = pc.Deliver(ctx, &pb.Envelope{Version: Version + 1, Session: make([]byte, 16)})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("envelope from the future: %v, want FailedPrecondition", err)
	}
	// A negative version is no version this build speaks either: the
	// unversioned calls' marker must not be a value a peer can send.
	n := len(rec.got)
	for _, v := range []int64{-1, -2, math.MinInt64} {
		if _, err := pc.Run(ctx, &pb.RunRequest{Version: v, Session: make([]byte, 16)}); status.Code(err) != codes.FailedPrecondition {
			t.Errorf("Run in version %d: %v, want FailedPrecondition", v, err)
		}
		if _, err := pc.FinishPresign(ctx, &pb.FinishPresignRequest{Version: v, Session: make([]byte, 16)}); status.Code(err) != codes.FailedPrecondition {
			t.Errorf("FinishPresign in version %d: %v, want FailedPrecondition", v, err)
		}
	}
	if len(rec.got) != n {
		t.Error("a message in a negative version reached the node")
	}

	// A field from a newer schema: field 999, a string. (In MinVersion:
	// the peerwire_next build wants its own new field at version 4.)
	m := &pb.Envelope{Version: MinVersion, Session: make([]byte, 16), From: "b", Payload: []byte{1}}
	m.ProtoReflect().SetUnknown(protowire.AppendString(protowire.AppendTag(nil, 999, protowire.BytesType), "from the future"))
	if _, err := pc.Deliver(ctx, m); err != nil {
		t.Fatalf("an envelope with an unknown field: %v", err)
	}
	if got := rec.last().(*Envelope); got.From != "b" || len(got.Payload) != 1 {
		t.Fatalf("envelope with an unknown field arrived as %+v", got)
	}

	// A session id of the wrong length is the sender's error.
	_, err = pc.Deliver(ctx, &pb.Envelope{Version: MinVersion, Session: make([]byte, 15)})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "session id") {
		t.Fatalf("short session id: %v, want InvalidArgument", err)
	}
}

// futureNode is a node of a far newer build, speaking versions 9 and 10
// only, written against the generated service directly.
type futureNode struct {
	pb.UnimplementedPeerServiceServer
}

func (futureNode) Ping(context.Context, *pb.PingRequest) (*pb.PingResponse, error) {
	return &pb.PingResponse{Node: "z", MinVersion: 9, MaxVersion: 10}, nil
}

// TestPingWithoutCommonVersion: a peer that speaks no version this node
// does fails its Ping, so health checks keep it out of sessions.
func TestPingWithoutCommonVersion(t *testing.T) {
	c := NewClient(serveWire(t, func(gs *grpc.Server) { pb.RegisterPeerServiceServer(gs, futureNode{}) }))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.Ping(ctx, &PingRequest{Version: Version})
	if !errors.Is(err, ErrNoCommonVersion) || !strings.Contains(err.Error(), "9 to 10") {
		t.Fatalf("ping of a node speaking 9 to 10: %v, want ErrNoCommonVersion", err)
	}
	if c.Version() != 0 {
		t.Fatalf("link version %d, want 0", c.Version())
	}
}

// FuzzUnmarshalEnvelope feeds arbitrary bytes as a peer could send them
// through the envelope's decoding: nothing may panic, and whatever decodes
// encodes back to a value that decodes the same.
func FuzzUnmarshalEnvelope(f *testing.F) {
	good, _ := MarshalEnvelope(&Envelope{Version: Version, Session: NewSessionID(), Kind: KindSign, Key: "k", From: "b", Round: 1, Type: "T1", Broadcast: true, Payload: []byte{1, 2}})
	f.Add(good)
	f.Add([]byte("\xff\xfe{{{"))
	f.Add([]byte{0x12, 0x03, 1, 2, 3})
	f.Fuzz(func(t *testing.T, data []byte) {
		var e Envelope
		if err := UnmarshalEnvelope(data, &e); err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error does not wrap ErrMalformed: %v", err)
			}
			return
		}
		b, err := MarshalEnvelope(&e)
		if err != nil {
			return // strings that are not UTF-8 decode only as bytes do
		}
		var again Envelope
		if err := UnmarshalEnvelope(b, &again); err != nil || !reflect.DeepEqual(e, again) {
			t.Fatalf("re-encoded envelope differs: %v\n%+v\n%+v", err, e, again)
		}
	})
}

// TestServiceName: node/ decides who may call what by method name, built
// from ServiceName; it must be the generated service's.
func TestServiceName(t *testing.T) {
	if ServiceName != pb.PeerService_ServiceDesc.ServiceName {
		t.Fatalf("ServiceName %q, generated service %q", ServiceName, pb.PeerService_ServiceDesc.ServiceName)
	}
	if pb.PeerService_Ping_FullMethodName != "/"+ServiceName+"/Ping" {
		t.Fatalf("method names are not /ServiceName/Method: %s", pb.PeerService_Ping_FullMethodName)
	}
}
