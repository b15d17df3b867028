package e2e

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cloudflare/gokeyless/protocol"

	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/internal/pki"
	"github.com/tkeyless/tkeyless/keyless"
)

// nodeStatus reads a node's /status.
func nodeStatus(t *testing.T, sn *signerNode) *peerwire.StatusResponse {
	t.Helper()
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + sn.httpAddr + "/status")
	if err != nil {
		t.Fatalf("status of %s: %v", sn.name, err)
	}
	defer resp.Body.Close()
	var st peerwire.StatusResponse
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("status of %s: %v", sn.name, err)
	}
	return &st
}

// TestPresigning runs a (1,3) cluster with a presignature pool: full
// handshakes use presignatures, and when the other quorum members lose
// their halves (they restart) a request still signs, the full way, within
// its deadline.
func TestPresigning(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	c := startClusterWith(t, 1, 3, "presign: {depth: 2, max_age: 5m}\n")
	a := c.nodes[0]
	poolFull := func() bool {
		k := nodeStatus(t, a).Keys
		return len(k) == 1 && k[0].Presignatures == 2
	}
	waitFor(t, 60*time.Second, poolFull)

	certPath, webCA := c.siteCert(t)
	e := startEdge(t, c, certPath, staticSite(t))
	roots := rootsFrom(t, webCA)
	for _, v := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		if st := get(t, e.addr, roots, v, nil); st.DidResume {
			t.Fatal("want a full handshake")
		}
	}
	presigned := 0
	for _, sn := range c.nodes {
		presigned += strings.Count(sn.proc.Output(), `"path":"presign"`)
	}
	if presigned == 0 {
		t.Fatal("no full handshake used a presignature")
	}
	if _, body := httpGet(t, "http://"+a.httpAddr+"/metrics"); !strings.Contains(body, `tkeyless_signer_presign_total{event="made"}`) {
		t.Fatal("/metrics lacks presignature counts")
	}
	status := run(t, "signer", "status", "--config", a.config)
	if !strings.Contains(status, "presigned ") {
		t.Fatalf("signer status does not show the pool:\n%s", status)
	}

	// b and c restart: every presignature in a's pool lost its other half.
	waitFor(t, 60*time.Second, poolFull)
	for _, sn := range c.nodes[1:] {
		sn.proc.kill()
		c.startNode(t, sn)
	}
	waitFor(t, 30*time.Second, func() bool {
		for _, p := range nodeStatus(t, a).Peers {
			if !p.Up {
				return false
			}
		}
		return true
	})
	tc, err := pki.MutualTLS(c.caPath, c.edgeCert, c.edgeKey)
	if err != nil {
		t.Fatal(err)
	}
	onlyA, err := keyless.NewClient(keyless.ClientConfig{Endpoints: []string{a.keylessAddr}, TLS: tc, Timeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer onlyA.Close()
	pub := c.publicKey(t).(*ecdsa.PublicKey)
	ski, _ := protocol.GetSKI(pub)
	d := sha256.Sum256([]byte("after the members restarted"))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sig, err := onlyA.Sign(ctx, ski, crypto.SHA256, d[:])
	if err != nil {
		t.Fatalf("sign after members lost their halves: %v", err)
	}
	if !ecdsa.VerifyASN1(pub, d[:], sig) {
		t.Fatal("fallback signature does not verify")
	}
	for _, l := range strings.Split(a.proc.Output(), "\n") {
		if strings.Contains(l, `"event":"sign"`) {
			t.Log(l)
		}
	}
	if !strings.Contains(a.proc.Output(), "presigned signing failed; signing the full way") {
		t.Fatalf("node a did not fall back from a lost presignature:\n%s", tail(a.proc.Output(), 3000))
	}
	if _, body := httpGet(t, "http://"+a.httpAddr+"/metrics"); !strings.Contains(body, `tkeyless_signer_presign_total{event="fallback"} 1`) {
		t.Fatal("/metrics does not count the fallback")
	}
}
