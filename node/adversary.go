//go:build adversary

package node

import (
	"os"
	"slices"
	"strconv"
	"sync"

	"github.com/tkeyless/tkeyless/internal/peerwire"
)

// This file exists only in the adversary build, used by the security and
// failure tests to run one signer that misbehaves. Release builds leave
// tamperOutgoing nil. TKEYLESS_ADVERSARY selects how:
//
//	equivocate  every broadcast (of round TKEYLESS_ADVERSARY_FROM_ROUND
//	            or later, 1 by default) goes to the member named by
//	            TKEYLESS_ADVERSARY_VICTIM with one bit changed, signed like
//	            the true one the other members get
//	garbage     every message's payload is replaced by bytes that do not
//	            parse
//	stall       nothing after round 1 is sent
//	replay      the payloads of this node's first signing session are sent
//	            again, in the same order, in every later session
func init() {
	victim := os.Getenv("TKEYLESS_ADVERSARY_VICTIM")
	switch os.Getenv("TKEYLESS_ADVERSARY") {
	case "equivocate":
		from, _ := strconv.Atoi(os.Getenv("TKEYLESS_ADVERSARY_FROM_ROUND"))
		tamperOutgoing = func(to string, env *peerwire.Envelope) bool {
			if env.Broadcast && len(env.Payload) > 0 && to == victim && env.Round >= from {
				p := slices.Clone(env.Payload)
				p[len(p)-1] ^= 0x01
				env.Payload = p
			}
			return true
		}
	case "garbage":
		tamperOutgoing = func(to string, env *peerwire.Envelope) bool {
			env.Payload = []byte("\x0a\x07garbage\x12\x03\xff\xff\xff")
			return true
		}
	case "stall":
		tamperOutgoing = func(to string, env *peerwire.Envelope) bool { return env.Round <= 1 }
	case "replay":
		var mu sync.Mutex
		first := map[string][]byte{}
		var firstSession peerwire.SessionID
		tamperOutgoing = func(to string, env *peerwire.Envelope) bool {
			if env.Kind != peerwire.KindSign {
				return true
			}
			mu.Lock()
			defer mu.Unlock()
			k := to + "|" + env.Type
			if firstSession == (peerwire.SessionID{}) {
				firstSession = env.Session
			}
			if env.Session == firstSession {
				first[k] = env.Payload
			} else if old, ok := first[k]; ok {
				env.Payload = old
			}
			return true
		}
	}
}
