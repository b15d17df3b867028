//go:build !peerwire_next

package peerwire

import "google.golang.org/protobuf/proto"

// Version is the newest protocol version this build speaks, and MinVersion
// the oldest. Two nodes speak, on their link, the highest version in both
// ranges (Client.Version), so a node at Version and one at Version+1 sign
// together while a cluster is upgraded one node at a time.
//
// Version 3: the peer protocol on protobuf (tkeyless.peer.v2) with the
// version negotiated in Ping. Version 2 was JSON over a custom codec; a
// cluster moves from 2 to 3 all at once, as it did for every version
// before negotiation existed.
//
// Version 4: signatures of three or more members carry the echoes of
// rounds 5 to 9 on the next round's envelopes (PrepareRequest.CarryEchoes,
// Envelope.Echoes), used only when the coordinator's links to every member
// speak 4; a version-3 node keeps the Echo calls. A link at 4 carries its
// envelopes on one Deliveries stream instead of a Deliver call each.
const (
	Version    = 4
	MinVersion = 3
)

// CarryEchoesVersion is the first version that carries echoes, and
// StreamVersion the first with the Deliveries stream.
const (
	CarryEchoesVersion = 4
	StreamVersion      = 4
)

// stamp and inspect are where a newer protocol version adds to and reads
// from the wire messages at the gRPC boundary; they add nothing here.
// (A build with the peerwire_next tag plays version 5, for the rolling
// upgrade test: version_next.go.)
func stamp(proto.Message, int64) {}

func inspect(proto.Message, int64) error { return nil }
