package node

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/internal/pki"
	"github.com/tkeyless/tkeyless/tss"
)

// TestEchoRules: in a session of three or more, a broadcast reaches the
// party only once every other member echoed the same one, with the
// origin's signature. Two different broadcasts signed by the origin
// convict the origin; an echo that does not carry the origin's signature
// convicts the echoer; an echo that does not fit the session is refused
// and convicts no one. Node b receives; a is the origin, c the echoer.
func TestEchoRules(t *testing.T) {
	c := newTestCluster(t, []string{"a", "b", "c"})
	b := c.nodes["b"]
	ident := func(name string) pki.Identity {
		return pki.Identity{Name: name, Role: pki.RoleNode, Cert: c.nodes[name].current().cert.Leaf}
	}
	m := newSignMessages()
	type fixture struct {
		s   *session
		p   *fakeParty
		env *peerwire.Envelope // a's round-3 broadcast, signed by a
	}
	newSession := func(t *testing.T, members ...string) fixture {
		p := &fakeParty{}
		s := &session{id: peerwire.NewSessionID(), kind: peerwire.KindSign, key: "k", members: members, coordinator: "a", party: p}
		if err := b.sessions.add(s); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.sessions.abort(s.id) })
		env := envelopeOf(t, s.id, peerwire.KindSign, "k", m.r3)
		if err := c.nodes["a"].signBroadcast(env); err != nil {
			t.Fatal(err)
		}
		return fixture{s, p, env}
	}
	// echo is what echoer says it received from origin: hash signed by
	// signer (the origin, if honest) with signer's certificate attached.
	echo := func(f fixture, origin, signer string, hash []byte) *peerwire.Echo {
		sig, err := c.nodes[signer].signWithNodeKey(peerwire.BroadcastDigest(f.s.id, origin, f.env.Type, f.env.Round, hash))
		if err != nil {
			t.Fatal(err)
		}
		return &peerwire.Echo{Version: peerwire.Version, Session: f.s.id, Origin: origin, Type: f.env.Type, Round: f.env.Round,
			Hash: hash, Sig: sig, OriginCert: c.nodes[signer].current().cert.Leaf.Raw}
	}
	hashOf := func(f fixture) []byte { h := sha256.Sum256(f.env.Payload); return h[:] }
	other := sha256.Sum256([]byte("another broadcast"))

	t.Run("a broadcast waits for the other members' echoes", func(t *testing.T) {
		f := newSession(t, "a", "b", "c")
		if err := b.deliver(ident("a"), f.env); err != nil {
			t.Fatal(err)
		}
		if d, _ := f.p.counts(); d != 0 {
			t.Fatal("the broadcast reached the party before c echoed it")
		}
		if err := b.handleEcho(ident("c"), echo(f, "a", "a", hashOf(f))); err != nil {
			t.Fatal(err)
		}
		if d, a := f.p.counts(); d != 1 || a != 0 {
			t.Fatalf("after c's echo: %d delivered, %d aborts; want the broadcast once", d, a)
		}
	})
	t.Run("an echo before the broadcast releases it on arrival", func(t *testing.T) {
		f := newSession(t, "a", "b", "c")
		if err := b.handleEcho(ident("c"), echo(f, "a", "a", hashOf(f))); err != nil {
			t.Fatal(err)
		}
		if d, _ := f.p.counts(); d != 0 {
			t.Fatal("an echo alone reached the party")
		}
		if err := b.deliver(ident("a"), f.env); err != nil {
			t.Fatal(err)
		}
		if d, _ := f.p.counts(); d != 1 {
			t.Fatal("the echoed broadcast did not reach the party")
		}
	})
	t.Run("in a session of two a broadcast needs no echo", func(t *testing.T) {
		f := newSession(t, "a", "b")
		f.env.Sig = nil
		if err := b.deliver(ident("a"), f.env); err != nil {
			t.Fatal(err)
		}
		if d, _ := f.p.counts(); d != 1 {
			t.Fatal("the broadcast did not reach the party")
		}
	})
	t.Run("an unsigned broadcast is refused, its sender blamed, not convicted", func(t *testing.T) {
		f := newSession(t, "a", "b", "c")
		f.env.Sig = []byte("not a signature")
		if err := b.deliver(ident("a"), f.env); err == nil || !strings.Contains(err.Error(), "no valid signature") {
			t.Fatalf("deliver: %v", err)
		}
		e := f.p.lastAbort()
		if e == nil || !slices.Equal(e.Culprits, []string{"a"}) || len(e.Convicted) != 0 {
			t.Fatalf("session aborted with %+v; want a blamed, not convicted", e)
		}
	})
	t.Run("two signed versions of one broadcast convict the origin", func(t *testing.T) {
		f := newSession(t, "a", "b", "c")
		if err := b.deliver(ident("a"), f.env); err != nil {
			t.Fatal(err)
		}
		if err := b.handleEcho(ident("c"), echo(f, "a", "a", other[:])); err == nil || !strings.Contains(err.Error(), "equivocated") {
			t.Fatalf("an echo of a different signed broadcast: %v", err)
		}
		e := f.p.lastAbort()
		if e == nil || !slices.Equal(e.Convicted, []string{"a"}) || !errors.Is(e, tss.ErrMisbehaved) {
			t.Fatalf("session aborted with %+v; want a convicted", e)
		}
		if d, _ := f.p.counts(); d != 0 {
			t.Fatal("an equivocated broadcast reached the party")
		}
	})
	// The signature a's broadcast itself carried, forwarded as it came: b
	// checked it on arrival and need not again, but only for that hash
	// under that certificate.
	// secondA is another valid certificate of node a (as during a
	// rotation), with a key of its own.
	certPath, _, err := c.ca.IssueIdentity(t.TempDir(), "a", pki.RoleNode, nil)
	if err != nil {
		t.Fatal(err)
	}
	pemBytes, err := os.ReadFile(certPath)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(pemBytes)
	secondA, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	asReceived := func(f fixture) *peerwire.Echo {
		e := echo(f, "a", "a", hashOf(f))
		e.Sig = f.env.Sig
		return e
	}
	t.Run("an echo of the broadcast as received releases it", func(t *testing.T) {
		f := newSession(t, "a", "b", "c")
		if err := b.deliver(ident("a"), f.env); err != nil {
			t.Fatal(err)
		}
		if err := b.handleEcho(ident("c"), asReceived(f)); err != nil {
			t.Fatal(err)
		}
		if d, a := f.p.counts(); d != 1 || a != 0 {
			t.Fatalf("%d delivered, %d aborts; want the broadcast once", d, a)
		}
	})
	t.Run("a broadcast whose signature came first in an echo is released", func(t *testing.T) {
		f := newSession(t, "a", "b", "c")
		if err := b.handleEcho(ident("c"), asReceived(f)); err != nil {
			t.Fatal(err)
		}
		if err := b.deliver(ident("a"), f.env); err != nil {
			t.Fatal(err)
		}
		if d, a := f.p.counts(); d != 1 || a != 0 {
			t.Fatalf("%d delivered, %d aborts; want the broadcast once", d, a)
		}
	})
	t.Run("after an echo, an unsigned broadcast is still refused", func(t *testing.T) {
		f := newSession(t, "a", "b", "c")
		if err := b.handleEcho(ident("c"), asReceived(f)); err != nil {
			t.Fatal(err)
		}
		f.env.Sig = append(append([]byte{}, f.env.Sig[:len(f.env.Sig)-1]...), f.env.Sig[len(f.env.Sig)-1]^1)
		if err := b.deliver(ident("a"), f.env); err == nil || !strings.Contains(err.Error(), "no valid signature") {
			t.Fatalf("deliver: %v", err)
		}
		if d, _ := f.p.counts(); d != 0 {
			t.Fatal("the broadcast reached the party")
		}
	})
	for _, tc := range []struct {
		name string
		echo func(f fixture) *peerwire.Echo
		// delivered: b has a's broadcast, and checked its signature,
		// before the echo comes.
		delivered bool
	}{
		{"an echo the origin did not sign convicts the echoer", func(f fixture) *peerwire.Echo { return echo(f, "a", "c", hashOf(f)) }, false},
		{"an echo with a signature over another hash convicts the echoer", func(f fixture) *peerwire.Echo {
			e := echo(f, "a", "a", other[:])
			e.Hash = hashOf(f)
			return e
		}, false},
		{"an echo with a certificate not from the cluster CA convicts the echoer", func(f fixture) *peerwire.Echo {
			e := echo(f, "a", "a", hashOf(f))
			e.OriginCert = []byte("not a certificate")
			return e
		}, false},
		{"after the broadcast, an echo the origin did not sign convicts the echoer", func(f fixture) *peerwire.Echo { return echo(f, "a", "c", hashOf(f)) }, true},
		{"after the broadcast, the origin's signature with another certificate convicts the echoer", func(f fixture) *peerwire.Echo {
			e := asReceived(f)
			e.OriginCert = c.nodes["c"].current().cert.Leaf.Raw
			return e
		}, true},
		{"after the broadcast, the origin's signature with another certificate of the origin's convicts the echoer", func(f fixture) *peerwire.Echo {
			e := asReceived(f)
			e.OriginCert = secondA.Raw
			return e
		}, true},
		{"after the broadcast, the origin's signature with a certificate not from the cluster CA convicts the echoer", func(f fixture) *peerwire.Echo {
			e := asReceived(f)
			e.OriginCert = []byte("not a certificate")
			return e
		}, true},
		{"after the broadcast, the origin's signature cut short convicts the echoer", func(f fixture) *peerwire.Echo {
			e := asReceived(f)
			e.Sig = e.Sig[:len(e.Sig)-1]
			return e
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newSession(t, "a", "b", "c")
			if tc.delivered {
				if err := b.deliver(ident("a"), f.env); err != nil {
					t.Fatal(err)
				}
			}
			if err := b.handleEcho(ident("c"), tc.echo(f)); err == nil {
				t.Fatal("accepted")
			}
			e := f.p.lastAbort()
			if e == nil || !slices.Equal(e.Convicted, []string{"c"}) || !errors.Is(e, tss.ErrMisbehaved) {
				t.Fatalf("session aborted with %+v; want c convicted", e)
			}
		})
	}
	for _, tc := range []struct {
		name   string
		caller string
		change func(f fixture, e *peerwire.Echo)
		want   string
	}{
		{"another protocol version", "c", func(_ fixture, e *peerwire.Echo) { e.Version++ }, "echo version"},
		{"an unknown session", "c", func(_ fixture, e *peerwire.Echo) { e.Session = peerwire.NewSessionID() }, "unknown session"},
		{"an echoer that is not a member", "d", nil, "does not fit members"},
		{"an echo of its own broadcast", "a", nil, "does not fit members"},
		{"an echo about the receiving node", "c", func(_ fixture, e *peerwire.Echo) { e.Origin = "b" }, "does not fit members"},
		{"a type that is not a broadcast", "c", func(_ fixture, e *peerwire.Echo) { e.Type = m.r1p2p.Type(); e.Round = 1 }, "not a broadcast of this session"},
		{"a made-up type", "c", func(_ fixture, e *peerwire.Echo) { e.Type += "-1" }, "not a broadcast of this session"},
		{"a round the type does not have", "c", func(_ fixture, e *peerwire.Echo) { e.Round = 4 }, "not a broadcast of this session"},
		{"a hash that is no SHA-256", "c", func(_ fixture, e *peerwire.Echo) { e.Hash = e.Hash[:8] }, "not a broadcast of this session"},
	} {
		t.Run("refused without conviction: "+tc.name, func(t *testing.T) {
			f := newSession(t, "a", "b", "c")
			e := echo(f, "a", "a", hashOf(f))
			if tc.change != nil {
				tc.change(f, e)
			}
			id := ident("c")
			id.Name = tc.caller
			if err := b.handleEcho(id, e); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("handleEcho: %v, want a refusal saying %q", err, tc.want)
			}
			if _, a := f.p.counts(); a != 0 {
				t.Fatalf("the session was aborted: %+v", f.p.lastAbort())
			}
		})
	}
	t.Run("refused without conviction: the same echo twice", func(t *testing.T) {
		f := newSession(t, "a", "b", "c", "d")
		e := echo(f, "a", "a", hashOf(f))
		if err := b.handleEcho(ident("c"), e); err != nil {
			t.Fatal(err)
		}
		if err := b.handleEcho(ident("c"), e); err == nil || !strings.Contains(err.Error(), "duplicate echo") {
			t.Fatalf("the same echo again: %v", err)
		}
		if _, a := f.p.counts(); a != 0 {
			t.Fatal("the session was aborted")
		}
	})
}
