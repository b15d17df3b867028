package main

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tkeyless/tkeyless/tlsglue"
)

func checkCmd() *cobra.Command {
	var certs []string
	var signer, roots string
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Show the certificate chain edge serve would serve, or why it would refuse it",
		Long: `check loads --cert exactly as edge serve does and prints what it found: the
leaf's subject, names, key and its SKI (the key id signers know it by),
validity, and the intermediates in the order they are sent. It exits 1 with
the reason when serve would refuse the files or the certificate is not valid
now.

With --signer it also checks the certificate is for that key, without asking
for a signature: a file:// key is compared directly, a keyless:// reference
only when it names the key with ?ski=.`,
		Example: `  edge check --cert fullchain.pem
  edge check --cert site.der --cert intermediate.pem --signer file:///etc/tkeyless/baseline-key.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(certs) == 0 {
				return errors.New("--cert: give the certificate chain file(s) to check")
			}
			chain, err := tlsglue.LoadChain(certs...)
			if err != nil {
				return err
			}
			if err := describeChain(cmd.OutOrStdout(), chain, time.Now()); err != nil {
				return err
			}
			pool, err := loadRoots(roots)
			if err != nil {
				return err
			}
			if err := chain.Verify(pool, time.Now()); err != nil {
				if roots == "" && errors.Is(err, tlsglue.ErrMissingIntermediate) {
					fmt.Fprintf(cmd.OutOrStdout(), "trust:    not verified against the system roots: %v\n          (for a private CA, pass its root with --roots)\n", err)
				} else {
					return err
				}
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "trust:    chains to a trusted root\n")
			}
			if signer != "" {
				return checkSigner(cmd.OutOrStdout(), chain, signer)
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&certs, "cert", nil, "certificate file, PEM or DER; repeat it for a chain split over files")
	cmd.Flags().StringVar(&roots, "roots", "", "PEM file of root CAs to verify the chain against (default: the system roots; a chain that does not reach them is only reported)")
	cmd.Flags().StringVar(&signer, "signer", "", "optional key reference to check the certificate against (file:///key.pem, or keyless://…?ski=HEX)")
	return cmd
}

// describeChain prints the chain for an operator and returns an error if serve would refuse it
// or clients would: a key type the edge cannot serve, or a certificate outside its validity.
func describeChain(w io.Writer, chain *tlsglue.Chain, now time.Time) error {
	leaf := chain.Leaf
	ski, err := tlsglue.SKI(leaf.PublicKey)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "leaf:     %s\n", leaf.Subject)
	fmt.Fprintf(w, "names:    %s\n", strings.Join(leafNames(leaf), ", "))
	fmt.Fprintf(w, "key:      %s\n", keyDescription(leaf.PublicKey))
	fmt.Fprintf(w, "SKI:      %s\n", ski)
	fmt.Fprintf(w, "valid:    %s\n", validity(leaf, now))
	fmt.Fprintf(w, "issuer:   %s\n", leaf.Issuer)
	if len(chain.Intermediates) == 0 {
		fmt.Fprintf(w, "chain:    leaf only (no intermediates)\n")
	} else {
		fmt.Fprintf(w, "chain:    %d intermediate(s), sent after the leaf in this order:\n", len(chain.Intermediates))
		for i, c := range chain.Intermediates {
			fmt.Fprintf(w, "  %d. %s\n     issued by %s\n     valid %s\n", i+1, c.Subject, c.Issuer, validity(c, now))
		}
	}

	if _, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok {
		return fmt.Errorf("certificate %q has a %s key; the edge serves ECDSA certificates only", leaf.Subject, keyDescription(leaf.PublicKey))
	}
	for _, c := range append([]*x509.Certificate{leaf}, chain.Intermediates...) {
		if now.After(c.NotAfter) {
			return fmt.Errorf("certificate %q expired on %s", c.Subject, c.NotAfter.UTC().Format(time.RFC3339))
		}
		if now.Before(c.NotBefore) {
			return fmt.Errorf("certificate %q is not valid before %s", c.Subject, c.NotBefore.UTC().Format(time.RFC3339))
		}
	}
	return nil
}

func validity(c *x509.Certificate, now time.Time) string {
	s := fmt.Sprintf("%s to %s", c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339))
	switch {
	case now.After(c.NotAfter):
		return s + " (EXPIRED)"
	case now.Before(c.NotBefore):
		return s + " (NOT YET VALID)"
	default:
		return fmt.Sprintf("%s (%d days left)", s, int(c.NotAfter.Sub(now).Hours()/24))
	}
}

func keyDescription(pub any) string {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA %d", k.N.BitLen())
	case ed25519.PublicKey:
		return "Ed25519"
	default:
		return fmt.Sprintf("%T", pub)
	}
}

func checkSigner(w io.Writer, chain *tlsglue.Chain, signer string) error {
	ref, err := parseKeyRef(signer)
	if err != nil {
		return err
	}
	switch {
	case ref.scheme == "file":
		key, err := loadPrivateKey(ref.path)
		if err != nil {
			return err
		}
		if err := tlsglue.CheckKey(chain, key.Public()); err != nil {
			return err
		}
	case ref.ski != "":
		if err := tlsglue.CheckSKI(chain, ref.ski); err != nil {
			return err
		}
	default:
		fmt.Fprintf(w, "signer:   %s (not checked: add ?ski=HEX to compare key ids without signing)\n", ref)
		return nil
	}
	fmt.Fprintf(w, "signer:   %s holds the certificate's key\n", ref)
	return nil
}

// loadRoots reads a PEM file of root certificates; "" means the system
// roots (nil).
func loadRoots(path string) (*x509.CertPool, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--roots: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("--roots %s: no PEM certificate in it", path)
	}
	return pool, nil
}
