package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/node"
)

func keygenCmd(g *globalFlags) *cobra.Command {
	var configPath, parties, out string
	var threshold int
	var timeout time.Duration
	var admin adminFlags
	cmd := &cobra.Command{
		Use:   "keygen",
		Short: "Generate a new cluster key by distributed key generation (GG18)",
		Long: `keygen asks this node (which must be serving) to coordinate a distributed key
generation with the other nodes. Each node ends with its own share; the
private key is never assembled anywhere. Any threshold+1 of the parties
can then sign: --threshold 1 with 2 nodes is 2-of-2, with 3 nodes 2-of-3;
--threshold 2 with 3 nodes is 3-of-3.

Every party checks, on its own, that an admin asked for this ceremony:
the command signs it with the admin identity (--admin-cert, --admin-key),
so no node, compromised or not, can start one.

It prints the new key's id (its SKI, which edges use to address it) and
writes its public key to --out.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := node.LoadConfig(configPath)
			if err != nil {
				return err
			}
			client, closeFn, err := dialNode(cfg, cfg.Name, cfg.PeerListen)
			if err != nil {
				return err
			}
			defer closeFn()
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			ps := defaultParties(cfg)
			if parties != "" {
				ps = strings.Split(parties, ",")
			}
			auth, err := admin.statement(peerwire.KeygenStatement(threshold, ps))
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "running key generation through %s (%s)...\n", cfg.Name, cfg.PeerListen)
			resp, err := client.KeygenCeremony(ctx, &peerwire.KeygenCeremonyRequest{Threshold: threshold, Parties: ps, Authority: auth})
			if err != nil {
				return fmt.Errorf("keygen via %s: %w (is `signer serve` running on every node?)", cfg.PeerListen, err)
			}
			if out == "" {
				out = resp.Key + ".pub.pem"
			}
			if err := os.WriteFile(out, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: resp.PublicKey}), 0o644); err != nil {
				return err
			}
			if _, err := x509.ParsePKIXPublicKey(resp.PublicKey); err != nil {
				return fmt.Errorf("node returned an unreadable public key: %w", err)
			}
			fmt.Fprintf(os.Stderr, "new key %s; public key written to %s\n", resp.Key, out)
			fmt.Println(resp.Key)
			return nil
		},
	}
	cmd.Flags().StringVarP(&configPath, "config", "c", "", "this node's configuration file")
	cmd.Flags().IntVarP(&threshold, "threshold", "t", 1, "t: any t+1 parties sign (1 or 2)")
	cmd.Flags().StringVar(&parties, "parties", "", "comma-separated node names to hold shares (default: this node and all its peers)")
	cmd.Flags().StringVarP(&out, "out", "o", "", "where to write the public key PEM (default KEYID.pub.pem)")
	cmd.Flags().DurationVar(&timeout, "timeout", 3*time.Minute, "give up after this long")
	admin.register(cmd)
	_ = cmd.MarkFlagRequired("config")
	return cmd
}
