// Package peerwire is the signer-to-signer protocol: the messages signers
// exchange over gRPC (mutual TLS) to run ceremonies and signing sessions
// together, and the client and service that carry them. It is internal so
// the format can change with a version bump and never becomes API.
//
// The Go types here are the domain types node/ works with. On the wire
// they are protobuf messages (proto/tkeyless/peer/v2/peer.proto, Go code
// generated into gen/ by `make generate`) under gRPC's standard codec;
// convert.go translates at the gRPC boundary, so the wire can grow fields
// without node/ seeing them. Peers negotiate the protocol version per link
// (version.go); COMPATIBILITY.md says what may change under which version.
//
// Every call is made by one cluster node to another; the receiver learns the
// caller's node name from its verified client certificate, never from the
// message. A session is addressed by a random 128-bit id chosen by its
// coordinator, which is what separates sessions: tss-lib v2.0.2 derives its
// own session id from a constant nonce (CVE-2022-47930).
package peerwire

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"slices"
	"time"
)

// SessionID names one signing session or ceremony.
type SessionID [16]byte

// NewSessionID returns a fresh random id.
func NewSessionID() SessionID {
	var id SessionID
	if _, err := rand.Read(id[:]); err != nil {
		panic(fmt.Errorf("peerwire: no randomness: %w", err))
	}
	return id
}

func (id SessionID) String() string { return hex.EncodeToString(id[:]) }

// MarshalText encodes the id as hex.
func (id SessionID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText decodes a hex id.
func (id *SessionID) UnmarshalText(b []byte) error {
	if hex.DecodedLen(len(b)) != len(id) {
		return fmt.Errorf("session id: want %d hex bytes", len(id))
	}
	_, err := hex.Decode(id[:], b)
	return err
}

// Kind says what a session computes.
type Kind string

// The session kinds.
const (
	KindSign   Kind = "sign"
	KindKeygen Kind = "keygen"
	// KindReshare deals new shares of an existing key (refresh, a change
	// of (t,n), a replaced node) or, with Import set, of a key the
	// coordinator was handed whole.
	KindReshare Kind = "reshare"
	// KindPresign runs GG18's message-independent rounds 1–4 ahead of a
	// request; FinishPresign later completes it with a digest.
	KindPresign Kind = "presign"
)

// PresignRequest asks a member to run the offline rounds of a
// presignature with Key and Quorum, and hold its half for at most TTL.
type PresignRequest struct {
	Key    string        `json:"key"`
	Quorum []string      `json:"quorum"`
	TTL    time.Duration `json:"ttl"`
	// Live, when LiveListed, names every presignature of Key the
	// coordinator still holds (pooled or being finished): the member
	// destroys its other halves for the coordinator and Key, which the
	// coordinator lost. A coordinator that predates it lists nothing.
	Live       []SessionID `json:"live,omitempty"`
	LiveListed bool        `json:"live_listed,omitempty"`
}

// FinishPresignRequest completes presignature Session with a signing
// request, which each member checks as it checks a SignRequest (its Quorum
// must be the presignature's). The call returns the member's signature.
type FinishPresignRequest struct {
	Version int          `json:"v"`
	Session SessionID    `json:"session"`
	Sign    *SignRequest `json:"sign"`
}

// SignRequest is what a quorum member is asked to sign, and why. Each member
// checks it on its own before it joins the session.
type SignRequest struct {
	Key    string   `json:"key"`    // KeyID, hex
	Quorum []string `json:"quorum"` // node names, the coordinator among them
	Hash   string   `json:"hash"`   // "SHA-256", "SHA-384" or "SHA-512"
	Digest []byte   `json:"digest"`
	// Edge is the identity (certificate common name) of the edge whose
	// keyless request this is, as the coordinator authenticated it.
	Edge string `json:"edge"`
	// Authority is the edge's own end-to-end signature over the request,
	// forwarded untouched, so that members need not trust the coordinator.
	Authority []byte `json:"authority,omitempty"`
	RequestID string `json:"request_id,omitempty"`
}

// KeygenRequest describes a key generation ceremony. Authority is an
// admin's statement over it (KeygenStatement); every party checks it.
type KeygenRequest struct {
	Threshold int      `json:"threshold"`
	Parties   []string `json:"parties"`
	Authority []byte   `json:"authority"`
}

// ReshareRequest describes a resharing ceremony. Members in the old
// committee check it against their own share of the key.
type ReshareRequest struct {
	Key          string   `json:"key"`        // KeyID, hex
	PublicKey    []byte   `json:"public_key"` // PKIX DER
	OldParties   []string `json:"old_parties"`
	OldThreshold int      `json:"old_threshold"`
	NewParties   []string `json:"new_parties"`
	NewThreshold int      `json:"new_threshold"`
	// Import says the old committee is the coordinator alone, dealing a
	// whole key it was handed (OldThreshold is then 0).
	Import bool `json:"import,omitempty"`
	// Authority is an admin's statement over the ceremony
	// (ReshareStatement or ImportStatement); every member checks it.
	Authority []byte `json:"authority"`
}

// PrepareRequest asks a member to set up (not start) its party of a session.
type PrepareRequest struct {
	Version int             `json:"v"`
	Session SessionID       `json:"session"`
	Kind    Kind            `json:"kind"`
	Sign    *SignRequest    `json:"sign,omitempty"`
	Keygen  *KeygenRequest  `json:"keygen,omitempty"`
	Reshare *ReshareRequest `json:"reshare,omitempty"`
	Presign *PresignRequest `json:"presign,omitempty"`
	// CarryEchoes (version CarryEchoesVersion) says the members carry the
	// echoes of a signature's rounds 5 to 9 on their next round's
	// envelopes (Envelope.Echoes) instead of in Echo calls.
	CarryEchoes bool `json:"carry_echoes,omitempty"`
}

// PrepareResponse acknowledges a prepared session.
type PrepareResponse struct{}

// RunRequest starts a prepared session; the call returns when the member's
// party finishes, and its deadline is the session's deadline. Cancelling the
// call aborts the member's party.
type RunRequest struct {
	Version int       `json:"v"`
	Session SessionID `json:"session"`
}

// RunResponse is a member's result: the DER signature for a signing session,
// the PKIX public key for a key generation.
type RunResponse struct {
	Signature []byte `json:"signature,omitempty"`
	PublicKey []byte `json:"public_key,omitempty"`
	// Fingerprint is, after a resharing, the digest of the public data of
	// the member's new (staged) share; every new member must report the
	// same one before the coordinator lets anyone commit.
	Fingerprint []byte `json:"fingerprint,omitempty"`
	// Confirmation is a new member's signed word that it holds its new
	// share and will switch to it on proof that every new member does.
	Confirmation *ReshareConfirmation `json:"confirmation,omitempty"`
}

// Envelope carries one tss-lib message from one member to another.
type Envelope struct {
	Version int       `json:"v"`
	Session SessionID `json:"session"`
	Kind    Kind      `json:"kind"`
	Key     string    `json:"key,omitempty"` // KeyID of a signing session
	// From is the party the sender claims to be; the receiver refuses an
	// envelope whose From is not the name in the caller's certificate.
	From      string `json:"from"`
	Round     int    `json:"round"`
	Type      string `json:"type"`
	Broadcast bool   `json:"broadcast"`
	Payload   []byte `json:"payload"`
	// Sig is the sender's signature (its node identity key) over
	// BroadcastDigest, on broadcasts in sessions of three or more members,
	// so that a receiver can prove to the others what the sender sent it.
	Sig []byte `json:"sig,omitempty"`
	// Echoes are the sender's echoes of broadcasts it received in the
	// previous round, carried here in sessions prepared with CarryEchoes.
	Echoes []Echo `json:"echoes,omitempty"`
}

// Echo tells the other members which broadcast a member received from an
// origin, with the origin's own signature over it. Two validly signed,
// different broadcasts from one origin prove it equivocated.
type Echo struct {
	Version int       `json:"v"`
	Session SessionID `json:"session"`
	Origin  string    `json:"origin"`
	Type    string    `json:"type"`
	Round   int       `json:"round"`
	Hash    []byte    `json:"hash"` // SHA-256 of the payload received
	Sig     []byte    `json:"sig"`  // the origin's signature over BroadcastDigest
	// OriginCert is the origin's certificate (DER), for verifying Sig.
	OriginCert []byte `json:"origin_cert"`
}

// EchoResponse acknowledges an echo.
type EchoResponse struct{}

// BroadcastDigest is what an origin signs for one broadcast message.
func BroadcastDigest(session SessionID, origin, msgType string, round int, payloadHash []byte) []byte {
	h := sha256.New()
	h.Write([]byte("tkeyless broadcast v1\x00"))
	h.Write(session[:])
	for _, s := range []string{origin, msgType} {
		_ = binary.Write(h, binary.BigEndian, uint16(len(s)))
		h.Write([]byte(s))
	}
	_ = binary.Write(h, binary.BigEndian, uint32(round))
	h.Write(payloadHash)
	return h.Sum(nil)
}

// DeliverResponse acknowledges an envelope.
type DeliverResponse struct{}

// KeygenCeremonyRequest asks a node to coordinate a key generation across
// the cluster (an operator command). Parties must be named; Authority is an
// admin's KeygenStatement over Threshold and Parties.
type KeygenCeremonyRequest struct {
	Threshold int      `json:"threshold"`
	Parties   []string `json:"parties"`
	Authority []byte   `json:"authority"`
}

// KeygenCeremonyResponse reports the new key.
type KeygenCeremonyResponse struct {
	Key       string `json:"key"`
	PublicKey []byte `json:"public_key"` // PKIX DER
}

// ReshareCeremonyRequest asks a node to coordinate a resharing of a key it
// holds a share of (an operator command). Empty fields keep the key's
// current values: an empty request refreshes every share.
type ReshareCeremonyRequest struct {
	Key string `json:"key"`
	// NewParties and NewThreshold are the committee after the ceremony.
	NewParties   []string `json:"new_parties,omitempty"`
	NewThreshold int      `json:"new_threshold,omitempty"`
	// Dealers are the current holders that deal (at least t+1 of them);
	// empty picks t+1 healthy ones, the coordinator first.
	Dealers []string `json:"dealers,omitempty"`
	// Authority is an admin's ReshareStatement over Key, NewParties and
	// NewThreshold, as the node resolves them (empty: the key's current
	// parties and threshold).
	Authority []byte `json:"authority"`
}

// ReshareCeremonyResponse reports a resharing.
type ReshareCeremonyResponse struct {
	Key          string   `json:"key"`
	Session      string   `json:"session"`
	OldParties   []string `json:"old_parties"` // the dealers
	OldThreshold int      `json:"old_threshold"`
	NewParties   []string `json:"new_parties"`
	NewThreshold int      `json:"new_threshold"`
	// Committed lists the nodes that switched to their new share (or, if
	// they left the committee, deleted their old one); Pending those that
	// could not be told (they keep the new share staged; see `signer
	// status`).
	Committed []string `json:"committed"`
	Pending   []string `json:"pending,omitempty"`
}

// ImportCeremonyRequest hands a node a whole P-256 private key (PKCS#8 DER)
// to split into shares for Parties with Threshold. Only the node's own
// identity (an operator on that machine) or an admin may send it.
type ImportCeremonyRequest struct {
	PrivateKey []byte   `json:"private_key"`
	Threshold  int      `json:"threshold"`
	Parties    []string `json:"parties"`
	// Authority is an admin's ImportStatement over the key id, Parties and
	// Threshold.
	Authority []byte `json:"authority"`
}

// FinishReshareRequest tells a member how a resharing it took part in
// ended: Commit switches to the staged new share (or deletes the old one
// if the member left the committee); otherwise the staged share is
// discarded and the old one kept.
//
// A commit must carry every new member's confirmation, all of the same
// new shares (Fingerprint, NewParties, NewThreshold): it proves itself, so
// any node may pass it on, and every member checks it. A member that
// confirmed never discards on a node's word (only on an admin's): once it
// has confirmed, a commit may exist somewhere, and discarding then could
// leave the cluster split between old and new shares. A discard from the
// coordinator is for members that did not confirm (those leaving the
// committee keep their old share).
type FinishReshareRequest struct {
	Version       int                   `json:"v"`
	Session       SessionID             `json:"session"`
	Key           string                `json:"key"`
	Commit        bool                  `json:"commit"`
	NewParties    []string              `json:"new_parties,omitempty"`
	NewThreshold  int                   `json:"new_threshold,omitempty"`
	Fingerprint   []byte                `json:"fingerprint,omitempty"`
	Confirmations []ReshareConfirmation `json:"confirmations,omitempty"`
}

// ReshareConfirmation is a new member's signed word on one resharing: it
// holds its new share, of the key data Fingerprint names, and will switch
// to it on proof that every new member does. A member confirms a session
// once.
type ReshareConfirmation struct {
	Node        string `json:"node"`
	Fingerprint []byte `json:"fingerprint"`
	Cert        []byte `json:"cert"` // the node's certificate, DER
	Sig         []byte `json:"sig"`  // over ReshareConfirmationDigest
}

// ReshareConfirmationDigest is what a member signs to confirm.
func ReshareConfirmationDigest(session SessionID, key string, fingerprint []byte, newParties []string, newThreshold int) []byte {
	h := sha256.New()
	h.Write([]byte("tkeyless reshare confirmation v2\x00"))
	h.Write(session[:])
	writeString(h, key)
	_ = binary.Write(h, binary.BigEndian, uint16(len(fingerprint)))
	h.Write(fingerprint)
	_ = binary.Write(h, binary.BigEndian, uint32(newThreshold))
	sorted := slices.Sorted(slices.Values(newParties))
	_ = binary.Write(h, binary.BigEndian, uint16(len(sorted)))
	for _, p := range sorted {
		writeString(h, p)
	}
	return h.Sum(nil)
}

func writeString(w io.Writer, s string) {
	_ = binary.Write(w, binary.BigEndian, uint16(len(s)))
	_, _ = io.WriteString(w, s)
}

// ReshareOutcomeRequest asks a member of a resharing what it knows of its
// outcome: a pending member asks the others until it can commit or discard
// on proof.
type ReshareOutcomeRequest struct {
	Version int       `json:"v"`
	Session SessionID `json:"session"`
	Key     string    `json:"key"`
}

// The states a ReshareOutcomeResponse reports.
const (
	OutcomeCommitted = "committed" // Finish is the commit it applied
	OutcomeConfirmed = "confirmed" // Confirmation is its own; it awaits the outcome
	OutcomeUnknown   = "unknown"   // it has not confirmed (yet), or forgot
)

// ReshareOutcomeResponse is one member's answer.
type ReshareOutcomeResponse struct {
	State        string                `json:"state"`
	Finish       *FinishReshareRequest `json:"finish,omitempty"`
	Confirmation *ReshareConfirmation  `json:"confirmation,omitempty"`
}

// FinishReshareResponse acknowledges a FinishReshareRequest.
type FinishReshareResponse struct{}

// PingRequest checks a peer is alive and negotiates the protocol version
// of the link (the Client fills in the range this node speaks).
type PingRequest struct {
	Version int `json:"v"`
}

// PingResponse names the answering node, the keys it holds, and its view
// of which keys are disabled. Nodes adopt a key state from a peer only
// with an admin's signature over it and a higher version than their own.
type PingResponse struct {
	Node      string              `json:"node"`
	Keys      []string            `json:"keys"`
	KeyStates map[string]KeyState `json:"key_states,omitempty"`
	// MinVersion and MaxVersion are the protocol versions the answering
	// node speaks; its peerwire service fills them in.
	MinVersion int `json:"min_version,omitempty"`
	MaxVersion int `json:"max_version,omitempty"`
}

// KeyState is whether a key is disabled: an admin's signed statement
// (KeyStateStatement over the key, Version and Disabled), with what it says
// spelled out. Versions only go up; the highest signed one wins.
type KeyState struct {
	Disabled  bool      `json:"disabled"`
	Version   uint64    `json:"version"`
	Statement []byte    `json:"statement,omitempty"`
	Changed   time.Time `json:"changed"`
	By        string    `json:"by,omitempty"` // the admin that signed it
}

// SetKeyStateRequest hands a node an admin's key-state statement (an
// operator command, or a node passing one on). Propagate asks the
// receiving node to pass it to every peer too.
type SetKeyStateRequest struct {
	Key       string   `json:"key"`
	State     KeyState `json:"state"`
	Propagate bool     `json:"propagate"`
}

// ReadmitRequest clears a node's conviction of a peer (admin only): the
// peer may take part in this node's sessions again.
type ReadmitRequest struct {
	Peer string `json:"peer"`
}

// ReadmitResponse says whether the peer was convicted here.
type ReadmitResponse struct {
	WasConvicted bool `json:"was_convicted"`
}

// ResumeKeyRequest lets a key suspended by its abort budget sign again on
// this node, and starts its budget afresh (admin only).
type ResumeKeyRequest struct {
	Key string `json:"key"`
}

// ResumeKeyResponse says what the key's state was.
type ResumeKeyResponse struct {
	WasSuspended bool `json:"was_suspended"`
	Aborts       int  `json:"aborts"`
}

// SetKeyStateResponse names the nodes that applied the change and those
// that could not be reached (they converge when they next ping).
type SetKeyStateResponse struct {
	Applied     []string `json:"applied"`
	Unreachable []string `json:"unreachable,omitempty"`
}

// StatusRequest asks a node how it and its keys are doing.
type StatusRequest struct{}

// StatusResponse is a node's view of itself, its keys and its peers.
type StatusResponse struct {
	Node     string       `json:"node"`
	Sessions int          `json:"sessions"`
	Queue    int          `json:"queue"`
	Keys     []KeyStatus  `json:"keys"`
	Peers    []PeerStatus `json:"peers"`
}

// Conviction is this node's record of a peer caught misbehaving: it is
// left out of every session here until an admin readmits it.
type Conviction struct {
	At      time.Time `json:"at"`
	Session string    `json:"session"`
	Key     string    `json:"key,omitempty"`
	Reason  string    `json:"reason"`
}

// KeyStatus is one key as a node sees it.
type KeyStatus struct {
	Key       string   `json:"key"`
	Threshold int      `json:"threshold"`
	Parties   []string `json:"parties"`
	Disabled  bool     `json:"disabled"`
	// Available says whether this node can reach enough healthy parties
	// to sign with the key now.
	Available bool `json:"available"`
	// ResharePending names the resharing session whose outcome this node
	// still waits for (its new share, if any, is staged).
	ResharePending string `json:"reshare_pending,omitempty"`
	// Presignatures is how many ready presignatures this node's pool holds
	// for the key (it coordinates them), and PresignTarget the depth it
	// keeps (0: presigning off).
	Presignatures int `json:"presignatures"`
	PresignTarget int `json:"presign_target"`
	// StateVersion is the version of the key's signed state (0: never set).
	StateVersion uint64 `json:"state_version"`
	// Aborts counts this node's signing sessions with the key that failed
	// without naming a culprit, against Budget; Suspended, if set, says why
	// the key does not sign on this node until an admin resumes it.
	Aborts    int    `json:"aborts"`
	Budget    int    `json:"budget"`
	Suspended string `json:"suspended,omitempty"`
}

// PeerStatus is one peer as a node sees it.
type PeerStatus struct {
	Name      string    `json:"name"`
	Addr      string    `json:"addr"`
	Up        bool      `json:"up"`
	LatencyMS float64   `json:"latency_ms"`
	LastError string    `json:"last_error,omitempty"`
	LastErrAt time.Time `json:"last_error_at,omitzero"`
	CoolUntil time.Time `json:"cool_until,omitzero"`
	// Convicted, if set, is why this node excludes the peer.
	Convicted *Conviction `json:"convicted,omitempty"`
	// Version is the protocol version of this node's link to the peer
	// (Client.Version; 0: not negotiated yet).
	Version int `json:"version,omitempty"`
}
