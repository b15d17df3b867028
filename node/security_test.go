package node

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bnb-chain/tss-lib/v2/crypto/mta"
	"github.com/bnb-chain/tss-lib/v2/ecdsa/signing"
	tsslib "github.com/bnb-chain/tss-lib/v2/tss"

	"github.com/tkeyless/tkeyless/internal/authority"
	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/tss"
)

// TestSessionFlood: node a is compromised and floods b and c with Prepares
// of every kind. None may take the room b and c need to sign together: a
// ceremony needs an admin's statement (a's own signature, or a replayed
// statement, is refused), presignatures are held only within the member's
// own presign settings (never more than its depth per coordinator and key),
// and the sessions one coordinator may open are capped. Then b and c sign, as a quorum, as if nothing happened.
func TestSessionFlood(t *testing.T) {
	c := newTestCluster(t, []string{"a", "b", "c"}, func(cfg *Config) {
		cfg.MaxSessions = 16 // 8 per coordinator
		cfg.Presign = PresignConfig{Depth: 2, MaxAge: Duration(time.Minute)}
		// A legacy identity's requests carry no authority: the rogue can
		// open sign sessions at will, and only the cap stops it.
		cfg.Access = []Grant{{Identity: "edge", Keys: []string{"*"}, Legacy: true}}
	})
	kgAuth, err := c.admin.SignStatement(peerwire.KeygenStatement(1, []string{"a", "b", "c"}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := c.nodes["a"].Keygen(ctx, &peerwire.KeygenCeremonyRequest{Threshold: 1, Parties: []string{"a", "b", "c"}, Authority: kgAuth}); err != nil {
		t.Fatal(err)
	}
	c.key = c.nodes["a"].Keys()[0]
	c.halt("a") // from here on, "a" is the adversary holding a's identity
	forgedByNode, _ := c.identityOf("a").SignStatement(peerwire.KeygenStatement(1, []string{"a", "b", "c"}))

	refused := map[string]int{}
	accepted := map[string]int{}
	for _, honest := range []string{"b", "c"} {
		rogue := c.peerClient("a", honest)
		quorum := []string{"a", honest}
		for range 40 {
			for kind, pr := range map[string]*peerwire.PrepareRequest{
				"keygen":          {Kind: peerwire.KindKeygen, Keygen: &peerwire.KeygenRequest{Threshold: 1, Parties: []string{"a", "b", "c"}}},
				"keygen-by-node":  {Kind: peerwire.KindKeygen, Keygen: &peerwire.KeygenRequest{Threshold: 1, Parties: []string{"a", "b", "c"}, Authority: forgedByNode}},
				"keygen-replayed": {Kind: peerwire.KindKeygen, Keygen: &peerwire.KeygenRequest{Threshold: 1, Parties: []string{"a", "b", "c"}, Authority: kgAuth}},
				"reshare":         {Kind: peerwire.KindReshare, Reshare: &peerwire.ReshareRequest{Key: c.key.String(), OldParties: quorum, OldThreshold: 1, NewParties: []string{"a", "b", "c"}, NewThreshold: 1}},
				"presign":         {Kind: peerwire.KindPresign, Presign: &peerwire.PresignRequest{Key: c.key.String(), Quorum: quorum, TTL: time.Hour}},
				"sign":            {Kind: peerwire.KindSign, Sign: &peerwire.SignRequest{Key: c.key.String(), Quorum: quorum, Hash: "SHA-256", Digest: make([]byte, 32), Edge: "edge"}},
			} {
				pr.Version, pr.Session = peerwire.Version, peerwire.NewSessionID()
				if kind == "reshare" {
					share, _ := c.nodes[honest].share(c.key)
					pr.Reshare.PublicKey = mustPKIX(t, share)
				}
				if _, err := rogue.Prepare(ctx, pr); err != nil {
					refused[kind]++
				} else {
					accepted[kind]++
				}
			}
		}
	}
	t.Logf("accepted %v, refused %v", accepted, refused)
	for _, kind := range []string{"keygen", "keygen-by-node", "keygen-replayed", "reshare"} {
		if accepted[kind] != 0 {
			t.Errorf("%d %s Prepares from a node were accepted; a ceremony needs an admin's statement", accepted[kind], kind)
		}
	}
	// A coordinator asking for more presignatures than a member's depth
	// displaces its own oldest: the member never holds more than its depth.
	for _, honest := range []string{"b", "c"} {
		if _, _, held := c.nodes[honest].sessions.load("a", c.key.String()); held > 2 {
			t.Errorf("%s holds %d presignatures for a; its presign.depth is 2", honest, held)
		}
	}
	if accepted["sign"] > 2*8 {
		t.Errorf("b and c took %d sessions from a; max_sessions_per_peer is 8 each", accepted["sign"])
	}
	// What a's flood left on b and c: at most its presign.depth of halves
	// and its max_sessions_per_peer of sessions. (b and c also hold their
	// own and each other's presignature halves, made meanwhile whenever
	// they were idle: those are not a's.)
	for _, honest := range []string{"b", "c"} {
		fromA := c.nodes[honest].sessions.where(func(s *session) bool { return s.coordinator == "a" })
		if len(fromA) > 2+8 {
			kinds := map[peerwire.Kind]int{}
			for _, s := range fromA {
				kinds[s.kind]++
			}
			t.Errorf("%s holds %d sessions from a after the flood: %v", honest, len(fromA), kinds)
		}
	}
	// The honest quorum signs, whichever of it coordinates.
	for _, coord := range []string{"b", "c"} {
		if err := c.sign(coord, "after the flood, via "+coord); err != nil {
			t.Fatalf("quorum {b,c} via %s after a's flood: %v", coord, err)
		}
	}
}

// TestKillSwitchForgery: an admin disables a key after an edge compromise;
// node c, compromised, tries to turn it back on: an unsigned state dated
// year 9999, a state it signed with its own node key, a replay of the
// admin's older "enabled", a state for a key id that is not one, and a
// forged ping reply. Every node keeps the key disabled; the admin's later
// enable works.
func TestKillSwitchForgery(t *testing.T) {
	c := newTestCluster(t, []string{"a", "b", "c"})
	c.keygen(1)
	key := c.key.String()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	adminState := func(version uint64, disabled bool) peerwire.KeyState {
		st, err := c.admin.SignStatement(peerwire.KeyStateStatement(key, version, disabled))
		if err != nil {
			t.Fatal(err)
		}
		return peerwire.KeyState{Disabled: disabled, Version: version, Statement: st, Changed: time.Now()}
	}
	set := func(via string, st peerwire.KeyState) error {
		_, err := c.nodes[via].SetKeyState(ctx, "test", &peerwire.SetKeyStateRequest{Key: key, State: st, Propagate: true})
		return err
	}
	enabledV1 := adminState(1, false)
	if err := set("a", enabledV1); err != nil {
		t.Fatal(err)
	}
	if err := set("a", adminState(2, true)); err != nil {
		t.Fatal(err)
	}
	disabledEverywhere := func(t *testing.T) {
		t.Helper()
		for name, n := range c.nodes {
			if !n.keyDisabled(c.key) {
				t.Fatalf("node %s has the key enabled", name)
			}
		}
		if err := c.sign("a", "while disabled"); !errors.Is(err, ErrKeyDisabled) {
			t.Fatalf("signing while disabled: %v", err)
		}
	}
	disabledEverywhere(t)

	cNode, _ := c.identityOf("c").SignStatement(peerwire.KeyStateStatement(key, 99, false))
	forged := map[string]peerwire.KeyState{
		"unsigned, year 9999": {Disabled: false, Version: 1 << 62, Changed: time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)},
		"signed by node c":    {Disabled: false, Version: 99, Statement: cNode, Changed: time.Now()},
		"admin's old enable":  enabledV1,
		"version lifted":      {Disabled: false, Version: 3, Statement: enabledV1.Statement, Changed: time.Now()},
	}
	for name, st := range forged {
		t.Run(name, func(t *testing.T) {
			for _, victim := range []string{"a", "b"} {
				rogue := c.peerClient("c", victim)
				_, _ = rogue.SetKeyState(ctx, &peerwire.SetKeyStateRequest{Key: key, State: st, Propagate: true})
				// And as a ping reply, which every node adopts from.
				c.nodes[victim].adoptKeyStates("c", map[string]peerwire.KeyState{key: st})
			}
			disabledEverywhere(t)
		})
	}
	t.Run("not a key id", func(t *testing.T) {
		if _, err := c.peerClient("c", "a").SetKeyState(ctx, &peerwire.SetKeyStateRequest{Key: "../../etc", State: enabledV1}); err == nil {
			t.Fatal("a state for a malformed key id was accepted")
		}
	})
	// The admin's word still works, and reaches every node.
	if err := set("b", adminState(3, false)); err != nil {
		t.Fatal(err)
	}
	for name, n := range c.nodes {
		if n.keyDisabled(c.key) {
			t.Fatalf("node %s still has the key disabled after the admin's enable", name)
		}
	}
	if err := c.sign("a", "enabled again"); err != nil {
		t.Fatal(err)
	}
}

// TestDuplicateByContent: a member judges a peer's message by its payload,
// never by the envelope's labels. One payload sent under two labels is
// refused the second time (and under a label that is not its own, the
// first); and a Deliver and Echo loop of made-up labels and payloads
// leaves the session's buffers, and the node's heap, bounded.
func TestDuplicateByContent(t *testing.T) {
	c := newTestCluster(t, []string{"a", "b", "c"})
	c.keygen(2) // every signing session has all three: broadcasts are echoed
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	quorum := []string{"a", "b", "c"}
	d := sha256.Sum256([]byte("a session to deliver into"))
	req := c.signRequest(d[:])
	pr := &peerwire.PrepareRequest{Version: peerwire.Version, Session: peerwire.NewSessionID(), Kind: peerwire.KindSign,
		Sign: &peerwire.SignRequest{Key: c.key.String(), Quorum: quorum, Hash: "SHA-256", Digest: d[:], Edge: "edge", Authority: req.Authority}}
	a := c.peerClient("a", "b")
	if _, err := a.Prepare(ctx, pr); err != nil {
		t.Fatal(err)
	}
	s, err := c.nodes["b"].sessions.get(pr.Session)
	if err != nil {
		t.Fatal(err)
	}

	// A real round-1 MtA request from a to b (content made up, type real).
	ids := map[string]*tsslib.PartyID{}
	for _, n := range quorum {
		ids[n] = tsslib.NewPartyID(n, n, big.NewInt(int64(len(ids)+1)))
	}
	one := big.NewInt(1)
	msg := signing.NewSignRound1Message1(ids["b"], ids["a"], big.NewInt(7), &mta.RangeProofAlice{Z: one, U: one, W: one, S: one, S1: one, S2: one})
	payload, _, err := msg.WireBytes()
	if err != nil {
		t.Fatal(err)
	}
	env := func(typ string, round int, bcast bool, p []byte) *peerwire.Envelope {
		return &peerwire.Envelope{Version: peerwire.Version, Session: pr.Session, Kind: peerwire.KindSign, Key: c.key.String(),
			From: "a", Round: round, Type: typ, Broadcast: bcast, Payload: p}
	}
	r1 := msg.Type()
	r2 := "binance.tsslib.ecdsa.signing.SignRound2Message"
	if _, err := a.Deliver(ctx, env(r2, 2, false, payload)); err == nil || !strings.Contains(err.Error(), "but the payload is") {
		t.Fatalf("a round-1 payload labelled round 2: %v", err)
	}
	if _, err := a.Deliver(ctx, env(r1, 1, false, payload)); err != nil {
		t.Fatalf("the message under its own labels: %v", err)
	}
	if _, err := a.Deliver(ctx, env(r1, 1, false, payload)); err == nil || !strings.Contains(err.Error(), "duplicate") {
		t.Fatalf("the same payload again: %v", err)
	}
	if _, err := a.Deliver(ctx, env(r1, 1, true, payload)); err == nil {
		t.Fatal("the same payload again, labelled a broadcast, was accepted")
	}

	// A loop of made-up labels and payloads, and echoes of made-up
	// broadcasts (validly signed by their origin, as a compromised node
	// could), must leave nothing behind.
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	junk := make([]byte, 16<<10)
	cCert := c.nodes["c"].current().cert.Leaf.Raw
	for i := range 1500 {
		typ := fmt.Sprintf("binance.tsslib.ecdsa.signing.SignRound%dMessage-%d", i%9+1, i)
		_, _ = a.Deliver(ctx, env(typ, i%9+1, i%2 == 0, junk))
		// Echoes of broadcasts c really signed (as c, compromised too,
		// would): only the type is made up.
		h := sha256.Sum256([]byte(typ))
		sig, err := c.nodes["c"].signWithNodeKey(peerwire.BroadcastDigest(pr.Session, "c", typ, i%9+1, h[:]))
		if err != nil {
			t.Fatal(err)
		}
		_, _ = a.Echo(ctx, &peerwire.Echo{Version: peerwire.Version, Session: pr.Session, Origin: "c", Type: typ, Round: i%9 + 1, Hash: h[:], Sig: sig, OriginCert: cCert})
	}
	if _, err := c.nodes["b"].sessions.get(pr.Session); err != nil {
		t.Fatalf("the session expired during the loop; nothing was tested: %v", err)
	}
	s.mu.Lock()
	seen, tracked := len(s.seen), len(s.broadcasts)
	s.mu.Unlock()
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	grew := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("after 1500 made-up messages and echoes: %d messages seen, %d broadcasts tracked, heap grew %d KiB", seen, tracked, grew>>10)
	if seen != 1 || tracked != 0 {
		t.Fatalf("session buffers grew: %d messages seen (want 1), %d broadcasts tracked (want 0)", seen, tracked)
	}
	if grew > 8<<20 {
		t.Fatalf("heap grew %d MiB over the loop", grew>>20)
	}
}

// TestSplitCommit: a compromised coordinator runs a resharing and then
// tells b to commit and c to discard, hoping to leave b with a new share
// and c with an old one, which do not combine. c has confirmed, so it
// refuses the discard; b, committing, passes the commit on; c checks it
// and commits too. With a gone, b and c sign together.
func TestSplitCommit(t *testing.T) {
	c := newTestCluster(t, []string{"a", "b", "c"})
	c.keygen(1)
	before := map[string][]byte{}
	for _, n := range []string{"b", "c"} {
		s, _ := c.nodes[n].share(c.key)
		before[n] = s.Fingerprint()
	}
	tamperFinish = func(member string, req *peerwire.FinishReshareRequest) *peerwire.FinishReshareRequest {
		switch member {
		case "c":
			return &peerwire.FinishReshareRequest{Version: req.Version, Session: req.Session, Key: req.Key}
		case "a":
			return nil // the adversary keeps both shares, tells itself nothing
		}
		return req
	}
	defer func() { tamperFinish = nil }()
	parties := []string{"a", "b", "c"}
	auth, err := c.admin.SignStatement(peerwire.ReshareStatement(c.key.String(), parties, 1))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	resp, err := c.nodes["a"].Reshare(ctx, &peerwire.ReshareCeremonyRequest{Key: c.key.String(), NewParties: parties, NewThreshold: 1, Authority: auth})
	t.Logf("coordinator's view: %+v, %v", resp, err)
	tamperFinish = nil
	waitFor(t, 30*time.Second, "c learns the commit from b", func() bool {
		_, pending := c.nodes["c"].pending.get(c.key)
		return !pending
	})
	for _, n := range []string{"b", "c"} {
		s, _ := c.nodes[n].share(c.key)
		if slices.Equal(s.Fingerprint(), before[n]) {
			t.Fatalf("%s still holds its old share", n)
		}
	}
	c.halt("a")
	if err := c.sign("b", "b and c, after a split attempt"); err != nil {
		t.Fatalf("b and c cannot sign together: %v", err)
	}
}

// identityOf loads node name's own identity as an authority signer: what
// an adversary holding that node would sign with.
func (c *testCluster) identityOf(name string) *authority.Signer {
	c.t.Helper()
	pair, err := tls.LoadX509KeyPair(c.cfgs[name].TLS.Cert, c.cfgs[name].TLS.Key)
	if err != nil {
		c.t.Fatal(err)
	}
	return &authority.Signer{Cert: pair.Leaf, Key: pair.PrivateKey.(crypto.Signer)}
}

func mustPKIX(t testing.TB, s *tss.Share) []byte {
	t.Helper()
	b, err := x509.MarshalPKIXPublicKey(s.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestPresignRefillAfterDrain: disabling a key destroys its presignatures
// on every member, not only in the coordinators' pools, and a coordinator
// that lost its pool (here: restarted) refills at once, its stale halves on
// the members making room, instead of waiting out their lifetime.
func TestPresignRefillAfterDrain(t *testing.T) {
	c := newTestCluster(t, []string{"a", "b"}, func(cfg *Config) {
		cfg.Presign = PresignConfig{Depth: 2, MaxAge: Duration(time.Hour)}
	})
	c.keygen(1)
	full := func(name string) func() bool {
		return func() bool { return c.nodes[name].pool.depth(c.key) == 2 }
	}
	waitFor(t, time.Minute, "a's pool fills", full("a"))
	// a restarts: b still holds a's two old halves.
	c.restart("a")
	waitFor(t, time.Minute, "a's pool refills after a restart", full("a"))
	if _, _, held := c.nodes["b"].sessions.load("a", c.key.String()); held > 2 {
		t.Fatalf("b holds %d halves for a, over its depth", held)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := c.admin.SignStatement(peerwire.KeyStateStatement(c.key.String(), 1, true))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.nodes["a"].SetKeyState(ctx, "test", &peerwire.SetKeyStateRequest{Key: c.key.String(), Propagate: true,
		State: peerwire.KeyState{Disabled: true, Version: 1, Statement: st}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "every half of the disabled key is gone", func() bool {
		for _, n := range c.nodes {
			if _, _, a := n.sessions.load("a", c.key.String()); a > 0 {
				return false
			}
			if _, _, b := n.sessions.load("b", c.key.String()); b > 0 {
				return false
			}
		}
		return true
	})
}
