package matrix

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	cflog "github.com/cloudflare/cfssl/log"
	gkserver "github.com/cloudflare/gokeyless/server"

	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/tss"
)

// env is where one matrix run keeps its processes and files.
type env struct {
	bin   string // directory with the signer and edge binaries
	repo  string // repository root, for the test pre-parameters
	dir   string
	procs []*exec.Cmd
	stops []func()
	// peerAddr, if set, says where signer from reaches signer to, whose
	// peer endpoint listens on addr: another harness (loadtest/internal/wan)
	// puts a proxy there.
	peerAddr func(from, to, addr string) (string, error)
	// signerYAML, if set, is appended to every signer's configuration.
	signerYAML string
}

func (e *env) close() {
	for _, p := range e.procs {
		if p.Process != nil {
			_ = p.Process.Signal(os.Interrupt)
		}
	}
	for _, p := range e.procs {
		done := make(chan struct{})
		go func() { _ = p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = p.Process.Kill()
			<-done
		}
	}
	for _, s := range e.stops {
		s()
	}
}

// cli runs a signer command to completion and returns its stdout.
func (e *env) cli(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(e.bin, "signer"), args...)
	cmd.Dir = e.dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("signer %s: %w\n%s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

// start runs a long-lived process with its output in dir/logs.
func (e *env) start(name, binary string, args ...string) error {
	if err := os.MkdirAll(filepath.Join(e.dir, "logs"), 0o700); err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(e.dir, "logs", name+".log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(e.bin, binary), args...)
	cmd.Dir, cmd.Stdout, cmd.Stderr = e.dir, logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	e.procs = append(e.procs, cmd)
	return nil
}

func freePorts(n int) ([]string, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var out []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		out = append(out, l.Addr().String())
	}
	return out, nil
}

// waitListening polls until every address accepts connections.
func waitListening(ctx context.Context, addrs ...string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for _, a := range addrs {
		for {
			c, err := net.DialTimeout("tcp", a, time.Second)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s not listening: %w", a, ctx.Err())
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	return nil
}

// pki makes the dev CA and the edge's identity.
func (e *env) pki(ctx context.Context) error {
	if _, err := e.cli(ctx, "pki", "init", "--dir", "pki"); err != nil {
		return err
	}
	if _, err := e.cli(ctx, "pki", "issue", "--dir", "pki", "--name", "admin", "--role", "admin"); err != nil {
		return err
	}
	_, err := e.cli(ctx, "pki", "issue", "--dir", "pki", "--name", "edge", "--role", "edge")
	return err
}

// webCA is a CA the load generator trusts for the sites' certificates.
type webCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newWebCA() (*webCA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "loadtest web CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &webCA{cert: cert, key: key, pool: pool}, nil
}

// issue writes a localhost certificate for pub to path.
func (ca *webCA) issue(pub any, path string) error {
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: "localhost"},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return err
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

// plainKey writes a fresh P-256 key (the baselines' key) and returns it.
func plainKey(path string) (*ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	return key, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

// signerCluster is a running (t,n) cluster with one key.
type signerCluster struct {
	names   []string
	keyless []string // keyless endpoints
	http    []string // /status endpoints
	pubPath string
}

// startCluster starts n signers with the committed test pre-parameters
// (test fixtures: fine for a benchmark on loopback, never for production)
// and makes a (t,n) key.
func (e *env) startCluster(ctx context.Context, t, n, presignDepth int) (*signerCluster, error) {
	names := []string{"a", "b", "c"}[:n]
	addrs, err := freePorts(3 * n)
	if err != nil {
		return nil, err
	}
	c := &signerCluster{names: names}
	for i, name := range names {
		if _, err := e.cli(ctx, "pki", "issue", "--dir", "pki", "--name", name, "--role", "node"); err != nil {
			return nil, err
		}
		var cfg strings.Builder
		fmt.Fprintf(&cfg, "name: %s\ndata_dir: %s\npeer_listen: %s\nkeyless_listen: %s\nhttp_listen: %s\n", name, name, addrs[3*i], addrs[3*i+1], addrs[3*i+2])
		fmt.Fprintf(&cfg, "tls: {ca: pki/ca.pem, cert: pki/%s.pem, key: pki/%s-key.pem}\nsecrets: {key_file: %s.key}\n", name, name, name)
		fmt.Fprintf(&cfg, "presign: {depth: %d}\nsign_timeout: 60s\n%speers:\n", presignDepth, e.signerYAML)
		for j, o := range names {
			if j == i {
				continue
			}
			addr := addrs[3*j]
			if e.peerAddr != nil {
				if addr, err = e.peerAddr(name, o, addr); err != nil {
					return nil, fmt.Errorf("route %s to %s: %w", name, o, err)
				}
			}
			fmt.Fprintf(&cfg, "  - {name: %s, addr: %s}\n", o, addr)
		}
		if err := os.WriteFile(filepath.Join(e.dir, name+".yaml"), []byte(cfg.String()), 0o600); err != nil {
			return nil, err
		}
		if _, err := e.cli(ctx, "secrets-key", "--out", name+".key"); err != nil {
			return nil, err
		}
		fixture, err := tss.LoadPreParams(filepath.Join(e.repo, "tss", "testdata", "preparams", fmt.Sprintf("party-%d.json", i)), nil)
		if err != nil {
			return nil, fmt.Errorf("test pre-parameters (run from the repository root): %w", err)
		}
		sealer, err := tss.NewKeyFileSealer(filepath.Join(e.dir, name+".key"))
		if err != nil {
			return nil, err
		}
		if err := tss.SavePreParams(filepath.Join(e.dir, name, "preparams.age"), fixture, sealer); err != nil {
			return nil, err
		}
		c.keyless = append(c.keyless, addrs[3*i+1])
		c.http = append(c.http, addrs[3*i+2])
	}
	for i, name := range names {
		if err := e.start("signer-"+name, "signer", "serve", "--config", name+".yaml"); err != nil {
			return nil, err
		}
		if err := waitListening(ctx, addrs[3*i], addrs[3*i+1]); err != nil {
			return nil, fmt.Errorf("signer %s: %w", name, err)
		}
	}
	c.pubPath = filepath.Join(e.dir, "key.pub.pem")
	if _, err := e.cli(ctx, "keygen", "--config", "a.yaml", "--threshold", fmt.Sprint(t), "--out", c.pubPath,
		"--admin-cert", "pki/admin.pem", "--admin-key", "pki/admin-key.pem"); err != nil {
		return nil, err
	}
	return c, nil
}

// presignReady reports whether every node's pool holds depth entries.
func (c *signerCluster) presignReady(depth int) bool {
	for _, h := range c.http {
		resp, err := (&http.Client{Timeout: 2 * time.Second}).Get("http://" + h + "/status")
		if err != nil {
			return false
		}
		var st peerwire.StatusResponse
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if err != nil || len(st.Keys) != 1 || st.Keys[0].Presignatures < depth {
			return false
		}
	}
	return true
}

// startEdge runs an edge for certPath with the given --signer and returns
// its address. signTimeout 0 means 60 s; extra flags come last, so they win.
func (e *env) startEdge(ctx context.Context, name, certPath, signer string, signTimeout time.Duration, extra ...string) (string, error) {
	addrs, err := freePorts(1)
	if err != nil {
		return "", err
	}
	site := filepath.Join(e.dir, "www")
	if err := os.MkdirAll(site, 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(site, "index.html"), []byte("tkeyless loadtest\n"), 0o644); err != nil {
		return "", err
	}
	// Deadlines far above a signature's cost: at high concurrency on two
	// cores a full handshake queues for seconds, and the point is to
	// measure that, not to fail it.
	if signTimeout == 0 {
		signTimeout = 60 * time.Second
	}
	// Shedding off by default: the closed-loop matrix measures queueing, not refusals.
	args := []string{"serve", "--listen", addrs[0], "--cert", certPath, "--signer", signer, "--static", site, "--log-level", "warn", "--sign-timeout", signTimeout.String(), "--shed=false"}
	if strings.HasPrefix(signer, "keyless://") {
		args = append(args, "--keyless-cert", "pki/edge.pem", "--keyless-key", "pki/edge-key.pem", "--keyless-ca", "pki/ca.pem")
	}
	args = append(args, extra...) // later flags win
	if err := e.start("edge-"+name, "edge", args...); err != nil {
		return "", err
	}
	return addrs[0], waitListening(ctx, addrs[0])
}

// startGokeyless runs an unmodified gokeyless key server in this process,
// holding key in memory: the Keyless SSL status quo.
func (e *env) startGokeyless(ctx context.Context, key *ecdsa.PrivateKey) (string, error) {
	if _, err := e.cli(ctx, "pki", "issue", "--dir", "pki", "--name", "gokeyless", "--role", "node"); err != nil {
		return "", err
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(e.dir, "pki", "gokeyless.pem"), filepath.Join(e.dir, "pki", "gokeyless-key.pem"))
	if err != nil {
		return "", err
	}
	caPEM, err := os.ReadFile(filepath.Join(e.dir, "pki", "ca.pem"))
	if err != nil {
		return "", err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	// The stock server logs every request at info level.
	cflog.Level = cflog.LevelCritical
	srv, err := gkserver.NewServer(nil, cert, pool)
	if err != nil {
		return "", err
	}
	keys := gkserver.NewDefaultKeystore()
	if err := keys.Add(nil, key); err != nil {
		return "", err
	}
	srv.SetKeystore(keys)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	done := make(chan struct{})
	go func() { _ = srv.Serve(l); close(done) }()
	e.stops = append(e.stops, func() { srv.Close(); <-done })
	return l.Addr().String(), nil
}
