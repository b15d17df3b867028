// Command signer runs one node of a tkeyless signer cluster: it holds this
// node's shares of the cluster's keys, runs key ceremonies with the other
// nodes, and signs for edges over the keyless protocol — always jointly
// with enough other nodes, never alone.
package main

import (
	"encoding/json"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/tkeyless/tkeyless/internal/cli"
	"github.com/tkeyless/tkeyless/internal/version"
)

func main() { cli.Run("signer", rootCmd()) }

// globalFlags are the flags every subcommand has.
type globalFlags struct{ cli.LogFlags }

func (g *globalFlags) logger() (zerolog.Logger, error) { return g.Logger() }

func rootCmd() *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:   "signer",
		Short: "One node of a tkeyless threshold-ECDSA signer cluster",
		Long: `signer runs one node of a tkeyless cluster. The cluster's TLS keys exist only
as GG18 threshold shares, one per node; any t+1 nodes sign together and no
node can sign alone.

A first cluster, step by step (see README.md and examples/):
  signer pki init --dir pki                       # a development cluster CA
  signer pki issue --dir pki --name a --role node --host 127.0.0.1
  signer preparams --config a.yaml                # once per node, 10–30 s
  signer serve --config a.yaml                    # on every node
  signer keygen --config a.yaml --threshold 1     # once, from any node
  signer csr --public-key KEY.pub.pem --name example.com ...`,
		Version:       version.Get().String(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	g.Register(root)
	root.AddCommand(serveCmd(g), keygenCmd(g), preparamsCmd(g), csrCmd(g), pkiCmd(g), statusCmd(g), keyCmd(g), peerCmd(g), reshareCmd(g), importCmd(g), secretsKeyCmd(g), backupCmd(g), restoreCmd(g))
	return root
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return err.Error()
	}
	return string(b)
}
