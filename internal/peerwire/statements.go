package peerwire

import (
	"bytes"
	"encoding/binary"
	"slices"
	"strconv"

	"github.com/tkeyless/tkeyless/internal/authority"
)

// The admin statements of the peer protocol: what an admin signs so that
// every member can check, on its own, that an operator asked for a
// ceremony or a key-state change (internal/authority). Each body is a
// sequence of length-prefixed fields, parties sorted, so one statement has
// one encoding.

// Statement kinds.
const (
	StatementKeygen   = "keygen"
	StatementReshare  = "reshare"
	StatementImport   = "import"
	StatementKeyState = "keystate"
)

type body struct{ bytes.Buffer }

func (b *body) str(s string) *body {
	_ = binary.Write(b, binary.BigEndian, uint16(len(s)))
	b.WriteString(s)
	return b
}

func (b *body) list(names []string) *body {
	sorted := slices.Sorted(slices.Values(names))
	_ = binary.Write(b, binary.BigEndian, uint16(len(sorted)))
	for _, n := range sorted {
		b.str(n)
	}
	return b
}

func (b *body) num(n uint64) *body { return b.str(strconv.FormatUint(n, 10)) }

// KeygenStatement is what an admin signs to have parties generate a key
// any threshold+1 of them sign with.
func KeygenStatement(threshold int, parties []string) authority.Statement {
	var b body
	b.num(uint64(threshold)).list(parties)
	return authority.Statement{Kind: StatementKeygen, Body: b.Bytes()}
}

// ReshareStatement is what an admin signs to reshare key (hex id) to
// newParties with newThreshold. Which t+1 current holders deal is left to
// the coordinator: a dealer can spoil the ceremony (every member then keeps
// its old share) but learns nothing from dealing.
func ReshareStatement(key string, newParties []string, newThreshold int) authority.Statement {
	var b body
	b.str(key).list(newParties).num(uint64(newThreshold))
	return authority.Statement{Kind: StatementReshare, Body: b.Bytes()}
}

// ImportStatement is what an admin signs to have a whole key (hex id)
// split into shares for parties with threshold.
func ImportStatement(key string, parties []string, threshold int) authority.Statement {
	var b body
	b.str(key).list(parties).num(uint64(threshold))
	return authority.Statement{Kind: StatementImport, Body: b.Bytes()}
}

// KeyStateStatement is what an admin signs to set key (hex id) disabled or
// enabled, as its version'th state.
func KeyStateStatement(key string, version uint64, disabled bool) authority.Statement {
	var b body
	b.str(key).num(version).str(strconv.FormatBool(disabled))
	return authority.Statement{Kind: StatementKeyState, Body: b.Bytes()}
}
