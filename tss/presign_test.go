package tss

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// presignAll runs the offline rounds for a quorum in memory and returns
// each member's ready session, by name. life bounds the presignature;
// stall is asked at every wait, so a test may tighten it once ready.
func presignAll(t testing.TB, life context.Context, quorum []*Share, stall func() time.Duration) map[string]*PresignSession {
	t.Helper()
	var names []string
	for _, s := range quorum {
		names = append(names, s.Self)
	}
	net := newMemnet()
	sessions := map[string]*PresignSession{}
	for _, sh := range quorum {
		s, err := NewPresignSession(sh, names, net.outbox(sh.Self))
		if err != nil {
			t.Fatal(err)
		}
		s.SetStallFunc(stall)
		sessions[sh.Self] = s
		net.join(sh.Self, s)
	}
	for _, s := range sessions {
		s.Start(life)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for n, s := range sessions {
		if err := s.WaitReady(ctx); err != nil {
			t.Fatalf("presign on %s: %v", n, err)
		}
	}
	return sessions
}

func fixedStall(d time.Duration) func() time.Duration { return func() time.Duration { return d } }

// finishAll finishes every member's session with digest, in parallel.
func finishAll(ctx context.Context, sessions map[string]*PresignSession, digest []byte) (map[string][]byte, map[string]error) {
	var mu sync.Mutex
	sigs, errs := map[string][]byte{}, map[string]error{}
	var wg sync.WaitGroup
	for n, s := range sessions {
		wg.Go(func() {
			sig, err := s.Finish(ctx, digest)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs[n] = err
			} else {
				sigs[n] = sig
			}
		})
	}
	wg.Wait()
	return sigs, errs
}

// Presign, then finish with each digest size, for every (t, n): every
// member ends with the same valid signature.
func TestPresignThenFinish(t *testing.T) {
	for _, ts := range thresholdSets {
		shares := fixtureShares(t, ts.t, ts.n)[:ts.t+1]
		for hash, d := range digests() {
			t.Run(fmt.Sprintf("t%d-n%d/%s", ts.t, ts.n, hash), func(t *testing.T) {
				sessions := presignAll(t, context.Background(), shares, fixedStall(10*time.Second))
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				sigs, errs := finishAll(ctx, sessions, d)
				if len(errs) > 0 {
					t.Fatal(errs)
				}
				for n, sig := range sigs {
					if !ecdsa.VerifyASN1(shares[0].PublicKey(), d, sig) {
						t.Fatalf("%s: signature does not verify", n)
					}
				}
				// Used once, on every node.
				for n, s := range sessions {
					if _, err := s.Finish(ctx, d); !errors.Is(err, ErrPresignUsed) {
						t.Fatalf("%s: second finish: %v, want ErrPresignUsed", n, err)
					}
					if s.Ready() {
						t.Fatalf("%s: a used presignature says it is ready", n)
					}
				}
			})
		}
	}
}

// TestPresignDigestEntersAtRound5: a ready presignature's parties have
// sent round 4 and nothing later, hold no message and have not computed R;
// the signature Finish returns is over the digest it was given.
func TestPresignDigestEntersAtRound5(t *testing.T) {
	shares := fixtureShares(t, 1, 2)
	sessions := presignAll(t, context.Background(), shares, fixedStall(10*time.Second))
	for n, s := range sessions {
		// presignAll waited for every session to be ready: the party is
		// idle and its loop wrote what is read here before it said so.
		p := s.r.party.(*engineParty)
		if p.m != nil || p.bigR != nil || p.si != nil || !p.awaitingMessage() || s.SentRound() != 4 {
			t.Fatalf("%s: ready presignature has message %v, R %v, s_i %v, sent round %d", n, p.m, p.bigR, p.si, s.SentRound())
		}
	}
	d := digests()["SHA-256"]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sigs, errs := finishAll(ctx, sessions, d)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	zero := make([]byte, len(d))
	if !ecdsa.VerifyASN1(shares[0].PublicKey(), d, sigs["a"]) || ecdsa.VerifyASN1(shares[0].PublicKey(), zero, sigs["a"]) {
		t.Fatal("the signature is not over the digest given at Finish")
	}
}

// An expired presignature is refused, on every node, and signs nothing.
func TestPresignExpired(t *testing.T) {
	shares := fixtureShares(t, 1, 2)
	life, expire := context.WithCancel(context.Background())
	sessions := presignAll(t, life, shares, fixedStall(10*time.Second))
	expire()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, errs := finishAll(ctx, sessions, digests()["SHA-256"])
	for _, n := range []string{"a", "b"} {
		if !errors.Is(errs[n], ErrPresignExpired) {
			t.Fatalf("%s: finish after expiry: %v, want ErrPresignExpired", n, errs[n])
		}
	}
}

// Finish before the offline rounds are done is refused and destroys the
// presignature; a digest of the wrong size is refused too.
func TestPresignNotReady(t *testing.T) {
	shares := fixtureShares(t, 1, 2)
	s, err := NewPresignSession(shares[0], []string{"a", "b"}, OutboxFunc(func(context.Context, Outgoing) error { return nil }))
	if err != nil {
		t.Fatal(err)
	}
	s.Start(context.Background())
	if _, err := s.Finish(context.Background(), digests()["SHA-256"]); !errors.Is(err, ErrPresignNotReady) {
		t.Fatalf("finish before ready: %v", err)
	}
	if _, err := s.Finish(context.Background(), digests()["SHA-256"]); !errors.Is(err, ErrPresignUsed) {
		t.Fatalf("finish after a refused finish: %v", err)
	}
	s2, _ := NewPresignSession(shares[0], []string{"a", "b"}, OutboxFunc(func(context.Context, Outgoing) error { return nil }))
	if _, err := s2.Finish(context.Background(), make([]byte, 20)); err == nil {
		t.Fatal("accepted a 20-byte digest")
	}
}

// A quorum member loses its half between presign and finish (it
// restarted): the others' Finish fails fast naming it, and a full signing
// with another quorum signs within the same deadline.
func TestPresignMemberLost(t *testing.T) {
	shares := fixtureShares(t, 1, 3)
	// The offline rounds get a loaded machine's slack; once both halves
	// are ready, a's wait for b at finish is bounded tightly.
	var stall atomic.Int64
	stall.Store(int64(30 * time.Second))
	sessions := presignAll(t, context.Background(), shares[:2], func() time.Duration { return time.Duration(stall.Load()) })
	stall.Store(int64(500 * time.Millisecond))
	sessions["b"].Abort(&SessionError{Err: errors.New("node restarted")})
	d := digests()["SHA-256"]
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := sessions["a"].Finish(ctx, d)
	var se *SessionError
	if !errors.As(err, &se) || len(se.Culprits) != 1 || se.Culprits[0] != "b" {
		t.Fatalf("finish without b: %v, want a stall naming b", err)
	}
	sig, err := runSign(t, []*Share{shares[0], shares[2]}, d, nil)
	if err != nil || !ecdsa.VerifyASN1(shares[0].PublicKey(), d, sig) {
		t.Fatalf("full signing with a and c: %v", err)
	}
	if ctx.Err() != nil {
		t.Fatal("the fallback did not fit in the deadline")
	}
}
