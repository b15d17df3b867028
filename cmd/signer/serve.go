package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/tkeyless/tkeyless/node"
)

func serveCmd(g *globalFlags) *cobra.Command {
	var configPath string
	var admission admissionFlags
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run this node: the peer endpoint (gRPC) and the keyless endpoint",
		Long: `serve runs this node until SIGINT or SIGTERM. It listens on peer_listen for
the other signers (gRPC over mutual TLS) and on keyless_listen for edges
(the gokeyless protocol over mutual TLS). If this node has no pre-parameters
yet, it generates them in the background; key generation waits for them.

Admission control (flags override the configuration file): the node computes
at most --max-concurrent-sessions signing sessions at once (coordinated or
joined; default the CPU count) and queues the requests it coordinates beyond
that, up to --max-queue (default 64), in arrival order with a fair share per
edge identity; one identity may have at most --max-queue-per-identity
requests in progress (default max_queue/2, or per identity with
--identity-queue NAME=N). A request whose deadline ends before a session
could finish (a moving estimate per key) is refused at once as overloaded,
and the edge tries another signer. Presignature refills wait behind live
requests.

Reload (SIGHUP, e.g. systemctl reload): the node reads its configuration file
again and puts in force, without dropping a connection or a session, its
certificate and key (tls.cert, tls.key), the cluster CA (tls.ca), the access
list (access) and the revoked identities (revocation.crl, a CRL issued by the
cluster CA; revocation.list, lines "name IDENTITY" or "serial HEX"). A revoked
edge or signer is refused from then on: new connections, further requests on
connections already open, and (on every member) the end-to-end authority of
its requests, whichever signer forwards them. Sessions in flight finish.
A reload that fails (a file missing or bad, a key that does not match its
certificate, a certificate for another name or CA, a truncated CRL) keeps the
previous configuration, logs why and counts tkeyless_signer_reloads_total
{result="failed"}; tkeyless_signer_config_last_reload_success_timestamp_seconds
tells when the configuration in force was loaded. Other settings changed in
the file take effect at the next restart (the reload log names them).`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Caught from the start: SIGHUP's default action would end a
			// node still loading its shares.
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			log, err := g.logger()
			if err != nil {
				return err
			}
			if err := admission.check(cmd); err != nil {
				return err
			}
			cfg, err := node.LoadConfigWith(configPath, admission.override(cmd))
			if err != nil {
				return err
			}
			n, err := node.New(cfg, log)
			if err != nil {
				return err
			}
			peerL, err := net.Listen("tcp", cfg.PeerListen)
			if err != nil {
				return fmt.Errorf("peer endpoint: %w", err)
			}
			if cfg.KeylessListen == "" {
				return fmt.Errorf("config: keyless_listen is required to serve")
			}
			keylessL, err := net.Listen("tcp", cfg.KeylessListen)
			if err != nil {
				peerL.Close()
				return fmt.Errorf("keyless endpoint: %w", err)
			}
			n.EnsurePreParams(cmd.Context())
			stopReload := reloadOnHangup(cmd.Context(), hup, n, func() (node.Config, error) {
				// The command line still overrides the file.
				return node.LoadConfigWith(configPath, admission.override(cmd))
			})
			defer stopReload()
			return n.Serve(cmd.Context(), peerL, keylessL)
		},
	}
	cmd.Flags().StringVarP(&configPath, "config", "c", "", "node configuration file (YAML; see examples/signer.yaml)")
	_ = cmd.MarkFlagRequired("config")
	admission.register(cmd)
	return cmd
}

// reloadOnHangup reloads n from load on every signal from hup until ctx
// ends or the returned stop is called. A failed reload is logged and
// counted; the process keeps serving with what it had.
func reloadOnHangup(ctx context.Context, hup <-chan os.Signal, n *node.Node, load func() (node.Config, error)) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				cfg, err := load()
				if err != nil {
					n.ReloadFailed(err)
					continue
				}
				_ = n.Reload(cfg) // logged and counted by Reload
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// admissionFlags override the configuration's admission settings.
type admissionFlags struct {
	maxConcurrent, maxQueue, perIdentity int
	identityQueue                        map[string]int
	signTimeout                          time.Duration
}

func (f *admissionFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.IntVar(&f.maxConcurrent, "max-concurrent-sessions", 0, "signing sessions computing here at once, coordinated or joined (config max_concurrent_sessions; default the CPU count)")
	fl.IntVar(&f.maxQueue, "max-queue", 0, "signing requests coordinated here at once, waiting or running; beyond: overloaded (config max_queue; default 64)")
	fl.IntVar(&f.perIdentity, "max-queue-per-identity", 0, "requests one edge identity may have in progress here (config max_queue_per_identity; default max_queue/2)")
	fl.StringToIntVar(&f.identityQueue, "identity-queue", nil, "per-identity override of max-queue-per-identity, NAME=N (repeatable; config identity_queue)")
	fl.DurationVar(&f.signTimeout, "sign-timeout", 0, "deadline of a keyless request here, from its arrival (config sign_timeout; default 10s)")
}

// check refuses a value given on the command line that is not positive:
// in the file 0 means "the default", which a flag given as 0 would
// silently turn into.
func (f *admissionFlags) check(cmd *cobra.Command) error {
	fl := cmd.Flags()
	for name, positive := range map[string]bool{
		"max-concurrent-sessions": f.maxConcurrent > 0, "max-queue": f.maxQueue > 0,
		"max-queue-per-identity": f.perIdentity > 0, "sign-timeout": f.signTimeout > 0,
	} {
		if fl.Changed(name) && !positive {
			return fmt.Errorf("--%s must be positive", name)
		}
	}
	return nil
}

// override sets what was given on the command line over the file, before
// the defaults that derive from it (max_queue_per_identity from
// max_queue) are filled in.
func (f *admissionFlags) override(cmd *cobra.Command) func(*node.Config) {
	fl := cmd.Flags()
	return func(cfg *node.Config) {
		if fl.Changed("max-concurrent-sessions") {
			cfg.MaxConcurrentSessions = f.maxConcurrent
		}
		if fl.Changed("max-queue") {
			cfg.MaxQueue = f.maxQueue
		}
		if fl.Changed("max-queue-per-identity") {
			cfg.MaxQueuePerIdentity = f.perIdentity
		}
		if fl.Changed("identity-queue") {
			if cfg.IdentityQueue == nil {
				cfg.IdentityQueue = map[string]int{}
			}
			for id, n := range f.identityQueue {
				cfg.IdentityQueue[id] = n
			}
		}
		if fl.Changed("sign-timeout") {
			cfg.SignTimeout = node.Duration(f.signTimeout)
		}
	}
}
