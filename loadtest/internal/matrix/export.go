package matrix

import (
	"context"
	"crypto/x509"
	"time"
)

// The exported face below lets another harness (loadtest/internal/wan)
// launch the same clusters and edges as the matrix, without a second copy
// of the launching code.

// Env is a directory of processes started for one measurement: signers,
// edges, and the files they need. Close stops them.
type Env struct{ e *env }

// EnvOptions change how an Env's clusters are set up.
type EnvOptions struct {
	// PeerAddr, if not nil, rewrites the address at which each signer's
	// configuration lists each other signer (from's view of to, listening
	// on addr), e.g. to put a proxy on every directed link.
	PeerAddr func(from, to, addr string) (string, error)
	// SignerYAML is appended to every signer's configuration (top-level
	// keys, each line ending in a newline).
	SignerYAML string
}

// NewEnv prepares dir (which must exist) for processes run from the
// binaries in bin, with the test pre-parameters of the repository at repo.
func NewEnv(bin, repo, dir string, o EnvOptions) *Env {
	return &Env{e: &env{bin: bin, repo: repo, dir: dir, peerAddr: o.PeerAddr, signerYAML: o.SignerYAML}}
}

// Close stops every process (SIGINT, then SIGKILL after 5 s).
func (x *Env) Close() { x.e.close() }

// PKI makes the development cluster CA, an admin and the edge's identity.
func (x *Env) PKI(ctx context.Context) error { return x.e.pki(ctx) }

// Cluster is a running (t,n) signer cluster with one key.
type Cluster struct {
	Names   []string // node names, in order
	Keyless []string // each node's keyless endpoint, in the same order
	PubPath string   // the key's public key (PEM)
	c       *signerCluster
}

// StartCluster starts n signers and makes a (t,n) key; presignDepth 0
// turns presigning off.
func (x *Env) StartCluster(ctx context.Context, t, n, presignDepth int) (*Cluster, error) {
	c, err := x.e.startCluster(ctx, t, n, presignDepth)
	if err != nil {
		return nil, err
	}
	return &Cluster{Names: c.names, Keyless: c.keyless, PubPath: c.pubPath, c: c}, nil
}

// PresignReady reports whether every node's pool holds depth presignatures.
func (c *Cluster) PresignReady(depth int) bool { return c.c.presignReady(depth) }

// StartEdge runs an edge serving certPath with the given --signer and
// --sign-timeout (0: 60 s) and returns its HTTPS address once it listens.
func (x *Env) StartEdge(ctx context.Context, name, certPath, signer string, signTimeout time.Duration) (string, error) {
	return x.e.startEdge(ctx, name, certPath, signer, signTimeout)
}

// WebCA issues the sites' certificates and is what clients trust.
type WebCA struct{ ca *webCA }

// NewWebCA makes a fresh CA (one day).
func NewWebCA() (*WebCA, error) {
	ca, err := newWebCA()
	return &WebCA{ca: ca}, err
}

// Issue writes a certificate for localhost and 127.0.0.1 with key pub.
func (w *WebCA) Issue(pub any, path string) error { return w.ca.issue(pub, path) }

// Pool is the CA as a root pool for clients.
func (w *WebCA) Pool() *x509.CertPool { return w.ca.pool }

// ReadPublicKey reads a PEM public key.
func ReadPublicKey(path string) (any, error) { return readPublicKey(path) }

// ThisMachine describes the machine measuring, now.
func ThisMachine() Machine { return thisMachine() }

// Poll calls cond every 100 ms until it holds or limit passes.
func Poll(ctx context.Context, limit time.Duration, cond func() bool) error {
	return poll(ctx, limit, cond)
}
