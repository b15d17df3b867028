//go:build long

// Behind the long tag (make test-long): a real keygen makes it take about a minute on 2 cores,
// and cmd/edge's TestIdentityReloadOnSIGHUP covers the same reload in make test, against a
// keyless server that verifies authorities as a node does.

package e2e

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestEdgeIdentityReload rotates the edge's keyless identity by SIGHUP with a real cluster: the
// next full handshake is signed for the new identity (the coordinator's audit record names it,
// and every quorum member verified an authority signed with its key), and a corrupt key file
// then leaves the edge signing under the identity it has.
func TestEdgeIdentityReload(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	c := startCluster(t, 1, 2)
	certPath, webCA := c.siteCert(t)
	roots := rootsFrom(t, webCA)
	// The edge reads its identity from files of its own, which the test replaces.
	dir := t.TempDir()
	edgeCert, edgeKey := filepath.Join(dir, "edge.pem"), filepath.Join(dir, "edge-key.pem")
	replace := func(from, to string) {
		t.Helper()
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to+".new", b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(to+".new", to); err != nil {
			t.Fatal(err)
		}
	}
	replace(c.edgeCert, edgeCert)
	replace(c.edgeKey, edgeKey)
	e := startEdge(t, c, certPath, staticSite(t), "--keyless-cert", edgeCert, "--keyless-key", edgeKey)

	// signedFor counts the coordinators' audit records of signatures made for the edge identity
	// name; there is one per full handshake.
	signedFor := func(name string) int {
		n := 0
		for _, sn := range c.nodes {
			for _, line := range strings.Split(sn.proc.Output(), "\n") {
				if strings.Contains(line, `"event":"sign"`) && strings.Contains(line, `"outcome":"signed"`) &&
					strings.Contains(line, `"edge":"`+name+`"`) {
					n++
				}
			}
		}
		return n
	}
	// fullHandshakeFor makes a full handshake and checks that the signature was made for name.
	fullHandshakeFor := func(when, name string) {
		t.Helper()
		before := signedFor(name)
		if _, err := handshake(e.addr, roots, tls.VersionTLS13, nil); err != nil {
			t.Fatalf("%s: full handshake: %v", when, err)
		}
		if after := signedFor(name); after != before+1 {
			t.Fatalf("%s: %d new audit records of a signature for edge %q, want 1", when, after-before, name)
		}
	}
	fullHandshakeFor("before the rotation", "edge")

	pkiDir := filepath.Dir(c.caPath)
	run(t, "signer", "pki", "issue", "--dir", pkiDir, "--name", "edge-rotated", "--role", "edge")
	replace(filepath.Join(pkiDir, "edge-rotated.pem"), edgeCert)
	replace(filepath.Join(pkiDir, "edge-rotated-key.pem"), edgeKey)
	if err := e.proc.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() bool { return strings.Contains(e.proc.Output(), "keyless identity reloaded") })
	fullHandshakeFor("after the rotation", "edge-rotated")

	if err := os.WriteFile(edgeKey, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.proc.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() bool { return strings.Contains(e.proc.Output(), "keyless identity reload refused") })
	fullHandshakeFor("after a corrupt key file", "edge-rotated")
}
