package e2e

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloudflare/gokeyless/protocol"
)

func (c *cluster) shareFile(sn *signerNode) string {
	return filepath.Join(c.dir, sn.name, "keys", c.keyID+".share.json")
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// signOnce asks the cluster for one signature through its keyless
// endpoints and checks it under the key's public key.
func signOnce(t *testing.T, c *cluster, msg string) error {
	t.Helper()
	pub := c.publicKey(t).(*ecdsa.PublicKey)
	ski, _ := protocol.GetSKI(pub)
	d := sha256.Sum256([]byte(msg))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sig, err := keylessClient(t, c, 45*time.Second).Sign(ctx, ski, crypto.SHA256, d[:])
	if err != nil {
		return err
	}
	if !ecdsa.VerifyASN1(pub, d[:], sig) {
		t.Fatal("signature does not verify under the key's public key")
	}
	return nil
}

// TestReshareRefresh refreshes every share of a (1,3) key: the key id,
// public key and certificate stay; every share file changes; and an old
// share no longer signs with a new one.
func TestReshareRefresh(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	c := startCluster(t, 1, 3)
	certPath, webCA := c.siteCert(t)
	roots := rootsFrom(t, webCA)
	e := startEdge(t, c, certPath, staticSite(t), "--sign-timeout", "20s")
	get(t, e.addr, roots, tls.VersionTLS13, nil)

	old := map[string][]byte{}
	for _, sn := range c.nodes {
		old[sn.name] = readFile(t, c.shareFile(sn))
	}
	out := run(t, "signer", "reshare", "--config", c.nodes[0].config, "--admin-cert", c.adminCert, "--admin-key", c.adminKey, "--key", c.keyID)
	if strings.TrimSpace(out) != c.keyID {
		t.Fatalf("reshare printed %q, want the unchanged key id %s", out, c.keyID)
	}
	for _, sn := range c.nodes {
		now := readFile(t, c.shareFile(sn))
		if bytes.Equal(now, old[sn.name]) {
			t.Fatalf("node %s still has its old share file", sn.name)
		}
		if !strings.Contains(sn.proc.Output(), "new share committed") {
			t.Fatalf("node %s did not commit its new share:\n%s", sn.name, tail(sn.proc.Output(), 3000))
		}
		if _, err := os.Stat(strings.TrimSuffix(c.shareFile(sn), ".share.json") + ".share.staged"); err == nil {
			t.Fatalf("node %s kept a staged share after the commit", sn.name)
		}
	}
	// Same public key: the certificate made before still verifies on a
	// full handshake signed by the new shares.
	st := get(t, e.addr, roots, tls.VersionTLS12, nil)
	if st.DidResume || !st.PeerCertificates[0].PublicKey.(*ecdsa.PublicKey).Equal(c.publicKey(t)) {
		t.Fatal("after the refresh, the edge did not do a full handshake with the same key")
	}

	// An old share does not combine with a new one: node a gets its
	// pre-refresh share back, c stops, so every quorum is a (old) + b (new).
	a, cNode := c.nodes[0], c.nodes[2]
	newA := readFile(t, c.shareFile(a))
	a.proc.stop()
	if err := os.WriteFile(c.shareFile(a), old[a.name], 0o600); err != nil {
		t.Fatal(err)
	}
	c.startNode(t, a)
	cNode.proc.stop()
	if err := signOnce(t, c, "old and new shares"); err == nil {
		t.Fatal("an old share and a new share made a signature")
	} else {
		t.Logf("old + new share, as expected: %v", err)
	}
	// And with its new share back, the same two nodes sign.
	a.proc.stop()
	if err := os.WriteFile(c.shareFile(a), newA, 0o600); err != nil {
		t.Fatal(err)
	}
	c.startNode(t, a)
	if err := signOnce(t, c, "new shares"); err != nil {
		t.Fatalf("two new shares should sign: %v", err)
	}
}

// TestReshareChangeThreshold moves a key from (1,2) on nodes a and b to
// (2,3) on a, b and c: the newcomer gets a share, three now must sign, and
// the public key is the same.
func TestReshareChangeThreshold(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	c := newCluster(t, 3, "")
	c.keygen(t, 1, "a", "b")
	if err := signOnce(t, c, "before"); err != nil {
		t.Fatalf("(1,2) key should sign: %v", err)
	}
	// With the newcomer down the ceremony fails, clearly, and nothing
	// changes: a and b keep their old shares and sign.
	c.nodes[2].proc.stop()
	before := readFile(t, c.shareFile(c.nodes[0]))
	out, err := exec.Command(filepath.Join(binaries(t), "signer"), "reshare", "--config", c.nodes[0].config, "--admin-cert", c.adminCert, "--admin-key", c.adminKey, "--key", c.keyID,
		"--parties", "a,b,c", "--threshold", "2", "--timeout", "30s").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "member c") {
		t.Fatalf("reshare with a member down: want a failure naming c, got %v:\n%s", err, out)
	}
	if !bytes.Equal(before, readFile(t, c.shareFile(c.nodes[0]))) {
		t.Fatal("a failed resharing changed a's share")
	}
	if err := signOnce(t, c, "after a failed resharing"); err != nil {
		t.Fatalf("the old shares should still sign: %v", err)
	}
	c.startNode(t, c.nodes[2])

	run(t, "signer", "reshare", "--config", c.nodes[0].config, "--admin-cert", c.adminCert, "--admin-key", c.adminKey, "--key", c.keyID, "--parties", "a,b,c", "--threshold", "2")
	status := run(t, "signer", "status", "--config", c.nodes[2].config)
	for _, sn := range c.nodes {
		if _, err := os.Stat(c.shareFile(sn)); err != nil {
			t.Fatalf("node %s has no share after the change: %v", sn.name, err)
		}
	}
	if n := strings.Count(status, "(2,3) a,b,c"); n != 3 {
		t.Fatalf("status shows the (2,3) key on %d nodes, want 3:\n%s", n, status)
	}
	if err := signOnce(t, c, "after"); err != nil {
		t.Fatalf("(2,3) key should sign with all three: %v", err)
	}
	// t=2 of 3: all three must sign, so with one node down nothing signs.
	c.nodes[2].proc.stop()
	if err := signOnce(t, c, "two of (2,3)"); err == nil {
		t.Fatal("two nodes signed with a (2,3) key")
	}
}

// TestImportKey moves a plain P-256 key and its existing certificate into
// a (1,2) cluster and serves a handshake with them through the edge.
func TestImportKey(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	c := newCluster(t, 2, "")
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	keyPath := filepath.Join(c.dir, "plain-keyless.key")
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	// The certificate the plain Keyless server served: issued by a CA
	// the client trusts, for the key being imported.
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "import test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	caCert, _ := x509.ParseCertificate(caDER)
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	leafDER, _ := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &key.PublicKey, caKey)
	certPath := filepath.Join(c.dir, "existing.pem")
	os.WriteFile(certPath, append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})...), 0o644)

	cmd := exec.Command(filepath.Join(binaries(t), "signer"), "import", "--config", c.nodes[0].config, "--admin-cert", c.adminCert, "--admin-key", c.adminKey, "--key-file", keyPath, "--threshold", "1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("import: %v\n%s", err, stderr.String())
	}
	ski, _ := protocol.GetSKI(&key.PublicKey)
	if got := strings.TrimSpace(string(out)); got != ski.String() {
		t.Fatalf("import printed key id %q, want the key's SKI %s", got, ski)
	}
	if !strings.Contains(stderr.String(), "DESTROY THE ORIGINAL") {
		t.Fatalf("import did not tell the operator to destroy the original:\n%s", stderr.String())
	}
	// Importing the same key again is refused: it is in the cluster.
	if out, err := exec.Command(filepath.Join(binaries(t), "signer"), "import", "--config", c.nodes[1].config, "--admin-cert", c.adminCert, "--admin-key", c.adminKey, "--key-file", keyPath).CombinedOutput(); err == nil ||
		!strings.Contains(string(out), "already") {
		t.Fatalf("a second import of the same key: %v\n%s", err, out)
	}
	pubPEM, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	c.keyID, c.pubPath = ski.String(), filepath.Join(c.dir, "imported.pub.pem")
	os.WriteFile(c.pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubPEM}), 0o644)
	for _, sn := range c.nodes {
		if _, err := os.Stat(c.shareFile(sn)); err != nil {
			t.Fatalf("node %s holds no share of the imported key: %v", sn.name, err)
		}
	}

	e := startEdge(t, c, certPath, staticSite(t))
	roots := x509.NewCertPool()
	roots.AddCert(caCert)
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		st := get(t, e.addr, roots, v, nil)
		if !bytes.Equal(st.PeerCertificates[0].Raw, leafDER) || st.DidResume {
			t.Fatalf("%s: the edge did not serve the existing certificate on a full handshake", tls.VersionName(v))
		}
	}
}
