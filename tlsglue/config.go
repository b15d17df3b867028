package tlsglue

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudflare/gokeyless/protocol"
)

// KeySource yields the crypto.Signer for one handshake. Implementations: the keyless client
// (threshold cluster or stock gokeyless server) and an in-memory key (the load-test baseline).
//
// The context carries the handshake's deadline; a remote implementation must give up on the
// signature when it expires, so that a slow or missing signer fails one handshake instead of
// holding its connection. The returned signer is used for at most one Sign call, within ctx.
type KeySource interface {
	Signer(ctx context.Context, pub crypto.PublicKey) (crypto.Signer, error)
}

// SKIKeySource is a KeySource that names keys by their gokeyless SKI, as a keyless client does.
// ServerConfig computes the SKI of each served chain's key once, when the chain is loaded or
// reloaded, and hands it to SignerSKI on every handshake instead of calling Signer, so that the
// source does not hash the public key again for each signature.
type SKIKeySource interface {
	KeySource
	// SignerSKI is Signer for pub, whose SKI is ski.
	SignerSKI(ctx context.Context, pub crypto.PublicKey, ski protocol.SKI) (crypto.Signer, error)
}

// LocalKey is a KeySource for a private key held in this process. It exists to measure what the
// signer cluster costs (the load-test baseline) and for tests; a production edge never holds
// its key.
type LocalKey struct{ Key crypto.Signer }

// Signer returns the local key if it is the key for pub.
func (k LocalKey) Signer(_ context.Context, pub crypto.PublicKey) (crypto.Signer, error) {
	if k.Key == nil {
		return nil, errors.New("local key: no key loaded")
	}
	if eq, ok := k.Key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !eq.Equal(pub) {
		return nil, errors.New("local key: not the key of the certificate being served")
	}
	return k.Key, nil
}

// DefaultHandshakeTimeout is how long a handshake may wait for its signature when
// ServerOptions.HandshakeTimeout is zero.
const DefaultHandshakeTimeout = 5 * time.Second

// ServerOptions configures ServerConfig. Chain and Keys are required.
type ServerOptions struct {
	// Chain is the certificate chain served on every full handshake. Its leaf must hold an
	// ECDSA key: the TLS 1.2 suites offered are ECDHE-ECDSA only.
	Chain *Chain

	// More are further chains, each possibly for its own key: a handshake whose SNI one of
	// their leaves covers gets that chain (the first that does), any other gets Chain.
	More []*Chain

	// Keys yields the signer for each handshake that needs a signature. Resumed handshakes do
	// not ask it.
	Keys KeySource

	// HandshakeTimeout bounds the time from ClientHello to the signature, through the context
	// handed to Keys. Zero means DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration

	// Tickets, if set, shares session ticket keys across a fleet: derived from a secret every
	// edge holds and the current epoch (see TicketPolicy), so a ticket issued by one edge
	// resumes on any other. When nil, crypto/tls generates and rotates its own keys, and
	// tickets resume only on this process.
	Tickets *TicketPolicy

	// Context bounds background work the configuration does (ticket key rotation); default
	// context.Background.
	Context context.Context

	// Shed, if set, admits each signature a handshake needs (per-client budget, signatures in
	// flight); a shed handshake fails at once, before the key source is asked. Resumed
	// handshakes never reach it.
	Shed *Shedder

	// OnSign, if set, is called after every signature a handshake asked for, with its outcome
	// (a shed one too: its Err is a *ShedError). It runs on the handshake's goroutine and must
	// not block.
	OnSign func(SignEvent)

	// OnClientHello, if set, sees every ClientHello before the handshake goes on (the edge
	// keeps its SNI for the log). It runs on the handshake's goroutine and must not block. Use
	// it rather than replacing the returned config's GetConfigForClient, which carries the
	// ticket policy's per-connection state (see UseTicketPolicy).
	OnClientHello func(*tls.ClientHelloInfo)
}

// SignEvent describes one handshake signature, for health tracking and metrics.
type SignEvent struct {
	ServerName string        // SNI the client sent, empty if none
	Remote     string        // client address
	Key        string        // SKI of the key, hex
	Duration   time.Duration // time spent in Sign, Queued included
	Queued     time.Duration // of it, time spent waiting for a signing slot (ServerOptions.Shed)
	Err        error         // nil when the signer returned a signature; a *ShedError when shed
}

// ServerConfig returns the tls.Config for an edge: TLS 1.2 and 1.3, TLS 1.2 restricted to
// ECDHE-ECDSA with AES-GCM or ChaCha20-Poly1305, ALPN h2 and http/1.1, session tickets on.
//
// The certificate is picked in GetCertificate; its private key asks opts.Keys for the
// handshake's signer, with a context derived from the ClientHello's and bounded by
// HandshakeTimeout, so the handshake's deadline reaches the remote signing call. Only a
// handshake that needs a signature asks: resumed ones never reach the key source. Use the returned config with
// tls.NewListener or tls.Server; it is safe for concurrent handshakes.
func ServerConfig(opts ServerOptions) (*tls.Config, error) {
	cfg, _, err := ReloadableServerConfig(opts)
	return cfg, err
}

// ReloadableServerConfig is ServerConfig that also returns a function replacing the served
// chain: handshakes already under way finish with the chain they started with, new ones get the
// new chain, and no connection is dropped (what SIGHUP does in cmd/edge). The new chain's key
// must be one the key source can sign for.
func ReloadableServerConfig(opts ServerOptions) (*tls.Config, func(*Chain) error, error) {
	if opts.Chain == nil || opts.Chain.Leaf == nil {
		return nil, nil, errors.New("tls server config: no certificate chain")
	}
	if opts.Keys == nil {
		return nil, nil, errors.New("tls server config: no key source")
	}
	var set []*servedChain
	for _, c := range append([]*Chain{opts.Chain}, opts.More...) {
		if c == nil || c.Leaf == nil {
			return nil, nil, errors.New("tls server config: an empty certificate chain")
		}
		sc, err := newServedChain(c)
		if err != nil {
			return nil, nil, err
		}
		set = append(set, sc)
	}
	timeout := opts.HandshakeTimeout
	if timeout <= 0 {
		timeout = DefaultHandshakeTimeout
	}
	h := &handshakeKeys{
		keys:    opts.Keys,
		timeout: timeout,
		onSign:  opts.OnSign,
		shed:    opts.Shed,
	}
	h.skiKeys, _ = opts.Keys.(SKIKeySource)
	h.served.Store(&set)
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		// TLS 1.3 suites are not configurable in crypto/tls; its defaults apply.
		CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305,
		},
		NextProtos:     []string{"h2", "http/1.1"},
		GetCertificate: h.getCertificate,
	}
	if opts.OnClientHello != nil {
		seen := opts.OnClientHello
		cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			seen(hello)
			return nil, nil
		}
	}
	if opts.Tickets != nil {
		ctx := opts.Context
		if ctx == nil {
			ctx = context.Background()
		}
		if err := UseTicketPolicy(ctx, cfg, *opts.Tickets); err != nil {
			return nil, nil, fmt.Errorf("tls server config: %w", err)
		}
	}
	reload := func(c *Chain) error {
		if c == nil || c.Leaf == nil {
			return errors.New("reload: no certificate chain")
		}
		sc, err := newServedChain(c)
		if err != nil {
			return err
		}
		// Replace the chain the new one takes over from: the only one, or
		// the one for the same key that covers the new leaf's first name.
		h.mu.Lock()
		defer h.mu.Unlock()
		old := *h.served.Load()
		i := 0
		if len(old) > 1 {
			i = slices.IndexFunc(old, func(o *servedChain) bool { return o.ski == sc.ski && covers(o.leaf(), firstName(c.Leaf)) })
			if i < 0 {
				return fmt.Errorf("reload: no served chain for key %s covers %q; a new site needs a restart", sc.ski, firstName(c.Leaf))
			}
		}
		set := slices.Clone(old)
		set[i] = sc
		h.served.Store(&set)
		return nil
	}
	return cfg, reload, nil
}

func (s *servedChain) leaf() *x509.Certificate { return s.cert.Leaf }

// firstName is the name a leaf is first for: its first DNS name, IP, or common name.
func firstName(leaf *x509.Certificate) string {
	switch {
	case len(leaf.DNSNames) > 0:
		return leaf.DNSNames[0]
	case len(leaf.IPAddresses) > 0:
		return leaf.IPAddresses[0].String()
	}
	return leaf.Subject.CommonName
}

func covers(leaf *x509.Certificate, name string) bool {
	return name != "" && leaf.VerifyHostname(name) == nil
}

// servedChain is what a handshake serves: the chain and the key it names, with the key's SKI
// computed once, when the chain is loaded.
type servedChain struct {
	cert tls.Certificate // the chain, PrivateKey unset; copied per handshake
	pub  *ecdsa.PublicKey
	id   protocol.SKI // for an SKIKeySource
	ski  string       // id in hex, for events and errors
}

func newServedChain(c *Chain) (*servedChain, error) {
	pub, ok := c.Leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("tls server config: certificate %q has a %T key; the edge serves ECDSA certificates only",
			c.Leaf.Subject.String(), c.Leaf.PublicKey)
	}
	id, err := skiOf(pub)
	if err != nil {
		return nil, fmt.Errorf("tls server config: %w", err)
	}
	return &servedChain{cert: c.TLSCertificate(nil), pub: pub, id: id, ski: hex.EncodeToString(id[:])}, nil
}

// handshakeKeys binds each full handshake to a signer from the key source.
type handshakeKeys struct {
	served  atomic.Pointer[[]*servedChain] // the default first
	mu      sync.Mutex                     // serializes reloads
	keys    KeySource
	skiKeys SKIKeySource // keys, if it takes the SKI computed at load
	timeout time.Duration
	onSign  func(SignEvent)
	shed    *Shedder // nil: admit every signature
}

// signer asks the key source for the signer of sc's key, handing an SKIKeySource the SKI
// computed when sc was loaded.
func (h *handshakeKeys) signer(ctx context.Context, sc *servedChain) (crypto.Signer, error) {
	if h.skiKeys != nil {
		return h.skiKeys.SignerSKI(ctx, sc.pub, sc.id)
	}
	return h.keys.Signer(ctx, sc.pub)
}

var errHandshakeTimeout = errors.New("handshake timeout reached before the signature")

func (h *handshakeKeys) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	// The signature comes later in the handshake, after GetCertificate returns, so ctx outlives
	// this call. crypto/tls cancels hello.Context() when the handshake returns, which cancels
	// ctx and stops its timer.
	ctx, cancel := context.WithTimeoutCause(hello.Context(), h.timeout, errHandshakeTimeout)
	context.AfterFunc(hello.Context(), cancel)

	set := *h.served.Load()
	served := set[0]
	if hello.ServerName != "" {
		for _, sc := range set {
			if covers(sc.leaf(), hello.ServerName) {
				served = sc
				break
			}
		}
	}
	cert := served.cert
	cert.PrivateKey = &handshakeSigner{
		h:      h,
		served: served,
		ctx:    ctx,
		remote: remoteNetAddr(hello.Conn),
		event:  SignEvent{ServerName: hello.ServerName, Remote: remoteAddr(hello.Conn), Key: served.ski},
	}
	return &cert, nil
}

func remoteNetAddr(c net.Conn) net.Addr {
	if c == nil {
		return nil
	}
	return c.RemoteAddr()
}

func remoteAddr(c net.Conn) string {
	if c == nil || c.RemoteAddr() == nil {
		return ""
	}
	return c.RemoteAddr().String()
}

// handshakeSigner is the private key of one handshake. It asks the key source for a signer only
// when the handshake needs a signature: a TLS 1.2 handshake calls GetCertificate before it
// decides to resume, and a resumed handshake must not reach the signers. Errors name the key
// and, when the deadline ran out, say so.
type handshakeSigner struct {
	h      *handshakeKeys
	served *servedChain
	ctx    context.Context
	remote net.Addr // the client, whose budget the signature is charged to
	event  SignEvent
}

func (s *handshakeSigner) Public() crypto.PublicKey { return s.served.pub }

func (s *handshakeSigner) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	start := time.Now()
	var sig []byte
	var queued time.Duration
	release := func(bool) {}
	var err error
	if s.h.shed != nil {
		release, queued, err = s.h.shed.Admit(s.ctx, s.remote)
	}
	if err == nil {
		var signer crypto.Signer
		signer, err = s.h.signer(s.ctx, s.served)
		if err == nil {
			sig, err = signer.Sign(rand, digest, opts)
		}
		release(err == nil)
	}
	var shed *ShedError
	if err != nil && !errors.As(err, &shed) {
		if cause := context.Cause(s.ctx); cause != nil && !errors.Is(err, cause) {
			err = fmt.Errorf("%w (%v)", err, cause)
		}
		if !strings.Contains(err.Error(), s.event.Key) { // the keyless client names it already
			err = fmt.Errorf("key %s: %w", s.event.Key, err)
		}
	}
	if s.h.onSign != nil {
		ev := s.event
		ev.Duration, ev.Queued, ev.Err = time.Since(start), queued, err
		s.h.onSign(ev)
	}
	return sig, err
}
