package wan

import (
	"testing"

	"github.com/bnb-chain/tss-lib/v2/ecdsa/signing"
	"google.golang.org/protobuf/proto"

	"github.com/tkeyless/tkeyless/tss"
)

func TestRounds(t *testing.T) {
	for _, tc := range []struct {
		t, n      int
		presigned bool
		want      float64
	}{
		{1, 2, false, 7.5}, {1, 3, false, 7.5}, {2, 3, false, 9},
		{1, 2, true, 4.5}, {1, 3, true, 4.5}, {2, 3, true, 4.5},
	} {
		if got := Rounds(tc.t, tc.n, tc.presigned); got != tc.want {
			t.Errorf("Rounds(%d,%d, presigned %v) = %v, want %v", tc.t, tc.n, tc.presigned, got, tc.want)
		}
	}
}

// TestBroadcastRounds pins the model's count of broadcast rounds to the
// message types the engine declares broadcast.
func TestBroadcastRounds(t *testing.T) {
	rounds := map[int]bool{}
	for _, m := range []proto.Message{&signing.SignRound1Message1{}, &signing.SignRound1Message2{}, &signing.SignRound2Message{},
		&signing.SignRound3Message{}, &signing.SignRound4Message{}, &signing.SignRound5Message{}, &signing.SignRound6Message{},
		&signing.SignRound7Message{}, &signing.SignRound8Message{}, &signing.SignRound9Message{}} {
		typ := string(proto.MessageName(m))
		if tss.IsBroadcastType("sign", typ) {
			rounds[tss.RoundOf(typ)] = true
		}
	}
	if len(rounds) != gg18BroadcastRounds {
		t.Errorf("broadcast rounds %v: the model counts %d", rounds, gg18BroadcastRounds)
	}
	for r := gg18Rounds - presignedRounds + 1; r <= gg18Rounds; r++ {
		if !rounds[r] {
			t.Errorf("round %d carries no broadcast: the presigned model counts %d", r, presignedBroadcasts)
		}
	}
}
