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

// TestMtAOracleCluster runs a (1,3) cluster whose node c is the adversary
// build playing the malicious MtA Bob (the Alpha-Rays abort oracle: every
// answer probes one comparison on the other member's nonce share; against
// stock tss-lib the session's outcome is the answer, see
// tss.TestMtAOracleStockTSSLibLeaks). Node a, coordinating every request,
// must refuse c's answer before using it, convict c (an alert and a
// metric), never put c in a quorum again, and sign every request through
// b. An admin readmits c; a convicts it again at its next answer.
func TestMtAOracleCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	c := startCluster(t, 1, 3)
	evil := c.nodes[2]
	evil.proc.stop()
	c.startNodeBinary(t, evil, adversaryBinary(t), []string{"TKEYLESS_ADVERSARY=mta-oracle"})
	a := c.nodes[0]
	waitFor(t, 15*time.Second, func() bool { return strings.Contains(statusOf(t, c, a), "up\tpeer\tc") })

	pub := c.publicKey(t).(*ecdsa.PublicKey)
	ski, _ := protocol.GetSKI(pub)
	tc, err := pki.MutualTLS(c.caPath, c.edgeCert, c.edgeKey)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := keyless.NewClient(keyless.ClientConfig{Endpoints: []string{a.keylessAddr}, TLS: tc, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	conviction := regexp.MustCompile(`"alert":true,"event":"conviction","peer":"c"[^\n]*MtA`)
	convictions := func() int { return len(conviction.FindAllString(a.proc.Output(), -1)) }
	signUntilConvicted := func(t *testing.T, round string, want int) {
		t.Helper()
		// c is in about half of a's quorums until it is convicted.
		for i := 0; i < 24 && convictions() < want; i++ {
			d := sha256.Sum256(fmt.Appendf(nil, "%s %d", round, i))
			sig, err := kc.Sign(ctx, ski, crypto.SHA256, d[:])
			if err != nil {
				t.Fatalf("%s request %d: %v", round, i, err)
			}
			if !ecdsa.VerifyASN1(pub, d[:], sig) {
				t.Fatal("signature does not verify")
			}
		}
		if convictions() < want {
			t.Fatalf("%s: a did not convict c in 24 requests; c was never in a quorum, or its answers passed", round)
		}
	}

	signUntilConvicted(t, "first", 1)
	out := a.proc.Output()
	t.Logf("a: %.400s", conviction.FindString(out))
	// Once convicted, c is in no quorum of a's: twelve more requests all
	// sign, none with c.
	quorumsBefore := strings.Count(out, `"quorums":[["a","c"]`) + strings.Count(out, `"quorums":[["c","a"]`)
	for i := range 12 {
		d := sha256.Sum256(fmt.Appendf(nil, "after conviction %d", i))
		if _, err := kc.Sign(ctx, ski, crypto.SHA256, d[:]); err != nil {
			t.Fatalf("request %d after c's conviction: %v", i, err)
		}
	}
	out = a.proc.Output()
	if after := strings.Count(out, `"quorums":[["a","c"]`) + strings.Count(out, `"quorums":[["c","a"]`); after != quorumsBefore {
		t.Fatalf("a put the convicted c in %d more first quorums", after-quorumsBefore)
	}
	if n := strings.Count(out, `"event":"conviction"`); n != 1 {
		t.Fatalf("a logged %d convictions, want exactly one", n)
	}
	if st := statusOf(t, c, a); !strings.Contains(st, "CONVICTED\tpeer\tc") {
		t.Fatalf("status does not show c convicted:\n%s", st)
	}
	if _, body := httpGet(t, "http://"+a.httpAddr+"/metrics"); !strings.Contains(body, `tkeyless_signer_convictions_total{peer="c"} 1`) ||
		!strings.Contains(body, `tkeyless_signer_peer_convicted{peer="c"} 1`) {
		t.Fatal("a's metrics do not count c's conviction")
	}

	// An admin readmits c; it attacks again and is convicted again.
	run(t, "signer", append([]string{"peer", "readmit", "--config", a.config, "--peer", "c"}, c.admin()...)...)
	if st := statusOf(t, c, a); strings.Contains(st, "CONVICTED") {
		t.Fatalf("c still convicted after readmission:\n%s", st)
	}
	signUntilConvicted(t, "readmitted", 2)
}
