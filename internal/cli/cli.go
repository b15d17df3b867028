// Package cli holds what tkeyless's commands share: logging flags and a
// logger built from them, and running a command until SIGINT or SIGTERM.
package cli

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

// Run executes root with a context cancelled on SIGINT or SIGTERM and
// exits with status 1 on error, printed as "name: error".
func Run(name string, root *cobra.Command) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := root.ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
}

// LogFlags are the logging flags every command has.
type LogFlags struct {
	Format string
	Level  string
}

// Register adds --log-format and --log-level to cmd and its subcommands.
func (f *LogFlags) Register(cmd *cobra.Command) {
	cmd.PersistentFlags().StringVar(&f.Format, "log-format", "json", "log format: json (for machines) or console (for people)")
	cmd.PersistentFlags().StringVar(&f.Level, "log-level", "info", "log level: debug, info, warn, error")
}

// Logger builds the process logger: JSON lines on stderr unless
// --log-format console, durations in milliseconds, errors under "err".
func (f *LogFlags) Logger() (zerolog.Logger, error) {
	zerolog.TimeFieldFormat = time.RFC3339Nano
	zerolog.DurationFieldUnit = time.Millisecond
	zerolog.DurationFieldInteger = false
	zerolog.ErrorFieldName = "err"
	var l zerolog.Logger
	switch f.Format {
	case "json":
		l = zerolog.New(os.Stderr)
	case "console":
		l = zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: time.TimeOnly})
	default:
		return l, fmt.Errorf("--log-format %q: want json or console", f.Format)
	}
	lvl, err := zerolog.ParseLevel(f.Level)
	if err != nil || lvl == zerolog.NoLevel {
		return l, fmt.Errorf("--log-level %q: want debug, info, warn or error", f.Level)
	}
	return l.Level(lvl).With().Timestamp().Logger(), nil
}
