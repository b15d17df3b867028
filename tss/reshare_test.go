package tss

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"errors"
	"math/big"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bnb-chain/tss-lib/v2/crypto"
	cmts "github.com/bnb-chain/tss-lib/v2/crypto/commitments"
	"github.com/bnb-chain/tss-lib/v2/crypto/dlnproof"
	"github.com/bnb-chain/tss-lib/v2/crypto/modproof"
	"github.com/bnb-chain/tss-lib/v2/ecdsa/resharing"
	tsslib "github.com/bnb-chain/tss-lib/v2/tss"
)

// reshareTestPreParams maps node names to the committed pre-parameters.
var reshareTestPreParams = map[string]int{"a": 0, "b": 1, "c": 2, "d": 3}

// runReshareCeremony runs every participant of cfg in memory: old members
// with their share from old, new members with their test pre-parameters.
// It returns the new shares by node name.
func runReshareCeremony(t *testing.T, cfg ReshareConfig, old map[string]*Share) (map[string]*Share, error) {
	t.Helper()
	names := slices.Clone(cfg.OldParties)
	for _, n := range cfg.NewParties {
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	net := newMemnet()
	sessions := map[string]*ReshareSession{}
	for _, n := range names {
		var pp *PreParams
		if slices.Contains(cfg.NewParties, n) {
			pp = testPreParams(t, reshareTestPreParams[n])
		}
		s, err := NewReshareSession(cfg, n, old[n], pp, net.outbox(n))
		if err != nil {
			t.Fatalf("reshare session for %s: %v", n, err)
		}
		sessions[n] = s
		net.join(n, s)
	}
	return runReshareSessions(t, sessions)
}

func runReshareSessions(t *testing.T, sessions map[string]*ReshareSession) (map[string]*Share, error) {
	t.Helper()
	var mu sync.Mutex
	out := map[string]*Share{}
	var errs []error
	var wg sync.WaitGroup
	for n, s := range sessions {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			sh, err := s.Run(ctx)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			if sh != nil {
				out[n] = sh
			}
		})
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

func sharesByName(shares []*Share) map[string]*Share {
	m := map[string]*Share{}
	for _, s := range shares {
		m[s.Self] = s
	}
	return m
}

// signMustFail runs a signing session over shares that do not belong
// together and returns its error; it fails the test if they produce a
// signature. Stall and deadline bounds keep a stuck member from hanging it.
func signMustFail(t *testing.T, shares []*Share) error {
	t.Helper()
	var quorum []string
	for _, s := range shares {
		quorum = append(quorum, s.Self)
	}
	net := newMemnet()
	d := digests()["SHA-256"]
	sessions := make([]*SignSession, len(shares))
	for i, sh := range shares {
		s, err := NewSignSession(sh, quorum, d, net.outbox(sh.Self))
		if err != nil {
			t.Fatal(err)
		}
		s.SetStallTimeout(10 * time.Second)
		sessions[i] = s
		net.join(sh.Self, s)
	}
	errs := make([]error, len(sessions))
	var wg sync.WaitGroup
	for i, s := range sessions {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_, errs[i] = s.Run(ctx)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err == nil {
			t.Fatalf("%s produced a signature from shares that must not combine", quorum[i])
		}
	}
	return errs[0]
}

func mustSignAndVerify(t *testing.T, pub *ecdsa.PublicKey, quorum ...*Share) {
	t.Helper()
	d := digests()["SHA-256"]
	sig, err := runSign(t, quorum, d, nil)
	if err != nil {
		t.Fatalf("sign with new shares: %v", err)
	}
	if !ecdsa.VerifyASN1(pub, d, sig) {
		t.Fatal("signature does not verify under the key's public key")
	}
}

// Refresh: same parties, same (t, n). The public key stays, the new shares
// sign, and an old share does not combine with a new one.
func TestReshareRefresh(t *testing.T) {
	old := fixtureShares(t, 1, 2)
	pub := old[0].PublicKey()
	cfg := ReshareConfig{PublicKey: pub, OldParties: []string{"a", "b"}, OldThreshold: 1, NewParties: []string{"a", "b"}, NewThreshold: 1}
	fresh, err := runReshareCeremony(t, cfg, sharesByName(old))
	if err != nil {
		t.Fatal(err)
	}
	if len(fresh) != 2 {
		t.Fatalf("got new shares for %v, want a and b", fresh)
	}
	for _, n := range []string{"a", "b"} {
		s := fresh[n]
		if !s.PublicKey().Equal(pub) || s.KeyID() != old[0].KeyID() || s.Threshold != 1 || s.Self != n {
			t.Fatalf("%s: new share is of key %s t=%d self=%s; want key %s t=1", n, s.KeyID(), s.Threshold, s.Self, old[0].KeyID())
		}
		if s.data.Xi.Cmp(sharesByName(old)[n].data.Xi) == 0 {
			t.Fatalf("%s: share did not change", n)
		}
	}
	mustSignAndVerify(t, pub, fresh["a"], fresh["b"])
	err = signMustFail(t, []*Share{old[0], fresh["b"]})
	t.Logf("old a + new b: %v", err)

	// The session worked on copies: the old shares are intact, and still
	// combine with each other. A refresh protects only once every old
	// share (and every backup of one) is deleted.
	mustSignAndVerify(t, pub, old[0], old[1])
}

// (1,2) → (2,3): the two holders deal to themselves and a newcomer c; all
// three are then needed to sign.
func TestReshareChangeThreshold(t *testing.T) {
	old := fixtureShares(t, 1, 2)
	pub := old[0].PublicKey()
	cfg := ReshareConfig{PublicKey: pub, OldParties: []string{"a", "b"}, OldThreshold: 1, NewParties: []string{"a", "b", "c"}, NewThreshold: 2}
	fresh, err := runReshareCeremony(t, cfg, sharesByName(old))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b", "c"} {
		s := fresh[n]
		if s == nil || s.Threshold != 2 || len(s.Parties) != 3 || !s.PublicKey().Equal(pub) {
			t.Fatalf("%s: new share %+v, want t=2 of [a b c] for the same key", n, s)
		}
	}
	mustSignAndVerify(t, pub, fresh["a"], fresh["b"], fresh["c"])
	if _, err := NewSignSession(fresh["a"], []string{"a", "b"}, digests()["SHA-256"], OutboxFunc(func(context.Context, Outgoing) error { return nil })); err == nil {
		t.Fatal("a (2,3) share accepted a quorum of two")
	}
}

// (1,3) with c lost: a and b deal to a, b and a new node d.
func TestReshareReplaceLostNode(t *testing.T) {
	old := fixtureShares(t, 1, 3)
	pub := old[0].PublicKey()
	cfg := ReshareConfig{PublicKey: pub, OldParties: []string{"a", "b"}, OldThreshold: 1, NewParties: []string{"a", "b", "d"}, NewThreshold: 1}
	fresh, err := runReshareCeremony(t, cfg, sharesByName(old))
	if err != nil {
		t.Fatal(err)
	}
	if d := fresh["d"]; d == nil || slices.Contains(d.Parties, "c") || !slices.Contains(d.Parties, "d") {
		t.Fatalf("d's share: %+v, want holders a, b, d", d)
	}
	mustSignAndVerify(t, pub, fresh["b"], fresh["d"])
}

func TestReshareRejectsBadConfigs(t *testing.T) {
	shares := fixtureShares(t, 1, 3)
	other := fixtureShares(t, 1, 2)
	pub := shares[0].PublicKey()
	pp := testPreParams(t, 0)
	ob := OutboxFunc(func(context.Context, Outgoing) error { return nil })
	good := func() ReshareConfig {
		return ReshareConfig{PublicKey: pub, OldParties: []string{"a", "b"}, OldThreshold: 1, NewParties: []string{"a", "b", "c"}, NewThreshold: 1}
	}
	for _, tc := range []struct {
		name  string
		edit  func(*ReshareConfig)
		self  string
		share *Share
		pp    *PreParams
		want  string
	}{
		{"no public key", func(c *ReshareConfig) { c.PublicKey = nil }, "a", shares[0], pp, "public key"},
		{"too few dealers", func(c *ReshareConfig) { c.OldParties = []string{"a"} }, "a", shares[0], pp, "needs 2 of its holders"},
		{"new threshold too high", func(c *ReshareConfig) { c.NewThreshold = 3 }, "a", shares[0], pp, "want 1 ≤ t < n"},
		{"new threshold zero", func(c *ReshareConfig) { c.NewThreshold = 0 }, "a", shares[0], pp, "want 1 ≤ t < n"},
		{"duplicate new party", func(c *ReshareConfig) { c.NewParties = []string{"a", "a", "b"} }, "a", shares[0], pp, "named twice"},
		{"outsider", nil, "z", nil, pp, "neither"},
		{"dealer without share", nil, "a", nil, pp, "has no share"},
		{"share of another key", nil, "a", other[0], pp, "share is of key"},
		{"share of another node", nil, "a", shares[1], pp, "belongs to"},
		{"wrong old threshold", func(c *ReshareConfig) { c.OldThreshold = 2; c.OldParties = []string{"a", "b", "c"} }, "a", shares[0], pp, "share says 1"},
		{"dealer not a holder", func(c *ReshareConfig) { c.OldParties = []string{"a", "d"} }, "a", shares[0], pp, "holds no share"},
		{"new member without pre-parameters", nil, "c", nil, nil, "pre-parameters"},
		{"old threshold 0 with two dealers", func(c *ReshareConfig) { c.OldThreshold = 0 }, "c", nil, pp, "import"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good()
			if tc.edit != nil {
				tc.edit(&cfg)
			}
			_, err := NewReshareSession(cfg, tc.self, tc.share, tc.pp, ob)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want an error mentioning %q, got %v", tc.want, err)
			}
		})
	}
}

// A message from a member of the wrong committee for its type, or a dealer
// dealing for another key, ends the session naming the sender.
func TestReshareRefusesMisroutedMessages(t *testing.T) {
	shares := fixtureShares(t, 1, 2)
	pub := shares[0].PublicKey()
	cfg := ReshareConfig{PublicKey: pub, OldParties: []string{"a", "b"}, OldThreshold: 1, NewParties: []string{"a", "b", "c"}, NewThreshold: 1}
	oldIDs := committeeIDs(cfg.OldParties, oldCommitteeKey, "")
	newIDs := committeeIDs(cfg.NewParties, partyKey, "")
	round1 := func(from *tsslib.PartyID, key *ecdsa.PublicKey) []byte {
		pt, err := crypto.NewECPoint(curve, key.X, key.Y)
		if err != nil {
			t.Fatal(err)
		}
		c := cmts.NewHashCommitment(rand.Reader, big.NewInt(1))
		b, _, err := resharing.NewDGRound1Message(newIDs, from, pt, c.C, []byte("ssid")).WireBytes()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		name, from string
		payload    []byte
		want       string
	}{
		// c is only in the new committee; only dealers send round 1.
		{"new member deals", "c", round1(byName(newIDs)["c"], pub), "only old-committee members send"},
		{"dealer deals another key", "b", round1(byName(oldIDs)["b"], fixtureShares(t, 1, 3)[0].PublicKey()), "another public key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := NewReshareSession(cfg, "a", shares[0], testPreParams(t, 0), OutboxFunc(func(context.Context, Outgoing) error { return nil }))
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Deliver(tc.from, true, tc.payload); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, err = s.Run(ctx)
			var se *SessionError
			if !errors.As(err, &se) || !slices.Equal(se.Culprits, []string{tc.from}) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want a reshare error blaming %s for %q, got %v", tc.from, tc.want, err)
			}
		})
	}
}

// tss-lib v2.0.2 accepts a modulus proof whose W shares a factor with N
// (see TestCraftedModProofRefused); resharing's round 2 carries the same
// proof, so the same check applies.
func TestReshareModProofCheck(t *testing.T) {
	pp := testPreParams(t, 0).p
	ids := committeeIDs([]string{"a", "b"}, partyKey, "")
	msg := func(w *big.Int) tsslib.ParsedMessage {
		pf, err := modproof.NewProof([]byte("s"), pp.PaillierSK.N, pp.PaillierSK.P, pp.PaillierSK.Q, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if w != nil {
			pf.W = w
		}
		d1 := dlnproof.NewDLNProof(pp.H1i, pp.H2i, pp.Alpha, pp.P, pp.Q, pp.NTildei, rand.Reader)
		d2 := dlnproof.NewDLNProof(pp.H2i, pp.H1i, pp.Beta, pp.P, pp.Q, pp.NTildei, rand.Reader)
		m, err := resharing.NewDGRound2Message1(ids, ids[1], &pp.PaillierSK.PublicKey, pf, pp.NTildei, pp.H1i, pp.H2i, d1, d2)
		if err != nil {
			t.Fatal(err)
		}
		b, _, err := m.WireBytes()
		if err != nil {
			t.Fatal(err)
		}
		parsed, err := tsslib.ParseWireMessage(b, ids[1], true)
		if err != nil {
			t.Fatal(err)
		}
		return parsed
	}
	var p resharePair
	if err := p.check(msg(nil)); err != nil {
		t.Fatalf("honest proof refused: %v", err)
	}
	if err := p.check(msg(new(big.Int).Mul(pp.PaillierSK.P, big.NewInt(3)))); err == nil || !strings.Contains(err.Error(), "not coprime") {
		t.Fatalf("want refusal of W sharing a factor with N, got %v", err)
	}
}

// The old committee's rescaling gives each dealer the additive share tss-lib
// would compute from the real evaluation points: the dealers' w_i·G sum to
// the public key (checked on points, so the test never forms the secret).
func TestOldCommitteeRescaling(t *testing.T) {
	shares := fixtureShares(t, 1, 3)
	pub := shares[0].PublicKey()
	for _, quorum := range [][]string{{"a", "b"}, {"a", "c"}, {"a", "b", "c"}} {
		var sum *crypto.ECPoint
		for _, n := range quorum {
			in, _, err := oldCommitteeShare(sharesByName(shares)[n], quorum)
			if err != nil {
				t.Fatal(err)
			}
			i := slices.IndexFunc(in.Ks, func(k *big.Int) bool { return k.Cmp(in.ShareID) == 0 })
			lr, err := lagrangeAtZero(i, in.Ks)
			if err != nil {
				t.Fatal(err)
			}
			w := crypto.ScalarBaseMult(curve, new(big.Int).Mod(new(big.Int).Mul(in.Xi, lr), curve.Params().N))
			if sum == nil {
				sum = w
			} else if sum, err = sum.Add(w); err != nil {
				t.Fatal(err)
			}
		}
		if sum.X().Cmp(pub.X) != 0 || sum.Y().Cmp(pub.Y) != 0 {
			t.Fatalf("quorum %v: rescaled shares do not add up to the key", quorum)
		}
	}
}

// A new member that never answers: the others' sessions end naming it,
// and the dealers' shares are untouched, so the key still works with them.
func TestReshareSilentMemberBlamed(t *testing.T) {
	old := fixtureShares(t, 1, 2)
	before := []*big.Int{new(big.Int).Set(old[0].data.Xi), new(big.Int).Set(old[1].data.Xi)}
	cfg := ReshareConfig{PublicKey: old[0].PublicKey(), OldParties: []string{"a", "b"}, OldThreshold: 1, NewParties: []string{"a", "b", "c"}, NewThreshold: 1}
	net := newMemnet()
	net.join("c", deliverFunc(func(string, bool, []byte) error { return nil })) // c swallows everything
	sessions := map[string]*ReshareSession{}
	for i, n := range []string{"a", "b"} {
		s, err := NewReshareSession(cfg, n, old[i], testPreParams(t, i), net.outbox(n))
		if err != nil {
			t.Fatal(err)
		}
		s.SetStallTimeout(3 * time.Second)
		sessions[n] = s
		net.join(n, s)
	}
	_, err := runReshareSessions(t, sessions)
	// Every session ends blaming c. On a loaded machine an honest member
	// still busy with its proofs may be named beside it (a stall bound
	// cannot tell slow from silent), but never instead of it.
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok || len(joined.Unwrap()) != 2 {
		t.Fatalf("want both sessions to fail, got %v", err)
	}
	for _, e := range joined.Unwrap() {
		var se *SessionError
		if !errors.As(e, &se) || !slices.Contains(se.Culprits, "c") || se.Kind != "reshare" {
			t.Fatalf("want a reshare error blaming c, got %v", e)
		}
	}
	t.Log(err)
	for i, s := range old {
		if s.data.Xi.Cmp(before[i]) != 0 {
			t.Fatalf("%s's share changed in a failed resharing", s.Self)
		}
	}
}
