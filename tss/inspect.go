package tss

import (
	"fmt"

	"github.com/bnb-chain/tss-lib/v2/ecdsa/keygen"
	"github.com/bnb-chain/tss-lib/v2/ecdsa/resharing"
	"github.com/bnb-chain/tss-lib/v2/ecdsa/signing"
	tsslib "github.com/bnb-chain/tss-lib/v2/tss"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// MessageInfo is what a peer message says about itself once decoded, as
// opposed to the labels its envelope carries: a transport judges a message
// by this, so that a sender cannot pass one payload off as another round
// or type (or the same one twice under two labels).
type MessageInfo struct {
	Type      string // tss-lib's message type name
	Round     int
	Broadcast bool // whether the protocol sends this type to everyone
}

// sessionMessages lists, per session kind, the message types its parties
// exchange and whether each is a broadcast (from tss-lib's rounds).
var sessionMessages = func() map[string]map[string]bool {
	name := func(m proto.Message) string { return string(proto.MessageName(m)) }
	sign := map[string]bool{
		name(&signing.SignRound1Message1{}): false, // Alice's MtA request, one per peer
		name(&signing.SignRound1Message2{}): true,
		name(&signing.SignRound2Message{}):  false, // Bob's MtA answers, one per peer
		name(&signing.SignRound3Message{}):  true,
		name(&signing.SignRound4Message{}):  true,
		name(&signing.SignRound5Message{}):  true,
		name(&signing.SignRound6Message{}):  true,
		name(&signing.SignRound7Message{}):  true,
		name(&signing.SignRound8Message{}):  true,
		name(&signing.SignRound9Message{}):  true,
	}
	kg := map[string]bool{
		name(&keygen.KGRound1Message{}):  true,
		name(&keygen.KGRound2Message1{}): false,
		name(&keygen.KGRound2Message2{}): true,
		name(&keygen.KGRound3Message{}):  true,
	}
	rs := map[string]bool{}
	for _, m := range []proto.Message{&resharing.DGRound1Message{}, &resharing.DGRound2Message1{}, &resharing.DGRound2Message2{},
		&resharing.DGRound3Message1{}, &resharing.DGRound3Message2{}, &resharing.DGRound4Message1{}, &resharing.DGRound4Message2{}} {
		route, _ := reshareRouteOf(m.(tsslib.MessageContent))
		rs[name(m)] = route.broadcast
	}
	return map[string]map[string]bool{"sign": sign, "presign": sign, "keygen": kg, "reshare": rs}
}()

// InspectMessage decodes what a payload of a session of kind ("sign",
// "presign", "keygen" or "reshare") is, refusing a type that kind of
// session does not exchange. It reads the type from the payload itself.
func InspectMessage(kind string, payload []byte) (MessageInfo, error) {
	types, ok := sessionMessages[kind]
	if !ok {
		return MessageInfo{}, fmt.Errorf("unknown session kind %q", kind)
	}
	var a anypb.Any
	if err := proto.Unmarshal(payload, &a); err != nil {
		return MessageInfo{}, fmt.Errorf("payload is not a tss-lib message: %w", err)
	}
	t := string(a.MessageName())
	if !protoreflect.FullName(t).IsValid() {
		return MessageInfo{}, fmt.Errorf("payload names no message type")
	}
	bcast, ok := types[t]
	if !ok {
		return MessageInfo{}, fmt.Errorf("a %s session exchanges no %s", kind, t)
	}
	return MessageInfo{Type: t, Round: RoundOf(t), Broadcast: bcast}, nil
}

// IsBroadcastType reports whether sessions of kind broadcast messages of
// type msgType.
func IsBroadcastType(kind, msgType string) bool { return sessionMessages[kind][msgType] }
