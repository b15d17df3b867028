//go:build peerwire_next

package peerwire

import (
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// This build plays the next protocol version, 5, so that the rolling
// upgrade test (internal/e2e) runs a cluster of two builds: plain ones at
// version 4 and these. Version 5 adds a field every request carries,
// number nextField, which the version-4 schema does not know: a
// version-4 node ignores it (unknown fields are kept and ignored by
// protobuf), and a version-5 node refuses a version-5 message without it,
// which proves two upgraded nodes really speak 5 to each other.
const (
	Version    = 5
	MinVersion = 3
)

// CarryEchoesVersion is the first version that carries echoes, and
// StreamVersion the first with the Deliveries stream.
const (
	CarryEchoesVersion = 4
	StreamVersion      = 4
)

// nextField is the number of version 5's new field: far above what
// peer.proto uses, so it stays unknown to the version-4 schema.
const nextField protowire.Number = 1000

// nextMark is the value a version-4 sender writes in nextField.
const nextMark = "tkeyless peer v5"

func stamp(m proto.Message, _ int64) {
	r := m.ProtoReflect()
	b := protowire.AppendTag(r.GetUnknown(), nextField, protowire.BytesType)
	r.SetUnknown(protowire.AppendString(b, nextMark))
}

func inspect(m proto.Message, v int64) error {
	if v < Version {
		return nil
	}
	b := m.ProtoReflect().GetUnknown()
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("%w: unknown fields: %w", ErrMalformed, protowire.ParseError(n))
		}
		b = b[n:]
		if num == nextField && typ == protowire.BytesType {
			s, n := protowire.ConsumeString(b)
			if n >= 0 && s == nextMark {
				return nil
			}
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return fmt.Errorf("%w: unknown fields: %w", ErrMalformed, protowire.ParseError(n))
		}
		b = b[n:]
	}
	return fmt.Errorf("%w: a version %d message without version %d's field %d", ErrMalformed, v, Version, nextField)
}
