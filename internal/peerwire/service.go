package peerwire

import (
	"context"

	"google.golang.org/grpc"
)

// ServiceName is the gRPC service of the peer protocol.
const ServiceName = "tkeyless.peer.v1.Peer"

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

func unary[Req any, Resp any](name string, call func(Server, context.Context, *Req) (*Resp, error)) grpc.MethodDesc {
	return grpc.MethodDesc{
		MethodName: name,
		Handler: func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
			req := new(Req)
			if err := dec(req); err != nil {
				return nil, err
			}
			if interceptor == nil {
				return call(srv.(Server), ctx, req)
			}
			info := &grpc.UnaryServerInfo{Server: srv, FullMethod: "/" + ServiceName + "/" + name}
			return interceptor(ctx, req, info, func(ctx context.Context, r any) (any, error) {
				return call(srv.(Server), ctx, r.(*Req))
			})
		},
	}
}

// ServiceDesc describes the peer service to grpc.Server.RegisterService.
var ServiceDesc = grpc.ServiceDesc{
	ServiceName: ServiceName,
	HandlerType: (*Server)(nil),
	Methods: []grpc.MethodDesc{
		unary("Ping", Server.Ping),
		unary("Prepare", Server.Prepare),
		unary("Run", Server.Run),
		unary("Deliver", Server.Deliver),
		unary("Echo", Server.Echo),
		unary("KeygenCeremony", Server.KeygenCeremony),
		unary("Status", Server.Status),
		unary("SetKeyState", Server.SetKeyState),
		unary("ReshareCeremony", Server.ReshareCeremony),
		unary("ImportCeremony", Server.ImportCeremony),
		unary("FinishReshare", Server.FinishReshare),
		unary("FinishPresign", Server.FinishPresign),
		unary("ReshareOutcome", Server.ReshareOutcome),
		unary("Readmit", Server.Readmit),
		unary("ResumeKey", Server.ResumeKey),
	},
	Metadata: "tkeyless/peer/v1",
}

// Client calls a peer.
type Client struct{ cc grpc.ClientConnInterface }

// NewClient wraps a connection to a peer. The connection must use Codec.
func NewClient(cc grpc.ClientConnInterface) *Client { return &Client{cc: cc} }

func invoke[Resp any](ctx context.Context, c *Client, name string, req any, opts ...grpc.CallOption) (*Resp, error) {
	resp := new(Resp)
	if err := c.cc.Invoke(ctx, "/"+ServiceName+"/"+name, req, resp, append(opts, grpc.ForceCodec(Codec{}))...); err != nil {
		return nil, err
	}
	return resp, nil
}

// Ping calls Ping.
func (c *Client) Ping(ctx context.Context, r *PingRequest, opts ...grpc.CallOption) (*PingResponse, error) {
	return invoke[PingResponse](ctx, c, "Ping", r, opts...)
}

// Prepare calls Prepare.
func (c *Client) Prepare(ctx context.Context, r *PrepareRequest, opts ...grpc.CallOption) (*PrepareResponse, error) {
	return invoke[PrepareResponse](ctx, c, "Prepare", r, opts...)
}

// Run calls Run.
func (c *Client) Run(ctx context.Context, r *RunRequest, opts ...grpc.CallOption) (*RunResponse, error) {
	return invoke[RunResponse](ctx, c, "Run", r, opts...)
}

// Deliver calls Deliver.
func (c *Client) Deliver(ctx context.Context, r *Envelope, opts ...grpc.CallOption) (*DeliverResponse, error) {
	return invoke[DeliverResponse](ctx, c, "Deliver", r, opts...)
}

// Echo calls Echo.
func (c *Client) Echo(ctx context.Context, r *Echo, opts ...grpc.CallOption) (*EchoResponse, error) {
	return invoke[EchoResponse](ctx, c, "Echo", r, opts...)
}

// KeygenCeremony calls KeygenCeremony.
func (c *Client) KeygenCeremony(ctx context.Context, r *KeygenCeremonyRequest) (*KeygenCeremonyResponse, error) {
	return invoke[KeygenCeremonyResponse](ctx, c, "KeygenCeremony", r)
}

// Status calls Status.
func (c *Client) Status(ctx context.Context, r *StatusRequest) (*StatusResponse, error) {
	return invoke[StatusResponse](ctx, c, "Status", r)
}

// SetKeyState calls SetKeyState.
func (c *Client) SetKeyState(ctx context.Context, r *SetKeyStateRequest) (*SetKeyStateResponse, error) {
	return invoke[SetKeyStateResponse](ctx, c, "SetKeyState", r)
}

// ReshareCeremony calls ReshareCeremony.
func (c *Client) ReshareCeremony(ctx context.Context, r *ReshareCeremonyRequest) (*ReshareCeremonyResponse, error) {
	return invoke[ReshareCeremonyResponse](ctx, c, "ReshareCeremony", r)
}

// ImportCeremony calls ImportCeremony.
func (c *Client) ImportCeremony(ctx context.Context, r *ImportCeremonyRequest) (*KeygenCeremonyResponse, error) {
	return invoke[KeygenCeremonyResponse](ctx, c, "ImportCeremony", r)
}

// FinishReshare calls FinishReshare.
func (c *Client) FinishReshare(ctx context.Context, r *FinishReshareRequest, opts ...grpc.CallOption) (*FinishReshareResponse, error) {
	return invoke[FinishReshareResponse](ctx, c, "FinishReshare", r, opts...)
}

// FinishPresign calls FinishPresign.
func (c *Client) FinishPresign(ctx context.Context, r *FinishPresignRequest, opts ...grpc.CallOption) (*RunResponse, error) {
	return invoke[RunResponse](ctx, c, "FinishPresign", r, opts...)
}

// ReshareOutcome calls ReshareOutcome.
func (c *Client) ReshareOutcome(ctx context.Context, r *ReshareOutcomeRequest, opts ...grpc.CallOption) (*ReshareOutcomeResponse, error) {
	return invoke[ReshareOutcomeResponse](ctx, c, "ReshareOutcome", r, opts...)
}

// Readmit calls Readmit.
func (c *Client) Readmit(ctx context.Context, r *ReadmitRequest) (*ReadmitResponse, error) {
	return invoke[ReadmitResponse](ctx, c, "Readmit", r)
}

// ResumeKey calls ResumeKey.
func (c *Client) ResumeKey(ctx context.Context, r *ResumeKeyRequest) (*ResumeKeyResponse, error) {
	return invoke[ResumeKeyResponse](ctx, c, "ResumeKey", r)
}
