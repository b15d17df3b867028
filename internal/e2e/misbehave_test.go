package e2e

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cloudflare/gokeyless/protocol"

	"github.com/tkeyless/tkeyless/internal/pki"
	"github.com/tkeyless/tkeyless/keyless"
)

// TestMisbehavingPeer runs a (1,3) cluster whose node c is the adversary
// build, sending garbage, stalling, or replaying an old session's messages.
// Node a, coordinating every request, must abort each session c spoils,
// name c, and still answer every request by signing with b instead.
func TestMisbehavingPeer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	c := startCluster(t, 1, 3)
	pub := c.publicKey(t).(*ecdsa.PublicKey)
	ski, _ := protocol.GetSKI(pub)
	tc, err := pki.MutualTLS(c.caPath, c.edgeCert, c.edgeKey)
	if err != nil {
		t.Fatal(err)
	}
	// Only node a: it coordinates every request, so c can spoil sessions
	// but never be the node the edge talks to.
	kc, err := keyless.NewClient(keyless.ClientConfig{Endpoints: []string{c.nodes[0].keylessAddr}, TLS: tc, Timeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	spoiled := regexp.MustCompile(`"suspects":\["c"\]`)
	evil := c.nodes[2]

	for _, mode := range []string{"garbage", "stall", "replay"} {
		t.Run(mode, func(t *testing.T) {
			evil.proc.stop()
			c.startNodeBinary(t, evil, adversaryBinary(t), []string{"TKEYLESS_ADVERSARY=" + mode})
			// A fresh a: the previous mode's strikes would keep c out of its
			// quorums for a while (the cool-down working as meant).
			a := c.nodes[0]
			a.proc.stop()
			c.startNode(t, a)
			waitFor(t, 15*time.Second, func() bool { return strings.Contains(statusOf(t, c, a), "up\tpeer\tc") })
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			// c takes part in about half the sessions; a few requests are
			// enough for it to spoil some, and every one must still sign.
			for i := 0; i < 16 && len(spoiled.FindAllString(a.proc.Output(), -1)) < 2; i++ {
				d := sha256.Sum256(fmt.Appendf(nil, "%s %d", mode, i))
				start := time.Now()
				sig, err := kc.Sign(ctx, ski, crypto.SHA256, d[:])
				if err != nil {
					t.Fatalf("request %d with a misbehaving c: %v", i, err)
				}
				if !ecdsa.VerifyASN1(pub, d[:], sig) {
					t.Fatal("signature does not verify")
				}
				t.Logf("request %d signed in %v", i, time.Since(start).Round(time.Millisecond))
			}
			out := a.proc.Output()
			if got := len(spoiled.FindAllString(out, -1)); got < 1 {
				t.Logf("quorums: %v", regexp.MustCompile(`"quorums":\[[^]]*\]+`).FindAllString(out, -1))
				t.Fatalf("c never spoiled a session in 16 requests; nothing was tested")
			}
			for _, line := range strings.Split(out, "\n") {
				if strings.Contains(line, `"suspects":["c"]`) {
					t.Logf("a: %.260s", line)
					break
				}
			}
		})
	}
}
