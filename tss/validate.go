package tss

import (
	"errors"
	"fmt"
	"math/big"
	"sync"

	"github.com/bnb-chain/tss-lib/v2/ecdsa/keygen"
	"github.com/bnb-chain/tss-lib/v2/ecdsa/signing"
	tsslib "github.com/bnb-chain/tss-lib/v2/tss"

	"github.com/tkeyless/tkeyless/tss/internal/gg18"
)

// ErrMisbehaved marks a message that only a member deviating from the
// protocol could have sent: a check failed that every honest member's
// messages pass (except with negligible probability). Its sender is
// convicted (SessionError.Convicted), not merely blamed.
var ErrMisbehaved = errors.New("misbehaved")

// peerChecks validates peer messages for what tss-lib v2.0.2 does not
// check, before tss-lib sees them:
//
//   - the Paillier-Blum modulus proof's W must be coprime to N (keygen
//     round 2): otherwise a party can "prove" a modulus that is not a Blum
//     integer;
//   - Alice's range proof must not have S == 1, Z == 1 or S1 == S2
//     (signing round 1): degenerate proofs a cheating prover can make
//     verify without knowing a value in range;
//   - the Feldman VSS commitment must have exactly t+1 points (keygen round
//     2 de-commitment): more makes the key need more parties than agreed;
//   - Bob's MtA answers (signing round 2) must decrypt into the range an
//     honest Bob's do (mtaCheck, below): the Alpha-Rays abort oracle.
//
// Three of these upstream fixed later on an untagged commit that the module
// proxy does not serve; the MtA range check it has never had. A failed check
// convicts the sender (ErrMisbehaved).
//
// It also keeps what later checks need from earlier messages (each
// sender's Paillier modulus), so one instance serves one session.
type peerChecks struct {
	threshold int
	paillierN map[string]*big.Int
	// mta is set in signing sessions: this party's own Paillier key, to
	// decrypt and range-check the answers to its MtA requests.
	mta *mtaCheck
}

func newPeerChecks(threshold int) *peerChecks {
	return &peerChecks{threshold: threshold, paillierN: map[string]*big.Int{}}
}

var one = big.NewInt(1)

// misbehaved wraps a check failure as proof of deviation.
func misbehaved(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMisbehaved, fmt.Sprintf(format, args...))
}

// check returns an error naming what is wrong with msg from sender.
func (c *peerChecks) check(from string, msg tsslib.ParsedMessage) error {
	switch m := msg.Content().(type) {
	case *keygen.KGRound1Message:
		pk := m.UnmarshalPaillierPK()
		if pk == nil || pk.N == nil || pk.N.Sign() <= 0 {
			return misbehaved("keygen round 1: no Paillier modulus")
		}
		c.paillierN[from] = pk.N
	case *keygen.KGRound2Message2:
		d := m.UnmarshalDeCommitment()
		// The de-commitment is the nonce followed by the flattened points.
		if points := (len(d) - 1) / 2; len(d) < 1 || (len(d)-1)%2 != 0 || points != c.threshold+1 {
			return misbehaved("keygen round 2: Feldman commitment has %d points, want t+1 = %d", points, c.threshold+1)
		}
		pf, err := m.UnmarshalModProof()
		if err != nil {
			return misbehaved("keygen round 2: modulus proof: %v", err)
		}
		n, ok := c.paillierN[from]
		if !ok {
			return fmt.Errorf("keygen round 2 before round 1: no Paillier modulus to check the proof against")
		}
		if pf.W == nil || new(big.Int).GCD(nil, nil, pf.W, n).Cmp(one) != 0 {
			return misbehaved("keygen round 2: modulus proof W is not coprime to N")
		}
	case *signing.SignRound1Message1:
		pf, err := m.UnmarshalRangeProofAlice()
		if err != nil {
			return misbehaved("sign round 1: range proof: %v", err)
		}
		switch {
		case pf.S.Cmp(one) == 0:
			return misbehaved("sign round 1: range proof has S = 1")
		case pf.Z.Cmp(one) == 0:
			return misbehaved("sign round 1: range proof has Z = 1")
		case pf.S1.Cmp(pf.S2) == 0:
			return misbehaved("sign round 1: range proof has S1 = S2")
		}
	case *signing.SignRound2Message:
		if c.mta != nil {
			if err := c.mta.check(from, m); err != nil {
				return err
			}
		}
	}
	return nil
}

// mtaCheck closes the MtA abort oracle ("Alpha-Rays", Tymokhanov and
// Shlomovits, ePrint 2021/1621) in tss-lib v2.0.2's signing.
//
// In round 2 Bob answers each Alice's cA = Enc(a) (a is Alice's nonce share
// k) with cB = Enc(a·b + β′), keeping β = −β′ mod q; Alice decrypts
// α′ = a·b + β′ and uses α′ mod q. An honest Bob takes b < q (γ or w) and
// β′ uniform in [0, q⁵). tss-lib's AliceEnd/AliceEndWC reduce whatever
// decrypts, and Bob's proof accepts a negative β′. So a malicious Bob can
// send β′ = −T·b: the plaintext a·b − T·b wraps modulo N exactly when
// a < T, and the session then signs or fails depending on a secret of
// Alice's. Each run is one comparison on a nonce share; a hundred or so
// partly known nonces give the key (a hidden-number problem).
//
// Alice, before tss-lib sees the answer, decrypts both ciphertexts (C1 for
// γ, C2 for w) and refuses α′ outside [q⁴, q⁵ + q²), convicting Bob:
//
//   - the upper bound is the honest maximum ((q−1)² + q⁵ − 1 < q⁵ + q²);
//     every wrapped plaintext (≈ N, 2048 bits, ≫ q⁵) lies above it;
//   - the lower bound holds for an honest α′ ≥ β′ except with probability
//     q⁴/q⁵ = 1/q ≈ 2⁻²⁵⁶, and puts every small or negative β′ outside.
//
// An answer that passes is decrypted without wrap-around (Bob's proof bounds
// |β′| far below N), so the MtA result is then correct whatever a is: the
// session's outcome no longer depends on a. An answer placed right at a
// bound can still make the check's verdict depend on a (no check on α′
// alone can avoid that), but only by being refused, and the refusal
// convicts its sender.
type mtaCheck struct {
	key          *paillierCRT
	lower, upper *big.Int
	// plain keeps each sender's answers as decrypted here, for the
	// signing engine's round 3 (engine.go), which would decrypt them again.
	// They are α_ij and μ_ij, secret shares of k_i·γ_j and k_i·w_j: each
	// entry is zeroed once consumed (plaintext) and the rest when the
	// session ends (clear). mu guards it: round 3 takes entries from one
	// goroutine per peer.
	mu    sync.Mutex
	plain map[mtaAnswer]decrypted
}

// mtaAnswer names one decrypted answer: its sender and which (0: C1, to
// k·γ; 1: C2, to k·w).
type mtaAnswer struct {
	sender string
	which  int
}

type decrypted struct{ ct, pt *big.Int }

// plaintext takes the decryption of sender's answer ct (which: 0 for C1,
// 1 for C2) if this check decrypted that very ciphertext, else nil. The
// entry is removed either way: each answer is consumed once, and the
// caller owns (and should clear) the value returned.
func (c *mtaCheck) plaintext(sender string, which int, ct *big.Int) *big.Int {
	c.mu.Lock()
	k := mtaAnswer{sender, which}
	d, ok := c.plain[k]
	delete(c.plain, k)
	c.mu.Unlock()
	if !ok {
		return nil
	}
	if d.ct.Cmp(ct) != 0 {
		d.pt.SetInt64(0)
		return nil
	}
	return d.pt
}

// clear zeroes and drops every decrypted answer not consumed: the session
// ended before round 3 used them, or without the engine.
func (c *mtaCheck) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, d := range c.plain {
		d.pt.SetInt64(0)
		delete(c.plain, k)
	}
}

func newMtACheck(sk *paillierCRT) *mtaCheck {
	q := curve.Params().N
	q2 := new(big.Int).Mul(q, q)
	q4 := new(big.Int).Mul(q2, q2)
	q5 := new(big.Int).Mul(q4, q)
	return &mtaCheck{key: sk, lower: q4, upper: new(big.Int).Add(q5, q2), plain: map[mtaAnswer]decrypted{}}
}

func (c *mtaCheck) check(from string, m *signing.SignRound2Message) (err error) {
	var plain [2]decrypted
	defer func() {
		if err != nil {
			for _, d := range plain {
				if d.pt != nil {
					d.pt.SetInt64(0)
				}
			}
		}
	}()
	for i, a := range []struct {
		name string
		ct   []byte
	}{{"MtA (γ)", m.GetC1()}, {"MtAwc (w)", m.GetC2()}} {
		alpha, err := c.key.decrypt(new(big.Int).SetBytes(a.ct))
		if errors.Is(err, gg18.ErrFault) {
			return fmt.Errorf("sign round 2: %s answer: %w", a.name, err) // ours, not the sender's
		}
		if err != nil {
			return misbehaved("sign round 2: %s answer: %v", a.name, err)
		}
		if alpha.Cmp(c.lower) < 0 || alpha.Cmp(c.upper) >= 0 {
			alpha.SetInt64(0)
			return misbehaved("sign round 2: %s answer decrypts outside the range an honest answer has ([q⁴, q⁵+q²)): the MtA abort-oracle attack", a.name)
		}
		plain[i] = decrypted{ct: new(big.Int).SetBytes(a.ct), pt: alpha}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, d := range plain {
		k := mtaAnswer{from, i}
		if old, ok := c.plain[k]; ok {
			old.pt.SetInt64(0)
		}
		c.plain[k] = d
	}
	return nil
}

// paillierBits is the size of every Paillier and range-proof (Ñ) modulus
// tss-lib generates and keygen accepts. A smaller one lets its owner read
// other members' MtA inputs modulo small numbers (Alpha-Rays, section 4);
// tss-lib's resharing does not check the size, so tkeyless does.
const paillierBits = 2048

// checkModuli refuses a member's Paillier modulus N or range-proof modulus
// Ñ that is not paillierBits long.
func checkModuli(what string, n, nTilde *big.Int) error {
	if n == nil || n.BitLen() != paillierBits {
		return misbehaved("%s: Paillier modulus is %d bits, want %d", what, bitLen(n), paillierBits)
	}
	if nTilde == nil || nTilde.BitLen() != paillierBits {
		return misbehaved("%s: range-proof modulus Ñ is %d bits, want %d", what, bitLen(nTilde), paillierBits)
	}
	return nil
}

func bitLen(x *big.Int) int {
	if x == nil {
		return 0
	}
	return x.BitLen()
}
