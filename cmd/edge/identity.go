package main

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

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
// the next handshake opens fresh connections under the new identity. The old client is closed
// only after every handshake that could still be using it has passed its deadline (drain: the
// handshake timeout, since a handshake's signer is bound to a context that ends by then), so
// requests in flight finish.
type keylessSource struct {
	ref     keyRef
	files   keylessTLS
	timeout time.Duration // per signature, and the bound of any handshake in flight
	drain   time.Duration
	log     zerolog.Logger

	mu       sync.Mutex
	current  *keyless.Client
	identity *x509.Certificate               // current's client certificate
	retired  map[*keyless.Client]*time.Timer // replaced clients, each closed when its timer fires
	closed   bool
}

func newKeylessSource(ref keyRef, files keylessTLS, timeout time.Duration, log zerolog.Logger) (*keylessSource, error) {
	s := &keylessSource{ref: ref, files: files, timeout: timeout, drain: timeout + time.Second, log: log,
		retired: map[*keyless.Client]*time.Timer{}}
	c, id, err := s.open()
	if err != nil {
		return nil, err
	}
	s.current, s.identity = c, id
	return s, nil
}

// open reads the identity files and makes a client with them.
func (s *keylessSource) open() (*keyless.Client, *x509.Certificate, error) {
	tc, err := s.files.config()
	if err != nil {
		return nil, nil, err
	}
	id := tc.Certificates[0].Leaf // tls.LoadX509KeyPair parses it
	client, err := keyless.NewClient(keyless.ClientConfig{
		Endpoints: s.ref.endpoints,
		TLS:       tc,
		Timeout:   s.timeout,
		Logger:    s.log.With().Str("component", "keyless").Logger(),
	})
	if err != nil {
		return nil, nil, fmt.Errorf("--signer %s: %w", s.ref, err)
	}
	return client, id, nil
}

// Signer is tlsglue.KeySource: the current client's signer, used for one handshake.
func (s *keylessSource) Signer(ctx context.Context, pub crypto.PublicKey) (crypto.Signer, error) {
	return s.client().Signer(ctx, pub)
}

func (s *keylessSource) client() *keyless.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current
}

// Identity is the client certificate presented to signers now.
func (s *keylessSource) Identity() *x509.Certificate {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.identity
}

// Ping asks one endpoint for a pong through the current client.
func (s *keylessSource) Ping(ctx context.Context, endpoint string) error {
	return s.client().Ping(ctx, endpoint)
}

// Reload reads the identity files again. On any error (a file missing, corrupt, a key that does
// not match its certificate) the current identity stays in use and the error says which file.
func (s *keylessSource) Reload() (*x509.Certificate, error) {
	c, id, err := s.open()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		c.Close()
		return nil, errors.New("keyless identity reload: the edge is shutting down")
	}
	old := s.current
	s.current, s.identity = c, id
	s.retired[old] = time.AfterFunc(s.drain, func() {
		old.Close()
		s.mu.Lock()
		delete(s.retired, old)
		s.mu.Unlock()
	})
	return id, nil
}

// Close closes the current client and every replaced one still draining.
func (s *keylessSource) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	for c, t := range s.retired {
		t.Stop()
		c.Close() // idempotent, should its timer have fired already
	}
	return s.current.Close()
}

var _ tlsglue.KeySource = (*keylessSource)(nil)
