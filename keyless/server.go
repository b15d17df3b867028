package keyless

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"runtime/debug"
	"sync"
	"time"

	"github.com/cloudflare/gokeyless/protocol"
	"github.com/rs/zerolog"

	"github.com/tkeyless/tkeyless/internal/keylesswire"
)

// Defaults for ServerConfig fields left zero.
const (
	defaultRequestTimeout     = 10 * time.Second
	defaultIdleTimeout        = 5 * time.Minute
	defaultMaxInFlightPerConn = 256
	defaultMaxBodyBytes       = 16 << 10
)

// handshakeTimeout bounds the TLS handshake of an accepted connection, so a
// peer that connects and says nothing holds a socket for seconds, not forever.
const handshakeTimeout = 10 * time.Second

// maxSignatureBytes is the largest signature the server will send back. A
// backend that returns more is broken; the cap keeps the response inside
// gokeyless's 16-bit length fields (whose encoder panics past them).
const maxSignatureBytes = 4096

// Request is one signing operation as the backend sees it.
//
// ID is the packet id the edge chose: unique only among requests in flight on
// one connection (stock gokeyless clients start at 0 on every connection), so
// it can correlate logs but must not serve as a request identifier elsewhere.
type Request struct {
	ID        uint32            // packet id
	Identity  *x509.Certificate // the authenticated client (edge) certificate, leaf
	Op        protocol.Op
	Hash      crypto.Hash // SHA256/384/512 for OpECDSASignSHA256/384/512
	SKI       protocol.SKI
	Digest    []byte // the payload, already checked: len == Hash.Size()
	Authority []byte // tag 0xC0 item, nil from stock clients
	SNI       string
	// Deadline is when the answer is due, as the Backend's ctx carries it:
	// the request's arrival plus the edge's budget (tag 0xC1), or plus
	// ServerConfig.RequestTimeout when that is sooner or the request
	// carries no budget (stock clients). Budget is the edge's figure, 0 and
	// HasBudget false when absent, for logs.
	Deadline  time.Time
	Budget    time.Duration
	HasBudget bool
}

// Backend signs for a Server.
//
// Sign is called on its own goroutine for every request, concurrently with
// other requests on the same connection, and must honour ctx: it carries the
// server's per-request deadline and is cancelled when the connection the
// request came on is gone or the server closes, since no one is left to read
// the answer.
//
// The returned bytes are sent as they are (for ECDSA, the ASN.1 DER
// signature). A protocol.Error (e.g. protocol.ErrKeyNotFound), or an error
// wrapping one, is sent as that code. Any other error is sent as
// protocol.ErrInternal: to the edge it means "this signer could not sign now"
// (no quorum, a peer failed, the deadline passed), which is worth retrying on
// another signer, whereas protocol.ErrCrypto tells the edge the key itself
// refused; a backend that means ErrCrypto returns it explicitly.
type Backend interface {
	Sign(ctx context.Context, req *Request) ([]byte, error)
}

// ServerConfig configures a Server. TLS and Backend are required; zero values
// elsewhere take the defaults noted beside each field.
type ServerConfig struct {
	TLS                *tls.Config // must require+verify client certs (NewServer refuses otherwise)
	Backend            Backend     // signs; see Backend for the error contract
	Logger             zerolog.Logger
	RequestTimeout     time.Duration // deadline per operation (default 10s), or the edge's budget when shorter; also bounds each response write
	IdleTimeout        time.Duration // close conns with nothing in flight and no frame for this long (default 5m)
	MaxInFlightPerConn int           // default 256; when reached, the server stops reading that conn until one finishes
	MaxBodyBytes       int           // default 16 KiB; a larger frame closes the conn
}

// Server is the signer's gokeyless endpoint: it accepts mutual-TLS
// connections from edges and answers gokeyless operations by calling a
// Backend. Create one with NewServer; a Server serves any number of listeners
// and cannot be reused after Close.
//
// Why not gokeyless's own server package, which is wire-compatible and embeds
// cleanly: its Keystore sees only the protocol.Operation, never the TLS
// connection, so it cannot authorize a request by the edge's client
// certificate, and tkeyless signs only for authorized edges; its key lookup and
// Sign get no per-request context or deadline, so a slow threshold signature
// could not be cancelled when the edge gave up or the server stops; and it
// logs through cfssl's global logger rather than structured per-request logs.
// So this endpoint is written directly on gokeyless's protocol package (the
// same Packet, Operation and Header types), and stock gokeyless clients talk
// to it unchanged.
type Server struct {
	cfg ServerConfig
	tls *tls.Config
	log zerolog.Logger

	ctx    context.Context // cancelled by Close; parent of every request context
	cancel context.CancelFunc

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[*serverConn]struct{}
	wg        sync.WaitGroup // accept loops' connections and their request handlers
}

// NewServer checks cfg and returns a Server ready to Serve.
//
// cfg.TLS must set ClientAuth to tls.RequireAndVerifyClientCert with
// ClientCAs: the client certificate is the edge's identity, and the backend
// authorizes by it, so a configuration that lets unauthenticated peers in
// (or verifies them against the system roots) is refused rather than served.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.TLS == nil {
		return nil, errors.New("keyless server: no TLS configuration")
	}
	if cfg.TLS.ClientAuth != tls.RequireAndVerifyClientCert {
		return nil, fmt.Errorf("keyless server: TLS ClientAuth is %v; the keyless endpoint needs RequireAndVerifyClientCert, because edges are authorized by their client certificate", cfg.TLS.ClientAuth)
	}
	if cfg.TLS.ClientCAs == nil {
		return nil, errors.New("keyless server: TLS ClientCAs is empty; set it to the CA that issues edge certificates")
	}
	if len(cfg.TLS.Certificates) == 0 && cfg.TLS.GetCertificate == nil && cfg.TLS.GetConfigForClient == nil {
		return nil, errors.New("keyless server: TLS configuration has no server certificate")
	}
	if cfg.Backend == nil {
		return nil, errors.New("keyless server: no Backend")
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = defaultRequestTimeout
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = defaultIdleTimeout
	}
	if cfg.MaxInFlightPerConn <= 0 {
		cfg.MaxInFlightPerConn = defaultMaxInFlightPerConn
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = defaultMaxBodyBytes
	}
	cfg.MaxBodyBytes = min(cfg.MaxBodyBytes, math.MaxUint16)
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		cfg:       cfg,
		tls:       cfg.TLS.Clone(),
		log:       cfg.Logger,
		ctx:       ctx,
		cancel:    cancel,
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*serverConn]struct{}),
	}, nil
}

// Serve accepts connections on l until Close, and returns nil after Close.
// It returns an error if l fails in a way that is not temporary. Serve takes
// ownership of l and closes it.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return nil
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
		l.Close()
	}()

	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if s.isClosed() {
				return nil
			}
			if te, ok := err.(interface{ Temporary() bool }); ok && te.Temporary() && !errors.Is(err, net.ErrClosed) {
				// Out of file descriptors and the like: wait, do not spin.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn().AnErr("err", err).Dur("retry_in", backoff).Msg("keyless accept failed; retrying")
				select {
				case <-time.After(backoff):
				case <-s.ctx.Done():
					return nil
				}
				continue
			}
			return fmt.Errorf("keyless server: accept on %s: %w", l.Addr(), err)
		}
		backoff = 0
		sc := s.newConn(c)
		if sc == nil {
			return nil // closed meanwhile
		}
		go sc.serve()
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Close stops every listener and connection, cancels the contexts of requests
// in flight and waits for their handlers to return (so a Backend that ignores
// its context delays Close). It is safe to call more than once.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.wg.Wait()
		return nil
	}
	s.closed = true
	s.cancel()
	for l := range s.listeners {
		l.Close()
	}
	conns := make([]*serverConn, 0, len(s.conns))
	for sc := range s.conns {
		conns = append(conns, sc)
	}
	s.mu.Unlock()
	for _, sc := range conns {
		sc.close()
	}
	s.wg.Wait()
	return nil
}

// serverConn is one accepted connection: a reader loop that parses frames and
// starts a handler goroutine for each, and handlers that write responses one
// at a time under writeMu.
type serverConn struct {
	s        *Server
	raw      net.Conn
	tc       *tls.Conn
	remote   string
	identity *x509.Certificate
	log      zerolog.Logger

	ctx    context.Context // cancelled when the conn closes
	cancel context.CancelFunc

	slots   chan struct{} // one per request in flight; bounds MaxInFlightPerConn
	writeMu sync.Mutex

	mu         sync.Mutex // guards inflight, lastActive, idle
	inflight   int
	lastActive time.Time
	idle       *time.Timer

	closeOnce sync.Once
}

// newConn registers c with the server, or closes it and returns nil if the
// server is closed.
func (s *Server) newConn(c net.Conn) *serverConn {
	ctx, cancel := context.WithCancel(s.ctx)
	sc := &serverConn{
		s:      s,
		raw:    c,
		tc:     tls.Server(c, s.tls),
		remote: c.RemoteAddr().String(),
		ctx:    ctx,
		cancel: cancel,
		slots:  make(chan struct{}, s.cfg.MaxInFlightPerConn),
	}
	sc.log = s.log.With().Str("remote", sc.remote).Logger()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		cancel()
		c.Close()
		return nil
	}
	s.conns[sc] = struct{}{}
	s.wg.Add(1)
	return sc
}

func (sc *serverConn) close() {
	sc.closeOnce.Do(func() {
		sc.cancel()
		// The raw socket, not tls.Conn.Close, which may wait seconds to send a
		// close_notify to a peer that is not reading.
		sc.raw.Close()
		sc.mu.Lock()
		if sc.idle != nil {
			sc.idle.Stop()
		}
		sc.mu.Unlock()
		sc.s.mu.Lock()
		delete(sc.s.conns, sc)
		sc.s.mu.Unlock()
	})
}

func (sc *serverConn) serve() {
	defer sc.s.wg.Done()
	defer sc.close()

	// The handshake is explicit, with a deadline, so the peer's identity is
	// known before the first frame and a silent peer cannot hold the socket.
	_ = sc.tc.SetDeadline(time.Now().Add(handshakeTimeout))
	if err := sc.tc.HandshakeContext(sc.ctx); err != nil {
		if !errors.Is(err, io.EOF) && sc.ctx.Err() == nil { // EOF: a TCP health check
			sc.log.Info().AnErr("err", err).Msg("keyless TLS handshake failed")
		}
		return
	}
	_ = sc.tc.SetDeadline(time.Time{})
	// NewServer insists on verified client certificates; check again here, as
	// a GetConfigForClient callback could hand crypto/tls a laxer config.
	cs := sc.tc.ConnectionState()
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		sc.log.Warn().Msg("keyless connection refused: no verified client certificate")
		return
	}
	sc.identity = cs.VerifiedChains[0][0]
	sc.log = sc.log.With().Str("identity", sc.identity.Subject.CommonName).Logger()
	sc.log.Debug().Str("tls", tls.VersionName(cs.Version)).Msg("keyless connection open")

	sc.mu.Lock()
	sc.lastActive = time.Now()
	sc.idle = time.AfterFunc(sc.s.cfg.IdleTimeout, sc.checkIdle)
	sc.mu.Unlock()

	for {
		select {
		case sc.slots <- struct{}{}:
		case <-sc.ctx.Done():
			return
		}
		hdr, op, extras, err := keylesswire.ReadRequest(sc.tc, sc.s.cfg.MaxBodyBytes)
		if err != nil {
			<-sc.slots
			sc.logReadError(err)
			return
		}
		// The edge's budget counts from here: as close to the frame's
		// arrival as this server sees it.
		arrived := time.Now()
		sc.mu.Lock()
		sc.inflight++
		sc.lastActive = time.Now()
		sc.mu.Unlock()
		sc.s.wg.Add(1)
		go sc.handle(hdr.ID, op, extras, arrived)
	}
}

func (sc *serverConn) logReadError(err error) {
	switch {
	case sc.ctx.Err() != nil:
		// We closed it: server shutdown, idle, or a write failed.
	case errors.Is(err, keylesswire.ErrMalformed):
		sc.log.Warn().AnErr("err", err).Msg("malformed keyless frame; closing this connection")
	case errors.Is(err, io.EOF):
		sc.log.Debug().Msg("keyless connection closed by peer")
	default:
		sc.log.Info().AnErr("err", err).Msg("keyless connection read failed; closing it")
	}
}

// checkIdle closes the connection once nothing is in flight and no frame has
// arrived for IdleTimeout; otherwise it looks again when that could be true.
// A timer rather than a read deadline, because a read that times out halfway
// through a frame cannot be resumed.
func (sc *serverConn) checkIdle() {
	if sc.ctx.Err() != nil {
		return
	}
	sc.mu.Lock()
	wait := sc.s.cfg.IdleTimeout
	if sc.inflight == 0 {
		wait -= time.Since(sc.lastActive)
	}
	if wait > 0 {
		sc.idle.Reset(wait)
		sc.mu.Unlock()
		return
	}
	sc.mu.Unlock()
	sc.log.Debug().Dur("idle", sc.s.cfg.IdleTimeout).Msg("closing idle keyless connection")
	sc.close()
}

// handle answers one request and writes the response.
func (sc *serverConn) handle(id uint32, op protocol.Operation, extras keylesswire.Extras, arrived time.Time) {
	defer sc.s.wg.Done()
	defer func() {
		sc.mu.Lock()
		sc.inflight--
		sc.lastActive = time.Now()
		sc.mu.Unlock()
		<-sc.slots
	}()

	resp := sc.respond(id, op, extras, arrived)
	pkt := protocol.NewPacket(id, resp)
	frame, err := pkt.MarshalBinary()
	if err != nil { // cannot happen for the responses respond builds
		sc.log.Error().AnErr("err", err).Msg("keyless response does not encode; closing connection")
		sc.close()
		return
	}
	sc.writeMu.Lock()
	defer sc.writeMu.Unlock()
	if sc.ctx.Err() != nil {
		return
	}
	// A write that times out leaves the TLS stream unusable, so a failed
	// write closes the connection; the edge fails over or redials.
	_ = sc.tc.SetWriteDeadline(time.Now().Add(sc.s.cfg.RequestTimeout))
	if _, err := sc.tc.Write(frame); err != nil {
		if sc.ctx.Err() == nil {
			sc.log.Info().AnErr("err", err).Msg("keyless response write failed; closing connection")
		}
		sc.close()
	}
}

// respond computes the response operation for one request.
func (sc *serverConn) respond(id uint32, op protocol.Operation, extras keylesswire.Extras, arrived time.Time) protocol.Operation {
	var hash crypto.Hash
	switch op.Opcode {
	case protocol.OpPing:
		return protocol.MakePongOp(op.Payload)
	case protocol.OpECDSASignSHA224:
		hash = crypto.SHA224
	case protocol.OpECDSASignSHA256:
		hash = crypto.SHA256
	case protocol.OpECDSASignSHA384:
		hash = crypto.SHA384
	case protocol.OpECDSASignSHA512:
		hash = crypto.SHA512
	case protocol.OpPong, protocol.OpResponse, protocol.OpError:
		// A response opcode in a request: gokeyless's own code for it.
		return sc.refuse(op, protocol.ErrUnexpectedOpcode, "response opcode in a request")
	default:
		// RSA, Ed25519, seal, RPC, custom: a threshold ECDSA cluster has none of these.
		return sc.refuse(op, protocol.ErrBadOpcode, "unsupported opcode")
	}
	if len(op.Payload) != hash.Size() {
		return sc.refuse(op, protocol.ErrFormat, fmt.Sprintf("digest is %d bytes, %v needs %d", len(op.Payload), hash, hash.Size()))
	}
	if !op.SKI.Valid() {
		return sc.refuse(op, protocol.ErrKeyNotFound, "request names no key (no SKI)")
	}

	req := &Request{
		ID:        id,
		Identity:  sc.identity,
		Op:        op.Opcode,
		Hash:      hash,
		SKI:       op.SKI,
		Digest:    op.Payload,
		Authority: extras.Authority,
		SNI:       op.SNI,
		Deadline:  sc.s.deadline(arrived, extras),
		Budget:    extras.Budget,
		HasBudget: extras.HasBudget,
	}
	start := time.Now()
	sig, err := sc.sign(req)
	ev := func(e *zerolog.Event) *zerolog.Event {
		e = e.Str("ski", op.SKI.String()).Str("op", op.Opcode.String()).Uint32("id", id).
			Int64("dur_ms", time.Since(start).Milliseconds())
		if req.HasBudget {
			e = e.Int64("budget_ms", req.Budget.Milliseconds())
		}
		return e
	}
	if err != nil {
		code := protocol.ErrInternal
		var perr protocol.Error
		if errors.As(err, &perr) && perr != protocol.ErrNone {
			code = perr
		}
		ev(sc.log.Warn()).AnErr("err", err).Str("code", code.String()).Msg("keyless sign failed")
		return protocol.MakeErrorOp(code)
	}
	if len(sig) == 0 || len(sig) > maxSignatureBytes {
		ev(sc.log.Error()).Int("sig_len", len(sig)).Msg("keyless backend returned a signature of impossible size")
		return protocol.MakeErrorOp(protocol.ErrInternal)
	}
	ev(sc.log.Debug()).Msg("keyless sign")
	return protocol.MakeRespondOp(sig)
}

// deadline is when a request that arrived at arrived is due: the edge's
// budget if it sent one and it is shorter than RequestTimeout, which caps
// it (an absurd budget, up to 49 days, cannot hold a session open longer
// than a stock client's request). A budget of 0 is a request already late;
// the backend refuses it at once. Once the edge gives up on an attempt, no
// one reads the answer: with the budget, the signer stops when the edge
// does instead of RequestTimeout later, though the pooled connection stays
// open.
func (s *Server) deadline(arrived time.Time, extras keylesswire.Extras) time.Time {
	d := s.cfg.RequestTimeout
	if extras.HasBudget {
		d = min(d, extras.Budget)
	}
	return arrived.Add(d)
}

// sign calls the backend with the request's deadline, turning a panic into an
// error so that one bad request costs one response, not the process.
func (sc *serverConn) sign(req *Request) (sig []byte, err error) {
	ctx, cancel := context.WithDeadline(sc.ctx, req.Deadline)
	defer cancel()
	defer func() {
		if r := recover(); r != nil {
			sc.log.Error().Str("panic", fmt.Sprint(r)).Str("stack", string(debug.Stack())).
				Str("ski", req.SKI.String()).Msg("keyless backend panicked")
			sig, err = nil, fmt.Errorf("backend panic: %v", r)
		}
	}()
	return sc.s.cfg.Backend.Sign(ctx, req)
}

func (sc *serverConn) refuse(op protocol.Operation, code protocol.Error, why string) protocol.Operation {
	sc.log.Warn().Str("ski", op.SKI.String()).Str("op", op.Opcode.String()).Str("code", code.String()).
		Msg("keyless request refused: " + why)
	return protocol.MakeErrorOp(code)
}
