package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/internal/pki"
	"github.com/tkeyless/tkeyless/node"
)

// dialNode connects to a node's peer endpoint with this node's identity
// (operator commands run on a node, with its configuration).
func dialNode(cfg node.Config, name, addr string) (*peerwire.Client, func(), error) {
	tc, err := pki.MutualTLS(cfg.TLS.CA, cfg.TLS.Cert, cfg.TLS.Key)
	if err != nil {
		return nil, nil, err
	}
	tc.ServerName = name
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(peerwire.Codec{})))
	if err != nil {
		return nil, nil, err
	}
	return peerwire.NewClient(conn), func() { conn.Close() }, nil
}

func statusCmd(g *globalFlags) *cobra.Command {
	var configPath string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show every node and every key at a glance: up, available, last error, latency",
		Long: `status asks each node of the cluster (this one and its configured peers) how
it is doing, and prints its keys (available means the node can reach a
quorum of healthy parties now; disabled means an operator switched the key
off) and its view of its peers (up, latency, last error). A node that does
not answer is shown as down.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := node.LoadConfig(configPath)
			if err != nil {
				return err
			}
			targets := append([]node.Peer{{Name: cfg.Name, Addr: cfg.PeerListen}}, cfg.Peers...)
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NODE\tSTATE\tKEY / PEER\tDETAIL")
			for _, t := range targets {
				c, closeFn, err := dialNode(cfg, t.Name, t.Addr)
				if err != nil {
					return err
				}
				ctx, cancel := context.WithTimeout(cmd.Context(), 3*time.Second)
				st, err := c.Status(ctx, &peerwire.StatusRequest{})
				cancel()
				closeFn()
				if err != nil {
					fmt.Fprintf(w, "%s\tDOWN\t%s\t%s\n", t.Name, t.Addr, oneLine(err.Error()))
					continue
				}
				if asJSON {
					fmt.Fprintf(w, "%s\n", mustJSON(st))
					continue
				}
				fmt.Fprintf(w, "%s\tup\t\tsessions %d, queue %d\n", st.Node, st.Sessions, st.Queue)
				for _, k := range st.Keys {
					state := "available"
					switch {
					case k.Disabled:
						state = "DISABLED"
					case !k.Available:
						state = "UNAVAILABLE"
					}
					parties := slices.Sorted(slices.Values(k.Parties))
					detail := fmt.Sprintf("(%d,%d) %s", k.Threshold, len(k.Parties), strings.Join(parties, ","))
					if k.PresignTarget > 0 {
						detail += fmt.Sprintf(", presigned %d/%d", k.Presignatures, k.PresignTarget)
					}
					if k.ResharePending != "" {
						detail += ", resharing " + k.ResharePending + " awaits commit"
					}
					fmt.Fprintf(w, "\t%s\tkey %s\t%s\n", state, k.Key, detail)
				}
				for _, p := range st.Peers {
					state, detail := "up", fmt.Sprintf("%.1f ms", p.LatencyMS)
					if !p.Up {
						state = "DOWN"
					}
					if p.LastError != "" {
						detail += fmt.Sprintf("; last error %s ago: %s", time.Since(p.LastErrAt).Truncate(time.Second), oneLine(p.LastError))
					}
					fmt.Fprintf(w, "\t%s\tpeer %s\t%s\n", state, p.Name, detail)
				}
			}
			return w.Flush()
		},
	}
	cmd.Flags().StringVarP(&configPath, "config", "c", "", "this node's configuration file")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print each node's status as JSON")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}

func keyCmd(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "key",
		Short: "Disable or re-enable a key cluster-wide (the kill switch)",
		Long: `key disable refuses every signature with the key at once, on every node
(each quorum member checks it); edges see "key disabled by the cluster
operator". key enable restores service; no ceremony is needed. Nodes that
are down when you run it learn the change from their peers when they return.`,
	}
	var configPath, key string
	set := func(disabled bool) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, _ []string) error {
			cfg, err := node.LoadConfig(configPath)
			if err != nil {
				return err
			}
			c, closeFn, err := dialNode(cfg, cfg.Name, cfg.PeerListen)
			if err != nil {
				return err
			}
			defer closeFn()
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			resp, err := c.SetKeyState(ctx, &peerwire.SetKeyStateRequest{Key: key, State: peerwire.KeyState{Disabled: disabled, Changed: time.Now()}, Propagate: true})
			if err != nil {
				return fmt.Errorf("via %s: %w (is `signer serve` running?)", cfg.PeerListen, err)
			}
			verb := "enabled"
			if disabled {
				verb = "disabled"
			}
			fmt.Fprintf(os.Stderr, "key %s %s on %s\n", key, verb, strings.Join(resp.Applied, ", "))
			if len(resp.Unreachable) > 0 {
				fmt.Fprintf(os.Stderr, "not reachable now (they will learn it from their peers): %s\n", strings.Join(resp.Unreachable, ", "))
			}
			return nil
		}
	}
	for _, sub := range []struct {
		use, short string
		disabled   bool
	}{{"disable", "Refuse every signature with the key, cluster-wide, now", true}, {"enable", "Sign with the key again", false}} {
		c := &cobra.Command{Use: sub.use, Short: sub.short, RunE: set(sub.disabled)}
		c.Flags().StringVarP(&configPath, "config", "c", "", "this node's configuration file")
		c.Flags().StringVar(&key, "key", "", "the key id (hex SKI)")
		_ = c.MarkFlagRequired("config")
		_ = c.MarkFlagRequired("key")
		cmd.AddCommand(c)
	}
	return cmd
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 160 {
		s = s[:160] + "…"
	}
	return s
}

func backupCmd(g *globalFlags) *cobra.Command {
	var configPath, out string
	cmd := &cobra.Command{
		Use:   "backup",
		Short: "Write this node's data directory (shares stay encrypted) to a backup file",
		Long: `backup writes a gzip'd tar of the node's data directory with a manifest of
checksums. Shares and pre-parameters stay encrypted with the node's secrets
key, which is not in the backup: keep that key backed up separately.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := node.LoadConfig(configPath)
			if err != nil {
				return err
			}
			f, err := os.OpenFile(out, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err != nil {
				return err
			}
			files, err := node.Backup(cfg, f)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				os.Remove(out)
				return err
			}
			fmt.Fprintf(os.Stderr, "backed up %d files of %s to %s\n", len(files), cfg.Name, out)
			return nil
		},
	}
	cmd.Flags().StringVarP(&configPath, "config", "c", "", "this node's configuration file")
	cmd.Flags().StringVarP(&out, "out", "o", "", "backup file to create")
	_ = cmd.MarkFlagRequired("config")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

func restoreCmd(g *globalFlags) *cobra.Command {
	var configPath, in string
	var force bool
	cmd := &cobra.Command{
		Use:   "restore",
		Short: "Restore this node's data directory from a backup (run with the node stopped)",
		Long: `restore checks the backup's checksums and that every share in it decrypts
with this node's configured secrets key, then writes the files into the
data directory. It refuses to replace an existing, different file unless
--force is given. Run it with the node stopped.

A backup taken before a resharing (signer reshare) holds shares that no
longer combine with the cluster's: restore one only onto a node that lost
its data, and take a new backup after every resharing.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := node.LoadConfig(configPath)
			if err != nil {
				return err
			}
			f, err := os.Open(in)
			if err != nil {
				return err
			}
			defer f.Close()
			files, err := node.Restore(cfg, f, force)
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "restored %d files into %s\n", len(files), cfg.DataDir)
			return nil
		},
	}
	cmd.Flags().StringVarP(&configPath, "config", "c", "", "this node's configuration file")
	cmd.Flags().StringVarP(&in, "in", "i", "", "backup file")
	cmd.Flags().BoolVar(&force, "force", false, "replace existing files that differ")
	_ = cmd.MarkFlagRequired("config")
	_ = cmd.MarkFlagRequired("in")
	return cmd
}
