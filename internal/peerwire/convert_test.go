package peerwire

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	pb "github.com/tkeyless/tkeyless/internal/peerwire/gen/tkeyless/peer/v2"
)

// fill sets v (a pointer) to random values, every field of every struct
// reached: strings of any valid UTF-8, ints of any sign, times in UTC.
// Empty slices, maps and byte strings are nil, as protobuf delivers them.
func fill(r *rand.Rand, v reflect.Value) {
	switch v.Kind() {
	case reflect.Pointer:
		if r.IntN(5) == 0 { // a nil pointer now and then
			return
		}
		v.Set(reflect.New(v.Type().Elem()))
		fill(r, v.Elem())
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[time.Time]() {
			if r.IntN(4) > 0 {
				v.Set(reflect.ValueOf(time.Unix(r.Int64N(1<<35)-1<<34, r.Int64N(1e9)).UTC()))
			}
			return
		}
		for i := range v.NumField() {
			fill(r, v.Field(i))
		}
	case reflect.String:
		runes := make([]rune, r.IntN(12))
		for i := range runes {
			runes[i] = rune(r.IntN(0xD7FF)) // valid code points, no surrogates
		}
		v.SetString(string(runes))
	case reflect.Bool:
		v.SetBool(r.IntN(2) == 1)
	case reflect.Int, reflect.Int64:
		v.SetInt(int64(r.Uint64()))
	case reflect.Uint64:
		v.SetUint(r.Uint64())
	case reflect.Float64:
		v.SetFloat(r.NormFloat64() * 1e3)
	case reflect.Array:
		for i := range v.Len() {
			fill(r, v.Index(i))
		}
	case reflect.Slice:
		n := r.IntN(4)
		if n == 0 {
			v.SetZero()
			return
		}
		v.Set(reflect.MakeSlice(v.Type(), n, n))
		for i := range n {
			fill(r, v.Index(i))
		}
		if v.Type().Elem().Kind() == reflect.Uint8 {
			for i := range n {
				v.Index(i).SetUint(uint64(r.IntN(256)))
			}
		}
	case reflect.Map:
		n := r.IntN(3)
		if n == 0 {
			v.SetZero()
			return
		}
		v.Set(reflect.MakeMap(v.Type()))
		for range n {
			k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
			fill(r, k)
			fill(r, e)
			v.SetMapIndex(k, e)
		}
	case reflect.Uint8:
		v.SetUint(uint64(r.IntN(256)))
	default:
		panic(fmt.Sprintf("fill: no rule for %s", v.Type()))
	}
}

// roundTrip is one domain type through its wire form and back.
type roundTrip struct {
	name string
	run  func(r *rand.Rand) (in, out any, err error)
}

// through converts v to its wire message, encodes and decodes that as
// protobuf, and converts back.
func through[D any, M proto.Message](to func(*D) M, from func(M) (*D, error)) func(r *rand.Rand) (any, any, error) {
	return func(r *rand.Rand) (any, any, error) {
		in := new(D)
		fill(r, reflect.ValueOf(in).Elem())
		b, err := proto.Marshal(to(in))
		if err != nil {
			return in, nil, err
		}
		m := reflect.New(reflect.TypeFor[M]().Elem()).Interface().(M)
		if err := proto.Unmarshal(b, m); err != nil {
			return in, nil, err
		}
		out, err := from(m)
		return in, out, err
	}
}

func value[D any, M any](f func(D) M) func(*D) M { return func(d *D) M { return f(*d) } }
func valueFrom[D any, M any](f func(M) D) func(M) (*D, error) {
	return func(m M) (*D, error) { d := f(m); return &d, nil }
}

var roundTrips = []roundTrip{
	{"PingRequest", through(pingRequestToPB, ok(pingRequestFromPB))},
	{"PingResponse", through(pingResponseToPB, ok(pingResponseFromPB))},
	{"PrepareRequest", through(prepareRequestToPB, prepareRequestFromPB)},
	{"RunRequest", through(runRequestToPB, runRequestFromPB)},
	{"RunResponse", through(runResponseToPB, ok(runResponseFromPB))},
	{"Envelope", through(envelopeToPB, envelopeFromPB)},
	{"Echo", through(echoToPB, echoFromPB)},
	{"KeygenCeremonyRequest", through(keygenCeremonyRequestToPB, ok(keygenCeremonyRequestFromPB))},
	{"KeygenCeremonyResponse", through(keygenCeremonyResponseToPB, ok(keygenCeremonyResponseFromPB))},
	{"ReshareCeremonyRequest", through(reshareCeremonyRequestToPB, ok(reshareCeremonyRequestFromPB))},
	{"ReshareCeremonyResponse", through(reshareCeremonyResponseToPB, ok(reshareCeremonyResponseFromPB))},
	{"ImportCeremonyRequest", through(importCeremonyRequestToPB, ok(importCeremonyRequestFromPB))},
	{"FinishReshareRequest", through(finishReshareRequestToPB, finishReshareRequestFromPB)},
	{"FinishPresignRequest", through(finishPresignRequestToPB, finishPresignRequestFromPB)},
	{"ReshareOutcomeRequest", through(reshareOutcomeRequestToPB, reshareOutcomeRequestFromPB)},
	{"ReshareOutcomeResponse", through(reshareOutcomeResponseToPB, reshareOutcomeResponseFromPB)},
	{"SetKeyStateRequest", through(setKeyStateRequestToPB, ok(setKeyStateRequestFromPB))},
	{"SetKeyStateResponse", through(setKeyStateResponseToPB, ok(setKeyStateResponseFromPB))},
	{"KeyState", through(value(keyStateToPB), valueFrom(keyStateFromPB))},
	{"StatusResponse", through(statusResponseToPB, ok(statusResponseFromPB))},
}

// TestRoundTrip sends random values of every domain type through protobuf
// and back: the conversion loses nothing.
func TestRoundTrip(t *testing.T) {
	for _, rt := range roundTrips {
		t.Run(rt.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(uint64(len(rt.name)), 7))
			for i := range 500 {
				in, out, err := rt.run(r)
				if err != nil {
					t.Fatalf("value %d: %v\n%+v", i, err, in)
				}
				if !reflect.DeepEqual(in, out) {
					t.Fatalf("value %d changed on the wire:\n in: %+v\nout: %+v", i, in, out)
				}
			}
		})
	}
}

// fullWire fills a domain value with every field set and converts it.
func fullWire[D any, M proto.Message](r *rand.Rand, to func(*D) M) proto.Message {
	d := new(D)
	for { // retry until no pointer, slice, map, string or bool came out empty
		fill(r, reflect.ValueOf(d).Elem())
		if allSet(reflect.ValueOf(d).Elem()) {
			return to(d)
		}
	}
}

// TestEveryFieldCarried checks the other direction: a domain value with
// every field set fills every field of its wire message (recursively), so
// no field of peer.proto is forgotten by the conversion. The version range
// of a PingRequest and an Envelope's stream seq are the exceptions: the
// Client sets them.
func TestEveryFieldCarried(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, m := range []proto.Message{
		fullWire(r, pingResponseToPB), fullWire(r, prepareRequestToPB), fullWire(r, runRequestToPB),
		fullWire(r, runResponseToPB), fullWire(r, echoToPB),
		fullWire(r, keygenCeremonyRequestToPB), fullWire(r, keygenCeremonyResponseToPB),
		fullWire(r, reshareCeremonyRequestToPB), fullWire(r, reshareCeremonyResponseToPB),
		fullWire(r, importCeremonyRequestToPB), fullWire(r, finishReshareRequestToPB),
		fullWire(r, finishPresignRequestToPB), fullWire(r, reshareOutcomeRequestToPB),
		fullWire(r, reshareOutcomeResponseToPB), fullWire(r, setKeyStateRequestToPB),
		fullWire(r, setKeyStateResponseToPB), fullWire(r, statusResponseToPB),
	} {
		if missing := unsetFields(m.ProtoReflect()); len(missing) > 0 {
			t.Errorf("%s: fields never set from the domain value: %v", m.ProtoReflect().Descriptor().FullName(), missing)
		}
	}
	env := unsetFields(fullWire(r, envelopeToPB).ProtoReflect())
	if want := []string{"tkeyless.peer.v2.Envelope.seq", "tkeyless.peer.v2.Envelope.failures_only"}; !reflect.DeepEqual(env, want) {
		t.Errorf("Envelope: unset %v, want only %v (the Client's, on a stream)", env, want)
	}
	ping := unsetFields(fullWire(r, pingRequestToPB).ProtoReflect())
	if want := []string{"tkeyless.peer.v2.PingRequest.min_version", "tkeyless.peer.v2.PingRequest.max_version"}; !reflect.DeepEqual(ping, want) {
		t.Errorf("PingRequest: unset %v, want only %v (the Client's)", ping, want)
	}
}

func allSet(v reflect.Value) bool {
	switch v.Kind() {
	case reflect.Pointer:
		return !v.IsNil() && allSet(v.Elem())
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[time.Time]() {
			return !v.Interface().(time.Time).IsZero()
		}
		for i := range v.NumField() {
			if !allSet(v.Field(i)) {
				return false
			}
		}
		return true
	case reflect.Slice, reflect.Map, reflect.String:
		if v.Len() == 0 {
			return false
		}
		if v.Kind() == reflect.Slice && v.Type().Elem().Kind() != reflect.Uint8 {
			for i := range v.Len() {
				if !allSet(v.Index(i)) {
					return false
				}
			}
		}
		return true
	case reflect.Bool:
		return v.Bool()
	default:
		return !v.IsZero()
	}
}

// unsetFields lists the fields of m, and of the messages in it, that hold
// their zero value (a well-known type counts as set when present).
func unsetFields(m protoreflect.Message) []string {
	var missing []string
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if !m.Has(fd) {
			missing = append(missing, string(fd.FullName()))
			continue
		}
		if fd.Message() == nil || fd.IsMap() || strings.HasPrefix(string(fd.Message().FullName()), "google.protobuf.") {
			continue
		}
		if fd.IsList() {
			l := m.Get(fd).List()
			for j := range l.Len() {
				missing = append(missing, unsetFields(l.Get(j).Message())...)
			}
			continue
		}
		missing = append(missing, unsetFields(m.Get(fd).Message())...)
	}
	return missing
}

// TestStatusWithInvalidText: a node's status whose free text holds bytes
// that are not UTF-8 (an error quoting a peer) still goes on the wire.
func TestStatusWithInvalidText(t *testing.T) {
	st := &StatusResponse{Node: "a", Peers: []PeerStatus{{Name: "b", LastError: "bad \xff\xfe", Convicted: &Conviction{Reason: "sent \xc3"}}},
		Keys: []KeyStatus{{Key: "k", Suspended: "\xff"}}}
	b, err := proto.Marshal(statusResponseToPB(st))
	if err != nil {
		t.Fatalf("status with invalid UTF-8: %v", err)
	}
	var m pb.StatusResponse
	if err := proto.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if got := m.GetPeers()[0].GetLastError(); got != "bad \uFFFD" {
		t.Fatalf("last error arrived as %q", got)
	}
}
