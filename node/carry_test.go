package node

import (
	"context"
	"crypto/sha256"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bnb-chain/tss-lib/v2/ecdsa/signing"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/internal/pki"
	"github.com/tkeyless/tkeyless/tss"
)

// carriedEnvelope is from's envelope of a signing message in session id,
// labelled as the payload says. The payload is only ever inspected here
// (the test's party does not parse it), so an empty message of the type
// will do.
func carriedEnvelope(t *testing.T, id peerwire.SessionID, from string, msg proto.Message) *peerwire.Envelope {
	t.Helper()
	a, err := anypb.New(msg)
	if err != nil {
		t.Fatal(err)
	}
	payload, err := proto.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	typ := string(proto.MessageName(msg))
	return &peerwire.Envelope{Version: peerwire.Version, Session: id, Kind: peerwire.KindSign, Key: "k", From: from,
		Round: tss.RoundOf(typ), Type: typ, Broadcast: true, Payload: payload}
}

// TestCarriedEchoRules: in a session prepared with CarryEchoes, a
// broadcast of round 5 or later reaches the party on arrival; this node's
// echo of it goes to each third member with its next round's envelope;
// a send of round r waits until the broadcasts of rounds 5 to r−2 were
// echoed identically by every other member. Equivocation and lying echoes
// convict exactly as with Echo calls. Node b receives; a is the origin, c
// the echoer.
func TestCarriedEchoRules(t *testing.T) {
	c := newTestCluster(t, []string{"a", "b", "c"})
	b := c.nodes["b"]
	ident := func(name string) pki.Identity {
		return pki.Identity{Name: name, Role: pki.RoleNode, Cert: c.nodes[name].current().cert.Leaf}
	}
	type fixture struct {
		s  *session
		p  *fakeParty
		a5 *peerwire.Envelope // a's round-5 broadcast, signed by a
		c6 *peerwire.Envelope // c's round-6 broadcast, signed by c, carrying no echo yet
	}
	signed := func(t *testing.T, env *peerwire.Envelope) *peerwire.Envelope {
		if err := c.nodes[env.From].signBroadcast(env); err != nil {
			t.Fatal(err)
		}
		return env
	}
	newSession := func(t *testing.T, carry bool) fixture {
		p := &fakeParty{}
		s := &session{id: peerwire.NewSessionID(), kind: peerwire.KindSign, key: "k", members: []string{"a", "b", "c"}, coordinator: "a", party: p, carry: carry}
		if err := b.sessions.add(s); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.sessions.abort(s.id) })
		return fixture{s, p,
			signed(t, carriedEnvelope(t, s.id, "a", &signing.SignRound5Message{Commitment: []byte{5}})),
			signed(t, carriedEnvelope(t, s.id, "c", &signing.SignRound6Message{DeCommitment: [][]byte{{6}}}))}
	}
	// echoOf is c's echo of a's round-5 broadcast, with a's signature over
	// hash made by signer.
	echoOf := func(f fixture, signer string, hash []byte) peerwire.Echo {
		sig, err := c.nodes[signer].signWithNodeKey(peerwire.BroadcastDigest(f.s.id, "a", f.a5.Type, f.a5.Round, hash))
		if err != nil {
			t.Fatal(err)
		}
		return peerwire.Echo{Version: peerwire.Version, Session: f.s.id, Origin: "a", Type: f.a5.Type, Round: f.a5.Round,
			Hash: hash, Sig: sig, OriginCert: c.nodes[signer].current().cert.Leaf.Raw}
	}
	hashOf := func(env *peerwire.Envelope) []byte { h := sha256.Sum256(env.Payload); return h[:] }
	other := sha256.Sum256([]byte("another broadcast"))
	// awaitRound7 is b's send of round 7 waiting, at most d, for the
	// echoes of round 5.
	awaitRound7 := func(f fixture, d time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		return b.awaitEchoes(ctx, f.s, 5)
	}

	t.Run("a carried broadcast reaches the party at once, its echo owed to the third member", func(t *testing.T) {
		f := newSession(t, true)
		if err := b.deliver(ident("a"), f.a5); err != nil {
			t.Fatal(err)
		}
		if d, _ := f.p.counts(); d != 1 {
			t.Fatal("the carried broadcast did not reach the party on arrival")
		}
		if got := f.s.takeOwed("a", 5); len(got) != 0 {
			t.Fatalf("echoes owed to the origin itself: %+v", got)
		}
		got := f.s.takeOwed("c", 5)
		if len(got) != 1 || got[0].Origin != "a" || string(got[0].Hash) != string(hashOf(f.a5)) || string(got[0].Sig) != string(f.a5.Sig) {
			t.Fatalf("owed to c: %+v; want b's echo of a's round 5", got)
		}
		if again := f.s.takeOwed("c", 5); len(again) != 0 {
			t.Fatal("an owed echo was handed out twice")
		}
	})
	t.Run("round 7 waits for every echo of round 5, and goes once it came on round 6", func(t *testing.T) {
		f := newSession(t, true)
		if err := b.deliver(ident("a"), f.a5); err != nil {
			t.Fatal(err)
		}
		if err := awaitRound7(f, 50*time.Millisecond); err == nil || !strings.Contains(err.Error(), "no echo of rounds 5 to 5 from [c]") {
			t.Fatalf("round 7 without c's echo of round 5: %v", err)
		}
		if e := f.p.lastAbort(); e == nil || !slices.Equal(e.Culprits, []string{"c"}) || len(e.Convicted) != 0 {
			t.Fatalf("session aborted with %+v; want c blamed, not convicted", e)
		}
		f = newSession(t, true)
		if err := b.deliver(ident("a"), f.a5); err != nil {
			t.Fatal(err)
		}
		waited := make(chan error, 1)
		go func() { waited <- awaitRound7(f, 10*time.Second) }()
		f.c6.Echoes = []peerwire.Echo{echoOf(f, "a", hashOf(f.a5))}
		if err := b.deliver(ident("c"), f.c6); err != nil {
			t.Fatal(err)
		}
		if err := <-waited; err != nil {
			t.Fatalf("round 7 after c's echo: %v", err)
		}
		if d, a := f.p.counts(); d != 2 || a != 0 {
			t.Fatalf("%d delivered, %d aborts; want a's and c's broadcasts", d, a)
		}
	})
	t.Run("an echo carried before the broadcast counts when it arrives", func(t *testing.T) {
		f := newSession(t, true)
		f.c6.Echoes = []peerwire.Echo{echoOf(f, "a", hashOf(f.a5))}
		if err := b.deliver(ident("c"), f.c6); err != nil {
			t.Fatal(err)
		}
		if err := b.deliver(ident("a"), f.a5); err != nil {
			t.Fatal(err)
		}
		if err := awaitRound7(f, time.Second); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("a carried echo of another signed broadcast convicts the origin", func(t *testing.T) {
		f := newSession(t, true)
		if err := b.deliver(ident("a"), f.a5); err != nil {
			t.Fatal(err)
		}
		f.c6.Echoes = []peerwire.Echo{echoOf(f, "a", other[:])}
		if err := b.deliver(ident("c"), f.c6); err == nil || !strings.Contains(err.Error(), "equivocated") {
			t.Fatalf("an echo of a different signed broadcast: %v", err)
		}
		if e := f.p.lastAbort(); e == nil || !slices.Equal(e.Convicted, []string{"a"}) || !errors.Is(e, tss.ErrMisbehaved) {
			t.Fatalf("session aborted with %+v; want a convicted", e)
		}
		if err := awaitRound7(f, time.Second); err == nil || !strings.Contains(err.Error(), "different broadcasts") {
			t.Fatalf("round 7 after an equivocation: %v", err)
		}
	})
	t.Run("a carried echo the origin did not sign convicts the echoer", func(t *testing.T) {
		f := newSession(t, true)
		if err := b.deliver(ident("a"), f.a5); err != nil {
			t.Fatal(err)
		}
		f.c6.Echoes = []peerwire.Echo{echoOf(f, "c", hashOf(f.a5))}
		if err := b.deliver(ident("c"), f.c6); err == nil {
			t.Fatal("accepted")
		}
		if e := f.p.lastAbort(); e == nil || !slices.Equal(e.Convicted, []string{"c"}) || !errors.Is(e, tss.ErrMisbehaved) {
			t.Fatalf("session aborted with %+v; want c convicted", e)
		}
	})
	for _, tc := range []struct {
		name   string
		carry  bool
		change func(f fixture, e *peerwire.Echo)
		want   string
	}{
		{"an echo in a session that does not carry them", false, nil, "does not belong there"},
		{"an echo of the envelope's own round", true, func(f fixture, _ *peerwire.Echo) {
			*f.c6 = *signed(t, carriedEnvelope(t, f.s.id, "c", &signing.SignRound5Message{Commitment: []byte{7}}))
		}, "does not belong there"},
		{"an echo of a round before the last", true, func(_ fixture, e *peerwire.Echo) {
			e.Round, e.Type = 4, string(proto.MessageName(&signing.SignRound4Message{}))
		}, "does not belong there"},
		{"an echo of another session", true, func(_ fixture, e *peerwire.Echo) { e.Session = peerwire.NewSessionID() }, "does not belong there"},
		{"an echo about the receiving node", true, func(_ fixture, e *peerwire.Echo) { e.Origin = "b" }, "does not fit members"},
		{"an echo of the echoer's own broadcast", true, func(_ fixture, e *peerwire.Echo) { e.Origin = "c" }, "does not fit members"},
	} {
		t.Run("refused without conviction: "+tc.name, func(t *testing.T) {
			f := newSession(t, tc.carry)
			e := echoOf(f, "a", hashOf(f.a5))
			if tc.change != nil {
				tc.change(f, &e)
			}
			f.c6.Echoes = []peerwire.Echo{e}
			if err := b.deliver(ident("c"), f.c6); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("deliver: %v, want a refusal saying %q", err, tc.want)
			}
			if d, a := f.p.counts(); d != 0 || a != 0 {
				t.Fatalf("%d delivered, %d aborts; want neither", d, a)
			}
		})
	}
	t.Run("refused without conviction: an Echo call of a carried round", func(t *testing.T) {
		f := newSession(t, true)
		e := echoOf(f, "a", hashOf(f.a5))
		if err := b.handleEcho(ident("c"), &e); err == nil || !strings.Contains(err.Error(), "carries it on the next round's envelopes") {
			t.Fatalf("handleEcho: %v", err)
		}
		if _, a := f.p.counts(); a != 0 {
			t.Fatal("the session was aborted")
		}
	})
	t.Run("without carry, round 5 still waits for an Echo call", func(t *testing.T) {
		f := newSession(t, false)
		if err := b.deliver(ident("a"), f.a5); err != nil {
			t.Fatal(err)
		}
		if d, _ := f.p.counts(); d != 0 {
			t.Fatal("a broadcast of a session without carry reached the party before its echo")
		}
		e := echoOf(f, "a", hashOf(f.a5))
		if err := b.handleEcho(ident("c"), &e); err != nil {
			t.Fatal(err)
		}
		if d, _ := f.p.counts(); d != 1 {
			t.Fatal("the echoed broadcast did not reach the party")
		}
	})
}

// TestCarriedEchoesInCluster: (2,3) signatures, full and presigned, carry
// the echoes of rounds 5–9 on envelopes between version-4 nodes, and go
// back to Echo calls when the coordinator does not ask for carrying (as a
// version-3 coordinator would not); the envelopes travel on the links'
// Deliveries streams. Each signature verifies either way (c.sign checks
// it).
func TestCarriedEchoesInCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("runs (2,3) presignatures and signatures")
	}
	// echoDelta runs sign on cluster c and returns how many echoes its
	// nodes accepted by call and carried on envelopes meanwhile. Each node
	// needs every echo it counts before its party finishes, so all have
	// arrived when the signature is back.
	echoDelta := func(c *testCluster, sign func() error) (calls, carried float64) {
		t.Helper()
		total := func(via string) (sum float64) {
			for _, n := range c.nodes {
				sum += metricValue(t, n, "tkeyless_signer_echoes_total", "via", via)
			}
			return sum
		}
		calls, carried = total("call"), total("envelope")
		if err := sign(); err != nil {
			t.Fatal(err)
		}
		return total("call") - calls, total("envelope") - carried
	}
	// Per round, each of the three nodes accepts the other two members'
	// echoes of the third's broadcast: 6. The full way echoes rounds 1, 3
	// and 4 by call and carries those of 5–8 on rounds 6–9's envelopes
	// (round 9's need no echo); without carrying, rounds 1 and 3–9 go by
	// call.
	t.Run("full", func(t *testing.T) {
		c := newTestCluster(t, []string{"a", "b", "c"})
		c.keygen(2)
		if calls, carried := echoDelta(c, func() error { return c.sign("a", "carried, full") }); calls != 3*6 || carried != 4*6 {
			t.Fatalf("%v echo calls and %v carried echoes; want 18 and 24", calls, carried)
		}
		c.nodes["a"].noCarry.Store(true)
		if calls, carried := echoDelta(c, func() error { return c.sign("a", "not carried") }); calls != 8*6 || carried != 0 {
			t.Fatalf("without carry: %v echo calls and %v carried echoes; want 48 and 0", calls, carried)
		}
	})
	t.Run("presigned", func(t *testing.T) {
		c := newTestCluster(t, []string{"a", "b", "c"}, func(cfg *Config) {
			cfg.Presign = PresignConfig{Depth: 1, MaxAge: Duration(time.Hour)}
		})
		c.keygen(2)
		a := c.nodes["a"]
		// Every pool full, so that no refill's messages run beside the
		// request's (a refills only after a lull).
		waitFor(t, 5*time.Minute, "every pool fills", func() bool {
			for _, n := range c.nodes {
				if n.pool.depth(c.key) < 1 {
					return false
				}
			}
			return true
		})
		hits := metricValue(t, a, "tkeyless_signer_presign_total", "event", "hit")
		messages := func(via string) (sum float64) {
			for _, n := range c.nodes {
				sum += metricValue(t, n, "tkeyless_signer_peer_messages_total", "via", via)
			}
			return sum
		}
		streamed, called := messages("stream"), messages("call")
		// Only rounds 5–9 run, every echo carried.
		if calls, carried := echoDelta(c, func() error { return c.sign("a", "carried, presigned") }); calls != 0 || carried != 4*6 {
			t.Fatalf("%v echo calls and %v carried echoes; want 0 and 24", calls, carried)
		}
		// And every message of them on the links' Deliveries streams:
		// each node receives the other two's broadcast in each of 5 rounds.
		if s, c := messages("stream")-streamed, messages("call")-called; s != 5*6 || c != 0 {
			t.Fatalf("%v messages on streams, %v in calls; want 30 and 0", s, c)
		}
		if got := metricValue(t, a, "tkeyless_signer_presign_total", "event", "hit"); got != hits+1 {
			t.Fatal("the request did not use a presignature")
		}
	})
}
