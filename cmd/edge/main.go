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
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := rootCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "edge:", err)
		os.Exit(1)
	}
}

// globalFlags are the flags every subcommand has.
type globalFlags struct {
	logFormat string
	logLevel  string
}

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
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", "json", "log format: json (for machines) or console (for people)")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.AddCommand(serveCmd(g), checkCmd())
	return root
}

// logger builds the process logger from the flags: JSON lines on stderr unless --log-format
// console. Errors are logged under "err".
func (g *globalFlags) logger() (zerolog.Logger, error) {
	zerolog.TimeFieldFormat = time.RFC3339Nano
	zerolog.DurationFieldUnit = time.Millisecond
	zerolog.DurationFieldInteger = false
	zerolog.ErrorFieldName = "err"
	var l zerolog.Logger
	switch g.logFormat {
	case "json":
		l = zerolog.New(os.Stderr)
	case "console":
		l = zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: time.TimeOnly})
	default:
		return l, fmt.Errorf("--log-format %q: want json or console", g.logFormat)
	}
	lvl, err := zerolog.ParseLevel(g.logLevel)
	if err != nil || lvl == zerolog.NoLevel {
		return l, fmt.Errorf("--log-level %q: want debug, info, warn or error", g.logLevel)
	}
	return l.Level(lvl).With().Timestamp().Logger(), nil
}
