package main

import (
	"encoding/pem"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/tkeyless/tkeyless/internal/pki"
)

func pkiCmd(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pki",
		Short: "A development CA for cluster identities (nodes, edges, admins) and demo sites",
		Long: `pki keeps a small certificate authority in a directory. It issues the mTLS
identities of a cluster — each certificate carries its role (node, edge or
admin) as OU tkeyless-<role> — and, for demos, a site certificate for a CSR
signed by the cluster key. Its key is a plain file: use it for development
and labs; in production, issue the same kind of certificates from your CA.`,
	}
	var dir string
	cmd.PersistentFlags().StringVar(&dir, "dir", "pki", "CA directory (ca.pem, ca-key.pem)")

	var caName string
	initCmd := &cobra.Command{
		Use:   "init",
		Short: "Create the CA (or keep the existing one)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			ca, err := pki.InitCA(dir, caName)
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "CA %q in %s\n", ca.Cert.Subject.CommonName, dir)
			return nil
		},
	}
	initCmd.Flags().StringVar(&caName, "name", "tkeyless dev cluster CA", "the CA's common name")

	var name, role, out string
	var hosts []string
	issueCmd := &cobra.Command{
		Use:   "issue",
		Short: "Issue a key and certificate for a node, edge or admin",
		RunE: func(cmd *cobra.Command, _ []string) error {
			r := pki.Role(role)
			switch r {
			case pki.RoleNode, pki.RoleEdge, pki.RoleAdmin:
			default:
				return fmt.Errorf("--role %q: want node, edge or admin", role)
			}
			ca, err := pki.LoadCA(dir)
			if err != nil {
				return fmt.Errorf("%w (run `signer pki init --dir %s` first)", err, dir)
			}
			if out == "" {
				out = dir
			}
			cert, key, err := ca.IssueIdentity(out, name, r, hosts)
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "%s %q: %s, %s\n", r, name, cert, key)
			return nil
		},
	}
	issueCmd.Flags().StringVar(&name, "name", "", "the identity's name (a node's name in the cluster)")
	issueCmd.Flags().StringVar(&role, "role", "node", "node, edge or admin")
	issueCmd.Flags().StringSliceVar(&hosts, "host", []string{"127.0.0.1", "localhost"}, "extra SANs (addresses peers dial)")
	issueCmd.Flags().StringVar(&out, "out", "", "directory for NAME.pem and NAME-key.pem (default: --dir)")
	_ = issueCmd.MarkFlagRequired("name")

	var csrPath, certOut string
	var days int
	signCmd := &cobra.Command{
		Use:   "sign-csr",
		Short: "Issue a demo TLS server certificate for a CSR (checks the CSR's signature)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			ca, err := pki.LoadCA(dir)
			if err != nil {
				return err
			}
			b, err := os.ReadFile(csrPath)
			if err != nil {
				return err
			}
			blk, _ := pem.Decode(b)
			if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
				return fmt.Errorf("%s holds no PEM CERTIFICATE REQUEST", csrPath)
			}
			der, err := ca.SignCSR(blk.Bytes, time.Duration(days)*24*time.Hour)
			if err != nil {
				return err
			}
			chain := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
			if err := os.WriteFile(certOut, chain, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "certificate written to %s\n", certOut)
			return nil
		},
	}
	signCmd.Flags().StringVar(&csrPath, "csr", "", "the CSR (PEM)")
	signCmd.Flags().StringVar(&certOut, "out", "site.pem", "where to write the certificate (PEM)")
	signCmd.Flags().IntVar(&days, "days", 30, "validity in days")
	_ = signCmd.MarkFlagRequired("csr")

	cmd.AddCommand(initCmd, issueCmd, signCmd)
	return cmd
}
