package tss

import (
	"crypto/sha256"
	"fmt"
	"math/big"
	"slices"

	tsslib "github.com/bnb-chain/tss-lib/v2/tss"
)

// partyKey is the tss-lib key (the Shamir evaluation point) of a node. It is
// derived from the node name so that it is the same in every ceremony and
// signing session the node takes part in, without any registry.
func partyKey(name string) *big.Int {
	h := sha256.Sum256([]byte("tkeyless party key v1\x00" + name))
	k := new(big.Int).SetBytes(h[:])
	k.Mod(k, curve.Params().N)
	if k.Sign() == 0 { // probability 2^-256; keep the point valid anyway
		k.SetInt64(1)
	}
	return k
}

// members is a ceremony's set of parties in tss-lib's sorted order, indexed
// by node name both ways.
type members struct {
	sorted tsslib.SortedPartyIDs
	byName map[string]*tsslib.PartyID
}

func newMembers(names []string) (*members, error) {
	if len(names) < 2 {
		return nil, fmt.Errorf("need at least 2 parties, got %d", len(names))
	}
	seen := make(map[string]bool, len(names))
	unsorted := make(tsslib.UnSortedPartyIDs, 0, len(names))
	for _, n := range names {
		if n == "" {
			return nil, fmt.Errorf("empty party name")
		}
		if seen[n] {
			return nil, fmt.Errorf("party %q named twice", n)
		}
		seen[n] = true
		unsorted = append(unsorted, tsslib.NewPartyID(n, n, partyKey(n)))
	}
	m := &members{sorted: tsslib.SortPartyIDs(unsorted), byName: make(map[string]*tsslib.PartyID, len(names))}
	for _, p := range m.sorted {
		m.byName[p.Id] = p
	}
	return m, nil
}

func (m *members) names() []string {
	out := make([]string, len(m.sorted))
	for i, p := range m.sorted {
		out[i] = p.Id
	}
	return out
}

// others lists every member but self, sorted.
func (m *members) others(self string) []string {
	return slices.DeleteFunc(m.names(), func(n string) bool { return n == self })
}
