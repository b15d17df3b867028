package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/tkeyless/tkeyless/node"
	"github.com/tkeyless/tkeyless/tss"
)

func preparamsCmd(g *globalFlags) *cobra.Command {
	var configPath string
	cmd := &cobra.Command{
		Use:   "preparams",
		Short: "Generate and cache this node's pre-parameters (safe primes), once",
		Long: `preparams makes this node's Paillier key and range-proof parameters, which
key generation needs. Finding the safe primes takes 10–30 s of CPU here
(longer on a slow machine); the result is cached in the data directory
(mode 0600) and reused. serve does the same in the background if needed.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := node.LoadConfig(configPath)
			if err != nil {
				return err
			}
			path := filepath.Join(cfg.DataDir, "preparams.json")
			start := time.Now()
			// On a terminal one line counts up; in a log, a line every 10 s.
			tty := isTerminal(os.Stderr)
			_, generated, err := tss.LoadOrGeneratePreParams(cmd.Context(), path, func(d time.Duration) {
				switch secs := int(d.Seconds()); {
				case tty:
					fmt.Fprintf(os.Stderr, "\r%s: generating pre-parameters (safe primes)... %ds ", cfg.Name, secs)
				case secs%10 == 0:
					fmt.Fprintf(os.Stderr, "%s: generating pre-parameters (safe primes)... %ds\n", cfg.Name, secs)
				}
			})
			if err != nil {
				return err
			}
			if generated {
				if tty {
					fmt.Fprint(os.Stderr, "\r")
				}
				fmt.Fprintf(os.Stderr, "%s: pre-parameters ready in %s, saved to %s\n", cfg.Name, time.Since(start).Truncate(100*time.Millisecond), path)
			} else {
				fmt.Fprintf(os.Stderr, "%s: pre-parameters already present in %s\n", cfg.Name, path)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&configPath, "config", "c", "", "this node's configuration file")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}

func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
