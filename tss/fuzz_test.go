package tss

import (
	"testing"

	tsslib "github.com/bnb-chain/tss-lib/v2/tss"
)

// FuzzPeerMessage feeds arbitrary bytes, as a peer could send them, through
// what tkeyless does before tss-lib's state machine sees a message: the
// transport's payload inspection, wire parsing and tkeyless's own checks
// (the MtA range check decrypting with a real Paillier key among them).
// Nothing may panic.
func FuzzPeerMessage(f *testing.F) {
	m, err := newMembers([]string{"a", "b", "c"})
	if err != nil {
		f.Fatal(err)
	}
	key, err := newPaillierCRT(testPreParams(f, 0).p.PaillierSK)
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte("\x0a\x2etype.googleapis.com/binance.tsslib.ecdsa.signing.SignRound2Message\x12\x06\x0a\x01\x05\x12\x01\x07"), false)
	f.Add([]byte{}, true)
	f.Add([]byte("\x0a\x03abc"), false)
	f.Add([]byte("\x0a\x2ftype.googleapis.com/binance.tsslib.ecdsa.signing.SignRound1Message1\x12\x00"), false)
	f.Add([]byte("\x0a\x2btype.googleapis.com/binance.tsslib.ecdsa.keygen.KGRound2Message2\x12\x04\x0a\x02\x01\x02"), true)
	f.Add([]byte("\x0a\x2atype.googleapis.com/binance.tsslib.ecdsa.keygen.KGRound1Message\x12\x02\x0a\x00"), true)
	f.Fuzz(func(t *testing.T, payload []byte, broadcast bool) {
		for _, kind := range []string{"sign", "presign", "keygen", "reshare"} {
			if info, err := InspectMessage(kind, payload); err == nil && info.Type == "" {
				t.Fatalf("%s: inspection accepted a payload with no type", kind)
			}
		}
		from := m.byName["b"]
		msg, err := tsslib.ParseWireMessage(payload, from, broadcast)
		if err != nil {
			return
		}
		_ = msg.ValidateBasic()
		c := newPeerChecks(1)
		c.mta = newMtACheck(key)
		_ = c.check("b", msg)
		_ = c.check("b", msg)
	})
}
