package keylesswire

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloudflare/gokeyless/protocol"
)

var update = flag.Bool("update", false, "rewrite testdata/*.hex golden frames")

func testSKI() protocol.SKI {
	var ski protocol.SKI
	for i := range ski {
		ski[i] = byte(i + 1)
	}
	return ski
}

func signOp(payload []byte) protocol.Operation {
	return protocol.Operation{
		Opcode:  protocol.OpECDSASignSHA256,
		Payload: payload,
		SKI:     testSKI(),
		SNI:     "example.com",
	}
}

// frame builds a frame by hand: header fields and raw body bytes.
func frame(major byte, id uint32, body []byte) []byte {
	b := make([]byte, HeaderSize, HeaderSize+len(body))
	b[0], b[1] = major, 0
	binary.BigEndian.PutUint16(b[2:4], uint16(len(body)))
	binary.BigEndian.PutUint32(b[4:8], id)
	return append(b, body...)
}

func tlv(tag protocol.Tag, data []byte) []byte { return appendTLV(nil, tag, data) }

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func TestMarshalRequestParsesWithStockGokeyless(t *testing.T) {
	digest := bytes.Repeat([]byte{0x20}, 32) // bytes that look like the padding tag
	for _, tc := range []struct {
		name      string
		op        protocol.Operation
		authority []byte
		wantLen   int
		budget    time.Duration // -1: none
	}{
		{"sign without authority", signOp(digest), nil, 1024, -1},
		{"sign with budget", signOp(digest), nil, 1024, 2500 * time.Millisecond},
		{"sign with authority and budget", signOp(digest), []byte("authority-token"), 1024, 0},
		{"budget over the item's range, capped", signOp(digest), nil, 1024, 100 * 24 * time.Hour},
		{"sign with authority", signOp(digest), []byte("authority-token"), 1024, -1},
		{"ping", protocol.Operation{Opcode: protocol.OpPing, Payload: []byte("hi")}, nil, 1024, -1},
		{"all standard items", protocol.Operation{
			Opcode: protocol.OpECDSASignSHA384, Payload: make([]byte, 48), Extra: []byte("x"), SKI: testSKI(),
			Digest: protocol.Digest{1}, ClientIP: net.IPv4(10, 0, 0, 1), ServerIP: net.ParseIP("2001:db8::1"),
			SNI: "a.example", CertID: "c1", CustomFuncName: "f", JaegerSpan: []byte{1}, ReqContext: []byte("{}"),
			ComplianceRegion: protocol.ComplianceRegionFedRAMPHigh,
		}, []byte{0xC0, 0x20}, 1024, time.Second},
		// Past 1024 bytes there is no padding item at all.
		{"large authority", signOp(digest), bytes.Repeat([]byte{7}, 2000), -1, 3 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := Extras{Authority: tc.authority, Budget: tc.budget, HasBudget: tc.budget >= 0}
			if !x.HasBudget {
				x.Budget = 0
			}
			b, err := MarshalRequest(42, tc.op, x)
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantLen > 0 && len(b) != tc.wantLen {
				t.Errorf("frame is %d bytes, want %d (gokeyless pads to 1024)", len(b), tc.wantLen)
			}
			var pkt protocol.Packet
			if err := pkt.UnmarshalBinary(b); err != nil {
				t.Fatalf("stock protocol.Packet.UnmarshalBinary: %v", err)
			}
			if pkt.ID != 42 || pkt.MajorVers != 1 || int(pkt.Length) != len(b)-HeaderSize {
				t.Errorf("header = %+v", pkt.Header)
			}
			assertSameOp(t, pkt.Operation, tc.op)

			// And it reads back here, authority and budget included.
			hdr, op, got, err := ReadRequest(bytes.NewReader(b), 0)
			auth := got.Authority
			if err != nil {
				t.Fatal(err)
			}
			if hdr != pkt.Header {
				t.Errorf("header %+v, stock parser says %+v", hdr, pkt.Header)
			}
			assertSameOp(t, op, tc.op)
			if !bytes.Equal(auth, tc.authority) || (tc.authority == nil) != (auth == nil) {
				t.Errorf("authority = %x, want %x", auth, tc.authority)
			}
			if got.HasBudget != x.HasBudget || got.Budget != min(x.Budget, MaxBudget) {
				t.Errorf("budget = %v (present %v), want %v (present %v)", got.Budget, got.HasBudget, min(x.Budget, MaxBudget), x.HasBudget)
			}
		})
	}
}

func TestMarshalRequestRefusesWhatDoesNotFit(t *testing.T) {
	for _, tc := range []struct {
		name      string
		op        protocol.Operation
		authority []byte
	}{
		{"payload over an item", protocol.Operation{Opcode: protocol.OpPing, Payload: make([]byte, math.MaxUint16+1)}, nil},
		{"authority over an item", signOp(make([]byte, 32)), make([]byte, math.MaxUint16+1)},
		{"body over a frame", protocol.Operation{Opcode: protocol.OpPing, Payload: make([]byte, 40000)}, make([]byte, 40000)},
		{"bad IP", protocol.Operation{Opcode: protocol.OpPing, ClientIP: net.IP{1, 2, 3}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := MarshalRequest(1, tc.op, Extras{Authority: tc.authority}); err == nil {
				t.Fatal("want an error, got a frame")
			}
		})
	}
	if _, err := MarshalRequest(1, signOp(make([]byte, 32)), Extras{Budget: -time.Millisecond, HasBudget: true}); err == nil {
		t.Error("negative budget: want an error, got a frame")
	}
}

func TestStockMarshalReadsHere(t *testing.T) {
	op := signOp(make([]byte, 32))
	pkt := protocol.NewPacket(7, op)
	b, err := pkt.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	hdr, got, x, err := ReadRequest(bytes.NewReader(b), 16<<10)
	if err != nil {
		t.Fatal(err)
	}
	if hdr != pkt.Header {
		t.Errorf("header = %+v, want %+v", hdr, pkt.Header)
	}
	assertSameOp(t, got, op)
	if x.Authority != nil || x.HasBudget {
		t.Errorf("extras from a stock frame = %+v, want none", x)
	}

	// Stock responses are the same frame format.
	resp := protocol.MakeErrorPacket(9, protocol.ErrKeyNotFound)
	b, _ = resp.MarshalBinary()
	_, got, _, err = ReadRequest(bytes.NewReader(b), 0)
	if err != nil {
		t.Fatal(err)
	}
	if got.Opcode != protocol.OpError || got.GetError() != protocol.ErrKeyNotFound {
		t.Errorf("error response read as %v %x", got.Opcode, got.Payload)
	}
}

func TestReadRequest(t *testing.T) {
	opcode := tlv(protocol.TagOpcode, []byte{byte(protocol.OpECDSASignSHA256)})
	payload := tlv(protocol.TagPayload, make([]byte, 32))
	auth := tlv(TagAuthority, []byte("a"))
	valid, _ := MarshalRequest(5, signOp(make([]byte, 32)), Extras{Authority: []byte("auth")})
	budget := func(ms uint32) []byte { return tlv(TagDeadline, binary.BigEndian.AppendUint32(nil, ms)) }

	for _, tc := range []struct {
		name       string
		in         []byte
		maxBody    int
		wantErr    error // nil: success
		wantAuth   []byte
		wantBudget time.Duration // -1: absent
	}{
		{"valid", valid, 16 << 10, nil, []byte("auth"), -1},
		{"budget", frame(1, 1, cat(opcode, budget(1500))), 0, nil, nil, 1500 * time.Millisecond},
		{"budget and authority", frame(1, 1, cat(opcode, budget(7), auth)), 0, nil, []byte("a"), 7 * time.Millisecond},
		// What a zero or an absurd budget means is the server's policy, not the frame's.
		{"zero budget", frame(1, 1, cat(opcode, budget(0))), 0, nil, nil, 0},
		{"largest budget", frame(1, 1, cat(opcode, budget(math.MaxUint32))), 0, nil, nil, MaxBudget},
		{"short budget", frame(1, 1, cat(opcode, tlv(TagDeadline, []byte{1, 2, 3}))), 0, ErrMalformed, nil, -1},
		{"long budget", frame(1, 1, cat(opcode, tlv(TagDeadline, make([]byte, 8)))), 0, ErrMalformed, nil, -1},
		{"empty budget", frame(1, 1, cat(opcode, tlv(TagDeadline, nil))), 0, ErrMalformed, nil, -1},
		{"duplicate budget", frame(1, 1, cat(opcode, budget(1), payload, budget(2))), 0, ErrMalformed, nil, -1},
		{"budget past end", frame(1, 1, cat(opcode, []byte{0xC1, 0, 4, 1})), 0, ErrMalformed, nil, -1},
		{"minimal", frame(1, 1, opcode), 0, nil, nil, -1},
		{"minor version ignored", append([]byte{1, 7}, frame(1, 1, opcode)[2:]...), 0, nil, nil, -1},
		{"unknown tag skipped", frame(1, 1, cat(opcode, tlv(0x99, []byte("?")))), 0, nil, nil, -1},
		{"empty authority", frame(1, 1, cat(opcode, tlv(TagAuthority, nil))), 0, nil, []byte{}, -1},
		{"trailing short bytes ignored", frame(1, 1, cat(opcode, []byte{0xC0, 0})), 0, nil, nil, -1},
		{"empty stream", nil, 0, io.EOF, nil, -1},
		{"short header", []byte{1, 0, 0}, 0, io.ErrUnexpectedEOF, nil, -1},
		{"short body", frame(1, 1, opcode)[:HeaderSize+2], 0, io.ErrUnexpectedEOF, nil, -1},
		{"header only, body missing", frame(1, 1, opcode)[:HeaderSize], 0, io.ErrUnexpectedEOF, nil, -1},
		{"version 0", frame(0, 1, opcode), 0, ErrMalformed, nil, -1},
		{"version 9", frame(9, 1, []byte("not a keyless op")), 0, ErrMalformed, nil, -1},
		{"over maxBody", valid, 1000, ErrMalformed, nil, -1},
		{"item past end", frame(1, 1, cat(opcode, []byte{byte(protocol.TagPayload), 0, 50, 1, 2})), 0, ErrMalformed, nil, -1},
		{"authority past end", frame(1, 1, cat(opcode, []byte{0xC0, 0, 9, 1})), 0, ErrMalformed, nil, -1},
		{"duplicate authority", frame(1, 1, cat(opcode, auth, payload, auth)), 0, ErrMalformed, nil, -1},
		{"duplicate opcode", frame(1, 1, cat(opcode, opcode)), 0, ErrMalformed, nil, -1},
		{"opcode of two bytes", frame(1, 1, tlv(protocol.TagOpcode, []byte{1, 2})), 0, ErrMalformed, nil, -1},
		{"bad client IP", frame(1, 1, cat(opcode, tlv(protocol.TagClientIP, []byte{1, 2, 3}))), 0, ErrMalformed, nil, -1},
		{"garbage", frame(1, 1, []byte("\xff\xff\xff\xff garbage")), 0, ErrMalformed, nil, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, x, err := ReadRequest(bytes.NewReader(tc.in), tc.maxBody)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if gotAuth := x.Authority; !bytes.Equal(gotAuth, tc.wantAuth) || (tc.wantAuth == nil) != (gotAuth == nil) {
					t.Errorf("authority = %q, want %q", gotAuth, tc.wantAuth)
				}
				if x.HasBudget != (tc.wantBudget >= 0) || (x.HasBudget && x.Budget != tc.wantBudget) {
					t.Errorf("budget = %v (present %v), want %v", x.Budget, x.HasBudget, tc.wantBudget)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("error = %v, want %v", err, tc.wantErr)
			}
		})
	}
}

// TestReadRequestStream reads frames back to back, as a connection carries them.
func TestReadRequestStream(t *testing.T) {
	var stream bytes.Buffer
	for id := uint32(1); id <= 3; id++ {
		b, err := MarshalRequest(id, signOp(make([]byte, 32)), Extras{Authority: []byte{byte(id)}, Budget: time.Duration(id) * time.Second, HasBudget: true})
		if err != nil {
			t.Fatal(err)
		}
		stream.Write(b)
	}
	for id := uint32(1); id <= 3; id++ {
		hdr, _, x, err := ReadRequest(&stream, 0)
		if err != nil {
			t.Fatal(err)
		}
		if hdr.ID != id || !bytes.Equal(x.Authority, []byte{byte(id)}) || x.Budget != time.Duration(id)*time.Second {
			t.Errorf("frame %d: id %d extras %+v", id, hdr.ID, x)
		}
	}
	if _, _, _, err := ReadRequest(&stream, 0); err != io.EOF {
		t.Errorf("after the last frame: %v, want io.EOF", err)
	}
}

// TestGoldenFrame pins the bytes of one request, so that a change to the
// framing (or to gokeyless's encoder under us) shows up as a diff in testdata.
func TestGoldenFrame(t *testing.T) {
	b, err := MarshalRequest(0x01020304, signOp(bytes.Repeat([]byte{0xAB}, 32)), Extras{Authority: []byte("authority")})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("testdata", "sign-sha256-authority.hex")
	got := hex.EncodeToString(b) + "\n"
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != strings.ReplaceAll(string(want), "\r", "") {
		t.Errorf("frame changed:\n got %s\nwant %s", got, want)
	}
}

// FuzzReadRequest feeds arbitrary bytes to the reader the server exposes to
// the network. Besides not panicking, whatever it accepts must survive a
// round trip through MarshalRequest unchanged.
func FuzzReadRequest(f *testing.F) {
	valid, _ := MarshalRequest(1, signOp(make([]byte, 32)), Extras{Authority: []byte("auth")})
	withBudget, _ := MarshalRequest(2, signOp(make([]byte, 32)), Extras{Authority: []byte("auth"), Budget: 2 * time.Second, HasBudget: true})
	f.Add(valid)
	f.Add(withBudget)
	f.Add(frame(1, 1, cat(tlv(protocol.TagOpcode, []byte{0xF1}), tlv(TagDeadline, []byte{0, 0, 0}))))
	f.Add(frame(1, 1, cat(tlv(protocol.TagOpcode, []byte{0xF1}), tlv(TagDeadline, make([]byte, 4)), tlv(TagDeadline, make([]byte, 4)))))
	f.Add(valid[:HeaderSize+10])
	f.Add(frame(9, 1, []byte("not a keyless op")))
	f.Add(frame(1, 1, cat(tlv(protocol.TagOpcode, []byte{0xF1}), tlv(TagAuthority, nil), tlv(TagAuthority, nil))))
	f.Add([]byte{})

	f.Fuzz(func(t *testing.T, data []byte) {
		hdr, op, x, err := ReadRequest(bytes.NewReader(data), 16<<10)
		if err != nil {
			return
		}
		if int(hdr.Length) > 16<<10 {
			t.Fatalf("accepted a %d-byte body over the limit", hdr.Length)
		}
		b, err := MarshalRequest(hdr.ID, op, x)
		if err != nil {
			return // e.g. the opcode item we always add no longer fits
		}
		hdr2, op2, x2, err := ReadRequest(bytes.NewReader(b), 0)
		if err != nil {
			t.Fatalf("re-reading our own frame: %v", err)
		}
		if hdr2.ID != hdr.ID {
			t.Fatalf("id %d became %d", hdr.ID, hdr2.ID)
		}
		assertSameOp(t, op2, op)
		if !bytes.Equal(x.Authority, x2.Authority) {
			t.Fatalf("authority %x became %x", x.Authority, x2.Authority)
		}
		if x.HasBudget != x2.HasBudget || x.Budget != x2.Budget {
			t.Fatalf("budget %v (present %v) became %v (present %v)", x.Budget, x.HasBudget, x2.Budget, x2.HasBudget)
		}
	})
}

// assertSameOp compares the fields that travel on the wire, treating empty
// and absent items alike (the encoders omit empty items).
func assertSameOp(t *testing.T, got, want protocol.Operation) {
	t.Helper()
	same := got.Opcode == want.Opcode &&
		bytes.Equal(got.Payload, want.Payload) &&
		bytes.Equal(got.Extra, want.Extra) &&
		got.SKI == want.SKI && got.Digest == want.Digest &&
		sameIP(got.ClientIP, want.ClientIP) && sameIP(got.ServerIP, want.ServerIP) &&
		got.SNI == want.SNI && got.CertID == want.CertID &&
		got.CustomFuncName == want.CustomFuncName &&
		bytes.Equal(got.JaegerSpan, want.JaegerSpan) &&
		bytes.Equal(got.ReqContext, want.ReqContext) &&
		got.ComplianceRegion == want.ComplianceRegion
	if !same {
		t.Fatalf("operation changed:\n got %s\nwant %s", got.String(), want.String())
	}
}

func sameIP(a, b net.IP) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return a.Equal(b)
}
