// Package node is one tkeyless signer: it holds this node's shares of the
// cluster keys, serves its peers (the other signers) over gRPC and edges
// over the keyless protocol, and coordinates the signing sessions and key
// ceremonies that start at it.
//
// Any node can coordinate. The coordinator of a request is simply the node
// the edge reached; it picks a quorum, asks each member to prepare its party
// (each member checks the request on its own), starts them, relays nothing
// but the parties' own messages, and returns the signature its own party
// computed and verified.
package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/tkeyless/tkeyless/internal/authority"
	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/keyless"
	"github.com/tkeyless/tkeyless/tss"
)

// Node is one running signer. Create it with New; there is one per process.
type Node struct {
	cfg   Config
	log   zerolog.Logger
	store *tss.Store
	// trust is the certificate, CA, access list and revocations in
	// force; Reload replaces them (trust.go).
	trust atomic.Pointer[trustSet]

	mu     sync.RWMutex
	shares map[tss.KeyID]*tss.Share

	preParams *preParamsCache
	peers     map[string]*peerConn
	// noCarry makes this node coordinate as a version-3 node would: with
	// the immediate echo check only (tests of a mixed cluster).
	noCarry     atomic.Bool
	sessions    *router
	verifier    *authority.Verifier
	metrics     *metrics
	keyState    *keyStates
	convictions *convictions
	budget      *abortBudget
	pending     *pendingReshares
	reshares    *reshareHistory
	pool        *presignPool
	// finishes are the presignature halves this node is finishing for
	// other coordinators, with the request authority each spent.
	finishes finishTracker
	lastLive atomic.Int64 // unix nanoseconds of the last live signing activity
	// admission queues the sessions this node computes (admission.go).
	admission *admission
	// dialer connects to peers (nil: TCP); kept for redials.
	dialer dialer
}

type peerConn struct {
	name   string
	addr   string
	link   atomic.Pointer[peerLink]
	health *peerHealth
}

// peerLink is one connection to a peer. A reload that changes this node's
// certificate replaces it (redial): a peer checks this node's broadcast
// signatures against the certificate of the connection they arrive on.
type peerLink struct {
	conn   *grpc.ClientConn
	client *peerwire.Client
}

// conn and client are those of the link in use; nil before the first dial
// (unit tests build nodes without connections).
func (p *peerConn) conn() *grpc.ClientConn {
	if l := p.link.Load(); l != nil {
		return l.conn
	}
	return nil
}

func (p *peerConn) client() *peerwire.Client {
	if l := p.link.Load(); l != nil {
		return l.client
	}
	return nil
}

// New loads the node's identity and shares and prepares (lazy) connections
// to its peers. It does not listen yet: see Serve.
func New(cfg Config, log zerolog.Logger) (*Node, error) {
	return newNode(cfg, log, nil)
}

// dialer connects to a peer's address; nil dials TCP. Tests run whole
// clusters in memory with one (node_test.go).
type dialer func(ctx context.Context, addr string) (net.Conn, error)

func newNode(cfg Config, log zerolog.Logger, dial dialer) (*Node, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	sealer, err := cfg.Sealer()
	if err != nil {
		return nil, err
	}
	store, err := tss.OpenStore(filepath.Join(cfg.DataDir, "keys"), sealer)
	if err != nil {
		return nil, err
	}
	n := &Node{
		cfg:       cfg,
		log:       log.With().Str("node", cfg.Name).Logger(),
		store:     store,
		shares:    map[tss.KeyID]*tss.Share{},
		preParams: newPreParamsCache(filepath.Join(cfg.DataDir, "preparams.age"), sealer),
		peers:     map[string]*peerConn{},
		sessions:  newRouter(30 * time.Second),
		verifier:  &authority.Verifier{Window: time.Duration(cfg.AuthorityWindow)},
		pool:      newPresignPool(),
	}
	n.metrics = newMetrics(func() float64 { return float64(n.sessions.count()) })
	trust, err := n.loadTrust(cfg)
	if err != nil {
		return nil, err
	}
	n.trust.Store(trust)
	n.verifier.SetRoots(trust.pool)
	n.metrics.lastReload.Set(float64(time.Now().Unix()))
	n.warnStaleCRL(trust)
	n.admission = newAdmission(cfg, n.metrics)
	n.sessions.failed = n.sessionFailed
	if err := n.verifier.Open(filepath.Join(cfg.DataDir, "request-ids")); err != nil {
		// The verifier still works, refusing authorities made before now.
		n.log.Error().Err(err).Msg("request id journal")
	}
	ok := false
	defer func() {
		if !ok {
			n.verifier.Close()
		}
	}()
	if n.keyState, err = loadKeyStates(keyStatePath(cfg.DataDir), n.verifyKeyState); err != nil {
		return nil, err
	}
	if n.convictions, err = loadConvictions(cfg.DataDir); err != nil {
		return nil, err
	}
	for peer, c := range n.convictions.m {
		n.metrics.convicted.WithLabelValues(peer).Set(1)
		n.log.Error().Bool("alert", true).Str("peer", peer).Str("session", c.Session).Time("since", c.At).Str("reason", c.Reason).
			Msg("peer convicted of misbehaviour: excluded from every session here until an admin runs `signer peer readmit`")
	}
	if n.budget, err = loadAbortBudget(cfg.DataDir, cfg.AbortBudget); err != nil {
		return nil, err
	}
	for key, k := range n.budget.m {
		if k.Suspended != "" {
			n.metrics.suspended.WithLabelValues(key).Set(1)
			n.log.Error().Bool("alert", true).Str("key", key).Str("reason", k.Suspended).Msg("key suspended on this node")
		}
	}
	if n.pending, err = loadPendingReshares(cfg.DataDir); err != nil {
		return nil, err
	}
	if n.reshares, err = loadReshareHistory(cfg.DataDir); err != nil {
		return nil, err
	}
	for id, p := range n.pending.m {
		n.log.Warn().Str("key", id.String()).Str("session", p.Session.String()).Str("coordinator", p.Coordinator).Bool("new_share_staged", p.Staged).Time("since", p.Since).
			Msg("a resharing awaits its outcome: the current share stays in use until a commit confirmed by every new member arrives (or an admin discards it)")
	}
	if err := n.loadShares(); err != nil {
		return nil, err
	}
	n.dialer = dial
	for _, p := range cfg.Peers {
		link, err := n.dial(p)
		if err != nil {
			return nil, err
		}
		pc := &peerConn{name: p.Name, addr: p.Addr, health: &peerHealth{}}
		pc.link.Store(link)
		n.peers[p.Name] = pc
	}
	ok = true
	return n, nil
}

// loadShares reads every stored share. A share that fails to load is
// reported and skipped: the node still serves its other keys.
func (n *Node) loadShares() error {
	ids, err := n.store.List()
	if err != nil {
		return err
	}
	for _, id := range ids {
		s, err := n.store.Load(id)
		if errors.Is(err, tss.ErrWrongKey) {
			// Not one bad file but the wrong key: serving without the
			// node's keys would only hide the mistake.
			return fmt.Errorf("%w; check secrets in the configuration", err)
		}
		if err != nil {
			n.log.Error().Err(err).Str("key", id.String()).Msg("share not loaded; this key will not sign on this node")
			continue
		}
		if s.Self != n.cfg.Name {
			n.log.Error().Str("key", id.String()).Str("share_owner", s.Self).Msg("share belongs to another node name; not loaded")
			continue
		}
		n.shares[id] = s
		n.log.Info().Str("key", id.String()).Int("t", s.Threshold).Strs("parties", s.Parties).Msg("share loaded")
	}
	return nil
}

// wake makes a connection waiting out its reconnect backoff try again at
// once.
func (p *peerConn) wake() {
	if p.conn().GetState() == connectivity.TransientFailure {
		p.conn().ResetConnectBackoff()
	}
}

// peerWindow is the HTTP/2 flow-control window of peer links, on both
// sides. Setting it turns off gRPC's bandwidth estimation, which answers
// received data with a PING and its ACK: on a signing session's small,
// latency-bound messages that was two extra writes per message, about as
// many as the messages themselves (docs/bench/before-after.md). A fixed
// window as large as the biggest message (MaxRecvMsgSize) never stalls one.
const peerWindow = 4 << 20

func (n *Node) dial(p Peer) (*peerLink, error) {
	tc := n.peerTLS(p.Name)
	var opts []grpc.DialOption
	if n.dialer != nil {
		opts = append(opts, grpc.WithContextDialer(n.dialer))
	}
	conn, err := grpc.NewClient(p.Addr, append(opts,
		grpc.WithTransportCredentials(credentials.NewTLS(tc)),
		// Calls wait for a (re)connecting peer instead of failing at once;
		// every call has a deadline, so a dead peer costs that deadline,
		// and health checks steer quorums away from it.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(4<<20), grpc.WaitForReady(true)),
		// A restarted peer is found again within a second, not gRPC's
		// default of up to two minutes.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: time.Second,
		}),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 20 * time.Second, Timeout: 5 * time.Second}),
		grpc.WithInitialWindowSize(peerWindow), grpc.WithInitialConnWindowSize(peerWindow),
	)...)
	if err != nil {
		return nil, fmt.Errorf("peer %s at %s: %w", p.Name, p.Addr, err)
	}
	return &peerLink{conn: conn, client: peerwire.NewClient(conn)}, nil
}

// share returns this node's share of key id.
func (n *Node) share(id tss.KeyID) (*tss.Share, bool) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	s, ok := n.shares[id]
	return s, ok
}

// Keys lists the keys this node holds a share of.
func (n *Node) Keys() []tss.KeyID {
	n.mu.RLock()
	defer n.mu.RUnlock()
	ids := make([]tss.KeyID, 0, len(n.shares))
	for id := range n.shares {
		ids = append(ids, id)
	}
	return ids
}

// Serve listens for peers and edges until ctx ends, then stops both
// gracefully (in-flight sessions get a few seconds to finish).
func (n *Node) Serve(ctx context.Context, peerL, keylessL net.Listener) error {
	gs := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(n.serverTLS())),
		grpc.MaxRecvMsgSize(4<<20),
		grpc.InitialWindowSize(peerWindow), grpc.InitialConnWindowSize(peerWindow),
		grpc.ChainUnaryInterceptor(n.recoverInterceptor, n.identityInterceptor),
		grpc.ChainStreamInterceptor(n.streamInterceptor),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	peerwire.Register(gs, &peerService{n: n})

	ks, err := n.keylessServer()
	if err != nil {
		return err
	}

	errc := make(chan error, 3)
	go func() { errc <- gs.Serve(peerL) }()
	go func() { errc <- ks.Serve(keylessL) }()
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go n.watchPeers(watchCtx)
	go n.refillPresignatures(watchCtx)
	go n.resolveLoop(watchCtx)
	var hs *http.Server
	if n.cfg.HTTPListen != "" {
		hl, err := net.Listen("tcp", n.cfg.HTTPListen)
		if err != nil {
			return fmt.Errorf("http endpoint: %w", err)
		}
		hs = &http.Server{Handler: n.HTTPHandler(), ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := hs.Serve(hl); !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
	}
	n.log.Info().Str("peer_addr", peerL.Addr().String()).Str("keyless_addr", keylessL.Addr().String()).Int("keys", len(n.Keys())).Msg("signer ready")

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	n.log.Info().Msg("signer stopping")
	if hs != nil {
		_ = hs.Close()
	}
	_ = ks.Close()
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		gs.Stop()
	}
	for _, p := range n.peers {
		_ = p.conn().Close()
	}
	if serveErr != nil && !errors.Is(serveErr, grpc.ErrServerStopped) {
		return serveErr
	}
	return nil
}

// keylessServer is the node's gokeyless endpoint, not yet listening.
func (n *Node) keylessServer() (*keyless.Server, error) {
	ks, err := keyless.NewServer(keyless.ServerConfig{
		TLS:            n.serverTLS(),
		Backend:        &keylessBackend{n: n},
		Logger:         n.log.With().Str("endpoint", "keyless").Logger(),
		RequestTimeout: time.Duration(n.cfg.SignTimeout),
	})
	if err != nil {
		return nil, fmt.Errorf("keyless endpoint: %w", err)
	}
	return ks, nil
}

// resolveLoop asks, every few seconds while this node awaits the outcome of
// a resharing, the other members how it ended (resolvePending).
func (n *Node) resolveLoop(ctx context.Context) {
	t := time.NewTicker(3 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if len(n.pending.all()) > 0 {
				n.resolvePending(ctx)
			}
		}
	}
}
