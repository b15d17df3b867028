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
	"github.com/tkeyless/tkeyless/tss"
)

// dialNode connects to a node's peer endpoint with this node's identity
// (operator commands run on a node, with its configuration).
func dialNode(cfg node.Config, name, addr string) (*peerwire.Client, func(), error) {
	return dialAs(cfg.TLS.CA, cfg.TLS.Cert, cfg.TLS.Key, name, addr)
}

// dialAs connects to a node's peer endpoint with the identity in certPath
// and keyPath.
func dialAs(caPath, certPath, keyPath, name, addr string) (*peerwire.Client, func(), error) {
	tc, err := pki.MutualTLS(caPath, certPath, keyPath)
	if err != nil {
		return nil, nil, err
	}
	tc.ServerName = name
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
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
					if k.Suspended != "" {
						state = "SUSPENDED"
						detail += "; " + k.Suspended
					} else if k.Aborts > 0 {
						detail += fmt.Sprintf(", %d/%d aborts without a culprit", k.Aborts, k.Budget)
					}
					fmt.Fprintf(w, "\t%s\tkey %s\t%s\n", state, k.Key, detail)
				}
				for _, p := range st.Peers {
					state, detail := "up", fmt.Sprintf("%.1f ms", p.LatencyMS)
					if p.Version > 0 {
						detail += fmt.Sprintf(", protocol v%d", p.Version)
					}
					if !p.Up {
						state = "DOWN"
					}
					if p.Convicted != nil {
						state = "CONVICTED"
						detail += fmt.Sprintf("; excluded since %s (session %s): %s", p.Convicted.At.Format(time.RFC3339), p.Convicted.Session, oneLine(p.Convicted.Reason))
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
		Short: "Disable, re-enable or resume a key cluster-wide (the kill switch; admin)",
		Long: `key disable refuses every signature with the key at once, on every node
(each quorum member checks it); edges see "key disabled by the cluster
operator". key enable restores service; no ceremony is needed. Nodes that
are down when you run it learn the change from their peers when they return.

A key's state is a statement signed by an admin identity (--admin-cert,
--admin-key) with a version that only goes up: every node checks the
signature and keeps the highest version, so no node (compromised or not)
can make one up or outbid the admin's latest word.

key resume lets a key sign again on every node where its abort budget ran
out (too many signing sessions failed without naming a culprit, which is
what a member probing for secrets causes): look at the nodes' audit logs
first.`,
	}
	var configPath, key string
	var admin adminFlags
	set := func(disabled bool) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, _ []string) error {
			cfg, err := node.LoadConfig(configPath)
			if err != nil {
				return err
			}
			if _, err := tss.ParseKeyID(key); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 20*time.Second)
			defer cancel()
			// The next version is one past the highest any node holds.
			var version uint64
			var asked int
			for _, t := range clusterNodes(cfg) {
				c, closeFn, err := dialNode(cfg, t.Name, t.Addr)
				if err != nil {
					return err
				}
				sctx, scancel := context.WithTimeout(ctx, 3*time.Second)
				st, err := c.Status(sctx, &peerwire.StatusRequest{})
				scancel()
				closeFn()
				if err != nil {
					continue
				}
				asked++
				for _, k := range st.Keys {
					if k.Key == key {
						version = max(version, k.StateVersion)
					}
				}
			}
			if asked == 0 {
				return fmt.Errorf("no node answered; is `signer serve` running?")
			}
			version++
			stmt, err := admin.statement(peerwire.KeyStateStatement(key, version, disabled))
			if err != nil {
				return err
			}
			c, closeFn, err := dialNode(cfg, cfg.Name, cfg.PeerListen)
			if err != nil {
				return err
			}
			defer closeFn()
			resp, err := c.SetKeyState(ctx, &peerwire.SetKeyStateRequest{Key: key, Propagate: true,
				State: peerwire.KeyState{Disabled: disabled, Version: version, Statement: stmt, Changed: time.Now().UTC()}})
			if err != nil {
				return fmt.Errorf("via %s: %w (is `signer serve` running?)", cfg.PeerListen, err)
			}
			verb := "enabled"
			if disabled {
				verb = "disabled"
			}
			fmt.Fprintf(os.Stderr, "key %s %s (state version %d) on %s\n", key, verb, version, strings.Join(resp.Applied, ", "))
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
		admin.register(c)
		_ = c.MarkFlagRequired("config")
		_ = c.MarkFlagRequired("key")
		cmd.AddCommand(c)
	}
	resume := &cobra.Command{
		Use:   "resume",
		Short: "Let a key suspended by its abort budget sign again, on every node (admin)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := node.LoadConfig(configPath)
			if err != nil {
				return err
			}
			return admin.eachNode(cmd.Context(), cfg, func(ctx context.Context, name string, c *peerwire.Client) error {
				r, err := c.ResumeKey(ctx, &peerwire.ResumeKeyRequest{Key: key})
				if err != nil {
					return err
				}
				fmt.Fprintf(os.Stderr, "%s: key %s resumed (was suspended: %t, aborts without a culprit: %d)\n", name, key, r.WasSuspended, r.Aborts)
				return nil
			})
		},
	}
	resume.Flags().StringVarP(&configPath, "config", "c", "", "a node's configuration file (for the cluster's addresses and CA)")
	resume.Flags().StringVar(&key, "key", "", "the key id (hex SKI)")
	admin.register(resume)
	_ = resume.MarkFlagRequired("config")
	_ = resume.MarkFlagRequired("key")
	cmd.AddCommand(resume)
	return cmd
}

func peerCmd(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "peer",
		Short: "Decisions about cluster members (admin)",
	}
	var configPath, peer string
	var admin adminFlags
	readmit := &cobra.Command{
		Use:   "readmit --peer NAME",
		Short: "Let a convicted node take part in sessions again, on every node",
		Long: `A node convicts a peer whose message proves it deviated from the protocol
(an MtA answer out of range, a degenerate proof, a signed equivocation, a
forged echo): it logs an alert ("event":"conviction") and leaves the peer
out of every session until an admin readmits it. Find out why first (the
alert names the session and the check), rebuild or re-key the node if it
was compromised, then readmit it.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := node.LoadConfig(configPath)
			if err != nil {
				return err
			}
			return admin.eachNode(cmd.Context(), cfg, func(ctx context.Context, name string, c *peerwire.Client) error {
				if name == peer {
					return nil
				}
				r, err := c.Readmit(ctx, &peerwire.ReadmitRequest{Peer: peer})
				if err != nil {
					return err
				}
				fmt.Fprintf(os.Stderr, "%s: %s readmitted (was convicted: %t)\n", name, peer, r.WasConvicted)
				return nil
			})
		},
	}
	readmit.Flags().StringVarP(&configPath, "config", "c", "", "a node's configuration file (for the cluster's addresses and CA)")
	readmit.Flags().StringVar(&peer, "peer", "", "the node to readmit")
	admin.register(readmit)
	_ = readmit.MarkFlagRequired("config")
	_ = readmit.MarkFlagRequired("peer")
	cmd.AddCommand(readmit)
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
