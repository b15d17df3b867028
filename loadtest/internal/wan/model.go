package wan

// The round-trip model: how many network round trips one full handshake
// waits for in sequence, counted from node/ and tss/ as they are. Only
// links the harness shapes count (edge ↔ signer, signer ↔ signer); the
// client ↔ edge link is loopback.
//
//	edge → coordinator → edge    the keyless request and its answer     1
//	Prepare to every member      a unary call, awaited                  1     (full path only)
//	Run (FinishPresign)          reaches the members                    0.5
//	each GG18 signing round      a member posts a round's message       0.5 × 9 (full) or × 5 (presigned: 5–9)
//	                             (peerwire.Client.Post: no answer is
//	                             awaited), so a round costs the
//	                             message's way only
//	each broadcast round, with   a broadcast of rounds 1–4 waits for    0.5 × 3 (full: rounds 1, 3 and 4); from
//	  three members              the third member's echo (node/echo.go) round 5 the echoes ride on the next
//	                                                                     round's envelopes (node/carry.go): 0
//	Run answers                  the coordinator waits for them all     0.5
//
// Until 3d5c486 a round's Deliver awaited its answer before the next
// round could go out, a whole trip per round; the WAN bench of that time
// (docs/bench/wan.md) fits the older count. Signing computes between the
// trips; the model adds the measured p50 at RTT 0 for that, so
// model(RTT) = p50(0) + Rounds × RTT.
const (
	gg18Rounds          = 9
	gg18BroadcastRounds = 8 // every signing round but round 2 carries a broadcast
	presignedRounds     = 5 // rounds 5–9: rounds 1–4 do not depend on the digest
	presignedBroadcasts = 5
	echoQuorum          = 3 // node/echo.go: echoes only in sessions of three or more
	keylessRoundTrip    = 1.0
	prepareRoundTrip    = 1.0
	runRequestOneWay    = 0.5
	runResponseOneWay   = 0.5
	roundOneWay         = 0.5 // a round's envelope, posted
	echoOneWay          = 0.5 // the echo a broadcast of rounds 1–4 waits for
)

// Rounds is the model's count of sequential round trips for one full
// handshake with a (t,n) key, on the presigned path or the full one.
func Rounds(t, n int, presigned bool) float64 {
	_ = n           // the quorum, not the cluster, sets the cost
	quorum := t + 1 // any t+1 sign
	// Broadcasts of the rounds before carried echoes start (node/carry.go:
	// round 5, where the presigned path starts) wait for their echo.
	rounds, echoed := gg18Rounds, gg18BroadcastRounds-presignedBroadcasts
	r := keylessRoundTrip + runRequestOneWay + runResponseOneWay
	if presigned {
		rounds, echoed = presignedRounds, 0
	} else {
		r += prepareRoundTrip
	}
	r += float64(rounds) * roundOneWay
	if quorum >= echoQuorum {
		r += float64(echoed) * echoOneWay
	}
	return r
}
