// Package keylesswire frames gokeyless protocol packets for tkeyless: it
// reads and writes whole frames (8-byte header + TLV body) and carries one
// item stock gokeyless does not know, the request authority (TagAuthority).
//
// It also carries a second one, the request's time budget (TagDeadline).
//
// It lives under internal/ so the framing can change without touching the
// exported API of package keyless. The standard items are always encoded and
// decoded by gokeyless's own protocol.Operation, so a frame written here parses
// with a stock gokeyless server and a frame written by a stock client reads
// here; only the extra item and the checks a network-facing reader needs
// (version, size limit, duplicates, no panics) are added.
package keylesswire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/cloudflare/gokeyless/protocol"
)

// TagAuthority marks the optional item that carries tkeyless's end-to-end
// request authority: proof, from the edge, that the digest in this request
// was asked for by an authorized edge (its format is defined elsewhere and is
// opaque here). Stock gokeyless parsers skip unknown tags
// (protocol.Operation.UnmarshalBinary), so a request carrying it still works
// against a stock gokeyless server, which simply never sees the item.
const TagAuthority protocol.Tag = 0xC0

// TagDeadline marks the optional item that carries how long the requester
// will wait for the answer: the time left, in milliseconds, as a 4-byte
// big-endian unsigned integer, measured when the frame was written. A
// duration rather than an instant, so the edge's and the signer's clocks
// need not agree; the signer counts it from the frame's arrival, which makes
// its deadline later than the edge's by the one-way network delay only.
// Stock gokeyless servers skip it, as they skip TagAuthority.
const TagDeadline protocol.Tag = 0xC1

// deadlineItemSize is the length of a TagDeadline item's value.
const deadlineItemSize = 4

// MaxBudget is the largest budget a TagDeadline item can carry (about 49
// days); larger ones are written as MaxBudget.
const MaxBudget = time.Duration(math.MaxUint32) * time.Millisecond

// Extras are the items tkeyless adds to a gokeyless request. The zero value
// adds none: the frame is what a stock gokeyless client writes.
type Extras struct {
	// Authority is the TagAuthority item; nil or empty: absent.
	Authority []byte
	// Budget is the TagDeadline item when HasBudget: how long the requester
	// waits for the answer, counted from when the frame arrives. It is
	// carried in whole milliseconds, rounded up, so that a signer never
	// gives up before its requester does; 0 is a request already late.
	Budget    time.Duration
	HasBudget bool
}

const (
	// VersionMajor is the only protocol major version gokeyless has shipped;
	// frames with any other major version are refused.
	VersionMajor = 1
	// VersionMinor is what we write; readers ignore the minor version.
	VersionMinor = 0

	// HeaderSize is the size of the fixed frame header.
	HeaderSize = 8

	// paddedLength is the frame size gokeyless pads requests to, so the size
	// of a request does not reveal which items it carries.
	paddedLength = 1024

	tlvHeaderSize = 3
)

// ErrMalformed is wrapped by every error ReadRequest returns for bytes that
// are not a valid frame, as opposed to I/O errors (EOF, timeouts, resets),
// which are returned as they come from the reader. A server uses the
// distinction to log a misbehaving peer differently from a closed connection.
var ErrMalformed = errors.New("malformed keyless frame")

// MarshalRequest encodes a complete frame (header and body) for op with the
// given packet id. The extras present (a non-empty authority, a budget) are
// added as TagAuthority and TagDeadline items, placed before the padding
// item; the frame is padded to 1024 bytes as gokeyless pads its own requests. The result parses with a stock
// protocol.Packet.UnmarshalBinary.
//
// It fails, rather than emitting a corrupt frame, when an item or the whole
// body does not fit the protocol's 16-bit length fields (gokeyless's own
// encoder would silently truncate the item length).
func MarshalRequest(id uint32, op protocol.Operation, extras Extras) ([]byte, error) {
	authority := extras.Authority
	if extras.HasBudget && extras.Budget < 0 {
		return nil, fmt.Errorf("keyless frame: negative time budget %v", extras.Budget)
	}
	for _, f := range []struct {
		name string
		n    int
	}{
		{"payload", len(op.Payload)},
		{"extra", len(op.Extra)},
		{"server name", len(op.SNI)},
		{"cert id", len(op.CertID)},
		{"custom function name", len(op.CustomFuncName)},
		{"jaeger span", len(op.JaegerSpan)},
		{"request context", len(op.ReqContext)},
		{"authority", len(authority)},
	} {
		if f.n > math.MaxUint16 {
			return nil, fmt.Errorf("keyless frame: %s is %d bytes, more than an item can hold (%d)", f.name, f.n, math.MaxUint16)
		}
	}
	for _, ip := range [][]byte{op.ClientIP, op.ServerIP} {
		if ip != nil && len(ip) != 4 && len(ip) != 16 {
			return nil, fmt.Errorf("keyless frame: IP address of %d bytes", len(ip))
		}
	}

	body, err := op.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("keyless frame: %w", err)
	}
	// gokeyless appends its padding item last; take it off, add ours, pad again.
	body = body[:paddingStart(body)]
	if len(authority) > 0 {
		body = appendTLV(body, TagAuthority, authority)
	}
	if extras.HasBudget {
		var b [deadlineItemSize]byte
		ms := (min(extras.Budget, MaxBudget) + time.Millisecond - 1) / time.Millisecond
		binary.BigEndian.PutUint32(b[:], uint32(min(ms, math.MaxUint32)))
		body = appendTLV(body, TagDeadline, b[:])
	}
	if len(body)+HeaderSize < paddedLength {
		// Same rule as protocol.Operation.MarshalBinary: pad to 1024 bytes,
		// overshooting by up to two bytes when the item header does not fit.
		left := max(paddedLength-(len(body)+HeaderSize+tlvHeaderSize), 0)
		body = appendTLV(body, protocol.TagPadding, make([]byte, left))
	}
	if len(body) > math.MaxUint16 {
		return nil, fmt.Errorf("keyless frame: body is %d bytes, more than a frame can hold (%d)", len(body), math.MaxUint16)
	}

	frame := make([]byte, HeaderSize, HeaderSize+len(body))
	frame[0] = VersionMajor
	frame[1] = VersionMinor
	binary.BigEndian.PutUint16(frame[2:4], uint16(len(body)))
	binary.BigEndian.PutUint32(frame[4:8], id)
	return append(frame, body...), nil
}

// paddingStart returns the offset of the trailing padding item in a body
// produced by protocol.Operation.MarshalBinary, or len(body) if there is none.
// It walks the items from the start, because a payload may contain a byte
// that looks like the padding tag.
func paddingStart(body []byte) int {
	for i := 0; i+tlvHeaderSize <= len(body); {
		n := int(binary.BigEndian.Uint16(body[i+1 : i+3]))
		end := i + tlvHeaderSize + n
		if end > len(body) {
			break
		}
		if protocol.Tag(body[i]) == protocol.TagPadding && end == len(body) {
			return i
		}
		i = end
	}
	return len(body)
}

func appendTLV(b []byte, tag protocol.Tag, data []byte) []byte {
	b = append(b, byte(tag), 0, 0)
	binary.BigEndian.PutUint16(b[len(b)-2:], uint16(len(data)))
	return append(b, data...)
}

// ReadRequest reads one frame from r. The header's major version must be
// VersionMajor and its length at most maxBody (maxBody <= 0 means no limit
// beyond the 16-bit length field); the body is checked before it is read, so
// an oversized frame costs nothing to refuse. The standard items are decoded by
// protocol.Operation.UnmarshalBinary, unknown tags are skipped as gokeyless
// skips them, and extras holds the TagAuthority item (nil if absent) and the
// TagDeadline item. A second TagAuthority or TagDeadline item makes the frame
// malformed, so that two parsers cannot disagree about which one counts, and
// so does a TagDeadline item that is not 4 bytes long. Any budget a
// well-formed item carries is returned as it is, 0 included: what it means
// (and the cap on it) is the server's policy.
//
// Every error for bad bytes wraps ErrMalformed. A clean end of stream before
// the first header byte is io.EOF; a frame cut short is io.ErrUnexpectedEOF.
// ReadRequest never panics, whatever r yields. Responses use the same frame
// format, so a client reads them with ReadRequest too.
func ReadRequest(r io.Reader, maxBody int) (hdr protocol.Header, op protocol.Operation, extras Extras, err error) {
	var h [HeaderSize]byte
	if _, err = io.ReadFull(r, h[:]); err != nil {
		return hdr, op, Extras{}, err
	}
	// Header.UnmarshalBinary only fails for short input, which ReadFull rules out.
	_ = hdr.UnmarshalBinary(h[:])
	if hdr.MajorVers != VersionMajor {
		return hdr, op, Extras{}, fmt.Errorf("%w: protocol version %d.%d, want %d.x", ErrMalformed, hdr.MajorVers, hdr.MinorVers, VersionMajor)
	}
	if maxBody > 0 && int(hdr.Length) > maxBody {
		return hdr, op, Extras{}, fmt.Errorf("%w: body of %d bytes, limit is %d", ErrMalformed, hdr.Length, maxBody)
	}
	body := make([]byte, hdr.Length)
	if _, err = io.ReadFull(r, body); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return hdr, op, Extras{}, err
	}
	if err = op.UnmarshalBinary(body); err != nil {
		return hdr, protocol.Operation{}, Extras{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if extras, err = findExtras(body); err != nil {
		return hdr, protocol.Operation{}, Extras{}, err
	}
	return hdr, op, extras, nil
}

// findExtras walks the items the way protocol.Operation.UnmarshalBinary
// does (trailing bytes too short for an item header are ignored) and returns
// the TagAuthority and TagDeadline items.
func findExtras(body []byte) (Extras, error) {
	var x Extras
	seen := false
	for i := 0; i+tlvHeaderSize <= len(body); {
		tag := protocol.Tag(body[i])
		n := int(binary.BigEndian.Uint16(body[i+1 : i+3]))
		end := i + tlvHeaderSize + n
		if end > len(body) {
			return Extras{}, fmt.Errorf("%w: item %02x runs %d bytes past the end of the body", ErrMalformed, byte(tag), end-len(body))
		}
		switch tag {
		case TagAuthority:
			if seen {
				return Extras{}, fmt.Errorf("%w: authority item %02x appears more than once", ErrMalformed, byte(TagAuthority))
			}
			x.Authority, seen = body[i+tlvHeaderSize:end:end], true
		case TagDeadline:
			if x.HasBudget {
				return Extras{}, fmt.Errorf("%w: deadline item %02x appears more than once", ErrMalformed, byte(TagDeadline))
			}
			if n != deadlineItemSize {
				return Extras{}, fmt.Errorf("%w: deadline item %02x is %d bytes, want %d (milliseconds left, big-endian)", ErrMalformed, byte(TagDeadline), n, deadlineItemSize)
			}
			ms := binary.BigEndian.Uint32(body[i+tlvHeaderSize : end])
			x.Budget, x.HasBudget = time.Duration(ms)*time.Millisecond, true
		}
		i = end
	}
	return x, nil
}
