package node

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudflare/gokeyless/protocol"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/test/bufconn"

	"github.com/tkeyless/tkeyless/internal/authority"
	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/internal/pki"
	"github.com/tkeyless/tkeyless/tss"
)

// testCluster is a whole signer cluster in one test process: real nodes
// (New, Serve), real gRPC with mutual TLS from a real cluster CA, real
// GG18, over in-memory connections (bufconn) instead of TCP. It is how
// node's rules are tested one by one, without processes.
type testCluster struct {
	t     testing.TB
	dir   string
	ca    *pki.CA
	nodes map[string]*Node
	cfgs  map[string]Config
	lisMu sync.Mutex
	lis   map[string]*bufconn.Listener
	stop  map[string]context.CancelFunc
	done  map[string]chan error
	// admin and edge are the operator's and an edge's identities.
	admin *authority.Signer
	edge  *authority.Signer
	key   tss.KeyID
	// logs holds each node's log lines (JSON), across restarts.
	logs map[string]*lockedBuffer
}

// lockedBuffer is a log destination that tests read while nodes write.
type lockedBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	return len(p), nil
}

// lines returns the log lines written so far.
func (l *lockedBuffer) lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Split(strings.TrimSpace(string(l.b)), "\n")
}

// clusterOpts adjusts every node's configuration before it starts.
type clusterOpts func(*Config)

// newTestCluster starts nodes (named a, b, c, … in order, at most four:
// there are four committed test pre-parameters) with no key yet.
func newTestCluster(t testing.TB, names []string, opts ...clusterOpts) *testCluster {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.InitCA(filepath.Join(dir, "pki"), "node test CA")
	if err != nil {
		t.Fatal(err)
	}
	c := &testCluster{t: t, dir: dir, ca: ca, nodes: map[string]*Node{}, cfgs: map[string]Config{}, lis: map[string]*bufconn.Listener{},
		stop: map[string]context.CancelFunc{}, done: map[string]chan error{}, logs: map[string]*lockedBuffer{}}
	c.admin = c.identity("admin", pki.RoleAdmin)
	c.edge = c.identity("edge", pki.RoleEdge)
	for i, name := range names {
		pkiDir := filepath.Join(dir, "pki")
		certPath, keyPath, err := ca.IssueIdentity(pkiDir, name, pki.RoleNode, nil)
		if err != nil {
			t.Fatal(err)
		}
		cfg := Config{
			Name: name, DataDir: filepath.Join(dir, name), PeerListen: "passthrough:///" + name,
			TLS:          TLSFiles{CA: filepath.Join(pkiDir, "ca.pem"), Cert: certPath, Key: keyPath},
			Secrets:      Secrets{KeyFile: filepath.Join(dir, name+".key")},
			SignTimeout:  Duration(30 * time.Second),
			StallTimeout: Duration(10 * time.Second),
		}
		for _, o := range names {
			if o != name {
				cfg.Peers = append(cfg.Peers, Peer{Name: o, Addr: "passthrough:///" + o})
			}
		}
		for _, o := range opts {
			o(&cfg)
		}
		if err := tss.GenerateKeyFile(cfg.Secrets.KeyFile); err != nil {
			t.Fatal(err)
		}
		sealer, err := cfg.Sealer()
		if err != nil {
			t.Fatal(err)
		}
		pp, err := tss.LoadPreParams(filepath.Join("..", "tss", "testdata", "preparams", fmt.Sprintf("party-%d.json", i)), nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := tss.SavePreParams(filepath.Join(cfg.DataDir, "preparams.age"), pp, sealer); err != nil {
			t.Fatal(err)
		}
		c.cfgs[name] = cfg
	}
	for _, name := range names {
		c.start(name)
	}
	t.Cleanup(func() {
		for name := range c.nodes {
			c.halt(name)
		}
	})
	return c
}

// identity issues an identity of role and loads it as an authority signer.
func (c *testCluster) identity(name string, role pki.Role) *authority.Signer {
	c.t.Helper()
	certPath, keyPath, err := c.ca.IssueIdentity(filepath.Join(c.dir, "pki"), name, role, nil)
	if err != nil {
		c.t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		c.t.Fatal(err)
	}
	return &authority.Signer{Cert: pair.Leaf, Key: pair.PrivateKey.(crypto.Signer)}
}

func (c *testCluster) dial(ctx context.Context, addr string) (net.Conn, error) {
	c.lisMu.Lock()
	l := c.lis[addr]
	c.lisMu.Unlock()
	if l == nil {
		return nil, fmt.Errorf("no node at %q", addr)
	}
	return l.DialContext(ctx)
}

func (c *testCluster) listener(name string) *bufconn.Listener {
	c.lisMu.Lock()
	defer c.lisMu.Unlock()
	if c.lis[name] == nil {
		c.lis[name] = bufconn.Listen(1 << 20)
	}
	return c.lis[name]
}

// start (re)starts node name on its in-memory listener.
func (c *testCluster) start(name string) {
	c.t.Helper()
	peerL := c.listener(name)
	if c.logs[name] == nil {
		c.logs[name] = &lockedBuffer{}
	}
	n, err := newNode(c.cfgs[name], zerolog.New(c.logs[name]).Level(zerolog.InfoLevel), c.dial)
	if err != nil {
		c.t.Fatalf("node %s: %v", name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	keylessL := bufconn.Listen(1 << 16)
	go func() { done <- n.Serve(ctx, peerL, keylessL) }()
	c.nodes[name], c.stop[name], c.done[name] = n, cancel, done
}

// halt stops node name and waits for it to be gone.
func (c *testCluster) halt(name string) {
	if c.stop[name] == nil {
		return
	}
	c.stop[name]()
	<-c.done[name]
	c.nodes[name].verifier.Close()
	delete(c.stop, name)
	c.lisMu.Lock()
	c.lis[name] = nil // a listener, once closed, stays closed
	c.lisMu.Unlock()
}

// restart stops and starts node name, as a process restart would.
func (c *testCluster) restart(name string) {
	c.t.Helper()
	c.halt(name)
	c.start(name)
}

// keygen makes the cluster's key among parties (all nodes when none).
func (c *testCluster) keygen(threshold int, parties ...string) tss.KeyID {
	c.t.Helper()
	if len(parties) == 0 {
		for name := range c.nodes {
			parties = append(parties, name)
		}
	}
	slices.Sort(parties)
	auth, err := c.admin.SignStatement(peerwire.KeygenStatement(threshold, parties))
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	resp, err := c.nodes[parties[0]].Keygen(ctx, &peerwire.KeygenCeremonyRequest{Threshold: threshold, Parties: parties, Authority: auth})
	if err != nil {
		c.t.Fatalf("keygen: %v", err)
	}
	id, err := tss.ParseKeyID(resp.Key)
	if err != nil {
		c.t.Fatal(err)
	}
	c.key = id
	return id
}

// signRequest is an edge's request for digest, with its authority.
func (c *testCluster) signRequest(digest []byte) SignRequest {
	c.t.Helper()
	a, err := c.edge.Sign(authority.Request{Op: byte(protocol.OpECDSASignSHA256), SKI: c.key, Digest: digest})
	if err != nil {
		c.t.Fatal(err)
	}
	return SignRequest{Key: c.key, Hash: crypto.SHA256, Digest: digest, Edge: "edge", Authority: a}
}

// sign has coordinator sign a fresh digest and checks the signature.
func (c *testCluster) sign(coordinator, what string) error {
	c.t.Helper()
	d := sha256.Sum256([]byte(what))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sig, err := c.nodes[coordinator].Sign(ctx, c.signRequest(d[:]))
	if err != nil {
		return err
	}
	share, _ := c.nodes[coordinator].share(c.key)
	if !ecdsa.VerifyASN1(share.PublicKey(), d[:], sig) {
		c.t.Fatalf("%s: signature does not verify", what)
	}
	return nil
}

// peerClient is a client to node to, speaking as node from (whose
// identity a test may play to misbehave).
func (c *testCluster) peerClient(from, to string) *peerwire.Client {
	c.t.Helper()
	cfg := c.cfgs[from]
	tc, err := pki.MutualTLS(cfg.TLS.CA, cfg.TLS.Cert, cfg.TLS.Key)
	if err != nil {
		c.t.Fatal(err)
	}
	return c.clientWith(tc, to)
}

// adminClient is a client to node to, speaking as the admin.
func (c *testCluster) adminClient(to string) *peerwire.Client {
	c.t.Helper()
	certPath, keyPath := filepath.Join(c.dir, "pki", "admin.pem"), filepath.Join(c.dir, "pki", "admin-key.pem")
	tc, err := pki.MutualTLS(c.cfgs[to].TLS.CA, certPath, keyPath)
	if err != nil {
		c.t.Fatal(err)
	}
	return c.clientWith(tc, to)
}

func (c *testCluster) clientWith(tc *tls.Config, to string) *peerwire.Client {
	tc.ServerName = to
	conn, err := grpc.NewClient("passthrough:///"+to, grpc.WithContextDialer(c.dial), grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { conn.Close() })
	return peerwire.NewClient(conn)
}

// waitFor polls cond until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// clientAs is a client to node to, speaking as the identity issued under
// name in the cluster's pki directory (an edge, the admin, a node).
func (c *testCluster) clientAs(name, to string) *peerwire.Client {
	c.t.Helper()
	certPath, keyPath := filepath.Join(c.dir, "pki", name+".pem"), filepath.Join(c.dir, "pki", name+"-key.pem")
	tc, err := pki.MutualTLS(c.cfgs[to].TLS.CA, certPath, keyPath)
	if err != nil {
		c.t.Fatal(err)
	}
	return c.clientWith(tc, to)
}

// resetHealth makes node name forget the failures and cool-downs it
// recorded for its peers, so that one test's blame does not steer the
// next one's quorums.
func (c *testCluster) resetHealth(name string) {
	for _, p := range c.nodes[name].peers {
		p.health.mu.Lock()
		p.health.failures, p.health.coolUntil = 0, time.Time{}
		p.health.mu.Unlock()
	}
}

// coolDown makes node name avoid peer in its quorums for a minute, as
// repeated failures would: a test uses it to decide which member a
// coordinator picks first.
func (c *testCluster) coolDown(name, peer string) {
	h := c.nodes[name].peers[peer].health
	h.mu.Lock()
	h.coolUntil = time.Now().Add(time.Minute)
	h.mu.Unlock()
}

// digest is the SHA-256 of what, as an edge would send it.
func digest(what string) []byte {
	d := sha256.Sum256([]byte(what))
	return d[:]
}

// metricValue reads one series of node n's metrics (a counter or gauge),
// selected by label pairs; 0 if the series does not exist yet.
func metricValue(t testing.TB, n *Node, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := n.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, l := range m.GetLabel() {
					if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue series
				}
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}
