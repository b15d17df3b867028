package e2e

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloudflare/gokeyless/protocol"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/tkeyless/tkeyless/internal/authority"
	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/internal/pki"
	"github.com/tkeyless/tkeyless/keyless"
)

// compromised is a signer whose credentials the adversary holds: it speaks
// the peer protocol to the honest nodes as that node.
type compromised struct {
	name    string
	clients map[string]*peerwire.Client
}

func compromise(t *testing.T, c *cluster, name string) *compromised {
	t.Helper()
	pkiDir := filepath.Join(c.dir, "pki")
	adv := &compromised{name: name, clients: map[string]*peerwire.Client{}}
	for _, sn := range c.nodes {
		if sn.name == name {
			continue
		}
		tc, err := pki.MutualTLS(c.caPath, filepath.Join(pkiDir, name+".pem"), filepath.Join(pkiDir, name+"-key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		tc.ServerName = sn.name
		cc, err := grpc.NewClient(sn.peerAddr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		adv.clients[sn.name] = peerwire.NewClient(cc)
	}
	return adv
}

// prepare asks an honest node to join a signing session the adversary
// coordinates.
func (a *compromised) prepare(ctx context.Context, honest string, c *cluster, digest, auth []byte) (peerwire.SessionID, error) {
	id := peerwire.NewSessionID()
	_, err := a.clients[honest].Prepare(ctx, &peerwire.PrepareRequest{Version: peerwire.Version, Session: id, Kind: peerwire.KindSign,
		Sign: &peerwire.SignRequest{Key: c.keyID, Quorum: []string{a.name, honest}, Hash: "SHA-256", Digest: digest, Edge: "edge", Authority: auth}})
	return id, err
}

// edgeAuthority signs a request as the edge would: what a compromised
// signer sees when an edge's real request passes through it.
func edgeAuthority(t *testing.T, c *cluster, digest []byte) []byte {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(c.edgeCert, c.edgeKey)
	if err != nil {
		t.Fatal(err)
	}
	ski, _ := protocol.GetSKI(c.publicKey(t))
	a, err := (&authority.Signer{Cert: pair.Leaf, Key: pair.PrivateKey.(crypto.Signer)}).Sign(authority.Request{Op: byte(protocol.OpECDSASignSHA256), SKI: ski, Digest: digest})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestCompromisedSignerCannotSign runs a (1,3) cluster in which the
// adversary holds node c's identity (and its share) and tries to make the
// honest nodes a and b sign what no edge asked for.
func TestCompromisedSignerCannotSign(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	c := startCluster(t, 1, 3)
	adv := compromise(t, c, "c")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pub := c.publicKey(t).(*ecdsa.PublicKey)
	ski, _ := protocol.GetSKI(pub)

	// The edge's real path, with the authorities it sends recorded.
	edgeTLS, err := pki.MutualTLS(c.caPath, c.edgeCert, c.edgeKey)
	if err != nil {
		t.Fatal(err)
	}
	pair, _ := tls.LoadX509KeyPair(c.edgeCert, c.edgeKey)
	real := keyless.IdentityAuthority(pair)
	var sent [][]byte
	kc, err := keyless.NewClient(keyless.ClientConfig{Endpoints: []string{c.nodes[0].keylessAddr}, TLS: edgeTLS, Timeout: 30 * time.Second,
		Authorize: func(op protocol.Op, ski protocol.SKI, d []byte) ([]byte, error) {
			a, err := real(op, ski, d)
			sent = append(sent, a)
			return a, err
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	honestServiceContinues := func(t *testing.T) {
		t.Helper()
		d := sha256.Sum256([]byte("an edge's real request " + t.Name()))
		sig, err := kc.Sign(ctx, ski, crypto.SHA256, d[:])
		if err != nil {
			t.Fatalf("honest signing after the attack: %v", err)
		}
		if !ecdsa.VerifyASN1(pub, d[:], sig) {
			t.Fatal("signature does not verify")
		}
	}
	refusedByBoth := func(t *testing.T, want string, digest []byte, auth func() []byte) {
		t.Helper()
		for _, honest := range []string{"a", "b"} {
			_, err := adv.prepare(ctx, honest, c, digest, auth())
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("node %s: want refusal containing %q, got %v", honest, want, err)
			}
		}
		for _, sn := range c.nodes[:2] {
			if !strings.Contains(sn.proc.Output(), "refused to sign: request not authorized") {
				t.Fatalf("node %s did not log the refusal", sn.name)
			}
		}
	}

	t.Run("digest-no-edge-asked-for", func(t *testing.T) {
		d := sha256.Sum256([]byte("forged"))
		refusedByBoth(t, "not marked legacy", d[:], func() []byte { return nil })
		honestServiceContinues(t)
	})

	t.Run("authority-forged-with-node-key", func(t *testing.T) {
		d := sha256.Sum256([]byte("forged"))
		nodePair, err := tls.LoadX509KeyPair(filepath.Join(c.dir, "pki", "c.pem"), filepath.Join(c.dir, "pki", "c-key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		forged, err := (&authority.Signer{Cert: nodePair.Leaf, Key: nodePair.PrivateKey.(crypto.Signer)}).Sign(authority.Request{Op: byte(protocol.OpECDSASignSHA256), SKI: ski, Digest: d[:]})
		if err != nil {
			t.Fatal(err)
		}
		refusedByBoth(t, "may not request signatures", d[:], func() []byte { return forged })
		honestServiceContinues(t)
	})

	t.Run("altered-digest", func(t *testing.T) {
		asked := sha256.Sum256([]byte("what the edge asked for"))
		altered := sha256.Sum256([]byte("what the adversary wants"))
		auth := edgeAuthority(t, c, asked[:])
		refusedByBoth(t, "does not cover this request", altered[:], func() []byte { return auth })
		honestServiceContinues(t)
	})

	t.Run("replayed-request-id", func(t *testing.T) {
		sent = nil
		d := sha256.Sum256([]byte("signed once"))
		if _, err := kc.Sign(ctx, ski, crypto.SHA256, d[:]); err != nil {
			t.Fatal(err)
		}
		if len(sent) != 1 {
			t.Fatalf("recorded %d authorities", len(sent))
		}
		// Node a coordinated the real request, so it signed with it.
		_, err := adv.prepare(ctx, "a", c, d[:], sent[0])
		if err == nil || !strings.Contains(err.Error(), "replay") {
			t.Fatalf("replay: want refusal, got %v", err)
		}
		honestServiceContinues(t)
	})

	t.Run("claims-another-partys-index", func(t *testing.T) {
		d := sha256.Sum256([]byte("a request the edge really made"))
		id, err := adv.prepare(ctx, "a", c, d[:], edgeAuthority(t, c, d[:]))
		if err != nil {
			t.Fatalf("a valid request through c should be prepared: %v", err)
		}
		_, err = adv.clients["a"].Deliver(ctx, &peerwire.Envelope{Version: peerwire.Version, Session: id, Kind: peerwire.KindSign, Key: c.keyID,
			From: "b", Round: 1, Type: "binance.tsslib.ecdsa.signing.SignRound1Message2", Broadcast: true, Payload: []byte{0x0a}})
		if err == nil || !strings.Contains(err.Error(), `claiming to be "b"`) {
			t.Fatalf("want refusal of a message claiming to come from b, got %v", err)
		}
		// Nor may it start a session someone else prepared.
		sid := peerwire.NewSessionID()
		if _, err := adv.clients["b"].Run(ctx, &peerwire.RunRequest{Version: peerwire.Version, Session: sid}); err == nil {
			t.Fatal("ran an unknown session")
		}
		honestServiceContinues(t)
	})
}

// TestEquivocationIsCaught runs a (2,3) cluster whose node c is the
// adversary build, sending each broadcast to b in a different (validly
// signed) version than to a: from round 1 (caught by the echo calls of
// rounds 1–4) and from round 5 (caught by the echoes carried on rounds
// 6–9's envelopes, carry.go). The honest nodes' echo check aborts the
// session and names c; once c is replaced by an honest build, the cluster
// signs again.
func TestEquivocationIsCaught(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	for _, from := range []int{1, 5} {
		t.Run(fmt.Sprintf("from round %d", from), func(t *testing.T) { equivocationIsCaught(t, from) })
	}
}

func equivocationIsCaught(t *testing.T, fromRound int) {
	c := startCluster(t, 2, 3)
	evil := c.nodes[2]
	evil.proc.stop()
	c.startNodeBinary(t, evil, adversaryBinary(t), []string{"TKEYLESS_ADVERSARY=equivocate", "TKEYLESS_ADVERSARY_VICTIM=b",
		fmt.Sprintf("TKEYLESS_ADVERSARY_FROM_ROUND=%d", fromRound)})

	edgeTLS, err := pki.MutualTLS(c.caPath, c.edgeCert, c.edgeKey)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := keyless.NewClient(keyless.ClientConfig{Endpoints: []string{c.nodes[0].keylessAddr}, TLS: edgeTLS, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	pub := c.publicKey(t).(*ecdsa.PublicKey)
	ski, _ := protocol.GetSKI(pub)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d := sha256.Sum256([]byte("equivocation"))
	if _, err := kc.Sign(ctx, ski, crypto.SHA256, d[:]); err == nil {
		t.Fatal("signed with an equivocating member")
	}
	named := false
	for _, sn := range c.nodes[:2] {
		out := sn.proc.Output()
		if !strings.Contains(out, "c equivocated") {
			continue
		}
		for _, line := range strings.Split(out, "\n") {
			var ev struct {
				Message, Culprit string
				Round            int
			}
			// From round 5 on, only a carried echo can show it, in the
			// round it happened.
			if json.Unmarshal([]byte(line), &ev) == nil && ev.Message == "equivocation detected; session aborted" && ev.Culprit == "c" && ev.Round >= fromRound {
				named = true
			}
		}
	}
	if !named {
		t.Fatal("no honest node named c as the equivocating culprit")
	}
	for _, sn := range c.nodes[:2] {
		for _, line := range strings.Split(sn.proc.Output(), "\n") {
			if strings.Contains(line, "equivocat") {
				t.Logf("%s: %.300s", sn.name, line)
			}
		}
	}

	// The honest nodes convicted c: with (2,3) every party must sign, so
	// nothing signs until an admin, having replaced c's build, readmits it.
	evil.proc.stop()
	c.startNode(t, evil)
	// Whoever holds the proof (two versions c signed) convicts c: the
	// victim b always, a too if b's echo reached it before the session
	// ended.
	convicted := 0
	for _, sn := range c.nodes[:2] {
		if strings.Contains(sn.proc.Output(), `"event":"conviction"`) {
			convicted++
			if st := statusOf(t, c, sn); !strings.Contains(st, "CONVICTED\tpeer\tc") {
				t.Fatalf("%s's status does not show c convicted:\n%s", sn.name, st)
			}
		}
	}
	if convicted == 0 {
		t.Fatal("no honest node convicted c")
	}
	d1 := sha256.Sum256([]byte("while c is convicted"))
	if _, err := kc.Sign(ctx, ski, crypto.SHA256, d1[:]); err == nil {
		t.Fatal("a (2,3) key signed without readmitting the convicted c")
	}
	run(t, "signer", append([]string{"peer", "readmit", "--config", c.nodes[0].config, "--peer", "c"}, c.admin()...)...)
	d2 := sha256.Sum256([]byte("after the adversary is gone"))
	sig, err := kc.Sign(ctx, ski, crypto.SHA256, d2[:])
	if err != nil {
		t.Fatalf("honest cluster after equivocation: %v", err)
	}
	if !ecdsa.VerifyASN1(pub, d2[:], sig) {
		t.Fatal("signature does not verify")
	}
}
