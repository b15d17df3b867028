package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/tkeyless/tkeyless/tlsglue"
)

// edge is one edge serve, built by newEdge (everything that can fail on bad flags or files
// fails there, before a port opens) and run by run until its context ends.
type edge struct {
	o      *serveOptions
	log    zerolog.Logger
	ref    keyRef
	chains []*tlsglue.Chain // served; the first is the default, the others are chosen by SNI
	check  chainCheck

	keys      tlsglue.KeySource
	identity  *keylessSource // the keys of a keyless:// signer; nil for file://
	closeKeys io.Closer
	acme      *tlsglue.ACME
	secret    []byte // shared ticket secret, or nil

	shed    *tlsglue.Shedder
	health  *signHealth
	metrics *edgeMetrics
	hlog    *handshakeLog
	tlsCfg  *tls.Config
	setCert func(*tlsglue.Chain) error // serves a chain to new handshakes (tlsglue)
	handler http.Handler
}

// newEdge checks the options, loads and checks the chains, opens the key source (or obtains an
// ACME certificate) and builds the TLS configuration and the site. It opens no port.
func newEdge(ctx context.Context, o *serveOptions, logger zerolog.Logger) (_ *edge, err error) {
	acmeMode := len(o.acme.domains) > 0
	switch {
	case len(o.certs) == 0 && !acmeMode:
		return nil, errors.New("--cert: give the certificate chain file(s) to serve (or --acme-domain to get one by ACME)")
	case len(o.certs) > 0 && acmeMode:
		return nil, errors.New("--cert and --acme-domain: give one of them")
	case o.signer == "":
		return nil, errors.New("--signer: give the key reference (keyless://host:port,… or file:///path/key.pem)")
	case o.signTimeout <= 0:
		return nil, fmt.Errorf("--sign-timeout %s: want a positive duration", o.signTimeout)
	}
	e := &edge{o: o, log: logger}
	if e.ref, err = parseKeyRef(o.signer); err != nil {
		return nil, err
	}
	e.check.keyRef = e.ref
	e.check.strictRoots = o.roots != ""
	if e.check.roots, err = loadRoots(o.roots); err != nil {
		return nil, err
	}
	if !acmeMode {
		if e.chains, err = tlsglue.LoadChains(o.certs...); err != nil {
			return nil, err
		}
	}
	if err := e.openKeys(); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	if acmeMode {
		var chain *tlsglue.Chain
		if e.acme, chain, err = startACME(ctx, o, e.ref, e.keys, logger); err != nil {
			return nil, err
		}
		e.chains = []*tlsglue.Chain{chain}
	}
	if err := e.check.check(e.chains, time.Now(), logger); err != nil {
		return nil, err
	}

	var tickets *tlsglue.TicketPolicy
	if o.ticketSecret != "" {
		if e.secret, err = tlsglue.LoadTicketSecret(o.ticketSecret); err != nil {
			return nil, err
		}
		tickets = &tlsglue.TicketPolicy{Secret: e.secret, Rotation: o.ticketRotation, Lifetime: o.ticketLifetime}
		if fi, err := os.Stat(o.ticketSecret); err == nil && fi.Mode().Perm()&0o077 != 0 {
			logger.Warn().Str("file", o.ticketSecret).Str("mode", fi.Mode().Perm().String()).
				Msg("ticket secret is readable by other users; anyone who reads it can decrypt session tickets (chmod 600)")
		}
	}
	if e.shed, err = o.shed.shedder(e.ref, o.signTimeout); err != nil {
		return nil, err
	}
	e.health = &signHealth{log: logger}
	e.metrics = newEdgeMetrics(e.shed)
	e.metrics.servedChains(e.chains)
	if e.identity != nil {
		e.metrics.keylessIdentity(e.identity.Identity())
	}
	e.hlog = &handshakeLog{log: logger, failed: e.metrics.failures.Inc}
	e.tlsCfg, e.setCert, err = tlsglue.ReloadableServerConfig(tlsglue.ServerOptions{
		Chain:            e.chains[0],
		More:             e.chains[1:],
		Keys:             e.keys,
		HandshakeTimeout: o.signTimeout,
		Tickets:          tickets,
		Context:          ctx,
		Shed:             e.shed,
		OnSign: func(ev tlsglue.SignEvent) {
			e.health.record(ev)
			e.metrics.sign(ev)
			e.metrics.signError(ev)
		},
		OnClientHello: e.hlog.clientHello,
	})
	if err != nil {
		return nil, err
	}
	if e.handler, err = siteHandler(o.static, o.upstream, e.health, logger); err != nil {
		return nil, err
	}
	return e, nil
}

// openKeys opens the key source --signer names.
func (e *edge) openKeys() error {
	switch e.ref.scheme {
	case "file":
		if e.o.keyless != (keylessTLS{}) {
			e.log.Warn().Str("signer", e.ref.String()).Msg("--keyless-* flags ignored: the signer is a local key file")
		}
		key, err := loadPrivateKey(e.ref.path)
		if err != nil {
			return err
		}
		e.keys, e.closeKeys = tlsglue.LocalKey{Key: key}, io.NopCloser(nil)
		e.check.key = key.Public()
		return nil
	case "keyless":
		src, err := newKeylessSource(e.ref, e.o.keyless, e.o.signTimeout, e.log)
		if err != nil {
			return err
		}
		e.keys, e.identity, e.closeKeys = src, src, src
		return nil
	}
	return fmt.Errorf("--signer %s: unknown scheme", e.ref)
}

func (e *edge) close() {
	if e.closeKeys != nil {
		e.closeKeys.Close()
	}
}

// run serves until ctx ends (then shuts down gracefully) or serving fails. SIGHUP reloads.
func (e *edge) run(ctx context.Context) error {
	o := e.o
	// The metrics listener opens before the HTTPS port: once that accepts, both are up.
	if o.metricsListen != "" {
		ml, err := net.Listen("tcp", o.metricsListen)
		if err != nil {
			return fmt.Errorf("--metrics-listen: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", e.metrics.handler())
		mux.Handle("GET /healthz", e.health.detail())
		ms := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = ms.Serve(ml) }()
		defer ms.Close()
	}
	if e.identity != nil {
		go watchSigners(ctx, e.identity, e.ref.endpoints, o.signerProbeInterval, e.metrics, e.log)
	}

	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	srv := &http.Server{
		Handler:  e.handler,
		ErrorLog: log.New(e.hlog, "", 0),
		ConnState: func(c net.Conn, st http.ConnState) {
			e.hlog.connState(c, st)
			e.metrics.connState(c, st)
		},
		// net/http also bounds the TLS handshake by ReadHeaderTimeout; leave room for the
		// signature.
		ReadHeaderTimeout: max(10*time.Second, o.signTimeout+5*time.Second),
		IdleTimeout:       2 * time.Minute,
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(tls.NewListener(ln, e.tlsCfg)) }()

	var names []string
	for _, c := range e.chains {
		names = append(names, leafNames(c.Leaf)...)
	}
	ski, _ := tlsglue.SKI(e.chains[0].Leaf.PublicKey)
	e.log.Info().Str("addr", ln.Addr().String()).Str("key", ski).Strs("names", names).Int("chains", len(e.chains)).
		Str("signer", e.ref.String()).Bool("shared_ticket_keys", e.secret != nil).
		Int("max_signing", e.shed.Policy().MaxInFlight).Int("max_signing_queue", e.shed.Policy().MaxQueue).
		Float64("client_rate", e.shed.Policy().ClientRate).Msg("edge ready")

	// Every chain served from now on goes through the stapler, which fetches its OCSP staple.
	var staplers []*stapler
	for _, c := range e.chains {
		st := newStapler(c, e.setCert, e.log.With().Str("component", "ocsp").Logger())
		staplers = append(staplers, st)
		go st.run(ctx)
	}
	// route finds the stapler that takes c over, without serving it yet: a reload routes
	// every chain first, so that it applies whole or not at all.
	route := func(c *tlsglue.Chain) (serve func() error, err error) {
		for _, st := range staplers {
			if len(staplers) == 1 || st.serves(c) {
				return func() error { return st.set(c) }, nil
			}
		}
		return nil, fmt.Errorf("no served chain for the key and names of %q; a new site needs a restart", c.Leaf.Subject)
	}
	if e.acme != nil {
		go e.acme.Run(ctx, func(c *tlsglue.Chain) error {
			if err := e.check.check([]*tlsglue.Chain{c}, time.Now(), e.log); err != nil {
				e.metrics.reloads.WithLabelValues("refused").Inc()
				return err
			}
			serve, err := route(c)
			if err == nil {
				err = serve()
			}
			if err != nil {
				e.metrics.reloads.WithLabelValues("refused").Inc()
				return err
			}
			e.metrics.reloads.WithLabelValues("ok").Inc()
			e.metrics.servedChains([]*tlsglue.Chain{c})
			return nil
		})
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
wait:
	for {
		select {
		case err := <-served:
			return fmt.Errorf("serve %s: %w", ln.Addr(), err)
		case <-ctx.Done():
			break wait
		case <-hup:
			e.reloadIdentity()
			if e.acme != nil {
				renewOnSIGHUP(e.acme, o.acme.storage, e.log)
				continue
			}
			if e.reloadChains(route) {
				e.metrics.reloads.WithLabelValues("ok").Inc()
			} else {
				e.metrics.reloads.WithLabelValues("refused").Inc()
			}
		}
	}
	e.log.Info().Int64("timeout_ms", o.shutdownTimeout.Milliseconds()).Msg("shutting down: no new connections, waiting for open requests")
	sctx, cancel := context.WithTimeout(context.Background(), o.shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		e.log.Warn().Err(err).Msg("open requests did not finish in time; closing their connections")
		srv.Close()
	}
	<-served
	e.log.Info().Msg("edge stopped")
	return nil
}

// reloadChains reads --cert again (on SIGHUP) and serves it to new handshakes if it passes
// e.check, the check made at start; otherwise it logs why and keeps the current chains. Open
// connections are not touched.
func (e *edge) reloadChains(route func(*tlsglue.Chain) (serve func() error, err error)) bool {
	chains, err := e.loadChecked()
	// Every chain is checked and routed before any is swapped in: a reload applies whole or
	// not at all.
	var serves []func() error
	for i := 0; err == nil && i < len(chains); i++ {
		var serve func() error
		serve, err = route(chains[i])
		serves = append(serves, serve)
	}
	for i := 0; err == nil && i < len(serves); i++ {
		err = serves[i]()
	}
	if err != nil {
		e.log.Error().Err(err).Msg("certificate reload refused; still serving the previous chain")
		return false
	}
	e.chains = chains
	e.metrics.servedChains(chains)
	for _, chain := range chains {
		ski, _ := tlsglue.SKI(chain.Leaf.PublicKey)
		e.log.Info().Str("key", ski).Strs("names", leafNames(chain.Leaf)).Str("serial", chain.Leaf.SerialNumber.String()).
			Time("not_after", chain.Leaf.NotAfter).Msg("certificates reloaded")
	}
	return true
}

// loadChecked reads --cert and applies the start-up check to what it finds.
func (e *edge) loadChecked() ([]*tlsglue.Chain, error) {
	chains, err := tlsglue.LoadChains(e.o.certs...)
	if err != nil {
		return nil, err
	}
	if err := e.check.check(chains, time.Now(), e.log); err != nil {
		return nil, err
	}
	return chains, nil
}

// reloadIdentity reads --keyless-cert, --keyless-key and --keyless-ca again (on SIGHUP): new
// connections to the signers present the new identity and requests carry authorities signed
// with its key; requests in flight finish on the old one. A bad file keeps the old identity.
func (e *edge) reloadIdentity() {
	if e.identity == nil {
		return
	}
	id, err := e.identity.Reload()
	if err != nil {
		e.metrics.identityReloads.WithLabelValues("refused").Inc()
		e.log.Error().Err(err).Str("serial", e.identity.Identity().SerialNumber.String()).
			Msg("keyless identity reload refused; still presenting the previous identity to the signers")
		return
	}
	e.metrics.identityReloads.WithLabelValues("ok").Inc()
	e.metrics.keylessIdentity(id)
	e.log.Info().Str("subject", id.Subject.String()).Str("serial", id.SerialNumber.String()).Time("not_after", id.NotAfter).
		Msg("keyless identity reloaded; new connections to the signers use it")
}
