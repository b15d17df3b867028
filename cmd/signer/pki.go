package main

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
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

	cmd.AddCommand(initCmd, issueCmd, signCmd, revokeCmd(&dir))
	return cmd
}

// revokeCmd adds certificates to the development CA's CRL, which signers
// read as revocation.crl (reloaded on SIGHUP).
func revokeCmd(dir *string) *cobra.Command {
	var certs []string
	var crlPath string
	var days int
	cmd := &cobra.Command{
		Use:   "revoke",
		Short: "Revoke identity certificates: add them to the CA's CRL (signers read it as revocation.crl)",
		Long: `revoke adds the given certificates to the development CA's certificate
revocation list (default <dir>/ca.crl, created if absent) and signs it anew,
valid for --days. Point every signer's revocation.crl at a copy of it and send
each signer SIGHUP: from then on they refuse those identities on every path.
Without --cert it only signs the CRL anew: run it before the next update
(signers still apply a stale CRL, and log a warning).`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ca, err := pki.LoadCA(*dir)
			if err != nil {
				return err
			}
			if crlPath == "" {
				crlPath = filepath.Join(*dir, "ca.crl")
			}
			tmpl := &x509.RevocationList{Number: big.NewInt(1)}
			if b, err := os.ReadFile(crlPath); err == nil {
				blk, _ := pem.Decode(b)
				if blk == nil || blk.Type != "X509 CRL" {
					return fmt.Errorf("%s holds no PEM X509 CRL; move it away to start a new one", crlPath)
				}
				old, err := x509.ParseRevocationList(blk.Bytes)
				if err != nil {
					return fmt.Errorf("CRL %s: %w", crlPath, err)
				}
				if err := old.CheckSignatureFrom(ca.Cert); err != nil {
					return fmt.Errorf("CRL %s is not this CA's: %w", crlPath, err)
				}
				tmpl.RevokedCertificateEntries = old.RevokedCertificateEntries
				tmpl.Number = new(big.Int).Add(old.Number, big.NewInt(1))
			} else if !errors.Is(err, os.ErrNotExist) {
				return err
			}
			now := time.Now()
			for _, path := range certs {
				b, err := os.ReadFile(path)
				if err != nil {
					return err
				}
				blk, _ := pem.Decode(b)
				if blk == nil || blk.Type != "CERTIFICATE" {
					return fmt.Errorf("%s holds no PEM CERTIFICATE", path)
				}
				cert, err := x509.ParseCertificate(blk.Bytes)
				if err != nil {
					return fmt.Errorf("%s: %w", path, err)
				}
				if err := cert.CheckSignatureFrom(ca.Cert); err != nil {
					return fmt.Errorf("%s was not issued by the CA in %s: %w", path, *dir, err)
				}
				tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{SerialNumber: cert.SerialNumber, RevocationTime: now})
				fmt.Fprintf(os.Stderr, "revoked %q, serial %x\n", cert.Subject.CommonName, cert.SerialNumber)
			}
			tmpl.ThisUpdate, tmpl.NextUpdate = now.Add(-time.Minute), now.Add(time.Duration(days)*24*time.Hour)
			der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.Cert, ca.Key)
			if err != nil {
				return fmt.Errorf("sign CRL: %w", err)
			}
			tmp := crlPath + ".tmp"
			if err := os.WriteFile(tmp, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o644); err != nil {
				return err
			}
			// Renamed into place, so a signer reloading meanwhile reads the
			// old CRL or the new one, never half of one.
			if err := os.Rename(tmp, crlPath); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "CRL %s: %d revoked, next update %s\n", crlPath, len(tmpl.RevokedCertificateEntries), tmpl.NextUpdate.Format(time.RFC3339))
			return nil
		},
	}
	cmd.Flags().StringSliceVar(&certs, "cert", nil, "certificate (PEM) to revoke (repeatable)")
	cmd.Flags().StringVar(&crlPath, "crl", "", "the CRL to extend (default <dir>/ca.crl)")
	cmd.Flags().IntVar(&days, "days", 7, "days until the CRL's next update")
	return cmd
}
