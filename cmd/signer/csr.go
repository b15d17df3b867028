package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tkeyless/tkeyless/internal/pki"
	"github.com/tkeyless/tkeyless/keyless"
	"github.com/tkeyless/tkeyless/tlsglue"
)

func csrCmd(g *globalFlags) *cobra.Command {
	var signers, pubPath, certPath, keyPath, caPath, out string
	var names []string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "csr",
		Short: "Make a certificate signing request for a cluster key, signed by the cluster",
		Long: `csr builds a PKCS#10 CSR for the given names whose signature is a threshold
signature made by the cluster, through its keyless endpoint, exactly as an
edge's handshake signatures are. Give it to any CA; the certificate it
returns serves with "edge serve".

The identity (--cert/--key) must be an edge or admin identity of the cluster.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pub, err := readPublicKey(pubPath)
			if err != nil {
				return err
			}
			tc, err := pki.MutualTLS(caPath, certPath, keyPath)
			if err != nil {
				return err
			}
			log, err := g.logger()
			if err != nil {
				return err
			}
			c, err := keyless.NewClient(keyless.ClientConfig{Endpoints: strings.Split(signers, ","), TLS: tc, Timeout: timeout, Logger: log})
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			signer, err := c.Signer(ctx, pub)
			if err != nil {
				return err
			}
			csr, err := tlsglue.CreateCSR(signer, names)
			if err != nil {
				return fmt.Errorf("sign CSR through %s: %w", signers, err)
			}
			if err := os.WriteFile(out, csr, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "CSR for %v written to %s\n", names, out)
			return nil
		},
	}
	cmd.Flags().StringVar(&signers, "signer", "127.0.0.1:7201", "comma-separated keyless endpoints of the cluster")
	cmd.Flags().StringVar(&pubPath, "public-key", "", "the cluster key's public key (PEM), as written by keygen")
	cmd.Flags().StringSliceVar(&names, "name", nil, "DNS names or IP addresses for the certificate (repeatable)")
	cmd.Flags().StringVar(&certPath, "cert", "", "this tool's identity certificate (edge or admin role)")
	cmd.Flags().StringVar(&keyPath, "key", "", "this tool's identity key")
	cmd.Flags().StringVar(&caPath, "ca", "", "the cluster CA bundle")
	cmd.Flags().StringVarP(&out, "out", "o", "site.csr", "where to write the CSR (PEM)")
	cmd.Flags().DurationVar(&timeout, "timeout", 20*time.Second, "give up after this long")
	for _, f := range []string{"public-key", "name", "cert", "key", "ca"} {
		_ = cmd.MarkFlagRequired(f)
	}
	return cmd
}

func readPublicKey(path string) (any, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("%s holds no PEM PUBLIC KEY", path)
	}
	return x509.ParsePKIXPublicKey(blk.Bytes)
}
