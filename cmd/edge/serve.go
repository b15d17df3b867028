package main

import (
	"context"
	"crypto/x509"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

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

	signerProbeInterval time.Duration
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
names; flags given on the command line win. A relative value of a flag of type
path or paths is taken relative to the file. See examples/edge.yaml.

--metrics-listen also shows which build runs (tkeyless_edge_build_info), the
expiry of each served chain and of the edge's identity, and each signer's
health as this edge sees it (tkeyless_edge_signer_up, pinged every
--signer-probe-interval).

SIGHUP reloads. With --cert it reads the files again and serves them to new
handshakes if they pass the checks made at start (open connections keep theirs).
With a keyless:// signer it also reads --keyless-cert, --keyless-key and
--keyless-ca again: new connections to the signers present the new identity and
requests carry authorities signed with its key, while signatures in flight
finish on the old connections; a missing or bad file is logged and counted
(tkeyless_edge_keyless_identity_reloads_total) and the old identity kept.
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
	o.register(cmd.Flags())
	return cmd
}

// register declares the flags of edge serve into f.
func (o *serveOptions) register(f *pflag.FlagSet) {
	pathVar(f, &o.configPath, "config", "", "YAML file with any of these flags as keys (paths in it are relative to the file); flags override it")
	f.StringVar(&o.listen, "listen", "127.0.0.1:8443", "address to serve HTTPS on (host:port; :443 for every interface)")
	pathsVar(f, &o.certs, "cert", "certificate file, PEM or DER; repeat it for a chain split over files (leaf and intermediates, any order; a root is left out)")
	f.StringVar(&o.signer, "signer", "", "key reference: keyless://host:port[,host:port…] (signer cluster or gokeyless server) or file:///path/key.pem (in-memory baseline)")
	pathVar(f, &o.keyless.cert, "keyless-cert", "", "the edge's client certificate for mutual TLS to keyless signers (PEM)")
	pathVar(f, &o.keyless.key, "keyless-key", "", "the private key of --keyless-cert (PEM); the edge's identity, not the site's key")
	pathVar(f, &o.keyless.ca, "keyless-ca", "", "CA bundle (PEM) that certifies the signers (default: the system roots)")
	f.StringVar(&o.keyless.serverName, "keyless-server-name", "", "name to verify in the signers' certificates (default: each endpoint's host)")
	f.DurationVar(&o.signTimeout, "sign-timeout", tlsglue.DefaultHandshakeTimeout, "how long a handshake waits for its signature before it fails")
	pathVar(f, &o.static, "static", "", "serve the files in this directory")
	f.StringVar(&o.upstream, "upstream", "", "reverse-proxy every request to this http:// or https:// URL")
	pathVar(f, &o.ticketSecret, "ticket-secret", "", "file with a secret of 32+ bytes shared by all edges, so any edge resumes any edge's sessions (default: per-process keys rotated by crypto/tls)")
	o.acme.register(f)
	f.StringVar(&o.metricsListen, "metrics-listen", "", "serve Prometheus /metrics and /healthz with the reason of failures over plain HTTP here (a private address, e.g. 127.0.0.1:9443)")
	pathVar(f, &o.roots, "roots", "", "PEM root CAs the chain must reach (refuse to start otherwise); without it a chain that does not reach a system root is only logged")
	f.DurationVar(&o.ticketRotation, "ticket-rotation", tlsglue.DefaultTicketRotation, "with --ticket-secret: a new ticket key every this long, on every edge at once (clocks must agree to well within it)")
	f.DurationVar(&o.ticketLifetime, "ticket-lifetime", tlsglue.DefaultTicketLifetime, "with --ticket-secret: a session this old, counted from its full handshake however often it resumed, is refused and the client does a full handshake")
	f.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 10*time.Second, "on SIGINT/SIGTERM, how long open requests may take to finish")
	f.DurationVar(&o.signerProbeInterval, "signer-probe-interval", 10*time.Second, "with a keyless:// signer: ping every signer this often, for the per-signer health metrics on --metrics-listen (0: never)")
	o.shed.register(f)
}

// serve runs the edge until ctx is cancelled, then shuts down gracefully.
func serve(ctx context.Context, o *serveOptions, logger zerolog.Logger) error {
	e, err := newEdge(ctx, o, logger)
	if err != nil {
		return err
	}
	defer e.close()
	return e.run(ctx)
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
