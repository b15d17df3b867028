package wan

// The round-trip model: how many network round trips one full handshake
// waits for in sequence, counted from node/ and tss/ as they are. Only
// links the harness shapes count (edge ↔ signer, signer ↔ signer); the
// client ↔ edge link is loopback.
//
//	edge → coordinator → edge    the keyless request and its answer     1
//	Prepare to every member      a unary call, awaited                  1     (full path only)
//	Run (FinishPresign)          reaches the members                    0.5
//	each GG18 signing round      1: a member sends a round's message    1 × 9 (full) or × 5 (presigned: 5–9)
//	                             with a unary Deliver and awaits its
//	                             answer before sending the next one
//	                             (tss/session.go sendLoop, node/session.go
//	                             outbox), so a round costs the message's
//	                             trip and the acknowledgement's
//	each broadcast round, with   members wait for the third member's    0 today: the echo (sent on receipt, half a
//	  three members              echo before using a broadcast           trip) travels while the sender still awaits
//	                                                                     its acknowledgement; 0.5 × 8 (full) or × 5
//	                                                                     (presigned) once acknowledgements are not
//	                                                                     awaited
//	Run answers                  the coordinator waits for them all     0.5
//
// Without the awaited acknowledgement a round would cost half a trip
// (the message's way only), plus half for the echo with three members:
// that is the largest saving the protocol allows. (The first bench run,
// docs/bench/wan.md, fits this: (2,3) presigned costs the same trips as
// (1,2).) Signing computes between the trips; the model adds the measured
// p50 at RTT 0 for that, so model(RTT) = p50(0) + Rounds × RTT.
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
	roundTrip           = 1.0 // a round's Deliver and its answer
	echoOneWay          = 0.0 // hidden behind the awaited acknowledgement
)

// Rounds is the model's count of sequential round trips for one full
// handshake with a (t,n) key, on the presigned path or the full one.
func Rounds(t, n int, presigned bool) float64 {
	_ = n           // the quorum, not the cluster, sets the cost
	quorum := t + 1 // any t+1 sign
	rounds, broadcasts := gg18Rounds, gg18BroadcastRounds
	r := keylessRoundTrip + runRequestOneWay + runResponseOneWay
	if presigned {
		rounds, broadcasts = presignedRounds, presignedBroadcasts
	} else {
		r += prepareRoundTrip
	}
	r += float64(rounds) * roundTrip
	if quorum >= echoQuorum {
		r += float64(broadcasts) * echoOneWay
	}
	return r
}
