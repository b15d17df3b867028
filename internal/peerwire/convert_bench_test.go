package peerwire

import (
	"encoding/json"
	"testing"
)

// benchEnvelope is a signing round's message: a few KiB of tss-lib payload.
var benchEnvelope = &Envelope{Version: Version, Session: NewSessionID(), Kind: KindSign, Key: "6292a337b171544fb217b895a3923eaa4e9d85d1",
	From: "b", Round: 1, Type: "binance.tsslib.ecdsa.signing.SignRound1Message1", Payload: make([]byte, 4096), Sig: make([]byte, 72)}

// BenchmarkEnvelope encodes and decodes an envelope as the peer service
// does (protobuf and the conversion), beside the reference: JSON of the
// domain type, which was the wire format of protocol version 2.
func BenchmarkEnvelope(b *testing.B) {
	b.Run("proto", func(b *testing.B) {
		var size int
		for b.Loop() {
			buf, err := MarshalEnvelope(benchEnvelope)
			if err != nil {
				b.Fatal(err)
			}
			var e Envelope
			if err := UnmarshalEnvelope(buf, &e); err != nil {
				b.Fatal(err)
			}
			size = len(buf)
		}
		b.ReportMetric(float64(size), "wire-bytes")
	})
	b.Run("json-reference", func(b *testing.B) {
		var size int
		for b.Loop() {
			buf, err := json.Marshal(benchEnvelope)
			if err != nil {
				b.Fatal(err)
			}
			var e Envelope
			if err := json.Unmarshal(buf, &e); err != nil {
				b.Fatal(err)
			}
			size = len(buf)
		}
		b.ReportMetric(float64(size), "wire-bytes")
	})
}
