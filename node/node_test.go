package node

import (
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tkeyless/tkeyless/internal/authority"
	"github.com/tkeyless/tkeyless/tss"
)

// unitNode is a Node with its real rule-keeping parts (convictions, abort
// budget, key states, session router, presignature pool, pending
// resharings, metrics) on a temporary data directory, but no identity,
// shares or connections: for rules that need nothing more. Its peers exist
// by name and health only.
func unitNode(t testing.TB, name string, peers ...string) *Node {
	t.Helper()
	dir := t.TempDir()
	cfg := Config{Name: name, DataDir: dir}
	for _, p := range peers {
		cfg.Peers = append(cfg.Peers, Peer{Name: p, Addr: "passthrough:///" + p})
	}
	cfg.setDefaults()
	return unitNodeWith(t, cfg)
}

// unitNodeWith is unitNode with a configuration of the test's own (its
// defaults set).
func unitNodeWith(t testing.TB, cfg Config) *Node {
	t.Helper()
	n := &Node{
		cfg: cfg, log: zerolog.Nop(), shares: map[tss.KeyID]*tss.Share{}, peers: map[string]*peerConn{},
		sessions: newRouter(30 * time.Second), verifier: &authority.Verifier{}, pool: newPresignPool(),
	}
	n.metrics = newMetrics(func() float64 { return float64(n.sessions.count()) })
	n.admission = newAdmission(cfg, n.metrics)
	n.sessions.failed = n.sessionFailed
	var err error
	if n.keyState, err = loadKeyStates(keyStatePath(cfg.DataDir), n.verifyKeyState); err != nil {
		t.Fatal(err)
	}
	if n.convictions, err = loadConvictions(cfg.DataDir); err != nil {
		t.Fatal(err)
	}
	if n.budget, err = loadAbortBudget(cfg.DataDir, cfg.AbortBudget); err != nil {
		t.Fatal(err)
	}
	if n.pending, err = loadPendingReshares(cfg.DataDir); err != nil {
		t.Fatal(err)
	}
	if n.reshares, err = loadReshareHistory(cfg.DataDir); err != nil {
		t.Fatal(err)
	}
	for _, p := range cfg.Peers {
		n.peers[p.Name] = &peerConn{name: p.Name, addr: p.Addr, health: &peerHealth{}}
	}
	t.Cleanup(func() {
		n.sessions.mu.Lock()
		var ids []*session
		for _, s := range n.sessions.sessions {
			ids = append(ids, s)
		}
		n.sessions.mu.Unlock()
		for _, s := range ids {
			n.sessions.abort(s.id)
		}
	})
	return n
}

// fakeParty stands in for a tss session where a test is about what the
// node's transport lets through to a party, not about the protocol: it
// records what reaches it.
type fakeParty struct {
	mu        sync.Mutex
	delivered []string // senders, in order
	aborted   []*tss.SessionError
}

func (p *fakeParty) Deliver(from string, _ bool, _ []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.delivered = append(p.delivered, from)
	return nil
}

func (p *fakeParty) Abort(err *tss.SessionError) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.aborted = append(p.aborted, err)
}

func (p *fakeParty) counts() (delivered, aborted int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.delivered), len(p.aborted)
}

func (p *fakeParty) lastAbort() *tss.SessionError {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.aborted) == 0 {
		return nil
	}
	return p.aborted[len(p.aborted)-1]
}

// TestNewRefusesMisconfiguredNode: a node starts only as the node its
// certificate names, with a secrets key; New itself works on a valid
// configuration without contacting anyone.
func TestNewRefusesMisconfiguredNode(t *testing.T) {
	c := newTestCluster(t, []string{"a", "b"})
	good := c.cfgs["a"]
	good.DataDir = t.TempDir()
	for _, tc := range []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"nothing configured", func(cfg *Config) { *cfg = Config{} }, "name is required"},
		{"another node's name", func(cfg *Config) { cfg.Name = "b"; cfg.Peers = []Peer{{Name: "a", Addr: "x"}} }, `certificate is for "a" but config name is "b"`},
		{"an admin certificate", func(cfg *Config) {
			cfg.TLS.Cert, cfg.TLS.Key = filepath.Join(c.dir, "pki", "admin.pem"), filepath.Join(c.dir, "pki", "admin-key.pem")
		}, "role admin, want node"},
		{"no secrets key", func(cfg *Config) { cfg.Secrets = Secrets{} }, "no secrets key"},
		{"a peer named twice", func(cfg *Config) { cfg.Peers = append(cfg.Peers, cfg.Peers[0]) }, "used twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("TKEYLESS_PASSPHRASE", "")
			cfg := good
			cfg.Peers = append([]Peer(nil), good.Peers...)
			tc.change(&cfg)
			n, err := New(cfg, zerolog.Nop())
			if err == nil {
				n.verifier.Close()
				t.Fatalf("New accepted it")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error saying %q", err, tc.want)
			}
		})
	}
	n, err := New(good, zerolog.Nop())
	if err != nil {
		t.Fatalf("New with a valid configuration: %v", err)
	}
	defer n.verifier.Close()
	if len(n.Keys()) != 0 || len(n.peers) != 1 || n.peers["b"] == nil {
		t.Fatalf("new node: keys %v, peers %v", n.Keys(), n.peers)
	}
	for _, p := range n.peers {
		p.conn().Close()
	}
}

// TestPreParamsCache: pre-parameters come from data_dir once and are kept;
// a node without them says how to make them instead of starting a
// ceremony it cannot finish.
func TestPreParamsCache(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "secrets.key")
	if err := tss.GenerateKeyFile(keyFile); err != nil {
		t.Fatal(err)
	}
	sealer, err := tss.NewKeyFileSealer(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	pp, err := tss.LoadPreParams(filepath.Join("..", "tss", "testdata", "preparams", "party-0.json"), nil)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "preparams.age")
	if err := tss.SavePreParams(path, pp, sealer); err != nil {
		t.Fatal(err)
	}

	missing := newPreParamsCache(filepath.Join(dir, "none.age"), sealer)
	if _, err := missing.get(); err == nil || !strings.Contains(err.Error(), "signer preparams") {
		t.Fatalf("get without pre-parameters: %v, want the command that makes them", err)
	}

	c := newPreParamsCache(path, sealer)
	c.ensure(t.Context(), zerolog.Nop())
	got, err := c.get()
	if err != nil {
		t.Fatal(err)
	}
	if !c.started.IsZero() {
		t.Fatal("ensure started generating pre-parameters although they were on disk")
	}
	again, _ := c.get()
	if got != again {
		t.Fatal("pre-parameters were loaded twice")
	}
	c.err, c.p = errors.New("out of entropy"), nil
	if _, err := c.get(); err == nil || !strings.Contains(err.Error(), "out of entropy") {
		t.Fatalf("get after a failed generation: %v", err)
	}
}
