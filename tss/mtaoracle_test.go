package tss

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"sync"
	"testing"
	"time"

	tsslib "github.com/bnb-chain/tss-lib/v2/tss"

	"github.com/tkeyless/tkeyless/internal/adversary"
)

// oracleRun is one signing session between a victim (Alice, a) and an
// attacker playing the malicious MtA Bob (b), with the victim's true nonce
// share and the threshold the attacker probed it with.
type oracleRun struct {
	k, threshold         *big.Int
	victimErr, attackErr error
	victimSig, attackSig []byte
}

// runOracleSession signs one digest with a (1,2) key, b tampering with its
// MtA answer to a. pick chooses T from the victim's k (the test knows k, so
// it can put T on either side of it and check what the outcome says).
// With stock both parties are tss-lib's own, the attacker's message
// rewritten by reflection into its party (adversary.MtAOracle.Tamper), and
// the victim runs without tkeyless's range check: the stock tss-lib
// behaviour. Otherwise both run tkeyless's engine, the attacker choosing β′
// through the engine's hook (adversary.MtAOracle.Answer), and the victim
// with the range check.
func runOracleSession(t *testing.T, shares []*Share, offset *big.Int, pick func(k *big.Int) *big.Int, stock bool) *oracleRun {
	t.Helper()
	victim, attacker := shares[0], shares[1]
	if victim.Self != "a" || attacker.Self != "b" {
		t.Fatalf("fixture parties are %s, %s; want a, b", victim.Self, attacker.Self)
	}
	quorum := []string{"a", "b"}
	d := sha256.Sum256(fmt.Appendf(nil, "oracle %d", time.Now().UnixNano()))
	net := newMemnet()
	impl := implEngine
	if stock {
		impl = implTSSLib
	}
	va, err := newSignSession(victim, quorum, d[:], net.outbox("a"), impl)
	if err != nil {
		t.Fatal(err)
	}
	vb, err := newSignSession(attacker, quorum, d[:], net.outbox("b"), impl)
	if err != nil {
		t.Fatal(err)
	}
	if stock {
		va.r.checks.mta = nil
	}
	net.join("a", va)
	net.join("b", vb)

	run := &oracleRun{}
	oracle := &adversary.MtAOracle{Attacker: "b", Victim: "a", Offset: offset, Threshold: func() *big.Int {
		// The victim's k is set before its round-1 message left, and the
		// attacker answers only after that message arrived.
		var k *big.Int
		if stock {
			var err error
			if k, err = adversary.NonceShare(va.r.party); err != nil {
				t.Errorf("victim's nonce share: %v", err)
				return big.NewInt(0)
			}
		} else {
			k = new(big.Int).Set(va.r.party.(*engineParty).k)
		}
		run.k, run.threshold = k, pick(k)
		return run.threshold
	}}
	if stock {
		tamperMessage = func(kind string, p protocolParty, m tsslib.Message) tsslib.Message {
			out, err := oracle.Tamper(p, m)
			if err != nil {
				t.Errorf("tamper: %v", err)
			}
			return out
		}
		defer func() { tamperMessage = nil }()
	} else {
		mtaBetaHook = func(kind, self, to string, gamma *big.Int) *big.Int { return oracle.Answer(self, to, gamma) }
		defer func() { mtaBetaHook = nil }()
	}

	// The session is over for both once either fails: the other would
	// wait for messages that never come.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		if run.victimSig, run.victimErr = va.Run(ctx); run.victimErr != nil {
			cancel()
		}
	})
	wg.Go(func() {
		if run.attackSig, run.attackErr = vb.Run(ctx); run.attackErr != nil {
			cancel()
		}
	})
	wg.Wait()
	if run.k == nil {
		t.Fatalf("the attacker never reached round 2 (victim: %v; attacker: %v)", run.victimErr, run.attackErr)
	}
	return run
}

// below and atOrAbove put T on one side of k, at a random distance.
func below(k *big.Int) *big.Int { // T > k: the victim's α′ goes negative
	r, _ := rand.Int(rand.Reader, new(big.Int).Lsh(one, 64))
	return new(big.Int).Add(k, r.Add(r, one))
}

func atOrAbove(k *big.Int) *big.Int { // T ≤ k: no wrap
	r, _ := rand.Int(rand.Reader, new(big.Int).Lsh(one, 64))
	if r.Cmp(k) > 0 {
		r.Set(k)
	}
	return new(big.Int).Sub(k, r)
}

// TestMtAOracleStockTSSLibLeaks shows the oracle exists in tss-lib v2.0.2
// (with tkeyless's range check switched off, as the code was before it):
// a malicious Bob learns, from whether each session signs, whether the
// victim's nonce share k is at least the T it chose. Every session's outcome
// matches the secret comparison; were there no oracle, 8 random outcomes
// would match by chance with probability 2⁻⁸. If a tss-lib upgrade closes
// the oracle, this test fails and says so.
func TestMtAOracleStockTSSLibLeaks(t *testing.T) {
	shares := fixtureShares(t, 1, 2)
	matched := 0
	for i := range 8 {
		pick, wantSign := below, false
		if i%2 == 0 {
			pick, wantSign = atOrAbove, true
		}
		r := runOracleSession(t, shares, nil, pick, true)
		signed := r.victimErr == nil && r.attackErr == nil
		t.Logf("session %d: k ≥ T is %t; session signed: %t (victim: %v)", i, r.k.Cmp(r.threshold) >= 0, signed, r.victimErr)
		if signed == wantSign {
			matched++
		}
		if signed {
			if !slices.Equal(r.victimSig, r.attackSig) {
				t.Fatal("the two parties returned different signatures")
			}
		}
	}
	if matched != 8 {
		t.Fatalf("the outcome matched k ≥ T in %d of 8 sessions; the oracle is gone from stock tss-lib (good news: update this test and SECURITY.md)", matched)
	}
}

// TestMtAOracleRefused runs the same attack against tkeyless's engine: the
// victim refuses every malicious answer before its party sees it, whichever
// side of k the attacker put T, and convicts the attacker by name. So the
// outcome carries nothing about k: every session fails the same way.
func TestMtAOracleRefused(t *testing.T) {
	shares := fixtureShares(t, 1, 2)
	for i := range 6 {
		pick := below
		if i%2 == 0 {
			pick = atOrAbove
		}
		r := runOracleSession(t, shares, nil, pick, false)
		var se *SessionError
		if !errors.As(r.victimErr, &se) {
			t.Fatalf("session %d (k ≥ T: %t): victim signed or failed without a session error: %v", i, r.k.Cmp(r.threshold) >= 0, r.victimErr)
		}
		if !slices.Equal(se.Convicted, []string{"b"}) || !errors.Is(se, ErrMisbehaved) || se.Round != 2 {
			t.Fatalf("session %d: victim's error %v: want round 2, b convicted of misbehaviour", i, se)
		}
		if se.Unattributed {
			t.Fatalf("session %d: a convicting abort counted as unattributed", i)
		}
		t.Logf("session %d (k ≥ T: %t): %v", i, r.k.Cmp(r.threshold) >= 0, se)
	}
}

// TestMtAOracleBoundaryConvicts places the malicious answer at the lower
// bound of the range check (β′ = q⁴ − T·γ): now the check's verdict does
// depend on k, as it must for any check on α′ alone, but the only
// informative outcome is a refusal that convicts the attacker. When the
// answer passes, the MtA is exact and the session signs correctly.
func TestMtAOracleBoundaryConvicts(t *testing.T) {
	shares := fixtureShares(t, 1, 2)
	q := curve.Params().N
	q4 := new(big.Int).Exp(q, big.NewInt(4), nil)
	for i, pick := range []func(*big.Int) *big.Int{atOrAbove, below} {
		r := runOracleSession(t, shares, q4, pick, false)
		aboveOrAt := r.k.Cmp(r.threshold) >= 0
		switch {
		case aboveOrAt && (r.victimErr != nil || r.attackErr != nil):
			t.Fatalf("session %d: an in-range answer must give a correct MtA; victim: %v, attacker: %v", i, r.victimErr, r.attackErr)
		case !aboveOrAt:
			var se *SessionError
			if !errors.As(r.victimErr, &se) || !slices.Equal(se.Convicted, []string{"b"}) {
				t.Fatalf("session %d: an out-of-range answer must convict b; victim: %v", i, r.victimErr)
			}
		}
		t.Logf("session %d (k ≥ T: %t): victim %v", i, aboveOrAt, r.victimErr)
	}
}
