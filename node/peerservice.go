package node

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/internal/pki"
)

type identityKey struct{}

// callerOf returns the verified identity of the peer making a call.
func callerOf(ctx context.Context) pki.Identity {
	id, _ := ctx.Value(identityKey{}).(pki.Identity)
	return id
}

// peerIdentity authenticates a peer call from its client certificate, and
// refuses a revoked one: every call, not only the handshake, since
// connections opened before a reload that revoked the caller stay open but
// carry nothing more.
func (n *Node) peerIdentity(ctx context.Context) (pki.Identity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return pki.Identity{}, status.Error(codes.Unauthenticated, "no peer")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return pki.Identity{}, status.Error(codes.Unauthenticated, "not a TLS connection")
	}
	id, err := pki.IdentityFromState(ti.State)
	if err != nil {
		return pki.Identity{}, status.Errorf(codes.Unauthenticated, "peer identity: %v", err)
	}
	if err := n.refuseRevoked(id.Cert, "peer"); err != nil {
		return pki.Identity{}, status.Errorf(codes.PermissionDenied, "peer %v", err)
	}
	return id, nil
}

// identityInterceptor authenticates every peer call from its client
// certificate and enforces which roles may make it: only nodes take part in
// sessions; an admin may also start a ceremony or ping.
func (n *Node) identityInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	id, err := n.peerIdentity(ctx)
	if err != nil {
		return nil, err
	}
	allowed := []pki.Role{pki.RoleNode}
	switch info.FullMethod {
	// Ceremonies and key states carry an admin's signed statement, which
	// every member checks whoever delivers it; an admin may also call.
	case "/" + peerwire.ServiceName + "/KeygenCeremony", "/" + peerwire.ServiceName + "/Ping",
		"/" + peerwire.ServiceName + "/Status", "/" + peerwire.ServiceName + "/SetKeyState",
		"/" + peerwire.ServiceName + "/ReshareCeremony", "/" + peerwire.ServiceName + "/FinishReshare":
		allowed = append(allowed, pki.RoleAdmin)
	// Decisions only an operator makes, after looking at what happened:
	// never a node, which could readmit itself or resume a key it spent.
	case "/" + peerwire.ServiceName + "/Readmit", "/" + peerwire.ServiceName + "/ResumeKey":
		allowed = []pki.Role{pki.RoleAdmin}
	case "/" + peerwire.ServiceName + "/ImportCeremony":
		// A whole private key travels only from an admin, or from an
		// operator on this node's own machine using its identity; never
		// from another node.
		allowed = append(allowed, pki.RoleAdmin)
		if id.Role == pki.RoleNode && id.Name != n.cfg.Name {
			n.log.Warn().Str("peer", id.Name).Msg("import refused: a key may be handed only to the node it is imported on")
			return nil, status.Errorf(codes.PermissionDenied, "node %q may not hand node %q a private key", id.Name, n.cfg.Name)
		}
	}
	if !slices.Contains(allowed, id.Role) {
		n.log.Warn().Str("peer", id.Name).Str("role", string(id.Role)).Str("method", info.FullMethod).Msg("peer call refused: role not allowed")
		return nil, status.Errorf(codes.PermissionDenied, "%s %q may not call %s", id.Role, id.Name, info.FullMethod)
	}
	return handler(context.WithValue(ctx, identityKey{}, id), req)
}

// recoverInterceptor keeps one bad call (a tss-lib panic on a crafted
// message, a bug) from taking the node down.
func (n *Node) recoverInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	defer func() {
		if r := recover(); r != nil {
			n.log.Error().Str("method", info.FullMethod).Interface("panic", r).Bytes("stack", debug.Stack()).Msg("peer call panicked; recovered")
			err = status.Errorf(codes.Internal, "internal error in %s", info.FullMethod)
		}
	}()
	return handler(ctx, req)
}

// streamInterceptor authenticates a Deliveries stream as identityInterceptor
// does a call: only a node may open one, and every envelope on it is
// refused once the caller is revoked, as a call would be. A panic ends
// the stream, not the node.
func (n *Node) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	defer func() {
		if r := recover(); r != nil {
			n.log.Error().Str("method", info.FullMethod).Interface("panic", r).Bytes("stack", debug.Stack()).Msg("peer stream panicked; recovered")
			err = status.Errorf(codes.Internal, "internal error in %s", info.FullMethod)
		}
	}()
	id, err := n.peerIdentity(ss.Context())
	if err != nil {
		return err
	}
	if id.Role != pki.RoleNode {
		n.log.Warn().Str("peer", id.Name).Str("role", string(id.Role)).Str("method", info.FullMethod).Msg("peer stream refused: role not allowed")
		return status.Errorf(codes.PermissionDenied, "%s %q may not call %s", id.Role, id.Name, info.FullMethod)
	}
	return handler(srv, &identityStream{ServerStream: ss, ctx: context.WithValue(ss.Context(), identityKey{}, id), n: n, id: id})
}

// identityStream is a peer's stream with its identity in the context, and
// the revocation check before every message.
type identityStream struct {
	grpc.ServerStream
	ctx context.Context
	n   *Node
	id  pki.Identity
}

func (s *identityStream) Context() context.Context { return s.ctx }

func (s *identityStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if err := s.n.refuseRevoked(s.id.Cert, "peer"); err != nil {
		return status.Errorf(codes.PermissionDenied, "peer %v", err)
	}
	return nil
}

// peerService answers the other signers.
type peerService struct{ n *Node }

func (s *peerService) Ping(ctx context.Context, _ *peerwire.PingRequest) (*peerwire.PingResponse, error) {
	resp := &peerwire.PingResponse{Node: s.n.cfg.Name, KeyStates: s.n.keyState.snapshot()}
	for _, id := range s.n.Keys() {
		resp.Keys = append(resp.Keys, id.String())
	}
	slices.Sort(resp.Keys)
	return resp, nil
}

func (s *peerService) Prepare(ctx context.Context, req *peerwire.PrepareRequest) (*peerwire.PrepareResponse, error) {
	caller := callerOf(ctx)
	if err := s.n.prepare(caller.Name, req); err != nil {
		s.n.metrics.refused.WithLabelValues("prepare").Inc()
		ev := s.n.log.Warn()
		if req.Kind == peerwire.KindPresign && errors.Is(err, ErrOverloaded) {
			// A refill asked while this node was busy: it comes back in a
			// lull. Expected under load, so not worth an operator's eye.
			ev = s.n.log.Debug()
		}
		ev.Err(err).Str("peer", caller.Name).Str("session", req.Session.String()).Str("kind", string(req.Kind)).Msg("refused to join session")
		if errors.Is(err, ErrOverloaded) {
			// Busy, not broken: the coordinator does not blame it.
			return nil, status.Error(codes.ResourceExhausted, err.Error())
		}
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	return &peerwire.PrepareResponse{}, nil
}

func (s *peerService) Run(ctx context.Context, req *peerwire.RunRequest) (*peerwire.RunResponse, error) {
	caller := callerOf(ctx)
	sess, err := s.n.sessions.get(req.Session)
	if err != nil {
		return nil, status.Error(codes.NotFound, err.Error())
	}
	if sess.coordinator != caller.Name {
		return nil, status.Errorf(codes.PermissionDenied, "session %s was prepared by %s, not %s", req.Session, sess.coordinator, caller.Name)
	}
	resp, err := s.n.sessions.start(ctx, req.Session)
	if err != nil {
		return nil, status.Error(codes.Aborted, err.Error())
	}
	return resp, nil
}

func (s *peerService) Deliver(ctx context.Context, env *peerwire.Envelope) (*peerwire.DeliverResponse, error) {
	caller := callerOf(ctx)
	via := "call"
	if peerwire.Streamed(ctx) {
		via = "stream"
	}
	s.n.metrics.messages.WithLabelValues(via).Inc()
	if err := s.n.deliver(caller, env); err != nil {
		s.n.metrics.refused.WithLabelValues("message").Inc()
		s.n.log.Warn().Err(err).Str("peer", caller.Name).Str("session", env.Session.String()).Int("round", env.Round).Msg("message refused")
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	return &peerwire.DeliverResponse{}, nil
}

func (s *peerService) Echo(ctx context.Context, e *peerwire.Echo) (*peerwire.EchoResponse, error) {
	caller := callerOf(ctx)
	if err := s.n.handleEcho(caller, e); err != nil {
		s.n.metrics.refused.WithLabelValues("echo").Inc()
		s.n.log.Warn().Err(err).Str("peer", caller.Name).Str("session", e.Session.String()).Int("round", e.Round).Msg("echo refused")
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	return &peerwire.EchoResponse{}, nil
}

func (s *peerService) KeygenCeremony(ctx context.Context, req *peerwire.KeygenCeremonyRequest) (*peerwire.KeygenCeremonyResponse, error) {
	caller := callerOf(ctx)
	s.n.log.Info().Str("requested_by", caller.Name).Int("t", req.Threshold).Strs("parties", req.Parties).Msg("key generation requested")
	resp, err := s.n.Keygen(ctx, req)
	if err != nil {
		return nil, status.Error(codes.Aborted, fmt.Sprintf("keygen: %v", err))
	}
	return resp, nil
}

func (s *peerService) ReshareCeremony(ctx context.Context, req *peerwire.ReshareCeremonyRequest) (*peerwire.ReshareCeremonyResponse, error) {
	caller := callerOf(ctx)
	s.n.log.Info().Str("requested_by", caller.Name).Str("key", req.Key).Int("new_t", req.NewThreshold).Strs("new_parties", req.NewParties).Msg("resharing requested")
	resp, err := s.n.Reshare(ctx, req)
	if err != nil {
		return nil, status.Error(codes.Aborted, fmt.Sprintf("reshare: %v", err))
	}
	return resp, nil
}

func (s *peerService) ImportCeremony(ctx context.Context, req *peerwire.ImportCeremonyRequest) (*peerwire.KeygenCeremonyResponse, error) {
	caller := callerOf(ctx)
	s.n.log.Info().Str("requested_by", caller.Name).Int("t", req.Threshold).Strs("parties", req.Parties).Msg("key import requested")
	resp, err := s.n.Import(ctx, req)
	if err != nil {
		return nil, status.Error(codes.Aborted, fmt.Sprintf("import: %v", err))
	}
	return resp, nil
}

func (s *peerService) Readmit(ctx context.Context, req *peerwire.ReadmitRequest) (*peerwire.ReadmitResponse, error) {
	was, err := s.n.readmit(req.Peer, callerOf(ctx).Name)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &peerwire.ReadmitResponse{WasConvicted: was}, nil
}

func (s *peerService) ResumeKey(ctx context.Context, req *peerwire.ResumeKeyRequest) (*peerwire.ResumeKeyResponse, error) {
	resp, err := s.n.resumeKey(req.Key, callerOf(ctx).Name)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return resp, nil
}

func (s *peerService) FinishReshare(ctx context.Context, req *peerwire.FinishReshareRequest) (*peerwire.FinishReshareResponse, error) {
	caller := callerOf(ctx)
	if err := s.n.applyFinish(caller, req); err != nil {
		if errors.Is(err, errNothingPending) {
			return nil, status.Error(codes.NotFound, err.Error())
		}
		s.n.log.Warn().Err(err).Str("peer", caller.Name).Str("key", req.Key).Msg("resharing outcome refused")
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	return &peerwire.FinishReshareResponse{}, nil
}

func (s *peerService) FinishPresign(ctx context.Context, req *peerwire.FinishPresignRequest) (*peerwire.RunResponse, error) {
	caller := callerOf(ctx)
	sig, err := s.n.finishPresign(ctx, caller.Name, req)
	switch {
	case errors.Is(err, errUnknownPresign):
		return nil, status.Error(codes.NotFound, err.Error())
	case err != nil:
		s.n.log.Warn().Err(err).Str("peer", caller.Name).Str("session", req.Session.String()).Msg("presignature not finished")
		return nil, status.Error(codes.Aborted, err.Error())
	}
	return &peerwire.RunResponse{Signature: sig}, nil
}
