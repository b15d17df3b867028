//go:build peerwire_next

package peerwire

import (
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// This build plays the next protocol version, 4, so that the rolling
// upgrade test (internal/e2e) runs a cluster of two builds: plain ones at
// version 3 and these. Version 4 adds a field every request carries,
// number nextField, which the version-3 schema does not know: a
// version-3 node ignores it (unknown fields are kept and ignored by
// protobuf), and a version-4 node refuses a version-4 message without it,
// which proves two upgraded nodes really speak 4 to each other.
const (
	Version    = 4
	MinVersion = 3
)

// nextField is the number of version 4's new field: far above what
// peer.proto uses, so it stays unknown to the version-3 schema.
const nextField protowire.Number = 1000

// nextMark is the value a version-4 sender writes in nextField.
const nextMark = "tkeyless peer v4"

func stamp(m proto.Message, _ int64) {
	r := m.ProtoReflect()
	b := protowire.AppendTag(r.GetUnknown(), nextField, protowire.BytesType)
	r.SetUnknown(protowire.AppendString(b, nextMark))
}

func inspect(m proto.Message, v int64) error {
	if v < 4 {
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
	return fmt.Errorf("%w: a version %d message without version 4's field %d", ErrMalformed, v, nextField)
}
