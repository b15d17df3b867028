package main

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/cloudflare/gokeyless/protocol"
	"github.com/rs/zerolog"

	"github.com/tkeyless/tkeyless/keyless"
	"github.com/tkeyless/tkeyless/tlsglue"
)

// keylessSource is the key source of a keyless:// signer whose identity (--keyless-cert,
// --keyless-key, --keyless-ca) can be replaced while the edge serves.
//
// A reload builds a whole new keyless.Client from the files rather than swapping the
// certificate inside one: the client derives the authority it signs every request with from the
// identity's key when it is made (keyless.IdentityAuthority), and its pooled connections carry
// the identity they were opened with. A new client makes both follow the reload at once, and
// the next signature opens fresh connections under the new identity. Each signature picks the
// client current when it starts and holds it until it returns; a replaced client is closed when
// its last signature has returned, so requests in flight finish on the connections they began
// on, and a long-lived signer (the ACME CSR signer) follows reloads too.
type keylessSource struct {
	ref     keyRef
	files   keylessTLS
	timeout time.Duration
	log     zerolog.Logger

	mu      sync.Mutex
	current *generation
	closed  bool
}

// generation is one client and the signatures and pings in flight on it.
type generation struct {
	client   *keyless.Client
	identity *x509.Certificate // its client certificate
	inflight int               // guarded by keylessSource.mu
	retired  bool              // replaced: close once inflight is 0
}

func newKeylessSource(ref keyRef, files keylessTLS, timeout time.Duration, log zerolog.Logger) (*keylessSource, error) {
	s := &keylessSource{ref: ref, files: files, timeout: timeout, log: log}
	g, err := s.open()
	if err != nil {
		return nil, err
	}
	s.current = g
	return s, nil
}

// open reads the identity files and makes a client with them.
func (s *keylessSource) open() (*generation, error) {
	tc, err := s.files.config()
	if err != nil {
		return nil, err
	}
	id := tc.Certificates[0].Leaf // set by tls.LoadX509KeyPair
	if id == nil {
		if id, err = x509.ParseCertificate(tc.Certificates[0].Certificate[0]); err != nil {
			return nil, fmt.Errorf("--keyless-cert %s: %w", s.files.cert, err)
		}
	}
	client, err := keyless.NewClient(keyless.ClientConfig{
		Endpoints: s.ref.endpoints,
		TLS:       tc,
		Timeout:   s.timeout,
		Logger:    s.log.With().Str("component", "keyless").Logger(),
	})
	if err != nil {
		return nil, fmt.Errorf("--signer %s: %w", s.ref, err)
	}
	return &generation{client: client, identity: id}, nil
}

// acquire returns the current generation, counted in flight until release.
func (s *keylessSource) acquire() (*generation, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("keyless signer: the edge is shutting down")
	}
	s.current.inflight++
	return s.current, nil
}

func (s *keylessSource) release(g *generation) {
	s.mu.Lock()
	g.inflight--
	done := g.retired && g.inflight == 0
	s.mu.Unlock()
	if done {
		g.client.Close()
	}
}

// Signer is tlsglue.KeySource. The signer it returns asks, at each Sign, whichever client is
// current then.
func (s *keylessSource) Signer(ctx context.Context, pub crypto.PublicKey) (crypto.Signer, error) {
	return s.signer(ctx, pub, nil)
}

// SignerSKI is tlsglue.SKIKeySource: Signer for a key whose SKI the caller computed once, when
// it loaded the certificate, so a handshake does not hash the public key again.
func (s *keylessSource) SignerSKI(ctx context.Context, pub crypto.PublicKey, ski protocol.SKI) (crypto.Signer, error) {
	return s.signer(ctx, pub, &ski)
}

// signer is Signer, with the key's SKI if known (nil: computed here, once for the signer).
func (s *keylessSource) signer(ctx context.Context, pub crypto.PublicKey, ski *protocol.SKI) (crypto.Signer, error) {
	g, err := s.acquire()
	if err != nil {
		return nil, err
	}
	s.release(g)
	if _, err := keyless.CheckKey(pub); err != nil { // the key type now, not at Sign
		return nil, err
	}
	if ski == nil {
		id, err := protocol.GetSKI(pub)
		if err != nil {
			return nil, fmt.Errorf("keyless signer: key id: %w", err)
		}
		ski = &id
	}
	return &reloadingSigner{s: s, ctx: ctx, pub: pub, ski: *ski}, nil
}

// reloadingSigner is the crypto.Signer of keylessSource.Signer.
type reloadingSigner struct {
	s   *keylessSource
	ctx context.Context
	pub crypto.PublicKey
	ski protocol.SKI // pub's
}

func (r *reloadingSigner) Public() crypto.PublicKey { return r.pub }

// Sign asks the current client, as the signer of keyless.Client.Signer would (rand is ignored:
// the randomness is the signers').
func (r *reloadingSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	g, err := r.s.acquire()
	if err != nil {
		return nil, err
	}
	defer r.s.release(g)
	if opts == nil {
		return nil, fmt.Errorf("keyless sign with key %s: no signer options (hash)", r.ski)
	}
	return g.client.Sign(r.ctx, r.ski, opts.HashFunc(), digest)
}

// Identity is the client certificate presented to signers now.
func (s *keylessSource) Identity() *x509.Certificate {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current.identity
}

// Ping asks one endpoint for a pong through the current client.
func (s *keylessSource) Ping(ctx context.Context, endpoint string) error {
	g, err := s.acquire()
	if err != nil {
		return err
	}
	defer s.release(g)
	return g.client.Ping(ctx, endpoint)
}

// Reload reads the identity files again. On any error (a file missing, corrupt, a key that does
// not match its certificate) the current identity stays in use and the error says which file.
func (s *keylessSource) Reload() (*x509.Certificate, error) {
	g, err := s.open()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		g.client.Close()
		return nil, errors.New("keyless identity reload: the edge is shutting down")
	}
	old := s.current
	s.current = g
	old.retired = true
	idle := old.inflight == 0
	s.mu.Unlock()
	if idle {
		old.client.Close()
	}
	return g.identity, nil
}

// Close closes the current client; a replaced one still in use closes when its last signature
// returns.
func (s *keylessSource) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	g := s.current
	g.retired = true
	idle := g.inflight == 0
	s.mu.Unlock()
	if idle {
		return g.client.Close()
	}
	return nil
}

var _ tlsglue.SKIKeySource = (*keylessSource)(nil)

// currentClient is the client new signatures use (for tests).
func (s *keylessSource) currentClient() *keyless.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current.client
}
