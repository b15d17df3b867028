package main

import (
	"fmt"
	"net"

	"github.com/spf13/cobra"

	"github.com/tkeyless/tkeyless/node"
)

func serveCmd(g *globalFlags) *cobra.Command {
	var configPath string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run this node: the peer endpoint (gRPC) and the keyless endpoint",
		Long: `serve runs this node until SIGINT or SIGTERM. It listens on peer_listen for
the other signers (gRPC over mutual TLS) and on keyless_listen for edges
(the gokeyless protocol over mutual TLS). If this node has no pre-parameters
yet, it generates them in the background; key generation waits for them.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			cfg, err := node.LoadConfig(configPath)
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
			return n.Serve(cmd.Context(), peerL, keylessL)
		},
	}
	cmd.Flags().StringVarP(&configPath, "config", "c", "", "node configuration file (YAML; see examples/signer.yaml)")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}
