// Command edge is the tkeyless HTTPS edge: it terminates TLS for a site whose private key it
// never holds. Every full handshake's signature is made by a key source, normally the
// threshold signer cluster (or any gokeyless server) over the keyless protocol; returning
// clients resume with session tickets and cost no signature.
//
//	edge serve --cert site.pem --signer keyless://signer-a:2407,signer-b:2407 \
//	    --keyless-cert edge.pem --keyless-key edge-key.pem --keyless-ca cluster-ca.pem \
//	    --static ./www
//	edge check --cert site.pem
package main

import (
	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/tkeyless/tkeyless/internal/cli"
	"github.com/tkeyless/tkeyless/internal/version"
)

func main() { cli.Run("edge", rootCmd()) }

// globalFlags are the flags every subcommand has.
type globalFlags struct{ cli.LogFlags }

func (g *globalFlags) logger() (zerolog.Logger, error) { return g.Logger() }

func rootCmd() *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:   "edge",
		Short: "The tkeyless HTTPS edge: TLS termination without the private key",
		Long: `edge serves HTTPS (HTTP/2 and HTTP/1.1, TLS 1.2 and 1.3) for a certificate
whose private key it does not hold. Each full handshake asks a signer for one
signature: the tkeyless threshold cluster, any gokeyless key server, or, as a
baseline for load tests, a key file. Resumed handshakes need no signature.

  edge check --cert site.pem                      # what is in these files?
  edge serve --cert site.pem --signer keyless://127.0.0.1:7201,127.0.0.1:7202 \
      --keyless-cert edge.pem --keyless-key edge-key.pem --keyless-ca ca.pem \
      --static ./www`,
		Version:       version.Get().String(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	g.Register(root)
	root.AddCommand(serveCmd(g), checkCmd())
	return root
}
