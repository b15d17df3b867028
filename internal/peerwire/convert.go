package peerwire

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/tkeyless/tkeyless/internal/peerwire/gen/tkeyless/peer/v2"
)

// The conversions between the domain types and their protobuf wire form.
// They lose nothing a domain value can hold, with two conventions of
// protobuf: an empty slice, map or byte string arrives as nil, and a time
// arrives in UTC without a monotonic reading (a zero time stays zero).
// Strings must be valid UTF-8, as protobuf requires: the free text of a
// status (errors, reasons) is made so; any other string that is not fails
// to encode, and one received fails to decode, each with a clear error.
// Decoding otherwise fails only on what the domain types cannot hold: a
// session id that is not 16 bytes. Everything else a peer sends is checked
// by node/.

// ErrMalformed wraps every decoding error of a peer message.
var ErrMalformed = errors.New("peerwire: malformed message")

func sessionToPB(id SessionID) []byte { return id[:] }

func sessionFromPB(b []byte) (SessionID, error) {
	var id SessionID
	if len(b) != len(id) {
		return id, fmt.Errorf("%w: session id of %d bytes, want %d", ErrMalformed, len(b), len(id))
	}
	copy(id[:], b)
	return id, nil
}

func timeToPB(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func timeFromPB(t *timestamppb.Timestamp) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.AsTime()
}

func durationToPB(d time.Duration) *durationpb.Duration {
	if d == 0 {
		return nil
	}
	return durationpb.New(d)
}

func durationFromPB(d *durationpb.Duration) time.Duration {
	if d == nil {
		return 0
	}
	return d.AsDuration()
}

// text makes free text (an error, a reason) valid UTF-8, which protobuf
// requires of a string: an error quoting a peer's bytes must not make a
// node's whole status unsendable.
func text(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }

// strs keeps an empty list nil either way, as protobuf does.
func strs(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return s
}

func bs(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

func mapSlice[A, B any](in []A, f func(A) B) []B {
	if len(in) == 0 {
		return nil
	}
	out := make([]B, len(in))
	for i, a := range in {
		out[i] = f(a)
	}
	return out
}

func pingRequestToPB(r *PingRequest) *pb.PingRequest {
	return &pb.PingRequest{Version: int64(r.Version)}
}

func pingRequestFromPB(m *pb.PingRequest) *PingRequest {
	return &PingRequest{Version: int(m.GetVersion())}
}

func keyStateToPB(s KeyState) *pb.KeyState {
	return &pb.KeyState{Disabled: s.Disabled, Version: s.Version, Statement: bs(s.Statement), Changed: timeToPB(s.Changed), By: s.By}
}

func keyStateFromPB(m *pb.KeyState) KeyState {
	return KeyState{Disabled: m.GetDisabled(), Version: m.GetVersion(), Statement: bs(m.GetStatement()), Changed: timeFromPB(m.GetChanged()), By: m.GetBy()}
}

func pingResponseToPB(r *PingResponse) *pb.PingResponse {
	m := &pb.PingResponse{Node: r.Node, Keys: strs(r.Keys), MinVersion: int64(r.MinVersion), MaxVersion: int64(r.MaxVersion)}
	if len(r.KeyStates) > 0 {
		m.KeyStates = make(map[string]*pb.KeyState, len(r.KeyStates))
		for k, s := range r.KeyStates {
			m.KeyStates[k] = keyStateToPB(s)
		}
	}
	return m
}

func pingResponseFromPB(m *pb.PingResponse) *PingResponse {
	r := &PingResponse{Node: m.GetNode(), Keys: strs(m.GetKeys()), MinVersion: int(m.GetMinVersion()), MaxVersion: int(m.GetMaxVersion())}
	if len(m.GetKeyStates()) > 0 {
		r.KeyStates = make(map[string]KeyState, len(m.GetKeyStates()))
		for k, s := range m.GetKeyStates() {
			r.KeyStates[k] = keyStateFromPB(s)
		}
	}
	return r
}

func signRequestToPB(r *SignRequest) *pb.SignRequest {
	if r == nil {
		return nil
	}
	return &pb.SignRequest{Key: r.Key, Quorum: strs(r.Quorum), Hash: r.Hash, Digest: bs(r.Digest), Edge: r.Edge, Authority: bs(r.Authority), RequestId: r.RequestID}
}

func signRequestFromPB(m *pb.SignRequest) *SignRequest {
	if m == nil {
		return nil
	}
	return &SignRequest{Key: m.GetKey(), Quorum: strs(m.GetQuorum()), Hash: m.GetHash(), Digest: bs(m.GetDigest()), Edge: m.GetEdge(), Authority: bs(m.GetAuthority()), RequestID: m.GetRequestId()}
}

func prepareRequestToPB(r *PrepareRequest) *pb.PrepareRequest {
	m := &pb.PrepareRequest{Version: int64(r.Version), Session: sessionToPB(r.Session), Kind: string(r.Kind), Sign: signRequestToPB(r.Sign), CarryEchoes: r.CarryEchoes}
	if k := r.Keygen; k != nil {
		m.Keygen = &pb.KeygenRequest{Threshold: int64(k.Threshold), Parties: strs(k.Parties), Authority: bs(k.Authority)}
	}
	if s := r.Reshare; s != nil {
		m.Reshare = &pb.ReshareRequest{Key: s.Key, PublicKey: bs(s.PublicKey), OldParties: strs(s.OldParties), OldThreshold: int64(s.OldThreshold),
			NewParties: strs(s.NewParties), NewThreshold: int64(s.NewThreshold), Import: s.Import, Authority: bs(s.Authority)}
	}
	if p := r.Presign; p != nil {
		m.Presign = &pb.PresignRequest{Key: p.Key, Quorum: strs(p.Quorum), Ttl: durationToPB(p.TTL), LiveListed: p.LiveListed}
		for _, id := range p.Live {
			m.Presign.Live = append(m.Presign.Live, sessionToPB(id))
		}
	}
	return m
}

func prepareRequestFromPB(m *pb.PrepareRequest) (*PrepareRequest, error) {
	id, err := sessionFromPB(m.GetSession())
	if err != nil {
		return nil, err
	}
	r := &PrepareRequest{Version: int(m.GetVersion()), Session: id, Kind: Kind(m.GetKind()), Sign: signRequestFromPB(m.GetSign()), CarryEchoes: m.GetCarryEchoes()}
	if k := m.GetKeygen(); k != nil {
		r.Keygen = &KeygenRequest{Threshold: int(k.GetThreshold()), Parties: strs(k.GetParties()), Authority: bs(k.GetAuthority())}
	}
	if s := m.GetReshare(); s != nil {
		r.Reshare = &ReshareRequest{Key: s.GetKey(), PublicKey: bs(s.GetPublicKey()), OldParties: strs(s.GetOldParties()), OldThreshold: int(s.GetOldThreshold()),
			NewParties: strs(s.GetNewParties()), NewThreshold: int(s.GetNewThreshold()), Import: s.GetImport(), Authority: bs(s.GetAuthority())}
	}
	if p := m.GetPresign(); p != nil {
		r.Presign = &PresignRequest{Key: p.GetKey(), Quorum: strs(p.GetQuorum()), TTL: durationFromPB(p.GetTtl()), LiveListed: p.GetLiveListed()}
		for _, b := range p.GetLive() {
			id, err := sessionFromPB(b)
			if err != nil {
				return nil, fmt.Errorf("presign live list: %w", err)
			}
			r.Presign.Live = append(r.Presign.Live, id)
		}
	}
	return r, nil
}

func runRequestToPB(r *RunRequest) *pb.RunRequest {
	return &pb.RunRequest{Version: int64(r.Version), Session: sessionToPB(r.Session)}
}

func runRequestFromPB(m *pb.RunRequest) (*RunRequest, error) {
	id, err := sessionFromPB(m.GetSession())
	if err != nil {
		return nil, err
	}
	return &RunRequest{Version: int(m.GetVersion()), Session: id}, nil
}

func confirmationToPB(c *ReshareConfirmation) *pb.ReshareConfirmation {
	if c == nil {
		return nil
	}
	return &pb.ReshareConfirmation{Node: c.Node, Fingerprint: bs(c.Fingerprint), Cert: bs(c.Cert), Sig: bs(c.Sig)}
}

func confirmationFromPB(m *pb.ReshareConfirmation) *ReshareConfirmation {
	if m == nil {
		return nil
	}
	return &ReshareConfirmation{Node: m.GetNode(), Fingerprint: bs(m.GetFingerprint()), Cert: bs(m.GetCert()), Sig: bs(m.GetSig())}
}

func runResponseToPB(r *RunResponse) *pb.RunResponse {
	return &pb.RunResponse{Signature: bs(r.Signature), PublicKey: bs(r.PublicKey), Fingerprint: bs(r.Fingerprint), Confirmation: confirmationToPB(r.Confirmation)}
}

func runResponseFromPB(m *pb.RunResponse) *RunResponse {
	return &RunResponse{Signature: bs(m.GetSignature()), PublicKey: bs(m.GetPublicKey()), Fingerprint: bs(m.GetFingerprint()), Confirmation: confirmationFromPB(m.GetConfirmation())}
}

func envelopeToPB(e *Envelope) *pb.Envelope {
	m := &pb.Envelope{Version: int64(e.Version), Session: sessionToPB(e.Session), Kind: string(e.Kind), Key: e.Key, From: e.From,
		Round: int64(e.Round), Type: e.Type, Broadcast: e.Broadcast, Payload: bs(e.Payload), Sig: bs(e.Sig)}
	for i := range e.Echoes {
		m.Echoes = append(m.Echoes, echoToPB(&e.Echoes[i]))
	}
	return m
}

// maxCarriedEchoes bounds the echoes one envelope may carry: one per other
// member of the largest session a cluster runs is far below it.
const maxCarriedEchoes = 64

func envelopeFromPB(m *pb.Envelope) (*Envelope, error) {
	id, err := sessionFromPB(m.GetSession())
	if err != nil {
		return nil, err
	}
	e := &Envelope{Version: int(m.GetVersion()), Session: id, Kind: Kind(m.GetKind()), Key: m.GetKey(), From: m.GetFrom(),
		Round: int(m.GetRound()), Type: m.GetType(), Broadcast: m.GetBroadcast(), Payload: bs(m.GetPayload()), Sig: bs(m.GetSig())}
	if len(m.GetEchoes()) > maxCarriedEchoes {
		return nil, fmt.Errorf("%w: envelope carries %d echoes, at most %d", ErrMalformed, len(m.GetEchoes()), maxCarriedEchoes)
	}
	for _, c := range m.GetEchoes() {
		echo, err := echoFromPB(c)
		if err != nil {
			return nil, fmt.Errorf("carried echo: %w", err)
		}
		e.Echoes = append(e.Echoes, *echo)
	}
	return e, nil
}

func echoToPB(e *Echo) *pb.EchoRequest {
	return &pb.EchoRequest{Version: int64(e.Version), Session: sessionToPB(e.Session), Origin: e.Origin, Type: e.Type, Round: int64(e.Round),
		Hash: bs(e.Hash), Sig: bs(e.Sig), OriginCert: bs(e.OriginCert)}
}

func echoFromPB(m *pb.EchoRequest) (*Echo, error) {
	id, err := sessionFromPB(m.GetSession())
	if err != nil {
		return nil, err
	}
	return &Echo{Version: int(m.GetVersion()), Session: id, Origin: m.GetOrigin(), Type: m.GetType(), Round: int(m.GetRound()),
		Hash: bs(m.GetHash()), Sig: bs(m.GetSig()), OriginCert: bs(m.GetOriginCert())}, nil
}

func keygenCeremonyRequestToPB(r *KeygenCeremonyRequest) *pb.KeygenCeremonyRequest {
	return &pb.KeygenCeremonyRequest{Threshold: int64(r.Threshold), Parties: strs(r.Parties), Authority: bs(r.Authority)}
}

func keygenCeremonyRequestFromPB(m *pb.KeygenCeremonyRequest) *KeygenCeremonyRequest {
	return &KeygenCeremonyRequest{Threshold: int(m.GetThreshold()), Parties: strs(m.GetParties()), Authority: bs(m.GetAuthority())}
}

func keygenCeremonyResponseToPB(r *KeygenCeremonyResponse) *pb.KeygenCeremonyResponse {
	return &pb.KeygenCeremonyResponse{Key: r.Key, PublicKey: bs(r.PublicKey)}
}

func keygenCeremonyResponseFromPB(m *pb.KeygenCeremonyResponse) *KeygenCeremonyResponse {
	return &KeygenCeremonyResponse{Key: m.GetKey(), PublicKey: bs(m.GetPublicKey())}
}

func reshareCeremonyRequestToPB(r *ReshareCeremonyRequest) *pb.ReshareCeremonyRequest {
	return &pb.ReshareCeremonyRequest{Key: r.Key, NewParties: strs(r.NewParties), NewThreshold: int64(r.NewThreshold), Dealers: strs(r.Dealers), Authority: bs(r.Authority)}
}

func reshareCeremonyRequestFromPB(m *pb.ReshareCeremonyRequest) *ReshareCeremonyRequest {
	return &ReshareCeremonyRequest{Key: m.GetKey(), NewParties: strs(m.GetNewParties()), NewThreshold: int(m.GetNewThreshold()), Dealers: strs(m.GetDealers()), Authority: bs(m.GetAuthority())}
}

func reshareCeremonyResponseToPB(r *ReshareCeremonyResponse) *pb.ReshareCeremonyResponse {
	return &pb.ReshareCeremonyResponse{Key: r.Key, Session: r.Session, OldParties: strs(r.OldParties), OldThreshold: int64(r.OldThreshold),
		NewParties: strs(r.NewParties), NewThreshold: int64(r.NewThreshold), Committed: strs(r.Committed), Pending: strs(r.Pending)}
}

func reshareCeremonyResponseFromPB(m *pb.ReshareCeremonyResponse) *ReshareCeremonyResponse {
	return &ReshareCeremonyResponse{Key: m.GetKey(), Session: m.GetSession(), OldParties: strs(m.GetOldParties()), OldThreshold: int(m.GetOldThreshold()),
		NewParties: strs(m.GetNewParties()), NewThreshold: int(m.GetNewThreshold()), Committed: strs(m.GetCommitted()), Pending: strs(m.GetPending())}
}

func importCeremonyRequestToPB(r *ImportCeremonyRequest) *pb.ImportCeremonyRequest {
	return &pb.ImportCeremonyRequest{PrivateKey: bs(r.PrivateKey), Threshold: int64(r.Threshold), Parties: strs(r.Parties), Authority: bs(r.Authority)}
}

func importCeremonyRequestFromPB(m *pb.ImportCeremonyRequest) *ImportCeremonyRequest {
	return &ImportCeremonyRequest{PrivateKey: bs(m.GetPrivateKey()), Threshold: int(m.GetThreshold()), Parties: strs(m.GetParties()), Authority: bs(m.GetAuthority())}
}

func finishReshareRequestToPB(r *FinishReshareRequest) *pb.FinishReshareRequest {
	if r == nil {
		return nil
	}
	return &pb.FinishReshareRequest{Version: int64(r.Version), Session: sessionToPB(r.Session), Key: r.Key, Commit: r.Commit,
		NewParties: strs(r.NewParties), NewThreshold: int64(r.NewThreshold), Fingerprint: bs(r.Fingerprint),
		Confirmations: mapSlice(r.Confirmations, func(c ReshareConfirmation) *pb.ReshareConfirmation { return confirmationToPB(&c) })}
}

func finishReshareRequestFromPB(m *pb.FinishReshareRequest) (*FinishReshareRequest, error) {
	if m == nil {
		return nil, nil
	}
	id, err := sessionFromPB(m.GetSession())
	if err != nil {
		return nil, err
	}
	return &FinishReshareRequest{Version: int(m.GetVersion()), Session: id, Key: m.GetKey(), Commit: m.GetCommit(),
		NewParties: strs(m.GetNewParties()), NewThreshold: int(m.GetNewThreshold()), Fingerprint: bs(m.GetFingerprint()),
		Confirmations: mapSlice(m.GetConfirmations(), func(c *pb.ReshareConfirmation) ReshareConfirmation { return *confirmationFromPB(c) })}, nil
}

func finishPresignRequestToPB(r *FinishPresignRequest) *pb.FinishPresignRequest {
	return &pb.FinishPresignRequest{Version: int64(r.Version), Session: sessionToPB(r.Session), Sign: signRequestToPB(r.Sign)}
}

func finishPresignRequestFromPB(m *pb.FinishPresignRequest) (*FinishPresignRequest, error) {
	id, err := sessionFromPB(m.GetSession())
	if err != nil {
		return nil, err
	}
	return &FinishPresignRequest{Version: int(m.GetVersion()), Session: id, Sign: signRequestFromPB(m.GetSign())}, nil
}

func reshareOutcomeRequestToPB(r *ReshareOutcomeRequest) *pb.ReshareOutcomeRequest {
	return &pb.ReshareOutcomeRequest{Version: int64(r.Version), Session: sessionToPB(r.Session), Key: r.Key}
}

func reshareOutcomeRequestFromPB(m *pb.ReshareOutcomeRequest) (*ReshareOutcomeRequest, error) {
	id, err := sessionFromPB(m.GetSession())
	if err != nil {
		return nil, err
	}
	return &ReshareOutcomeRequest{Version: int(m.GetVersion()), Session: id, Key: m.GetKey()}, nil
}

func reshareOutcomeResponseToPB(r *ReshareOutcomeResponse) *pb.ReshareOutcomeResponse {
	return &pb.ReshareOutcomeResponse{State: r.State, Finish: finishReshareRequestToPB(r.Finish), Confirmation: confirmationToPB(r.Confirmation)}
}

func reshareOutcomeResponseFromPB(m *pb.ReshareOutcomeResponse) (*ReshareOutcomeResponse, error) {
	f, err := finishReshareRequestFromPB(m.GetFinish())
	if err != nil {
		return nil, err
	}
	return &ReshareOutcomeResponse{State: m.GetState(), Finish: f, Confirmation: confirmationFromPB(m.GetConfirmation())}, nil
}

func setKeyStateRequestToPB(r *SetKeyStateRequest) *pb.SetKeyStateRequest {
	return &pb.SetKeyStateRequest{Key: r.Key, State: keyStateToPB(r.State), Propagate: r.Propagate}
}

func setKeyStateRequestFromPB(m *pb.SetKeyStateRequest) *SetKeyStateRequest {
	return &SetKeyStateRequest{Key: m.GetKey(), State: keyStateFromPB(m.GetState()), Propagate: m.GetPropagate()}
}

func setKeyStateResponseToPB(r *SetKeyStateResponse) *pb.SetKeyStateResponse {
	return &pb.SetKeyStateResponse{Applied: strs(r.Applied), Unreachable: strs(r.Unreachable)}
}

func setKeyStateResponseFromPB(m *pb.SetKeyStateResponse) *SetKeyStateResponse {
	return &SetKeyStateResponse{Applied: strs(m.GetApplied()), Unreachable: strs(m.GetUnreachable())}
}

func convictionToPB(c *Conviction) *pb.Conviction {
	if c == nil {
		return nil
	}
	return &pb.Conviction{At: timeToPB(c.At), Session: c.Session, Key: c.Key, Reason: text(c.Reason)}
}

func convictionFromPB(m *pb.Conviction) *Conviction {
	if m == nil {
		return nil
	}
	return &Conviction{At: timeFromPB(m.GetAt()), Session: m.GetSession(), Key: m.GetKey(), Reason: m.GetReason()}
}

func statusResponseToPB(r *StatusResponse) *pb.StatusResponse {
	return &pb.StatusResponse{Node: r.Node, Sessions: int64(r.Sessions), Queue: int64(r.Queue),
		Keys: mapSlice(r.Keys, func(k KeyStatus) *pb.KeyStatus {
			return &pb.KeyStatus{Key: k.Key, Threshold: int64(k.Threshold), Parties: strs(k.Parties), Disabled: k.Disabled, Available: k.Available,
				ResharePending: k.ResharePending, Presignatures: int64(k.Presignatures), PresignTarget: int64(k.PresignTarget),
				StateVersion: k.StateVersion, Aborts: int64(k.Aborts), Budget: int64(k.Budget), Suspended: text(k.Suspended)}
		}),
		Peers: mapSlice(r.Peers, func(p PeerStatus) *pb.PeerStatus {
			return &pb.PeerStatus{Name: p.Name, Addr: p.Addr, Up: p.Up, LatencyMs: p.LatencyMS, LastError: text(p.LastError),
				LastErrorAt: timeToPB(p.LastErrAt), CoolUntil: timeToPB(p.CoolUntil), Convicted: convictionToPB(p.Convicted), Version: int64(p.Version)}
		})}
}

func statusResponseFromPB(m *pb.StatusResponse) *StatusResponse {
	return &StatusResponse{Node: m.GetNode(), Sessions: int(m.GetSessions()), Queue: int(m.GetQueue()),
		Keys: mapSlice(m.GetKeys(), func(k *pb.KeyStatus) KeyStatus {
			return KeyStatus{Key: k.GetKey(), Threshold: int(k.GetThreshold()), Parties: strs(k.GetParties()), Disabled: k.GetDisabled(), Available: k.GetAvailable(),
				ResharePending: k.GetResharePending(), Presignatures: int(k.GetPresignatures()), PresignTarget: int(k.GetPresignTarget()),
				StateVersion: k.GetStateVersion(), Aborts: int(k.GetAborts()), Budget: int(k.GetBudget()), Suspended: k.GetSuspended()}
		}),
		Peers: mapSlice(m.GetPeers(), func(p *pb.PeerStatus) PeerStatus {
			return PeerStatus{Name: p.GetName(), Addr: p.GetAddr(), Up: p.GetUp(), LatencyMS: p.GetLatencyMs(), LastError: p.GetLastError(),
				LastErrAt: timeFromPB(p.GetLastErrorAt()), CoolUntil: timeFromPB(p.GetCoolUntil()), Convicted: convictionFromPB(p.GetConvicted()), Version: int(p.GetVersion())}
		})}
}

// MarshalEnvelope encodes an envelope as it travels between peers: for
// fuzzing and tools that put envelopes on the wire by hand.
func MarshalEnvelope(e *Envelope) ([]byte, error) { return proto.Marshal(envelopeToPB(e)) }

// UnmarshalEnvelope decodes an envelope's wire form, as the peer service
// does before node/ sees it.
func UnmarshalEnvelope(b []byte, e *Envelope) error {
	var m pb.Envelope
	if err := proto.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	d, err := envelopeFromPB(&m)
	if err != nil {
		return err
	}
	*e = *d
	return nil
}
