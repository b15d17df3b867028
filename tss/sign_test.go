package tss

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"errors"
	"fmt"
	"testing"
	"time"
)

func mustPKIX(t testing.TB, s *Share) []byte {
	t.Helper()
	b, err := x509.MarshalPKIXPublicKey(s.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var thresholdSets = []struct{ t, n int }{{1, 2}, {1, 3}, {2, 3}}

func digests() map[string][]byte {
	msg := []byte("tkeyless CertificateVerify test")
	d224 := sha256.Sum224(msg)
	d256 := sha256.Sum256(msg)
	d384 := sha512.Sum384(msg)
	d512 := sha512.Sum512(msg)
	return map[string][]byte{"SHA-224": d224[:], "SHA-256": d256[:], "SHA-384": d384[:], "SHA-512": d512[:]}
}

func TestKeygenAndSign(t *testing.T) {
	for _, ts := range thresholdSets {
		t.Run(fmt.Sprintf("t%d-n%d", ts.t, ts.n), func(t *testing.T) {
			shares := fixtureShares(t, ts.t, ts.n)
			pub := shares[0].PublicKey()
			for _, s := range shares[1:] {
				if !s.PublicKey().Equal(pub) {
					t.Fatalf("parties disagree on the public key")
				}
			}
			for name, d := range digests() {
				t.Run(name, func(t *testing.T) {
					quorum := shares[len(shares)-ts.t-1:]
					sig, err := runSign(t, quorum, d, nil)
					if err != nil {
						t.Fatal(err)
					}
					if !ecdsa.VerifyASN1(pub, d, sig) {
						t.Fatalf("signature does not verify with crypto/ecdsa")
					}
				})
			}
		})
	}
}

// Every quorum of a (1,3) key signs, not only the one the other test uses.
func TestEveryQuorumSigns(t *testing.T) {
	shares := fixtureShares(t, 1, 3)
	d := digests()["SHA-256"]
	for _, q := range [][]*Share{{shares[0], shares[1]}, {shares[0], shares[2]}, {shares[1], shares[2]}} {
		sig, err := runSign(t, q, d, nil)
		if err != nil {
			t.Fatalf("quorum %s,%s: %v", q[0].Self, q[1].Self, err)
		}
		if !ecdsa.VerifyASN1(shares[0].PublicKey(), d, sig) {
			t.Fatalf("quorum %s,%s: signature does not verify", q[0].Self, q[1].Self)
		}
	}
}

func TestSignRejectsBadRequests(t *testing.T) {
	shares := fixtureShares(t, 1, 3)
	ob := OutboxFunc(func(context.Context, Outgoing) error { return nil })
	for _, tc := range []struct {
		name   string
		quorum []string
		digest []byte
	}{
		{"short digest", []string{"a", "b"}, make([]byte, 20)},
		{"empty digest", []string{"a", "b"}, nil},
		{"quorum too small", []string{"a"}, make([]byte, 32)},
		{"quorum too large", []string{"a", "b", "c"}, make([]byte, 32)},
		{"stranger in quorum", []string{"a", "z"}, make([]byte, 32)},
		{"self not in quorum", []string{"b", "c"}, make([]byte, 32)},
		{"duplicate member", []string{"a", "a"}, make([]byte, 32)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewSignSession(shares[0], tc.quorum, tc.digest, ob); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

// A member that sends garbage is named as the culprit, and the honest
// member's session ends with an error rather than a hang or a panic.
func TestGarbageFromPeerNamesCulprit(t *testing.T) {
	shares := fixtureShares(t, 1, 2)
	net := newMemnet()
	net.tamper = func(from, to string, m Outgoing) []byte {
		if from == "b" {
			return []byte("\x0a\x03not a tss-lib message")
		}
		return m.Payload
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sa, err := NewSignSession(shares[0], []string{"a", "b"}, digests()["SHA-256"], net.outbox("a"))
	if err != nil {
		t.Fatal(err)
	}
	sb, err := NewSignSession(shares[1], []string{"a", "b"}, digests()["SHA-256"], net.outbox("b"))
	if err != nil {
		t.Fatal(err)
	}
	net.join("a", sa)
	net.join("b", sb)
	go func() { _, _ = sb.Run(ctx) }()
	_, err = sa.Run(ctx)
	var se *SessionError
	if !errors.As(err, &se) {
		t.Fatalf("want SessionError, got %v", err)
	}
	if len(se.Culprits) != 1 || se.Culprits[0] != "b" {
		t.Fatalf("culprits %v, want [b] (err: %v)", se.Culprits, err)
	}
}

// A member that never answers makes the session end at its deadline, naming
// whom it waited for.
func TestSilentPeerHitsDeadline(t *testing.T) {
	shares := fixtureShares(t, 1, 2)
	net := newMemnet()
	sa, err := NewSignSession(shares[0], []string{"a", "b"}, digests()["SHA-256"], net.outbox("a"))
	if err != nil {
		t.Fatal(err)
	}
	net.join("a", sa)
	net.join("b", deliverFunc(func(string, bool, []byte) error { return nil })) // b swallows everything
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = sa.Run(ctx)
	var se *SessionError
	if !errors.As(err, &se) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want deadline SessionError, got %v", err)
	}
	if len(se.Waiting) != 1 || se.Waiting[0] != "b" {
		t.Fatalf("waiting %v, want [b]", se.Waiting)
	}
	// A session that ends without a signature still zeroes its secrets.
	p, ok := sa.r.party.(*engineParty)
	if !ok {
		t.Fatalf("party is %T, want the engine", sa.r.party)
	}
	if p.k == nil || p.k.Sign() != 0 || p.gamma == nil || p.gamma.Sign() != 0 {
		t.Fatalf("k_i or γ_i left set after the session ended")
	}
}

type deliverFunc func(from string, broadcast bool, payload []byte) error

func (f deliverFunc) Deliver(from string, broadcast bool, payload []byte) error {
	return f(from, broadcast, payload)
}

func TestDeliverRefusesStrangers(t *testing.T) {
	shares := fixtureShares(t, 1, 3)
	s, err := NewSignSession(shares[0], []string{"a", "b"}, digests()["SHA-256"], OutboxFunc(func(context.Context, Outgoing) error { return nil }))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Deliver("c", true, []byte("x")); err == nil {
		t.Error("accepted a message from a non-member")
	}
	if err := s.Deliver("a", true, []byte("x")); err == nil {
		t.Error("accepted a message claiming to come from self")
	}
}
