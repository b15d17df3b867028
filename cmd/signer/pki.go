package main

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
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
			fmt.Fprintf(cmd.ErrOrStderr(), "CA %q in %s\n", ca.Cert.Subject.CommonName, dir)
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
			fmt.Fprintf(cmd.ErrOrStderr(), "%s %q: %s, %s\n", r, name, cert, key)
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
			fmt.Fprintf(cmd.ErrOrStderr(), "certificate written to %s\n", certOut)
			return nil
		},
	}
	signCmd.Flags().StringVar(&csrPath, "csr", "", "the CSR (PEM)")
	signCmd.Flags().StringVar(&certOut, "out", "site.pem", "where to write the certificate (PEM)")
	signCmd.Flags().IntVar(&days, "days", 30, "validity in days")
	_ = signCmd.MarkFlagRequired("csr")

	cmd.AddCommand(initCmd, issueCmd, signCmd, revokeCmd(&dir))
	return cmd
}

// revokeCmd adds certificates to the development CA's CRL, which signers
// read as revocation.crl (reloaded on SIGHUP). The CRL itself is
// pki.CA.Revoke's; the command reads the certificate files and reports.
func revokeCmd(dir *string) *cobra.Command {
	var certPaths []string
	var crlPath string
	var days int
	cmd := &cobra.Command{
		Use:   "revoke",
		Short: "Revoke identity certificates: add them to the CA's CRL (signers read it as revocation.crl)",
		Long: `revoke adds the given certificates to the development CA's certificate
revocation list (default <dir>/ca.crl, created if absent) and signs it anew
with the next CRL number, valid for --days. Each certificate must have been
issued by the CA, and an existing CRL must be the CA's (otherwise nothing is
written). A certificate already on the CRL stays listed once, with its
original revocation time, and is reported as already revoked.

Point every signer's revocation.crl at a copy of it and send each signer
SIGHUP: from then on they refuse those identities on every path.
Without --cert it only signs the CRL anew: run it before the next update
(signers still apply a stale CRL, and log a warning).`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if days <= 0 {
				return fmt.Errorf("--days %d: want at least 1", days)
			}
			ca, err := pki.LoadCA(*dir)
			if err != nil {
				return err
			}
			if crlPath == "" {
				crlPath = filepath.Join(*dir, "ca.crl")
			}
			certs := make([]*x509.Certificate, 0, len(certPaths))
			for _, path := range certPaths {
				cert, err := readCertificate(path)
				if err != nil {
					return err
				}
				certs = append(certs, cert)
			}
			res, err := ca.Revoke(crlPath, certs, time.Duration(days)*24*time.Hour, time.Now())
			if err != nil {
				return err
			}
			w := cmd.ErrOrStderr()
			for _, r := range res.Revoked {
				fmt.Fprintf(w, "revoked %q, serial %x\n", r.Cert.Subject.CommonName, r.Cert.SerialNumber)
			}
			for _, r := range res.AlreadyRevoked {
				fmt.Fprintf(w, "already revoked %q, serial %x, since %s\n", r.Cert.Subject.CommonName, r.Cert.SerialNumber, r.Time.Format(time.RFC3339))
			}
			fmt.Fprintf(w, "CRL %s: %d revoked, next update %s\n", crlPath, len(res.CRL.RevokedCertificateEntries), res.CRL.NextUpdate.Format(time.RFC3339))
			return nil
		},
	}
	cmd.Flags().StringSliceVar(&certPaths, "cert", nil, "certificate (PEM) to revoke (repeatable)")
	cmd.Flags().StringVar(&crlPath, "crl", "", "the CRL to extend (default <dir>/ca.crl)")
	cmd.Flags().IntVar(&days, "days", 7, "days until the CRL's next update (at least 1)")
	return cmd
}

// readCertificate reads the first PEM CERTIFICATE in the file at path.
func readCertificate(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s holds no PEM CERTIFICATE", path)
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cert, nil
}
