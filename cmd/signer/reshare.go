package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/node"
	"github.com/tkeyless/tkeyless/tss"
)

func splitList(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

func reshareCmd(g *globalFlags) *cobra.Command {
	var configPath, key, parties, dealers string
	var threshold int
	var timeout time.Duration
	var admin adminFlags
	cmd := &cobra.Command{
		Use:   "reshare --key KEYID",
		Short: "Deal new shares of a key: refresh them, change (t,n), or replace a lost node",
		Long: `reshare asks this node (which must be serving and hold a share of the key)
to coordinate a resharing: t+1 current holders deal fresh shares of the same
key to a new committee. The public key, the key id and every certificate
stay the same; the private key is never assembled.

  refresh every share (same parties, same t):   signer reshare --key KEYID
  change (1,2) to (2,3):                         signer reshare --key KEYID --parties a,b,c --threshold 2
  replace lost node c by d:                      signer reshare --key KEYID --parties a,b,d

Every member checks that an admin asked for it (the command signs it with
--admin-cert/--admin-key). Every member stages its new share and keeps
using the old one; each new member signs a confirmation of the new key
data, and a member switches (old shares are overwritten, members leaving
the committee delete theirs) only on a commit carrying every new member's
confirmation. If anything fails, every member keeps its old share; new
members that had confirmed keep their new share staged until a commit
reaches them or you run 'signer reshare discard'. After a refresh an old
share does not combine with a new one, so a share stolen before it is
worth nothing; delete backups taken before it too.`,
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
			// The admin signs the committee the node will use: the key's
			// current one for what is not given.
			newParties, newT := splitList(parties), threshold
			if len(newParties) == 0 || newT == 0 {
				st, err := client.Status(ctx, &peerwire.StatusRequest{})
				if err != nil {
					return fmt.Errorf("status of %s: %w", cfg.Name, err)
				}
				i := slices.IndexFunc(st.Keys, func(k peerwire.KeyStatus) bool { return k.Key == key })
				if i < 0 {
					return fmt.Errorf("node %s holds no share of key %s; run it on a node that does", cfg.Name, key)
				}
				if len(newParties) == 0 {
					newParties = st.Keys[i].Parties
				}
				if newT == 0 {
					newT = st.Keys[i].Threshold
				}
			}
			newParties = slices.Sorted(slices.Values(newParties))
			auth, err := admin.statement(peerwire.ReshareStatement(key, newParties, newT))
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "resharing key %s through %s (%s)...\n", key, cfg.Name, cfg.PeerListen)
			resp, err := client.ReshareCeremony(ctx, &peerwire.ReshareCeremonyRequest{
				Key: key, NewParties: newParties, NewThreshold: newT, Dealers: splitList(dealers), Authority: auth,
			})
			if err != nil {
				return fmt.Errorf("reshare via %s: %w", cfg.PeerListen, err)
			}
			fmt.Fprintf(os.Stderr, "key %s: (%d,%d) dealt by %s → (%d,%d) %s\n", resp.Key, resp.OldThreshold, len(resp.OldParties),
				strings.Join(resp.OldParties, ","), resp.NewThreshold, len(resp.NewParties), strings.Join(resp.NewParties, ","))
			fmt.Fprintf(os.Stderr, "committed on: %s\n", strings.Join(resp.Committed, ", "))
			if len(resp.Pending) > 0 {
				fmt.Fprintf(os.Stderr, "NOT YET TOLD (their new share waits staged; `signer status` shows them): %s\n", strings.Join(resp.Pending, ", "))
			}
			fmt.Println(resp.Key)
			return nil
		},
	}
	cmd.Flags().StringVarP(&configPath, "config", "c", "", "this node's configuration file")
	cmd.Flags().StringVar(&key, "key", "", "the key id (SKI, hex) to reshare")
	cmd.Flags().IntVarP(&threshold, "threshold", "t", 0, "new t: any t+1 of the new parties sign (default: unchanged)")
	cmd.Flags().StringVar(&parties, "parties", "", "comma-separated node names to hold the new shares (default: the current holders)")
	cmd.Flags().StringVar(&dealers, "dealers", "", "comma-separated current holders that deal, at least t+1 (default: this node and the fastest healthy holders)")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "give up after this long")
	admin.register(cmd)
	_ = cmd.MarkFlagRequired("config")
	_ = cmd.MarkFlagRequired("key")
	cmd.AddCommand(reshareDiscardCmd())
	return cmd
}

func reshareDiscardCmd() *cobra.Command {
	var configPath, key string
	var admin adminFlags
	cmd := &cobra.Command{
		Use:   "discard --key KEYID",
		Short: "Throw away the staged new shares of a resharing that did not commit (admin)",
		Long: `discard tells every node that awaits the outcome of a resharing of the key
to throw its staged new share away and keep the current one. A node that
confirmed a resharing keeps its staged share until a commit reaches it,
because discarding it while a commit exists elsewhere would split the
cluster between old and new shares; only an admin may overrule that.

Make sure no node committed first: 'signer status' shows "resharing …
awaits commit" on the nodes still pending; if any node of the new
committee no longer shows it and signs with the key, the resharing
committed there, and the pending nodes will pick the commit up by
themselves within seconds.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := node.LoadConfig(configPath)
			if err != nil {
				return err
			}
			return admin.eachNode(cmd.Context(), cfg, func(ctx context.Context, name string, c *peerwire.Client) error {
				st, err := c.Status(ctx, &peerwire.StatusRequest{})
				if err != nil {
					return err
				}
				i := slices.IndexFunc(st.Keys, func(k peerwire.KeyStatus) bool { return k.Key == key })
				if i < 0 || st.Keys[i].ResharePending == "" {
					fmt.Fprintf(os.Stderr, "%s: nothing pending\n", name)
					return nil
				}
				var session peerwire.SessionID
				if err := session.UnmarshalText([]byte(st.Keys[i].ResharePending)); err != nil {
					return err
				}
				if _, err := c.FinishReshare(ctx, &peerwire.FinishReshareRequest{Version: peerwire.Version, Session: session, Key: key}); err != nil {
					return err
				}
				fmt.Fprintf(os.Stderr, "%s: resharing %s discarded\n", name, session)
				return nil
			})
		},
	}
	cmd.Flags().StringVarP(&configPath, "config", "c", "", "a node's configuration file (for the cluster's addresses and CA)")
	cmd.Flags().StringVar(&key, "key", "", "the key id (SKI, hex)")
	admin.register(cmd)
	_ = cmd.MarkFlagRequired("config")
	_ = cmd.MarkFlagRequired("key")
	return cmd
}

func importCmd(g *globalFlags) *cobra.Command {
	var configPath, keyPath, parties string
	var threshold int
	var timeout time.Duration
	var admin adminFlags
	cmd := &cobra.Command{
		Use:   "import --key-file key.pem",
		Short: "Split an existing P-256 private key into the cluster's shares (migration from plain Keyless)",
		Long: `import hands an existing ECDSA P-256 private key (PEM: PKCS#8 or SEC 1 "EC
PRIVATE KEY") to this node, which deals it to the parties as threshold
shares and zeroes its copy. Certificates for the key keep working: the key
id is the same. Run it on the node's own machine (it uses the node's
identity; other nodes are refused), with the admin identity that signs the
ceremony for every party to check (--admin-cert, --admin-key).

The key existed whole before the import, and still does wherever the file
and its copies are: the threshold promise holds only once you destroy every
copy of the original (the file, backups, the old Keyless server's disk).`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := node.LoadConfig(configPath)
			if err != nil {
				return err
			}
			der, err := readPrivateKeyPEM(keyPath)
			if err != nil {
				return err
			}
			defer clear(der)
			keyID, err := importKeyID(der)
			if err != nil {
				return err
			}
			ps := defaultParties(cfg)
			if parties != "" {
				ps = slices.Sorted(slices.Values(splitList(parties)))
			}
			auth, err := admin.statement(peerwire.ImportStatement(keyID, ps, threshold))
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
			fmt.Fprintf(os.Stderr, "importing %s through %s (%s)...\n", keyPath, cfg.Name, cfg.PeerListen)
			resp, err := client.ImportCeremony(ctx, &peerwire.ImportCeremonyRequest{PrivateKey: der, Threshold: threshold, Parties: ps, Authority: auth})
			if err != nil {
				return fmt.Errorf("import via %s: %w", cfg.PeerListen, err)
			}
			fmt.Fprintf(os.Stderr, "key %s imported; every party holds its share.\n", resp.Key)
			fmt.Fprintf(os.Stderr, "NOW DESTROY THE ORIGINAL: %s and every copy of it (backups, the old key server). Until then the key is not protected by the threshold.\n", keyPath)
			fmt.Println(resp.Key)
			return nil
		},
	}
	cmd.Flags().StringVarP(&configPath, "config", "c", "", "this node's configuration file")
	cmd.Flags().StringVar(&keyPath, "key-file", "", "the PEM private key to import")
	cmd.Flags().IntVarP(&threshold, "threshold", "t", 1, "t: any t+1 parties sign")
	cmd.Flags().StringVar(&parties, "parties", "", "comma-separated node names to hold shares (default: this node and all its peers)")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "give up after this long")
	admin.register(cmd)
	_ = cmd.MarkFlagRequired("config")
	_ = cmd.MarkFlagRequired("key-file")
	return cmd
}

// readPrivateKeyPEM returns the DER of the one private key in a PEM file,
// with a precise message for what else people hand over.
func readPrivateKeyPEM(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	defer clear(b)
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			return nil, fmt.Errorf("read key %s: no PEM private key in it", path)
		}
		switch blk.Type {
		case "PRIVATE KEY", "EC PRIVATE KEY":
			if _, err := x509.ParsePKCS8PrivateKey(blk.Bytes); err != nil {
				if _, err2 := x509.ParseECPrivateKey(blk.Bytes); err2 != nil {
					return nil, fmt.Errorf("read key %s: %s block is not a readable key: %v", path, blk.Type, err)
				}
			}
			return blk.Bytes, nil
		case "ENCRYPTED PRIVATE KEY":
			return nil, fmt.Errorf("read key %s: the key is encrypted; decrypt it first (openssl pkcs8 -in %s -out plain.pem), then destroy plain.pem too", path, path)
		case "CERTIFICATE", "CERTIFICATE REQUEST", "PUBLIC KEY":
			continue
		default:
			if strings.HasSuffix(blk.Type, "PRIVATE KEY") {
				return nil, errors.New("read key: want an ECDSA P-256 key, got " + blk.Type)
			}
		}
	}
}

// importKeyID is the key id of a DER private key (PKCS#8 or SEC 1).
func importKeyID(der []byte) (string, error) {
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		if k, err = x509.ParseECPrivateKey(der); err != nil {
			return "", fmt.Errorf("import: the key is neither PKCS#8 nor SEC 1: %w", err)
		}
	}
	ec, ok := k.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P256() {
		return "", fmt.Errorf("import: want an ECDSA P-256 private key, got %T", k)
	}
	return tss.KeyIDOf(&ec.PublicKey).String(), nil
}
