package keyless

import (
	"cmp"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
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
	"github.com/rs/zerolog"

	"github.com/tkeyless/tkeyless/internal/keylesswire"
)

const (
	defaultSignTimeout = 5 * time.Second
	defaultDialTimeout = 2 * time.Second

	// latencyStaleAfter is how long a latency measurement ranks an endpoint.
	// After it, the endpoint counts as unmeasured and gets tried again, so a
	// signer that was slow once is not shunned forever.
	latencyStaleAfter = 30 * time.Second

	// An endpoint that failed is tried after the healthy ones for a while,
	// growing from minDownBackoff to maxDownBackoff with each failure in a row.
	minDownBackoff = 250 * time.Millisecond
	maxDownBackoff = 30 * time.Second

	// maxDigestBytes rejects, before any network traffic, input that cannot be
	// a digest; the exact length check for the hash is the signer's.
	maxDigestBytes = 1024
)

var errClientClosed = errors.New("keyless client closed")

// ClientConfig configures a Client. Endpoints and TLS are required.
type ClientConfig struct {
	// Endpoints are host:port of the signers: tkeyless nodes or stock
	// gokeyless servers. Any of them can answer any request.
	Endpoints []string

	// TLS carries the client certificate and RootCAs. If ServerName is empty,
	// each endpoint is verified against its own host (an IP address works,
	// given an IP SAN). Stock gokeyless servers speak only TLS 1.2 with
	// ECDHE-{ECDSA,RSA}-AES256-GCM-SHA384; Go's default cipher suites include
	// those, so leave MaxVersion/CipherSuites alone or keep them allowed.
	TLS *tls.Config

	// Timeout is the deadline per signature when the caller's context has
	// none (default 5s). A handshake's context normally has one.
	Timeout time.Duration

	// DialTimeout bounds connecting to one endpoint, TLS handshake included
	// (default 2s); it is also how long a liveness ping may take.
	DialTimeout time.Duration

	// Authorize, if set, is called once per request sent: for each signer
	// tried and each resend on a fresh connection, never reused, since a
	// tkeyless signer consumes an authority for good once its session is
	// under way. Its bytes travel in the request's authority item (tag
	// 0xC0), which stock servers ignore. An error from it fails the
	// signature without contacting any further signer.
	// When nil and the client certificate in TLS is a tkeyless edge or
	// admin identity, each request carries an authority signed with that
	// identity's key (IdentityAuthority): tkeyless signers require it.
	Authorize func(op protocol.Op, ski protocol.SKI, digest []byte) ([]byte, error)

	// NoAuthority sends requests without any authority item, as a stock
	// gokeyless client does. tkeyless signers then accept them only from
	// identities their operator marked legacy.
	NoAuthority bool

	Logger zerolog.Logger
}

// Client signs with keys held by keyless signers. It keeps at most one
// mutual-TLS connection per endpoint and multiplexes every request over it
// (responses are matched by packet ID), so a 400 ms threshold signature does
// not hold up the others.
//
// Create one with NewClient and share it: one per process and signer cluster
// is the intended use. It is safe for concurrent use. Close releases its
// connections.
//
// Unlike gokeyless's own client, which has a fixed 10 s timeout and tears
// down its shared connection when one request is slow, every call here
// follows its context's deadline, and a signer that refuses connections,
// drops them or stops answering costs a failover to the next endpoint, not
// the handshake.
type Client struct {
	cfg       ClientConfig
	log       zerolog.Logger
	endpoints []*endpoint

	ctx    context.Context // cancelled by Close; parent of dials and probes
	cancel context.CancelFunc

	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup // dials, connection readers, liveness probes
}

// RemoteError is an answer from a signer that refused the operation, as
// opposed to a failure to reach one. Use errors.As to get it from an error
// returned by Client; errors.Is(err, protocol.ErrKeyNotFound) also works.
type RemoteError struct {
	Code     protocol.Error
	Endpoint string
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("keyless signer %s: %s", e.Endpoint, codeString(e.Code))
}

// ErrKeyDisabled is tkeyless's own keyless error code: an operator
// disabled the key cluster-wide (the kill switch). Stock gokeyless clients
// see it as "unknown error"; it is not worth trying another signer.
const ErrKeyDisabled protocol.Error = 0x80

// ErrOverloaded is tkeyless's keyless error code for a signer that refused
// the request at once because it could not sign it in time: its session
// slots and queue are full, the request's identity has its share, or the
// budget left is shorter than a session takes there. Nothing was computed.
// The client tries another signer while the deadline leaves room for a
// signature there, and fails at once otherwise; the edge counts it as
// overloaded, not as unable to sign. Stock gokeyless clients see it as any
// unknown code: protocol.Error.String says "unknown error", so their error
// reads "keyless: unknown error" (TestStockClientSeesOverloadedAsUnknown).
const ErrOverloaded protocol.Error = 0x82

// ErrNoQuorum is tkeyless's keyless error code for a signer that could not
// gather a working quorum of the cluster (too many members down or failing
// sessions). Another signer may reach one, so the client tries it.
const ErrNoQuorum protocol.Error = 0x81

func codeString(e protocol.Error) string {
	switch e {
	case ErrKeyDisabled:
		return "key disabled by the cluster operator"
	case ErrNoQuorum:
		return "no quorum of the signer cluster could sign (members down or failing; see the signer's log)"
	case ErrOverloaded:
		return "signer overloaded: it could not sign within the deadline and refused at once"
	}
	return e.String()
}

// Unwrap returns the protocol.Error code.
func (e *RemoteError) Unwrap() error { return e.Code }

// retryable reports whether another signer might answer differently. An
// internal error on one signer (no quorum reachable from it, a deadline) may
// not happen on the next; an unknown key, a malformed request or a crypto
// failure will.
func (e *RemoteError) retryable() bool {
	switch e.Code {
	case protocol.ErrInternal, protocol.ErrRead, protocol.ErrRemoteConfiguration, ErrNoQuorum:
		return true
	}
	return false
}

// NewClient checks cfg and returns a Client. It does not connect: the first
// request to an endpoint does.
func NewClient(cfg ClientConfig) (*Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("keyless client: no signer endpoints")
	}
	if cfg.TLS == nil {
		return nil, errors.New("keyless client: no TLS configuration; signers require the edge's client certificate")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = defaultSignTimeout
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = defaultDialTimeout
	}
	switch {
	case cfg.NoAuthority:
		cfg.Authorize = nil
	case cfg.Authorize == nil && len(cfg.TLS.Certificates) > 0:
		cfg.Authorize = IdentityAuthority(cfg.TLS.Certificates[0])
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{cfg: cfg, log: cfg.Logger, ctx: ctx, cancel: cancel}
	seen := map[string]bool{}
	for _, addr := range cfg.Endpoints {
		addr = strings.TrimSpace(addr)
		host, port, err := net.SplitHostPort(addr)
		if err != nil || host == "" || port == "" {
			cancel()
			return nil, fmt.Errorf("keyless client: endpoint %q is not host:port", addr)
		}
		if seen[addr] {
			continue
		}
		seen[addr] = true
		tc := cfg.TLS.Clone()
		if tc.ServerName == "" {
			tc.ServerName = host
		}
		c.endpoints = append(c.endpoints, &endpoint{c: c, addr: addr, tls: tc})
	}
	return c, nil
}

// Close closes every connection, fails the requests in flight and waits for
// the client's goroutines to end. Requests after Close fail.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	for _, ep := range c.endpoints {
		ep.mu.Lock()
		cc := ep.conn
		ep.mu.Unlock()
		if cc != nil {
			cc.fail(errClientClosed)
		}
	}
	c.wg.Wait()
	return nil
}

// goAdd counts a goroutine the client is about to start, unless the client is
// closed. Close waits for every counted goroutine.
func (c *Client) goAdd() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.wg.Add(1)
	return true
}

var ecdsaOps = map[crypto.Hash]protocol.Op{
	crypto.SHA224: protocol.OpECDSASignSHA224,
	crypto.SHA256: protocol.OpECDSASignSHA256,
	crypto.SHA384: protocol.OpECDSASignSHA384,
	crypto.SHA512: protocol.OpECDSASignSHA512,
}

// Sign sends one ECDSA operation and returns the DER signature. Multiplexes
// many in-flight requests over one pooled mTLS connection per endpoint
// (demultiplexed by packet ID), honours ctx deadline, and fails over to the
// next endpoint on connection errors/timeouts (not on definitive answers like
// KeyNotFound) while the deadline allows. Prefer the endpoint with the best
// recent latency among healthy ones.
//
// When ctx has no deadline, ClientConfig.Timeout applies. With several
// endpoints, each attempt but the last gets two thirds of the time left
// (the last one gets all of it), so one signer that hangs cannot use up the
// whole deadline. Each request tells its signer the time its attempt has
// left (tag 0xC1), so a signer stops when the client stops waiting. A
// signer that answers ErrOverloaded is passed over for the next only while
// the time left exceeds the next one's recent latency; otherwise Sign fails
// at once. The digest length is checked by the signer, not here.
// A refusal from a signer is a *RemoteError (see errors.As); a deadline that
// passed is an error wrapping context.DeadlineExceeded.
func (c *Client) Sign(ctx context.Context, ski protocol.SKI, hash crypto.Hash, digest []byte) ([]byte, error) {
	opcode, ok := ecdsaOps[hash]
	if !ok {
		return nil, fmt.Errorf("keyless sign with key %s: hash %v not supported (want SHA-256, SHA-384 or SHA-512)", ski, hash)
	}
	if len(digest) == 0 || len(digest) > maxDigestBytes {
		return nil, fmt.Errorf("keyless sign with key %s: %d bytes is not a digest", ski, len(digest))
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.Timeout)
		defer cancel()
	}
	var authorize func() ([]byte, error)
	if c.cfg.Authorize != nil {
		authorize = func() ([]byte, error) {
			a, err := c.cfg.Authorize(opcode, ski, digest)
			if err != nil {
				return nil, authorizeError{err}
			}
			return a, nil
		}
	}
	op := protocol.Operation{Opcode: opcode, Payload: digest, SKI: ski}
	start := time.Now()
	sig, err := c.failover(ctx, op, authorize)
	if err != nil {
		c.log.Debug().Str("ski", ski.String()).Str("op", opcode.String()).
			Int64("dur_ms", time.Since(start).Milliseconds()).AnErr("err", err).Msg("keyless sign failed")
		return nil, fmt.Errorf("keyless sign with key %s: %w", ski, err)
	}
	return sig, nil
}

// authorizeError is a failure of ClientConfig.Authorize: this client cannot
// vouch for the request, so no signer is asked.
type authorizeError struct{ err error }

func (e authorizeError) Error() string { return "authorize: " + e.err.Error() }
func (e authorizeError) Unwrap() error { return e.err }

// failover tries the endpoints best first until one answers definitively or
// ctx ends. authorize, if not nil, makes the authority of each request sent:
// a signer that gave up on a request may still have consumed its authority,
// so no two attempts share one.
//
// A signer that answered "no quorum" has left out the members that failed
// its session, and the request's authority is spent on them: when the last
// endpoint answered so, the best one is asked once more, with a fresh
// authority, while the deadline allows.
func (c *Client) failover(ctx context.Context, op protocol.Operation, authorize func() ([]byte, error)) ([]byte, error) {
	order := c.rank()
	var errs []error
	retried := false
	for i := 0; i < len(order); i++ {
		ep := order[i]
		if ctx.Err() != nil || c.ctx.Err() != nil {
			break
		}
		// An attempt that is not the last gets two thirds of the time left:
		// enough for a threshold signature under load (a 3-party GG18
		// session takes ~1.1 s here), while a hung signer still leaves time
		// to try another. Splitting evenly would fail over from signers that
		// are merely busy, and each failover starts another costly session.
		actx, cancel := ctx, context.CancelFunc(func() {})
		if i < len(order)-1 {
			if d, ok := ctx.Deadline(); ok {
				actx, cancel = context.WithTimeout(ctx, time.Until(d)*2/3)
			}
		}
		attemptStart := time.Now()
		sig, err := c.attemptSign(actx, ep, op, authorize)
		cancel()
		var re *RemoteError
		switch {
		case err == nil:
			return sig, nil
		case errors.As(err, new(authorizeError)):
			return nil, err
		case errors.As(err, &re) && re.Code == ErrOverloaded:
			// Refused at once, nothing computed: another signer may have
			// room, if the deadline leaves it time to sign; if not, failing
			// now is better than a doomed attempt.
			errs = append(errs, err)
			if i+1 < len(order) && !order[i+1].mightFinish(ctx) {
				i = len(order) // stop: no signer left that could finish in time
			}
		case errors.As(err, &re):
			if !re.retryable() {
				return nil, err
			}
			errs = append(errs, err) // names its endpoint
			if re.Code == ErrNoQuorum && i == len(order)-1 && !retried {
				retried = true
				order = append(order, order[0])
			}
		case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
			// Only this attempt's share of the deadline ran out.
			errs = append(errs, fmt.Errorf("%s: no answer within %v, its share of the deadline", ep.addr, time.Since(attemptStart).Round(time.Millisecond)))
		default:
			errs = append(errs, fmt.Errorf("%s: %w", ep.addr, err))
		}
	}
	if c.ctx.Err() != nil {
		errs = append(errs, errClientClosed)
	} else if ctx.Err() != nil && !errors.Is(errors.Join(errs...), ctx.Err()) {
		errs = append(errs, ctx.Err())
	}
	return nil, attemptsError(errs)
}

// mightFinish reports whether ep could answer before ctx's deadline, judging
// by its recent latency; an endpoint not measured lately might.
func (ep *endpoint) mightFinish(ctx context.Context) bool {
	d, ok := ctx.Deadline()
	if !ok {
		return true
	}
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if ep.measuredAt.IsZero() || time.Since(ep.measuredAt) >= latencyStaleAfter {
		return time.Until(d) > 0
	}
	return time.Until(d) > ep.latency
}

// attemptsError reports every endpoint tried, on one line, and unwraps to
// each of their errors.
type attemptsError []error

func (e attemptsError) Error() string {
	s := make([]string, len(e))
	for i, err := range e {
		s[i] = err.Error()
	}
	return strings.Join(s, "; ")
}

func (e attemptsError) Unwrap() []error { return e }

// attemptSign asks one endpoint for the signature.
func (c *Client) attemptSign(ctx context.Context, ep *endpoint, op protocol.Operation, authorize func() ([]byte, error)) ([]byte, error) {
	start := time.Now()
	resp, err := ep.exchange(ctx, op, authorize)
	if err != nil {
		return nil, err
	}
	switch resp.Opcode {
	case protocol.OpResponse:
		if len(resp.Payload) == 0 {
			return nil, errors.New("empty signature in response")
		}
		ep.observe(time.Since(start))
		return resp.Payload, nil
	case protocol.OpError:
		return nil, ep.remoteError(resp)
	default:
		return nil, fmt.Errorf("unexpected response opcode %v", resp.Opcode)
	}
}

// Ping checks that endpoint (one of ClientConfig.Endpoints) answers a ping
// over its pooled connection, dialing it if needed.
func (c *Client) Ping(ctx context.Context, endpoint string) error {
	ep := c.lookup(endpoint)
	if ep == nil {
		return fmt.Errorf("keyless ping %s: not one of the client's endpoints", endpoint)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.Timeout)
		defer cancel()
	}
	payload := make([]byte, 8)
	_, _ = rand.Read(payload)
	resp, err := ep.exchange(ctx, protocol.Operation{Opcode: protocol.OpPing, Payload: payload}, nil)
	switch {
	case err != nil:
		return fmt.Errorf("keyless ping %s: %w", endpoint, err)
	case resp.Opcode == protocol.OpError:
		return fmt.Errorf("keyless ping: %w", ep.remoteError(resp))
	case resp.Opcode != protocol.OpPong || string(resp.Payload) != string(payload):
		return fmt.Errorf("keyless ping %s: answer is %v, not the pong echoing the ping", endpoint, resp.Opcode)
	}
	ep.markUp()
	return nil
}

func (c *Client) lookup(addr string) *endpoint {
	for _, ep := range c.endpoints {
		if ep.addr == strings.TrimSpace(addr) {
			return ep
		}
	}
	return nil
}

// Signer returns a crypto.Signer for pub (ECDSA P-256/384) bound to ctx for
// deadlines: its Sign(rand, digest, opts) picks the opcode from
// opts.HashFunc() and signs through Client.Sign with ctx, since crypto/tls
// calls Sign without a context. Errors returned by a remote are *RemoteError
// (Code, Endpoint) so callers can tell KeyNotFound apart.
//
// The key is named by its SKI, computed from pub as gokeyless does. Through
// this method Client is a tlsglue.KeySource: the returned signer is meant for
// the signatures of one handshake, within ctx.
func (c *Client) Signer(ctx context.Context, pub crypto.PublicKey) (crypto.Signer, error) {
	if _, err := CheckKey(pub); err != nil {
		return nil, err
	}
	ski, err := protocol.GetSKI(pub)
	if err != nil {
		return nil, fmt.Errorf("keyless signer: key id: %w", err)
	}
	return c.SignerSKI(ctx, pub, ski)
}

// SignerSKI is Signer for a key whose SKI the caller computed already (once
// per certificate load, not once per handshake): Client is also a
// tlsglue.SKIKeySource. ski must be pub's.
func (c *Client) SignerSKI(ctx context.Context, pub crypto.PublicKey, ski protocol.SKI) (crypto.Signer, error) {
	ec, err := CheckKey(pub)
	if err != nil {
		return nil, err
	}
	return &remoteSigner{c: c, ctx: ctx, pub: ec, ski: ski}, nil
}

// CheckKey returns pub as the ECDSA key a keyless signer can hold (P-256 or
// P-384: the curves tkeyless's threshold keys and gokeyless's ECDSA
// operations share), or says why it cannot be one.
func CheckKey(pub crypto.PublicKey) (*ecdsa.PublicKey, error) {
	ec, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("keyless signer: a %T key cannot be used; keyless signers hold ECDSA keys", pub)
	}
	switch ec.Curve {
	case elliptic.P256(), elliptic.P384():
		return ec, nil
	}
	return nil, fmt.Errorf("keyless signer: curve %s not supported (want P-256 or P-384)", ec.Params().Name)
}

// remoteSigner is the crypto.Signer Client.Signer returns.
type remoteSigner struct {
	c   *Client
	ctx context.Context
	pub *ecdsa.PublicKey
	ski protocol.SKI
}

func (s *remoteSigner) Public() crypto.PublicKey { return s.pub }

// Sign ignores rand: the randomness is the signers'.
func (s *remoteSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts == nil {
		return nil, fmt.Errorf("keyless sign with key %s: no signer options (hash)", s.ski)
	}
	return s.c.Sign(s.ctx, s.ski, opts.HashFunc(), digest)
}

// rank orders the endpoints for one request: healthy before recently failed;
// among healthy ones, lowest recent latency first, where an endpoint not
// measured lately counts as fastest so that it gets measured; configuration
// order breaks ties. Failed endpoints follow, soonest to recover first.
func (c *Client) rank() []*endpoint {
	type cand struct {
		ep        *endpoint
		healthy   bool
		score     time.Duration
		downUntil time.Time
	}
	now := time.Now()
	cands := make([]cand, len(c.endpoints))
	for i, ep := range c.endpoints {
		ep.mu.Lock()
		cd := cand{ep: ep, healthy: !now.Before(ep.downUntil), downUntil: ep.downUntil}
		if !ep.measuredAt.IsZero() && now.Sub(ep.measuredAt) < latencyStaleAfter {
			cd.score = ep.latency
		}
		ep.mu.Unlock()
		cands[i] = cd
	}
	slices.SortStableFunc(cands, func(a, b cand) int {
		switch {
		case a.healthy != b.healthy:
			if a.healthy {
				return -1
			}
			return 1
		case a.healthy:
			return cmp.Compare(a.score, b.score)
		default:
			return a.downUntil.Compare(b.downUntil)
		}
	})
	out := make([]*endpoint, len(cands))
	for i, cd := range cands {
		out[i] = cd.ep
	}
	return out
}

// endpoint is one signer address: its pooled connection and its health.
type endpoint struct {
	c    *Client
	addr string
	tls  *tls.Config

	mu         sync.Mutex
	conn       *clientConn // nil until dialed, and again once it dies
	dialing    *dialCall   // the dial in progress, shared by all who wait for it
	latency    time.Duration
	measuredAt time.Time
	fails      int
	downUntil  time.Time
}

type dialCall struct {
	done chan struct{}
	conn *clientConn
	err  error
}

// connError is a failure of the connection itself: every request on it failed.
type connError struct{ err error }

func (e connError) Error() string { return "connection: " + e.err.Error() }
func (e connError) Unwrap() error { return e.err }

// exchange sends op on the endpoint's connection and waits for the answer. A
// pooled connection may have been closed by the signer while idle, and that
// shows only when used; such a failure is retried once on a fresh connection.
// Each send carries a new authority from authorize (nil: none): the signer
// may have read the first before the connection died.
func (ep *endpoint) exchange(ctx context.Context, op protocol.Operation, authorize func() ([]byte, error)) (protocol.Operation, error) {
	for try := 0; ; try++ {
		var authority []byte
		if authorize != nil {
			var err error
			if authority, err = authorize(); err != nil {
				return protocol.Operation{}, err
			}
		}
		cc, fresh, err := ep.get(ctx)
		if err != nil {
			if ctx.Err() == nil && ep.c.ctx.Err() == nil {
				ep.markDown(err)
			}
			return protocol.Operation{}, err
		}
		resp, err := cc.roundTrip(ctx, op, authority)
		if err == nil {
			return resp, nil
		}
		if ce := (connError{}); errors.As(err, &ce) {
			if !fresh && try == 0 && ctx.Err() == nil && ep.c.ctx.Err() == nil {
				continue
			}
			ep.markDown(err)
		} else if ctx.Err() != nil && ep.c.ctx.Err() == nil {
			// This request ran out of time on a connection that looked fine.
			// A slow signer is fine; a dead peer that never sent a FIN is not,
			// and only a ping tells the two apart.
			ep.c.probe(cc)
		}
		return protocol.Operation{}, err
	}
}

func (ep *endpoint) remoteError(resp protocol.Operation) *RemoteError {
	code := protocol.ErrFormat // an error response without a one-byte code
	if len(resp.Payload) == 1 {
		code = protocol.Error(resp.Payload[0])
	}
	ep.markUp() // it answered
	return &RemoteError{Code: code, Endpoint: ep.addr}
}

// get returns the endpoint's live connection, dialing one if there is none.
// fresh reports that the connection was dialed for this call (or one waiting
// alongside it). Concurrent callers share one dial.
func (ep *endpoint) get(ctx context.Context) (cc *clientConn, fresh bool, err error) {
	ep.mu.Lock()
	if ep.conn != nil && !ep.conn.dead() {
		cc := ep.conn
		ep.mu.Unlock()
		return cc, false, nil
	}
	d := ep.dialing
	if d == nil {
		if !ep.c.goAdd() {
			ep.mu.Unlock()
			return nil, false, errClientClosed
		}
		d = &dialCall{done: make(chan struct{})}
		ep.dialing = d
		// The dial runs on its own goroutine, bounded by DialTimeout, so a
		// caller whose deadline is near does not abort it for the others.
		go ep.dial(d)
	}
	ep.mu.Unlock()
	select {
	case <-d.done:
		if d.err != nil {
			return nil, false, d.err
		}
		return d.conn, true, nil
	case <-ctx.Done():
		return nil, false, ctx.Err()
	}
}

func (ep *endpoint) dial(d *dialCall) {
	defer ep.c.wg.Done()
	ctx, cancel := context.WithTimeout(ep.c.ctx, ep.c.cfg.DialTimeout)
	defer cancel()
	start := time.Now()
	cc, err := ep.connect(ctx)

	ep.mu.Lock()
	ep.dialing = nil
	if err == nil {
		if ep.c.goAdd() {
			ep.conn = cc
			go cc.readLoop()
		} else {
			cc.raw.Close()
			cc, err = nil, errClientClosed
		}
	}
	ep.mu.Unlock()

	if err != nil {
		// Logged by markDown, once per outage, unless no one was waiting.
		ep.c.log.Debug().Str("endpoint", ep.addr).AnErr("err", err).Msg("keyless dial failed")
	} else {
		ep.c.log.Debug().Str("endpoint", ep.addr).Int64("dur_ms", time.Since(start).Milliseconds()).Msg("keyless connection open")
	}
	d.conn, d.err = cc, err
	close(d.done)
}

func (ep *endpoint) connect(ctx context.Context) (*clientConn, error) {
	var dialer net.Dialer
	raw, err := dialer.DialContext(ctx, "tcp", ep.addr)
	if err != nil {
		return nil, connError{fmt.Errorf("dial: %w", err)}
	}
	tc := tls.Client(raw, ep.tls)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, connError{fmt.Errorf("TLS handshake: %w", err)}
	}
	return &clientConn{
		ep:      ep,
		raw:     raw,
		tc:      tc,
		wlock:   make(chan struct{}, 1),
		pending: make(map[uint32]chan protocol.Operation),
		nextID:  1,
		done:    make(chan struct{}),
	}, nil
}

// observe records the latency of a successful answer.
func (ep *endpoint) observe(d time.Duration) {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if ep.measuredAt.IsZero() || time.Since(ep.measuredAt) >= latencyStaleAfter {
		ep.latency = d
	} else {
		ep.latency = (7*ep.latency + 3*d) / 10
	}
	ep.measuredAt = time.Now()
	ep.fails, ep.downUntil = 0, time.Time{}
}

func (ep *endpoint) markUp() {
	ep.mu.Lock()
	ep.fails, ep.downUntil = 0, time.Time{}
	ep.mu.Unlock()
}

func (ep *endpoint) markDown(err error) {
	ep.mu.Lock()
	ep.fails++
	fails := ep.fails
	backoff := min(minDownBackoff<<min(fails-1, 16), maxDownBackoff)
	ep.downUntil = time.Now().Add(backoff)
	ep.mu.Unlock()
	ev := ep.c.log.Debug()
	if fails == 1 { // the first failure after success; the rest of an outage is noise
		ev = ep.c.log.Warn()
	}
	ev.Str("endpoint", ep.addr).AnErr("err", err).Int("fails", fails).Dur("retry_after", backoff).
		Msg("keyless signer failed; trying others first")
}

// probe pings cc in the background and closes it if the ping goes unanswered
// within DialTimeout. At most one probe runs per connection.
func (c *Client) probe(cc *clientConn) {
	if !cc.probing.CompareAndSwap(false, true) {
		return
	}
	if !c.goAdd() {
		return
	}
	go func() {
		defer c.wg.Done()
		defer cc.probing.Store(false)
		ctx, cancel := context.WithTimeout(c.ctx, c.cfg.DialTimeout)
		defer cancel()
		resp, err := cc.roundTrip(ctx, protocol.Operation{Opcode: protocol.OpPing}, nil)
		if err == nil && resp.Opcode == protocol.OpPong {
			return
		}
		if c.ctx.Err() != nil || cc.dead() {
			return
		}
		if err == nil {
			err = fmt.Errorf("ping answered with %v", resp.Opcode)
		}
		err = fmt.Errorf("liveness ping after a timeout: %w", err)
		cc.fail(err)
		cc.ep.markDown(err)
	}()
}

// clientConn is one TLS connection to a signer, shared by all requests to it.
// A single reader goroutine hands each response to the request waiting for
// its packet ID; writes are serialized by wlock.
type clientConn struct {
	ep  *endpoint
	raw net.Conn
	tc  *tls.Conn

	wlock chan struct{} // a mutex that a waiting writer can give up on

	mu      sync.Mutex
	pending map[uint32]chan protocol.Operation
	nextID  uint32
	err     error         // why the connection died; set once
	done    chan struct{} // closed when it died

	probing atomic.Bool
}

func (cc *clientConn) dead() bool {
	select {
	case <-cc.done:
		return true
	default:
		return false
	}
}

// fail marks the connection dead, which fails every request waiting on it at
// once, and drops it from its endpoint so the next request redials.
func (cc *clientConn) fail(err error) {
	cc.mu.Lock()
	if cc.err != nil {
		cc.mu.Unlock()
		return
	}
	cc.err = err
	close(cc.done)
	cc.mu.Unlock()
	// The raw socket, not tls.Conn.Close: that may wait seconds to send a
	// close_notify to a peer that is not reading.
	cc.raw.Close()
	ep := cc.ep
	ep.mu.Lock()
	if ep.conn == cc {
		ep.conn = nil
	}
	ep.mu.Unlock()
	if !errors.Is(err, errClientClosed) {
		ep.c.log.Debug().Str("endpoint", ep.addr).AnErr("err", err).Msg("keyless connection closed")
	}
}

func (cc *clientConn) connErr() error {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return connError{cc.err}
}

func (cc *clientConn) readLoop() {
	defer cc.ep.c.wg.Done()
	for {
		hdr, op, _, err := keylesswire.ReadRequest(cc.tc, 0)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("closed by the signer")
			}
			cc.fail(fmt.Errorf("read: %w", err))
			return
		}
		cc.mu.Lock()
		ch := cc.pending[hdr.ID]
		delete(cc.pending, hdr.ID)
		cc.mu.Unlock()
		if ch != nil {
			ch <- op // buffered; the entry is gone, so no one else sends
		}
		// No waiter: the request timed out and gave up; drop the late answer.
	}
}

// roundTrip sends one request and waits for its response, the connection's
// death or ctx, whichever comes first.
func (cc *clientConn) roundTrip(ctx context.Context, op protocol.Operation, authority []byte) (protocol.Operation, error) {
	ch := make(chan protocol.Operation, 1)
	cc.mu.Lock()
	if cc.err != nil {
		cc.mu.Unlock()
		return protocol.Operation{}, cc.connErr()
	}
	id := cc.nextID
	for cc.pending[id] != nil {
		id++
	}
	cc.nextID = id + 1
	cc.pending[id] = ch
	cc.mu.Unlock()
	defer func() {
		cc.mu.Lock()
		delete(cc.pending, id)
		cc.mu.Unlock()
	}()

	// The signer learns how long this attempt waits, counted from now: it
	// stops when this client stops waiting, rather than at its own
	// timeout, though the connection stays open for other requests.
	extras := keylesswire.Extras{Authority: authority}
	if d, ok := ctx.Deadline(); ok {
		extras.Budget, extras.HasBudget = max(time.Until(d), 0), true
	}
	frame, err := keylesswire.MarshalRequest(id, op, extras)
	if err != nil {
		return protocol.Operation{}, err
	}
	if err := cc.write(ctx, frame); err != nil {
		return protocol.Operation{}, err
	}
	select {
	case resp := <-ch:
		return resp, nil
	case <-cc.done:
		select {
		case resp := <-ch: // answered just before the connection died
			return resp, nil
		default:
			return protocol.Operation{}, cc.connErr()
		}
	case <-ctx.Done():
		return protocol.Operation{}, ctx.Err()
	}
}

func (cc *clientConn) write(ctx context.Context, frame []byte) error {
	select {
	case cc.wlock <- struct{}{}:
	case <-cc.done:
		return cc.connErr()
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-cc.wlock }()
	if cc.dead() {
		return cc.connErr()
	}
	// A frame is about 1 KiB; if the socket cannot take it within the dial
	// timeout, the signer is not reading. A timed-out write leaves the TLS
	// stream unusable, so it kills the connection.
	deadline := time.Now().Add(cc.ep.c.cfg.DialTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = cc.tc.SetWriteDeadline(deadline)
	if _, err := cc.tc.Write(frame); err != nil {
		err = fmt.Errorf("write: %w", err)
		cc.fail(err)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return connError{err}
	}
	return nil
}
