// Package e2e runs tkeyless as an operator does: real signer and edge
// processes, built from this tree, talking real mTLS, gRPC and TLS on
// 127.0.0.1, driven through their command lines and checked with real
// clients (Go's crypto/tls, curl, openssl).
package e2e

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tkeyless/tkeyless/tss"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds cmd/signer, cmd/edge and loadtest once per test run.
func binaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "tkeyless-e2e-bin")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", binDir+"/", "github.com/tkeyless/tkeyless/cmd/signer", "github.com/tkeyless/tkeyless/cmd/edge", "github.com/tkeyless/tkeyless/loadtest")
		cmd.Stderr = os.Stderr
		buildErr = cmd.Run()
	})
	if buildErr != nil {
		t.Fatalf("build binaries: %v", buildErr)
	}
	return binDir
}

var (
	adversaryOnce sync.Once
	adversaryBin  string
	adversaryErr  error
)

// adversaryBinary builds the signer with the adversary build tag: a node
// that misbehaves as TKEYLESS_ADVERSARY says (node/adversary.go).
func adversaryBinary(t *testing.T) string {
	t.Helper()
	adversaryOnce.Do(func() {
		dir, err := os.MkdirTemp("", "tkeyless-e2e-adversary")
		if err != nil {
			adversaryErr = err
			return
		}
		adversaryBin = filepath.Join(dir, "signer")
		cmd := exec.Command("go", "build", "-tags", "adversary", "-o", adversaryBin, "github.com/tkeyless/tkeyless/cmd/signer")
		cmd.Stderr = os.Stderr
		adversaryErr = cmd.Run()
	})
	if adversaryErr != nil {
		t.Fatalf("build adversary signer: %v", adversaryErr)
	}
	return adversaryBin
}

// repoRoot finds the module root, for the committed test fixtures.
func repoRoot(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// freeAddrs picks n free loopback ports for processes to listen on. They
// come from below the kernel's ephemeral range (32768 and up here), so the
// outgoing connections of this and other tests, which take ephemeral ports,
// cannot grab one between the check and the process binding it.
func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	var addrs []string
	for len(addrs) < n {
		port := 20000 + rand.IntN(12000)
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		l.Close()
		if !slices.Contains(addrs, addr) {
			addrs = append(addrs, addr)
		}
	}
	return addrs
}

// run executes a CLI command to completion and returns its stdout.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binaries(t), name), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\nstderr:\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}

// proc is a long-running process whose output is kept for assertions and
// for the failure report. The output goes to a file, not a pipe: a process
// writes a log line before it answers a request, so once the answer is in,
// the line is in the file, and reading it needs no waiting.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// Output returns everything the process printed so far.
func (p *proc) Output() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

func start(t *testing.T, name, bin string, args ...string) *proc {
	t.Helper()
	return startPath(t, t, name, filepath.Join(binaries(t), bin), nil, args...)
}

// startPath starts the binary at path with extra environment variables.
// The process lives until owner's test ends (owner may be a parent of t,
// so a subtest can restart a process that outlives it).
func startPath(t, owner *testing.T, name, path string, env []string, args ...string) *proc {
	t.Helper()
	f, err := os.CreateTemp(owner.TempDir(), "proc-*.log")
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{name: name, log: f.Name(), done: make(chan struct{})}
	p.cmd = exec.Command(path, args...)
	if env != nil {
		p.cmd.Env = append(os.Environ(), env...)
	}
	p.cmd.Stdout, p.cmd.Stderr = f, f
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { _ = p.cmd.Wait(); f.Close(); close(p.done) }()
	owner.Cleanup(func() {
		p.stop()
		if owner.Failed() {
			owner.Logf("---- %s output (last 4 KiB) ----\n%s", name, tail(p.Output(), 4096))
		}
	})
	return p
}

// stop asks the process to exit (SIGTERM), then kills it after 10 s.
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// kill ends the process at once (SIGKILL), as a crash would.
func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// waitListening polls until addr accepts TCP connections, the process
// exits, or 60 s pass.
func waitListening(t *testing.T, p *proc, addrs ...string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for _, addr := range addrs {
		for {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-p.done:
				t.Fatalf("%s exited before listening on %s:\n%s", p.name, addr, tail(p.Output(), 4096))
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not listening on %s after 60 s", p.name, addr)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// signerNode is one signer process of a test cluster.
type signerNode struct {
	name        string
	config      string
	peerAddr    string
	keylessAddr string
	httpAddr    string // /healthz, /metrics, /status
	proc        *proc
}

// cluster is a running signer cluster with one key.
type cluster struct {
	owner     *testing.T // the test the cluster's processes live as long as
	dir       string
	threshold int
	nodes     []*signerNode
	keyID     string
	pubPath   string
	caPath    string // the cluster CA
	edgeCert  string
	edgeKey   string
	// adminCert and adminKey are the operator's identity, which signs
	// ceremonies and key states.
	adminCert string
	adminKey  string
}

// admin is the flags that make a signer command act as the cluster's admin.
func (c *cluster) admin() []string {
	return []string{"--admin-cert", c.adminCert, "--admin-key", c.adminKey}
}

// startCluster creates a dev PKI, n signer processes with the committed
// test pre-parameters, and a (threshold, n) key made by a real ceremony.
func startCluster(t *testing.T, threshold, n int) *cluster {
	t.Helper()
	return startClusterWith(t, threshold, n, "")
}

// startClusterWith is startCluster with extra YAML appended to every
// node's configuration (access grants, timeouts).
func startClusterWith(t *testing.T, threshold, n int, extraYAML string) *cluster {
	t.Helper()
	c := newCluster(t, n, extraYAML)
	c.keygen(t, threshold)
	return c
}

// keygen makes the cluster's key with a real ceremony coordinated by the
// first node, among parties (every node when none are named).
func (c *cluster) keygen(t *testing.T, threshold int, parties ...string) {
	t.Helper()
	c.threshold = threshold
	c.pubPath = filepath.Join(c.dir, "key.pub.pem")
	args := append([]string{"keygen", "--config", c.nodes[0].config, "--threshold", fmt.Sprint(threshold), "--out", c.pubPath}, c.admin()...)
	if len(parties) > 0 {
		args = append(args, "--parties", strings.Join(parties, ","))
	}
	c.keyID = strings.TrimSpace(run(t, "signer", args...))
	if len(c.keyID) != 40 {
		t.Fatalf("keygen printed %q, want a 40-hex-digit key id", c.keyID)
	}
}

// newCluster starts n signer processes with a dev PKI and the committed
// test pre-parameters, and no key yet.
func newCluster(t *testing.T, n int, extraYAML string) *cluster {
	t.Helper()
	dir := t.TempDir()
	c := &cluster{owner: t, dir: dir}
	pkiDir := filepath.Join(dir, "pki")
	run(t, "signer", "pki", "init", "--dir", pkiDir)
	run(t, "signer", "pki", "issue", "--dir", pkiDir, "--name", "edge", "--role", "edge")
	c.caPath = filepath.Join(pkiDir, "ca.pem")
	c.edgeCert, c.edgeKey = filepath.Join(pkiDir, "edge.pem"), filepath.Join(pkiDir, "edge-key.pem")
	run(t, "signer", "pki", "issue", "--dir", pkiDir, "--name", "admin", "--role", "admin")
	c.adminCert, c.adminKey = filepath.Join(pkiDir, "admin.pem"), filepath.Join(pkiDir, "admin-key.pem")
	addrs := freeAddrs(t, 3*n)
	names := []string{"a", "b", "c"}[:n]
	for i, name := range names {
		c.nodes = append(c.nodes, &signerNode{name: name, peerAddr: addrs[3*i], keylessAddr: addrs[3*i+1], httpAddr: addrs[3*i+2]})
		run(t, "signer", "pki", "issue", "--dir", pkiDir, "--name", name, "--role", "node")
	}
	for i, sn := range c.nodes {
		var cfg strings.Builder
		fmt.Fprintf(&cfg, "name: %s\ndata_dir: %s\npeer_listen: %s\nkeyless_listen: %s\nhttp_listen: %s\n", sn.name, sn.name, sn.peerAddr, sn.keylessAddr, sn.httpAddr)
		fmt.Fprintf(&cfg, "tls: {ca: pki/ca.pem, cert: pki/%s.pem, key: pki/%s-key.pem}\nsecrets: {key_file: %s.key}\nsign_timeout: 20s\npeers:\n", sn.name, sn.name, sn.name)
		for _, o := range c.nodes {
			if o != sn {
				fmt.Fprintf(&cfg, "  - {name: %s, addr: %s}\n", o.name, o.peerAddr)
			}
		}
		cfg.WriteString(extraYAML)
		sn.config = filepath.Join(dir, sn.name+".yaml")
		if err := os.WriteFile(sn.config, []byte(cfg.String()), 0o600); err != nil {
			t.Fatal(err)
		}
		// Test-only pre-parameters (generating safe primes takes 10–30 s
		// each), sealed with the node's secrets key as the node keeps them.
		keyFile := filepath.Join(dir, sn.name+".key")
		run(t, "signer", "secrets-key", "--out", keyFile)
		fixture, err := tss.LoadPreParams(filepath.Join(repoRoot(t), "tss", "testdata", "preparams", fmt.Sprintf("party-%d.json", i)), nil)
		if err != nil {
			t.Fatal(err)
		}
		sealer, err := tss.NewKeyFileSealer(keyFile)
		if err != nil {
			t.Fatal(err)
		}
		if err := tss.SavePreParams(filepath.Join(dir, sn.name, "preparams.age"), fixture, sealer); err != nil {
			t.Fatal(err)
		}
	}
	for _, sn := range c.nodes {
		c.startNode(t, sn)
	}
	return c
}

func (c *cluster) startNode(t *testing.T, sn *signerNode) {
	t.Helper()
	c.startNodeBinary(t, sn, filepath.Join(binaries(t), "signer"), nil)
}

// startNodeBinary (re)starts one node from the given signer binary.
func (c *cluster) startNodeBinary(t *testing.T, sn *signerNode, path string, env []string) {
	t.Helper()
	sn.proc = startPath(t, c.owner, "signer "+sn.name, path, env, "serve", "--config", sn.config, "--log-level", "debug")
	waitListening(t, sn.proc, sn.peerAddr, sn.keylessAddr, sn.httpAddr)
}

func (c *cluster) keylessAddrs() []string {
	var out []string
	for _, n := range c.nodes {
		out = append(out, n.keylessAddr)
	}
	return out
}

// publicKey reads the key's public key as keygen wrote it.
func (c *cluster) publicKey(t *testing.T) any {
	t.Helper()
	b, err := os.ReadFile(c.pubPath)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// auditCount counts signing requests the cluster recorded (one audit
// record per request, on the coordinator).
func (c *cluster) auditCount() int {
	n := 0
	for _, sn := range c.nodes {
		n += strings.Count(sn.proc.Output(), `"event":"sign"`)
	}
	return n
}

// siteCert has the cluster sign a CSR for localhost and a fresh demo web CA
// issue the certificate. It returns the certificate path and the web CA.
func (c *cluster) siteCert(t *testing.T) (certPath, webCA string) {
	t.Helper()
	csr := filepath.Join(c.dir, "site.csr")
	run(t, "signer", "csr", "--signer", strings.Join(c.keylessAddrs(), ","), "--public-key", c.pubPath,
		"--name", "localhost", "--name", "127.0.0.1", "--cert", c.edgeCert, "--key", c.edgeKey, "--ca", c.caPath, "--out", csr)
	webDir := filepath.Join(c.dir, "webca")
	run(t, "signer", "pki", "init", "--dir", webDir, "--name", "e2e web CA")
	certPath = filepath.Join(c.dir, "site.pem")
	run(t, "signer", "pki", "sign-csr", "--dir", webDir, "--csr", csr, "--out", certPath)
	return certPath, filepath.Join(webDir, "ca.pem")
}

// edge is a running edge process.
type edge struct {
	addr string
	proc *proc
}

func startEdge(t *testing.T, c *cluster, certPath, staticDir string, extra ...string) *edge {
	t.Helper()
	addr := freeAddrs(t, 1)[0]
	args := []string{"serve", "--listen", addr}
	if certPath != "" { // empty in ACME mode
		args = append(args, "--cert", certPath)
	}
	args = append(args, "--signer", "keyless://"+strings.Join(c.keylessAddrs(), ","),
		"--keyless-cert", c.edgeCert, "--keyless-key", c.edgeKey, "--keyless-ca", c.caPath,
		"--static", staticDir,
		// The tests' own client (127.0.0.1) makes full handshakes as fast as the cluster
		// signs; only the flood tests, from other loopback addresses, meet the budget.
		"--client-allow", "127.0.0.1")
	e := &edge{addr: addr, proc: start(t, "edge", "edge", append(args, extra...)...)}
	waitListening(t, e.proc, addr)
	return e
}
