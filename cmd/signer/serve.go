package main

import (
	"fmt"
	"net"
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
requests.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			cfg, err := node.LoadConfig(configPath)
			if err != nil {
				return err
			}
			if err := admission.apply(cmd, &cfg); err != nil {
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
			return n.Serve(cmd.Context(), peerL, keylessL)
		},
	}
	cmd.Flags().StringVarP(&configPath, "config", "c", "", "node configuration file (YAML; see examples/signer.yaml)")
	_ = cmd.MarkFlagRequired("config")
	admission.register(cmd)
	return cmd
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

// apply sets what was given on the command line and checks the result.
func (f *admissionFlags) apply(cmd *cobra.Command, cfg *node.Config) error {
	fl := cmd.Flags()
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
	if cfg.MaxConcurrentSessions < 1 || cfg.MaxQueue < 1 || cfg.MaxQueuePerIdentity < 1 || cfg.SignTimeout <= 0 {
		return fmt.Errorf("--max-concurrent-sessions, --max-queue, --max-queue-per-identity and --sign-timeout must be positive")
	}
	return cfg.Validate()
}
