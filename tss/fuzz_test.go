package tss

import (
	"testing"

	tsslib "github.com/bnb-chain/tss-lib/v2/tss"
)

// FuzzPeerMessage feeds arbitrary bytes, as a peer could send them, through
// what tkeyless does before tss-lib's state machine sees a message: wire
// parsing and tkeyless's own proof checks. Nothing may panic.
func FuzzPeerMessage(f *testing.F) {
	m, err := newMembers([]string{"a", "b", "c"})
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte{}, true)
	f.Add([]byte("\x0a\x03abc"), false)
	f.Add([]byte("\x0a\x2ftype.googleapis.com/binance.tsslib.ecdsa.signing.SignRound1Message1\x12\x00"), false)
	f.Add([]byte("\x0a\x2btype.googleapis.com/binance.tsslib.ecdsa.keygen.KGRound2Message2\x12\x04\x0a\x02\x01\x02"), true)
	f.Add([]byte("\x0a\x2atype.googleapis.com/binance.tsslib.ecdsa.keygen.KGRound1Message\x12\x02\x0a\x00"), true)
	f.Fuzz(func(t *testing.T, payload []byte, broadcast bool) {
		from := m.byName["b"]
		msg, err := tsslib.ParseWireMessage(payload, from, broadcast)
		if err != nil {
			return
		}
		_ = msg.ValidateBasic()
		c := newPeerChecks(1)
		_ = c.check("b", msg)
		_ = c.check("b", msg)
	})
}
