package tss

import (
	"fmt"
	"math/big"

	"github.com/bnb-chain/tss-lib/v2/ecdsa/keygen"
	"github.com/bnb-chain/tss-lib/v2/ecdsa/signing"
	tsslib "github.com/bnb-chain/tss-lib/v2/tss"
)

// peerChecks validates peer messages for three conditions tss-lib v2.0.2
// does not check and upstream fixed later on an untagged commit that the
// module proxy does not serve:
//
//   - the Paillier-Blum modulus proof's W must be coprime to N (keygen
//     round 2): otherwise a party can "prove" a modulus that is not a Blum
//     integer;
//   - Alice's range proof must not have S == 1, Z == 1 or S1 == S2
//     (signing round 1): degenerate proofs a cheating prover can make
//     verify without knowing a value in range;
//   - the Feldman VSS commitment must have exactly t+1 points (keygen round
//     2 de-commitment): more makes the key need more parties than agreed.
//
// It also keeps what later checks need from earlier messages (each
// sender's Paillier modulus), so one instance serves one session.
type peerChecks struct {
	threshold int
	paillierN map[string]*big.Int
}

func newPeerChecks(threshold int) *peerChecks {
	return &peerChecks{threshold: threshold, paillierN: map[string]*big.Int{}}
}

var one = big.NewInt(1)

// check returns an error naming what is wrong with msg from sender.
func (c *peerChecks) check(from string, msg tsslib.ParsedMessage) error {
	switch m := msg.Content().(type) {
	case *keygen.KGRound1Message:
		pk := m.UnmarshalPaillierPK()
		if pk == nil || pk.N == nil || pk.N.Sign() <= 0 {
			return fmt.Errorf("keygen round 1: no Paillier modulus")
		}
		c.paillierN[from] = pk.N
	case *keygen.KGRound2Message2:
		d := m.UnmarshalDeCommitment()
		// The de-commitment is the nonce followed by the flattened points.
		if points := (len(d) - 1) / 2; len(d) < 1 || (len(d)-1)%2 != 0 || points != c.threshold+1 {
			return fmt.Errorf("keygen round 2: Feldman commitment has %d points, want t+1 = %d", points, c.threshold+1)
		}
		pf, err := m.UnmarshalModProof()
		if err != nil {
			return fmt.Errorf("keygen round 2: modulus proof: %w", err)
		}
		n, ok := c.paillierN[from]
		if !ok {
			return fmt.Errorf("keygen round 2 before round 1: no Paillier modulus to check the proof against")
		}
		if pf.W == nil || new(big.Int).GCD(nil, nil, pf.W, n).Cmp(one) != 0 {
			return fmt.Errorf("keygen round 2: modulus proof W is not coprime to N")
		}
	case *signing.SignRound1Message1:
		pf, err := m.UnmarshalRangeProofAlice()
		if err != nil {
			return fmt.Errorf("sign round 1: range proof: %w", err)
		}
		switch {
		case pf.S.Cmp(one) == 0:
			return fmt.Errorf("sign round 1: range proof has S = 1")
		case pf.Z.Cmp(one) == 0:
			return fmt.Errorf("sign round 1: range proof has Z = 1")
		case pf.S1.Cmp(pf.S2) == 0:
			return fmt.Errorf("sign round 1: range proof has S1 = S2")
		}
	}
	return nil
}
