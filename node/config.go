package node

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/tkeyless/tkeyless/tss"
)

// Config is one signer node's configuration, usually read from a YAML file
// (see examples/signer.yaml).
type Config struct {
	// Name is the node's name in the cluster: its certificate's common
	// name, and its party name in every ceremony. Never reuse a name for a
	// different node: shares are bound to it.
	Name string `yaml:"name"`
	// DataDir holds the node's shares and pre-parameters (mode 0700).
	DataDir string `yaml:"data_dir"`
	// PeerListen is where other signers reach this node (gRPC, mTLS).
	PeerListen string `yaml:"peer_listen"`
	// KeylessListen is where edges send keyless requests (mTLS).
	KeylessListen string `yaml:"keyless_listen"`
	// HTTPListen, if set, serves /healthz (for load balancers), /metrics
	// (Prometheus) and /status (JSON) over plain HTTP: bind it to a
	// private address.
	HTTPListen string `yaml:"http_listen"`
	// MaxQueue bounds the signing requests this node coordinates at once,
	// waiting for a session slot or running; past it a request fails at
	// once with "overloaded" and the edge tries another signer (default 64).
	MaxQueue int `yaml:"max_queue"`
	// MaxConcurrentSessions bounds the signing sessions computing on this
	// node at once, coordinated or joined (default: the number of CPUs).
	// Requests this node coordinates beyond it wait in max_queue, in
	// arrival order, fairly shared between identities; sessions it joins
	// as a member never wait (their coordinator already waited), but delay
	// its own queue. See admission.go.
	MaxConcurrentSessions int `yaml:"max_concurrent_sessions"`
	// MaxQueuePerIdentity bounds the requests any one edge (or admin)
	// identity may have in progress here, waiting or running, so that one
	// flooded or compromised edge cannot fill max_queue (default half of
	// max_queue, at least 1).
	MaxQueuePerIdentity int `yaml:"max_queue_per_identity"`
	// IdentityQueue overrides max_queue_per_identity for named identities
	// (certificate common names), e.g. a large edge: {edge-fra: 48}.
	IdentityQueue map[string]int `yaml:"identity_queue"`
	// MaxSessions bounds the sessions this node takes part in at once,
	// coordinated or joined (default 128). Ready presignatures do not
	// count: presign.depth bounds them.
	MaxSessions int `yaml:"max_sessions"`
	// MaxSessionsPerPeer bounds the sessions any one coordinator (this
	// node included) may have live here at once, so that a node flooding
	// Prepares, compromised or broken, takes only its own share (default
	// max_sessions divided by the number of nodes, at least 8).
	MaxSessionsPerPeer int `yaml:"max_sessions_per_peer"`
	// AbortBudget is how many signing sessions with one key may fail on
	// this node without naming a culprit before the key is suspended here
	// until an admin resumes it (default 10). An honest cluster never has
	// such aborts; a member probing for secrets causes them.
	AbortBudget int `yaml:"abort_budget"`
	// Secrets says how the node's shares and pre-parameters are encrypted
	// at rest: an age key file, or a passphrase (from a file, or the
	// TKEYLESS_PASSPHRASE environment variable). One is required.
	Secrets Secrets `yaml:"secrets"`
	// TLS is the node's identity and the cluster CA.
	TLS TLSFiles `yaml:"tls"`
	// Peers are the other signers of the cluster.
	Peers []Peer `yaml:"peers"`
	// SignTimeout bounds one signing session when the request carries no
	// earlier deadline.
	SignTimeout Duration `yaml:"sign_timeout"`
	// StallTimeout is how long a signing session on an idle node waits for
	// any message before it blames the members it waits for and the
	// coordinator retries without them (default 2s; it grows with load).
	StallTimeout Duration `yaml:"stall_timeout"`
	// KeygenTimeout bounds a key generation ceremony.
	KeygenTimeout Duration `yaml:"keygen_timeout"`
	// Access grants edge (and admin) identities the use of keys. Every
	// member of a signing session checks it on its own. Empty means every
	// edge or admin identity of the cluster CA may use every key, with
	// end-to-end request authority: convenient for a first cluster, too
	// broad for production.
	Access []Grant `yaml:"access"`
	// Revocation lists identities refused although the cluster CA issued
	// them (a CRL from the CA, or a plain list of names and serials); see
	// revocation.go. Reloaded on SIGHUP with tls and access.
	Revocation Revocation `yaml:"revocation"`
	// AuthorityWindow is how far the time in an edge's request authority
	// may be from this node's clock (default 30s).
	AuthorityWindow Duration `yaml:"authority_window"`
	// Presign keeps presignatures ready so that a full handshake waits
	// only for GG18's online rounds (milliseconds instead of hundreds of
	// them). Off unless Depth is set; see docs/presigning.md for what an
	// operator gives up.
	Presign PresignConfig `yaml:"presign"`
}

// PresignConfig is this node's presignature pool.
type PresignConfig struct {
	// Depth is how many ready presignatures this node keeps per key for
	// the requests it coordinates (0, the default, turns presigning off).
	// Each one holds a little state in memory on every quorum member.
	Depth int `yaml:"depth"`
	// MaxAge is how long a presignature may wait for a request before it
	// is destroyed unused (default 10m).
	MaxAge Duration `yaml:"max_age"`
}

// Grant lets one identity use some keys.
type Grant struct {
	// Identity is the certificate common name of an edge or admin.
	Identity string `yaml:"identity"`
	// Keys are key ids (hex SKI), or "*" for every key.
	Keys []string `yaml:"keys"`
	// Legacy accepts requests from this identity without end-to-end
	// authority, as stock gokeyless clients send them. Members then trust
	// the coordinator's word for who asked and for the digest: a single
	// compromised signer can sign anything this identity may. Use only to
	// migrate clients that cannot be changed.
	Legacy bool `yaml:"legacy"`
}

// Secrets names the key that encrypts a node's secrets at rest.
type Secrets struct {
	// KeyFile is an age X25519 identity (`signer secrets-key` makes one).
	// Keep it off the disk that holds the data directory if you can.
	KeyFile string `yaml:"key_file"`
	// PassphraseFile holds a passphrase (scrypt; about a second per file).
	PassphraseFile string `yaml:"passphrase_file"`
}

// Sealer builds the encryption of a node's secrets from its settings.
func (c *Config) Sealer() (*tss.Sealer, error) {
	switch {
	case c.Secrets.KeyFile != "":
		return tss.NewKeyFileSealer(c.Secrets.KeyFile)
	case c.Secrets.PassphraseFile != "":
		b, err := os.ReadFile(c.Secrets.PassphraseFile)
		if err != nil {
			return nil, fmt.Errorf("secrets passphrase: %w", err)
		}
		return tss.NewPassphraseSealer(string(b))
	case os.Getenv("TKEYLESS_PASSPHRASE") != "":
		return tss.NewPassphraseSealer(os.Getenv("TKEYLESS_PASSPHRASE"))
	}
	return nil, errors.New("no secrets key: set secrets.key_file (make one with `signer secrets-key`), secrets.passphrase_file, or TKEYLESS_PASSPHRASE")
}

// TLSFiles names PEM files.
type TLSFiles struct {
	CA   string `yaml:"ca"`
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// Peer is another signer.
type Peer struct {
	Name string `yaml:"name"`
	Addr string `yaml:"addr"`
}

// Duration is a time.Duration written as "5s" in YAML.
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes a Go duration string.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// LoadConfig reads a YAML config file; relative paths in it are taken
// relative to the file's directory.
func LoadConfig(path string) (Config, error) { return LoadConfigWith(path, nil) }

// LoadConfigWith is LoadConfig with override (the command line) applied to
// what the file says before the defaults that derive from other settings
// are filled in (max_queue_per_identity from max_queue, say) and the
// result is validated.
func LoadConfigWith(path string, override func(*Config)) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	base := filepath.Dir(path)
	for _, p := range []*string{&c.DataDir, &c.TLS.CA, &c.TLS.Cert, &c.TLS.Key, &c.Secrets.KeyFile, &c.Secrets.PassphraseFile, &c.Revocation.CRL, &c.Revocation.List} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
	if override != nil {
		override(&c)
	}
	c.setDefaults()
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

func (c *Config) setDefaults() {
	if c.SignTimeout == 0 {
		c.SignTimeout = Duration(10 * time.Second)
	}
	if c.StallTimeout == 0 {
		c.StallTimeout = Duration(2 * time.Second)
	}
	if c.MaxQueue == 0 {
		c.MaxQueue = 64
	}
	if c.MaxSessions == 0 {
		c.MaxSessions = 128
	}
	if c.MaxConcurrentSessions == 0 {
		c.MaxConcurrentSessions = runtime.NumCPU()
	}
	if c.MaxQueuePerIdentity == 0 {
		c.MaxQueuePerIdentity = max(1, c.MaxQueue/2)
	}
	if c.MaxSessionsPerPeer == 0 {
		c.MaxSessionsPerPeer = max(8, c.MaxSessions/(len(c.Peers)+1))
	}
	if c.AbortBudget == 0 {
		c.AbortBudget = 10
	}
	if c.AuthorityWindow == 0 {
		c.AuthorityWindow = Duration(30 * time.Second)
	}
	if c.KeygenTimeout == 0 {
		c.KeygenTimeout = Duration(2 * time.Minute)
	}
	if c.Presign.MaxAge == 0 {
		c.Presign.MaxAge = Duration(10 * time.Minute)
	}
}

// identityQueueLimit is how many requests identity may have in progress
// here.
func (c *Config) identityQueueLimit(identity string) int {
	if q, ok := c.IdentityQueue[identity]; ok {
		return q
	}
	return c.MaxQueuePerIdentity
}

// Validate reports the first missing or inconsistent setting.
func (c *Config) Validate() error {
	var errs []error
	if c.MaxSessions < 0 || c.MaxSessionsPerPeer < 0 || c.MaxQueue < 0 || c.MaxConcurrentSessions < 0 || c.MaxQueuePerIdentity < 0 {
		errs = append(errs, errors.New("max_queue, max_queue_per_identity, max_concurrent_sessions, max_sessions and max_sessions_per_peer must be positive"))
	}
	for id, q := range c.IdentityQueue {
		if id == "" || q <= 0 {
			errs = append(errs, fmt.Errorf("identity_queue %q: %d: want an identity and a positive number", id, q))
		}
	}
	if c.AbortBudget < 0 {
		errs = append(errs, fmt.Errorf("abort_budget %d: want at least 1", c.AbortBudget))
	}
	if c.Presign.Depth < 0 || c.Presign.Depth > 64 {
		errs = append(errs, fmt.Errorf("presign.depth %d: want 0 (off) to 64", c.Presign.Depth))
	}
	if c.Name == "" {
		errs = append(errs, errors.New("name is required"))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("data_dir is required"))
	}
	if c.PeerListen == "" {
		errs = append(errs, errors.New("peer_listen is required"))
	}
	if c.TLS.CA == "" || c.TLS.Cert == "" || c.TLS.Key == "" {
		errs = append(errs, errors.New("tls.ca, tls.cert and tls.key are required"))
	}
	seen := map[string]bool{c.Name: true}
	for _, p := range c.Peers {
		if p.Name == "" || p.Addr == "" {
			errs = append(errs, fmt.Errorf("peer %+v needs name and addr", p))
		}
		if seen[p.Name] {
			errs = append(errs, fmt.Errorf("peer name %q used twice (or is this node's own name)", p.Name))
		}
		seen[p.Name] = true
	}
	for _, g := range c.Access {
		if g.Identity == "" || len(g.Keys) == 0 {
			errs = append(errs, fmt.Errorf("access grant %+v needs identity and keys", g))
		}
	}
	return errors.Join(errs...)
}
