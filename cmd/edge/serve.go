package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/tkeyless/tkeyless/tlsglue"
)

// serveOptions are the flags of edge serve (and the keys of its configuration file).
type serveOptions struct {
	configPath      string
	listen          string
	certs           []string
	signer          string
	keyless         keylessTLS
	signTimeout     time.Duration
	static          string
	upstream        string
	ticketSecret    string
	roots           string
	metricsListen   string
	acme            acmeFlags
	ticketRotation  time.Duration
	ticketLifetime  time.Duration
	shutdownTimeout time.Duration
	shed            shedFlags
}

func serveCmd(g *globalFlags) *cobra.Command {
	o := &serveOptions{}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve HTTPS with a certificate whose key is on the signers",
		Long: `serve terminates TLS 1.2 and 1.3 (HTTP/2 and HTTP/1.1) for the certificate chain
in --cert. Each full handshake asks the --signer for one signature, within
--sign-timeout; resumed handshakes (session tickets) need none.

--signer is a key reference:
  keyless://host:port,host:port   the tkeyless signer cluster, or any gokeyless key
                                  server, over mutual TLS (--keyless-cert, --keyless-key,
                                  --keyless-ca). Any listed signer may be asked; a failing
                                  one is skipped. Add ?ski=HEX to insist on a key.
  file:///path/key.pem            a private key in this process: the baseline for load
                                  tests, never for production.

Content is a static directory (--static), a reverse proxy (--upstream, with
X-Forwarded-For/-Proto/-Host), or with neither a one-line page. /healthz answers
200 "ok", or 503 "cannot sign" once the last 5 handshake signatures all failed;
nothing more, since anyone can read it. /healthz on --metrics-listen answers the
same codes with the reason (the last error, naming signers and key).

Every flag can also come from a YAML file (--config) whose keys are the flag
names; flags given on the command line win. See examples/edge.yaml.

SIGHUP reloads. With --cert it reads the files again and serves them to new
handshakes if they pass the checks made at start (open connections keep theirs).
With --acme-domain it renews the certificate at once if it is within its renewal
window (to retry a failed renewal without waiting), and whatever its age if the
file "renew" exists in --acme-storage (touch it, then send SIGHUP; the SIGHUP
removes it). Renewals asked for this way are rate-limited, so a reload loop cannot
spend the CA's limits: at most one every 10 minutes, the interval doubling with
each renewal failed in a row (up to 4 hours), none while one is under way; a
refused request is logged with the time to ask again. Scheduled renewals are not
limited.

Every full handshake costs the signer cluster a threshold signature, so the
edge sheds what it cannot serve, at once and before any signer is asked:
  - each client prefix (--client-ipv4-prefix, --client-ipv6-prefix; /24 and /64
    by default, as an attacker holds a /24 as easily as one address) may start
    --client-rate full handshakes per second, --client-burst at once; prefixes
    in --client-allow have no budget;
  - at most --max-signing signatures are in flight (default: 2 per signer
    endpoint, as each signer runs about as many sessions as it has cores),
    fewer while signatures take longer than --sign-latency-target (the slots
    adapt: more in flight than the signers can run makes every signature
    slower, until none finishes before its deadline);
    beyond that up to --max-signing-queue handshakes wait (the client with the
    least in flight and queued first, then in arrival order), each only as
    long as its --sign-timeout still leaves time for a signature;
  - one client prefix holds at most --client-share of those slots and queue
    together (default: half), so a flood leaves room to every other client.
Resumed handshakes make no signature and are never shed (--shed=false turns all
of this off). While it sheds, or the signers refuse handshakes as overloaded
(they refuse at once what they cannot sign before the handshake's deadline,
which each request carries), /healthz answers 200 "overloaded": a flood is no
reason for a load balancer to eject the edge.

The edge stops gracefully on SIGINT or SIGTERM: it stops accepting, lets open
requests finish for up to --shutdown-timeout, then closes what is left.`,
		Example: `  edge serve --listen :443 --cert site.pem \
    --signer keyless://signer-a:2407,signer-b:2407,signer-c:2407 \
    --keyless-cert edge.pem --keyless-key edge-key.pem --keyless-ca cluster-ca.pem \
    --upstream http://127.0.0.1:8080
  edge serve --config /etc/tkeyless/edge.yaml --log-format console`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.configPath != "" {
				if err := applyConfigFile(cmd.Flags(), o.configPath); err != nil {
					return err
				}
			}
			logger, err := g.logger()
			if err != nil {
				return err
			}
			return serve(cmd.Context(), o, logger)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.configPath, "config", "", "YAML file with any of these flags as keys (paths in it are relative to the file); flags override it")
	f.StringVar(&o.listen, "listen", "127.0.0.1:8443", "address to serve HTTPS on (host:port; :443 for every interface)")
	f.StringArrayVar(&o.certs, "cert", nil, "certificate file, PEM or DER; repeat it for a chain split over files (leaf and intermediates, any order; a root is left out)")
	f.StringVar(&o.signer, "signer", "", "key reference: keyless://host:port[,host:port…] (signer cluster or gokeyless server) or file:///path/key.pem (in-memory baseline)")
	f.StringVar(&o.keyless.cert, "keyless-cert", "", "the edge's client certificate for mutual TLS to keyless signers (PEM)")
	f.StringVar(&o.keyless.key, "keyless-key", "", "the private key of --keyless-cert (PEM); the edge's identity, not the site's key")
	f.StringVar(&o.keyless.ca, "keyless-ca", "", "CA bundle (PEM) that certifies the signers (default: the system roots)")
	f.StringVar(&o.keyless.serverName, "keyless-server-name", "", "name to verify in the signers' certificates (default: each endpoint's host)")
	f.DurationVar(&o.signTimeout, "sign-timeout", tlsglue.DefaultHandshakeTimeout, "how long a handshake waits for its signature before it fails")
	f.StringVar(&o.static, "static", "", "serve the files in this directory")
	f.StringVar(&o.upstream, "upstream", "", "reverse-proxy every request to this http:// or https:// URL")
	f.StringVar(&o.ticketSecret, "ticket-secret", "", "file with a secret of 32+ bytes shared by all edges, so any edge resumes any edge's sessions (default: per-process keys rotated by crypto/tls)")
	o.acme.register(f)
	f.StringVar(&o.metricsListen, "metrics-listen", "", "serve Prometheus /metrics and /healthz with the reason of failures over plain HTTP here (a private address, e.g. 127.0.0.1:9443)")
	f.StringVar(&o.roots, "roots", "", "PEM root CAs the chain must reach (refuse to start otherwise); without it a chain that does not reach a system root is only logged")
	f.DurationVar(&o.ticketRotation, "ticket-rotation", tlsglue.DefaultTicketRotation, "with --ticket-secret: a new ticket key every this long, on every edge at once (clocks must agree to well within it)")
	f.DurationVar(&o.ticketLifetime, "ticket-lifetime", tlsglue.DefaultTicketLifetime, "with --ticket-secret: a session this old, counted from its full handshake however often it resumed, is refused and the client does a full handshake")
	f.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 10*time.Second, "on SIGINT/SIGTERM, how long open requests may take to finish")
	o.shed.register(f)
	return cmd
}

// serve runs the edge until ctx is cancelled, then shuts down gracefully.
func serve(ctx context.Context, o *serveOptions, logger zerolog.Logger) error {
	acmeMode := len(o.acme.domains) > 0
	if len(o.certs) == 0 && !acmeMode {
		return errors.New("--cert: give the certificate chain file(s) to serve (or --acme-domain to get one by ACME)")
	}
	if len(o.certs) > 0 && acmeMode {
		return errors.New("--cert and --acme-domain: give one of them")
	}
	if o.signer == "" {
		return errors.New("--signer: give the key reference (keyless://host:port,… or file:///path/key.pem)")
	}
	if o.signTimeout <= 0 {
		return fmt.Errorf("--sign-timeout %s: want a positive duration", o.signTimeout)
	}
	ref, err := parseKeyRef(o.signer)
	if err != nil {
		return err
	}
	var chain *tlsglue.Chain
	var chains []*tlsglue.Chain // chain first; the others are chosen by SNI
	if !acmeMode {
		if chains, err = tlsglue.LoadChains(o.certs...); err != nil {
			return err
		}
		chain = chains[0]
	}
	keys, closeKeys, err := openKeySource(ref, chain, o.keyless, o.signTimeout, logger)
	if err != nil {
		return err
	}
	defer closeKeys.Close()
	var acme *tlsglue.ACME
	if acmeMode {
		if acme, chain, err = startACME(ctx, o, ref, keys, logger); err != nil {
			return err
		}
		chains = []*tlsglue.Chain{chain}
	}
	if ref.scheme == "file" {
		for _, c := range chains[1:] {
			if err := tlsglue.CheckKey(c, keys.(tlsglue.LocalKey).Key.Public()); err != nil {
				return fmt.Errorf("--signer %s holds one key: %w", ref, err)
			}
		}
	}
	ski, err := tlsglue.SKI(chain.Leaf.PublicKey)
	if err != nil {
		return err
	}
	roots, err := loadRoots(o.roots)
	if err != nil {
		return err
	}
	for _, c := range chains {
		if err := c.CheckValidity(time.Now()); err != nil {
			return err
		}
		cski, _ := tlsglue.SKI(c.Leaf.PublicKey)
		warnExpiry(logger, c.Leaf, cski)
		if err := c.Verify(roots, time.Now()); err != nil {
			if o.roots != "" || !errors.Is(err, tlsglue.ErrMissingIntermediate) {
				return err
			}
			// Private CAs are common behind an edge; without --roots this is
			// only a warning.
			logger.Warn().Err(err).Msg("the chain does not reach a system root; clients that do not trust its top certificate will fail (pass --roots to make this an error)")
		}
	}

	var secret []byte
	var tickets *tlsglue.TicketPolicy
	if o.ticketSecret != "" {
		if secret, err = tlsglue.LoadTicketSecret(o.ticketSecret); err != nil {
			return err
		}
		tickets = &tlsglue.TicketPolicy{Secret: secret, Rotation: o.ticketRotation, Lifetime: o.ticketLifetime}
		if fi, err := os.Stat(o.ticketSecret); err == nil && fi.Mode().Perm()&0o077 != 0 {
			logger.Warn().Str("file", o.ticketSecret).Str("mode", fi.Mode().Perm().String()).
				Msg("ticket secret is readable by other users; anyone who reads it can decrypt session tickets (chmod 600)")
		}
	}

	shed, err := o.shed.shedder(ref, o.signTimeout)
	if err != nil {
		return err
	}
	health := &signHealth{log: logger}
	metrics := newEdgeMetrics(shed)
	hlog := &handshakeLog{log: logger, failed: metrics.failures.Inc}
	metrics.certNotAfter.Set(float64(chain.Leaf.NotAfter.Unix()))
	tlsCfg, reload, err := tlsglue.ReloadableServerConfig(tlsglue.ServerOptions{
		Chain:            chain,
		More:             chains[1:],
		Keys:             keys,
		HandshakeTimeout: o.signTimeout,
		Tickets:          tickets,
		Context:          ctx,
		Shed:             shed,
		OnSign: func(ev tlsglue.SignEvent) {
			health.record(ev)
			metrics.sign(ev)
		},
		OnClientHello: hlog.clientHello,
	})
	if err != nil {
		return err
	}

	handler, err := siteHandler(o.static, o.upstream, health, logger)
	if err != nil {
		return err
	}

	// The metrics listener opens before the HTTPS port: once that accepts, both are up.
	if o.metricsListen != "" {
		ml, err := net.Listen("tcp", o.metricsListen)
		if err != nil {
			return fmt.Errorf("--metrics-listen: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", metrics.handler())
		mux.Handle("GET /healthz", health.detail())
		ms := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = ms.Serve(ml) }()
		defer ms.Close()
	}

	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	srv := &http.Server{
		Handler:  handler,
		ErrorLog: log.New(hlog, "", 0),
		ConnState: func(c net.Conn, st http.ConnState) {
			hlog.connState(c, st)
			metrics.connState(c, st)
		},
		// net/http also bounds the TLS handshake by ReadHeaderTimeout; leave room for the
		// signature.
		ReadHeaderTimeout: max(10*time.Second, o.signTimeout+5*time.Second),
		IdleTimeout:       2 * time.Minute,
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(tls.NewListener(ln, tlsCfg)) }()

	var names []string
	for _, c := range chains {
		names = append(names, leafNames(c.Leaf)...)
	}
	logger.Info().Str("addr", ln.Addr().String()).Str("key", ski).Strs("names", names).Int("chains", len(chains)).
		Str("signer", ref.String()).Bool("shared_ticket_keys", secret != nil).
		Int("max_signing", shed.Policy().MaxInFlight).Int("max_signing_queue", shed.Policy().MaxQueue).
		Float64("client_rate", shed.Policy().ClientRate).Msg("edge ready")

	// Every chain served from now on goes through the stapler, which
	// fetches its OCSP staple.
	var staplers []*stapler
	for _, c := range chains {
		st := newStapler(c, reload, logger.With().Str("component", "ocsp").Logger())
		staplers = append(staplers, st)
		go st.run(ctx)
	}
	reload = func(c *tlsglue.Chain) error {
		for _, st := range staplers {
			if len(staplers) == 1 || st.serves(c) {
				return st.set(c)
			}
		}
		return fmt.Errorf("no served chain for the key and names of %q; a new site needs a restart", c.Leaf.Subject)
	}
	if acme != nil {
		go acme.Run(ctx, func(c *tlsglue.Chain) error {
			if err := reload(c); err != nil {
				return err
			}
			metrics.reloads.WithLabelValues("ok").Inc()
			metrics.certNotAfter.Set(float64(c.Leaf.NotAfter.Unix()))
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
			if acme != nil {
				renewOnSIGHUP(acme, o.acme.storage, logger)
				continue
			}
			if reloadChain(o, ref, keys, roots, reload, logger) {
				metrics.reloads.WithLabelValues("ok").Inc()
			} else {
				metrics.reloads.WithLabelValues("refused").Inc()
			}
		}
	}
	logger.Info().Dur("timeout", o.shutdownTimeout).Msg("shutting down: no new connections, waiting for open requests")
	sctx, cancel := context.WithTimeout(context.Background(), o.shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		logger.Warn().Err(err).Msg("open requests did not finish in time; closing their connections")
		srv.Close()
	}
	<-served
	logger.Info().Msg("edge stopped")
	return nil
}

// reloadChain reads --cert again (on SIGHUP) and serves it to new handshakes if it passes every
// check done at start; otherwise it logs why and keeps the current chain. Open connections are
// not touched.
func reloadChain(o *serveOptions, ref keyRef, keys tlsglue.KeySource, roots *x509.CertPool, reload func(*tlsglue.Chain) error, logger zerolog.Logger) bool {
	// Every chain is checked before any is swapped in: a reload applies
	// whole or not at all.
	chains, err := tlsglue.LoadChains(o.certs...)
	for i := 0; err == nil && i < len(chains); i++ {
		chain := chains[i]
		err = chain.CheckValidity(time.Now())
		if err == nil && roots != nil {
			err = chain.Verify(roots, time.Now())
		}
		if err == nil {
			switch {
			case ref.scheme == "file":
				if lk, ok := keys.(tlsglue.LocalKey); ok {
					err = tlsglue.CheckKey(chain, lk.Key.Public())
				}
			case ref.ski != "" && i == 0:
				err = tlsglue.CheckSKI(chain, ref.ski)
			}
		}
	}
	for i := 0; err == nil && i < len(chains); i++ {
		err = reload(chains[i])
	}
	if err != nil {
		logger.Error().Err(err).Msg("certificate reload refused; still serving the previous chain")
		return false
	}
	for _, chain := range chains {
		ski, _ := tlsglue.SKI(chain.Leaf.PublicKey)
		logger.Info().Str("key", ski).Strs("names", leafNames(chain.Leaf)).Str("serial", chain.Leaf.SerialNumber.String()).
			Time("not_after", chain.Leaf.NotAfter).Msg("certificates reloaded")
	}
	return true
}

func leafNames(leaf *x509.Certificate) []string {
	names := append([]string{}, leaf.DNSNames...)
	for _, ip := range leaf.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 && leaf.Subject.CommonName != "" {
		names = append(names, leaf.Subject.CommonName)
	}
	return names
}

// warnExpiry logs when the certificate is not valid now or soon will not be: the edge still
// serves it (the operator may be replacing it), but clients will refuse it.
func warnExpiry(logger zerolog.Logger, leaf *x509.Certificate, ski string) {
	now := time.Now()
	switch {
	case now.After(leaf.NotAfter):
		logger.Error().Str("key", ski).Time("not_after", leaf.NotAfter).Msg("certificate has expired; clients will refuse it")
	case now.Before(leaf.NotBefore):
		logger.Error().Str("key", ski).Time("not_before", leaf.NotBefore).Msg("certificate is not valid yet; clients will refuse it")
	case leaf.NotAfter.Sub(now) < 14*24*time.Hour:
		logger.Warn().Str("key", ski).Time("not_after", leaf.NotAfter).Msg("certificate expires in less than 14 days")
	}
}
