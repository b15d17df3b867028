package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tkeyless/tkeyless/tss"
)

// docBlocks returns the fenced sh blocks of a Markdown file that follow a
// "<!-- deploy-test: ROLE -->" line, by role, in order.
func docBlocks(t *testing.T, path string) map[string][]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blocks := map[string][]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	role, in := "", false
	var cur strings.Builder
	for sc.Scan() {
		line := sc.Text()
		switch {
		case in && strings.HasPrefix(line, "```"):
			blocks[role] = append(blocks[role], cur.String())
			cur.Reset()
			role, in = "", false
		case in:
			cur.WriteString(line + "\n")
		case strings.HasPrefix(line, "<!-- deploy-test:"):
			role = strings.TrimSpace(strings.TrimSuffix(strings.TrimPrefix(line, "<!-- deploy-test:"), "-->"))
		case role != "" && line == "```sh":
			in = true
		case role != "" && strings.TrimSpace(line) != "":
			t.Fatalf("%s: the deploy-test mark for %q is not followed by a ```sh block", path, role)
		}
	}
	return blocks
}

// runBlocks runs a role's blocks of the guide with bash -eu in dir, the
// test's binaries first on PATH and env set.
func runBlocks(t *testing.T, blocks map[string][]string, role, dir string, env ...string) string {
	t.Helper()
	if len(blocks[role]) == 0 {
		t.Fatalf("docs/deploy.md has no block marked deploy-test: %s", role)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	script := "set -euo pipefail\n" + strings.Join(blocks[role], "")
	cmd := exec.CommandContext(ctx, "bash", "-c", script)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), append([]string{"PATH=" + binaries(t) + ":" + os.Getenv("PATH")}, env...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("docs/deploy.md, blocks %q: %v\n%s\nstderr:\n%s", role, err, script, errb.String())
	}
	return out.String()
}

// unitCommand reads a unit's ExecStart and points its config path into etc,
// as the test's stand-in for systemd starting the service.
func unitCommand(t *testing.T, unit, etc string) (bin string, args []string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "examples", "systemd", unit))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if cmd, ok := strings.CutPrefix(line, "ExecStart="); ok {
			f := strings.Fields(strings.ReplaceAll(cmd, "/etc/tkeyless", etc))
			return filepath.Base(f[0]), f[1:]
		}
	}
	t.Fatalf("%s has no ExecStart", unit)
	return "", nil
}

// TestDeployGuide follows docs/deploy.md: an operator CA made with
// openssl, two signers and an edge, each "host" its own directory and
// 127.0.0.x address, the signers and the edge started with their systemd
// units' command lines, and a request through the edge with curl.
func TestDeployGuide(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	for _, tool := range []string{"openssl", "curl", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (make tools installs it)", tool)
		}
	}
	blocks := docBlocks(t, filepath.Join(repoRoot(t), "docs", "deploy.md"))
	work := t.TempDir()
	// A /24 of loopback addresses of our own: the guide's fixed ports do
	// not meet other tests, which listen on 127.0.0.1.
	net := fmt.Sprintf("127.0.%d.", 2+rand.IntN(250))
	aIP, bIP, edgeIP := net+"11", net+"12", net+"10"
	edgePort := "8443"
	runBlocks(t, blocks, "ca", work, "A_IP="+aIP, "B_IP="+bIP)

	type host struct{ name, ip, peer, peerIP string }
	var signers []*proc
	var aEtc string
	for i, h := range []host{{"a", aIP, "b", bIP}, {"b", bIP, "a", aIP}} {
		root := filepath.Join(work, "host-"+h.name)
		etc, state := filepath.Join(root, "etc"), filepath.Join(root, "state")
		// systemd would copy the credentials to /run/credentials/UNIT/;
		// here the service reads them where the operator put them.
		creds := filepath.Join(etc, "credentials")
		runBlocks(t, blocks, "signer", work, "NAME="+h.name, "IP="+h.ip, "PEER="+h.peer, "PEER_IP="+h.peerIP,
			"ETC="+etc, "STATE="+state, "RUN_CREDS="+creds, "HTTP="+h.ip+":7301")
		for _, f := range []string{filepath.Join(creds, "secrets.key"), filepath.Join(creds, "node-key.pem")} {
			if st, err := os.Stat(f); err != nil || st.Mode().Perm() != 0o600 {
				t.Fatalf("%s: want mode 0600 (%v)", f, err)
			}
		}
		// The committed test pre-parameters stand in for the first start's
		// generation (10–30 s per node, far more on a busy machine).
		fixture, err := tss.LoadPreParams(filepath.Join(repoRoot(t), "tss", "testdata", "preparams", fmt.Sprintf("party-%d.json", i)), nil)
		if err != nil {
			t.Fatal(err)
		}
		sealer, err := tss.NewKeyFileSealer(filepath.Join(creds, "secrets.key"))
		if err != nil {
			t.Fatal(err)
		}
		if err := tss.SavePreParams(filepath.Join(state, "preparams.age"), fixture, sealer); err != nil {
			t.Fatal(err)
		}
		// The guide's timeouts are for a production host; this machine may
		// be running other suites at once, and a stalled GG18 round is not
		// what this test is about.
		appendFile(t, filepath.Join(etc, "signer.yaml"), "stall_timeout: 30s\nsign_timeout: 60s\n")
		bin, args := unitCommand(t, "tkeyless-signer.service", etc)
		p := start(t, "signer-"+h.name, bin, args...)
		signers = append(signers, p)
		if h.name == "a" {
			aEtc = etc
		}
	}
	waitListening(t, signers[0], aIP+":7101", aIP+":7201")
	waitListening(t, signers[1], bIP+":7101", bIP+":7201")

	out := runBlocks(t, blocks, "keygen", work, "ETC="+aEtc)
	if !strings.Contains(out, "a") || !strings.Contains(out, "b") {
		t.Fatalf("signer status does not show both nodes:\n%s", out)
	}
	runBlocks(t, blocks, "site", work, "A_IP="+aIP, "B_IP="+bIP)

	etc := filepath.Join(work, "host-edge", "etc")
	runBlocks(t, blocks, "edge", work, "A_IP="+aIP, "B_IP="+bIP, "LISTEN="+edgeIP+":"+edgePort,
		"ETC="+etc, "RUN_CREDS="+filepath.Join(etc, "credentials"), "METRICS="+edgeIP+":9443")
	bin, args := unitCommand(t, "tkeyless-edge.service", etc)
	edgeProc := start(t, "edge", bin, append(args, "--sign-timeout", "60s")...)
	waitListening(t, edgeProc, edgeIP+":"+edgePort)

	got := runBlocks(t, blocks, "check", work, "EDGE_IP="+edgeIP, "PORT="+edgePort)
	if strings.TrimSpace(got) != "hello from the edge" {
		t.Fatalf("the guide's check got %q", got)
	}
}

func appendFile(t *testing.T, path, text string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(text); err != nil {
		t.Fatal(err)
	}
}
