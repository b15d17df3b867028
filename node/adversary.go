//go:build adversary

package node

import (
	"os"
	"slices"

	"github.com/tkeyless/tkeyless/internal/peerwire"
)

// This file exists only in the adversary build, used by the security tests
// to run one signer that misbehaves. TKEYLESS_ADVERSARY selects how:
//
//	equivocate  every broadcast goes to the member named by
//	            TKEYLESS_ADVERSARY_VICTIM with one bit changed, signed like
//	            the true one the other members get
func init() {
	switch os.Getenv("TKEYLESS_ADVERSARY") {
	case "equivocate":
		victim := os.Getenv("TKEYLESS_ADVERSARY_VICTIM")
		tamperOutgoing = func(to string, env *peerwire.Envelope) {
			if !env.Broadcast || len(env.Payload) == 0 || to != victim {
				return
			}
			p := slices.Clone(env.Payload)
			p[len(p)-1] ^= 0x01
			env.Payload = p
		}
	}
}
