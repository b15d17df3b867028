package tss

import (
	"errors"
	"slices"
	"strings"
	"testing"

	tsslib "github.com/bnb-chain/tss-lib/v2/tss"
)

// TestForPeersRecoversPanic: a panic in one member's per-peer work (its
// goroutine is outside runner.safely) becomes that member's error instead
// of ending the process, and the other members' results are kept.
func TestForPeersRecoversPanic(t *testing.T) {
	p := &engineParty{ids: make(tsslib.SortedPartyIDs, 4), i: 1, names: []string{"a", "b", "c", "d"}}
	boom := errors.New("boom")
	culprits, err := p.forPeers(func(j int) error {
		switch j {
		case 1:
			t.Errorf("forPeers ran f for the party itself")
		case 2:
			var m map[string]int
			m["x"] = 1 // a nil-map write panics
		case 3:
			return boom
		}
		return nil
	})
	if !slices.Equal(culprits, []int{2, 3}) {
		t.Fatalf("culprits = %v, want [2 3]", culprits)
	}
	if err == nil || !strings.Contains(err.Error(), "panicked while handling c's values") {
		t.Fatalf("first error = %v, want the panic of member c", err)
	}
}
