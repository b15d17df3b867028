package tss

import (
	"errors"
	"math/big"
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

// TestMtACacheConsumedAndCleared: a decrypted MtA answer (α_ij, μ_ij) is
// handed out once and zeroed in the cache; what is never taken is zeroed
// when the session ends.
func TestMtACacheConsumedAndCleared(t *testing.T) {
	c := &mtaCheck{plain: map[mtaAnswer]decrypted{}}
	ct0, ct1 := big.NewInt(1001), big.NewInt(1002)
	pt0, pt1 := big.NewInt(7), big.NewInt(9)
	c.plain[mtaAnswer{"b", 0}] = decrypted{ct: ct0, pt: pt0}
	c.plain[mtaAnswer{"b", 1}] = decrypted{ct: ct1, pt: pt1}

	if v := c.plaintext("b", 0, ct1); v != nil {
		t.Fatalf("answer returned for another ciphertext: %v", v)
	}
	if pt0.Sign() != 0 {
		t.Fatalf("answer left unzeroed after a mismatched take: %v", pt0)
	}
	if v := c.plaintext("b", 0, ct0); v != nil {
		t.Fatalf("answer handed out twice: %v", v)
	}
	c.clear()
	if pt1.Sign() != 0 || len(c.plain) != 0 {
		t.Fatalf("clear left %d entries, μ = %v", len(c.plain), pt1)
	}

	pt := big.NewInt(5)
	c.plain[mtaAnswer{"c", 1}] = decrypted{ct: ct1, pt: pt}
	if v := c.plaintext("c", 1, ct1); v == nil || v.Int64() != 5 {
		t.Fatalf("plaintext = %v, want 5", v)
	}
	if v := c.plaintext("c", 1, ct1); v != nil {
		t.Fatalf("answer handed out twice: %v", v)
	}
}
