package e2e

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
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
// tss.TestMtAOracleStockTSSLibLeaks). With b stopped, c is node a's only
// partner: a must refuse c's answer before using it and convict c (an
// alert and a metric), so the request finds no quorum. With b back, a signs
// every request through b and never puts c in a quorum again. An admin
// readmits c; a convicts it again at its next answer.
func TestMtAOracleCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	c := startCluster(t, 1, 3)
	a, b, evil := c.nodes[0], c.nodes[1], c.nodes[2]
	evil.proc.stop()
	c.startNodeBinary(t, evil, adversaryBinary(t), []string{"TKEYLESS_ADVERSARY=mta-oracle"})
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
	// probe has a sign one request while b is down, so c is its only
	// partner: c's answer is refused, c convicted, and no quorum is left.
	probe := func(t *testing.T, round string, want int) {
		t.Helper()
		b.proc.stop()
		waitFor(t, 15*time.Second, func() bool { return strings.Contains(statusOf(t, c, a), "DOWN\tpeer\tb") })
		d := sha256.Sum256([]byte(round))
		_, err := kc.Sign(ctx, ski, crypto.SHA256, d[:])
		var re *keyless.RemoteError
		if !errors.As(err, &re) || re.Code != keyless.ErrNoQuorum {
			t.Fatalf("%s: with only c as a partner, want no quorum, got %v", round, err)
		}
		if got := convictions(); got != want {
			t.Fatalf("%s: a logged %d convictions of c for its MtA answer, want %d", round, got, want)
		}
		c.startNode(t, b)
		waitFor(t, 15*time.Second, func() bool { return strings.Contains(statusOf(t, c, a), "up\tpeer\tb") })
	}

	probe(t, "first", 1)
	out := a.proc.Output()
	t.Logf("a: %.400s", conviction.FindString(out))
	// Once convicted, c is in no quorum of a's: twelve requests all sign,
	// through b.
	withC := regexp.MustCompile(`"quorums":\[\[[^]]*"c"`)
	before := len(withC.FindAllString(out, -1))
	for i := range 12 {
		d := sha256.Sum256(fmt.Appendf(nil, "after conviction %d", i))
		sig, err := kc.Sign(ctx, ski, crypto.SHA256, d[:])
		if err != nil {
			t.Fatalf("request %d after c's conviction: %v", i, err)
		}
		if !ecdsa.VerifyASN1(pub, d[:], sig) {
			t.Fatal("signature does not verify")
		}
	}
	out = a.proc.Output()
	if after := len(withC.FindAllString(out, -1)); after != before {
		t.Fatalf("a put the convicted c in %d more quorums", after-before)
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
	probe(t, "readmitted", 2)
}
