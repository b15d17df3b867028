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
			_, generated, err := tss.LoadOrGeneratePreParams(cmd.Context(), path, func(d time.Duration) {
				fmt.Fprintf(os.Stderr, "\r%s: generating pre-parameters (safe primes)... %s ", cfg.Name, d.Truncate(time.Second))
			})
			if err != nil {
				return err
			}
			if generated {
				fmt.Fprintf(os.Stderr, "\r%s: pre-parameters ready in %s, saved to %s\n", cfg.Name, time.Since(start).Truncate(100*time.Millisecond), path)
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
