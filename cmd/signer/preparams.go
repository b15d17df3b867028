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
			sealer, err := cfg.Sealer()
			if err != nil {
				return err
			}
			path := filepath.Join(cfg.DataDir, "preparams.age")
			start := time.Now()
			// On a terminal one line counts up; in a log, a line every 10 s.
			tty := isTerminal(os.Stderr)
			_, generated, err := tss.LoadOrGeneratePreParams(cmd.Context(), path, sealer, func(d time.Duration) {
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

func secretsKeyCmd(g *globalFlags) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "secrets-key",
		Short: "Make an age key file that encrypts a node's shares and pre-parameters at rest",
		Long: `secrets-key writes a new age X25519 identity to --out (mode 0600) for the
node's secrets.key_file setting. Losing it loses the node's shares (other
nodes' shares still sign for (1,3) keys); keep a copy offline, and keep it
off the disk that holds the data directory if you can. It never overwrites.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := tss.GenerateKeyFile(out); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "secrets key written to %s\n", out)
			return nil
		},
	}
	cmd.Flags().StringVarP(&out, "out", "o", "", "where to write the key file")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}
