package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/pflag"

	"github.com/tkeyless/tkeyless/tlsglue"
)

// newTestEdge builds (does not run) an edge serve from command-line flags.
func newTestEdge(t *testing.T, args ...string) (*edge, error) {
	t.Helper()
	o := &serveOptions{}
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	o.register(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	e, err := newEdge(ctx, o, zerolog.Nop())
	if err == nil {
		t.Cleanup(e.close)
	}
	return e, err
}

// certFrom issues a certificate for key under parent (nil: self-signed); mutate adjusts the
// template.
func certFrom(t *testing.T, cn string, key *ecdsa.PrivateKey, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, mutate func(*x509.Certificate)) *x509.Certificate {
	t.Helper()
	testSerial++
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(testSerial),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(30 * 24 * time.Hour),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:              []string{"localhost"},
	}
	if mutate != nil {
		mutate(tmpl)
	}
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestChainCheckSameAtStartAndReload offers each chain to a starting edge and, by SIGHUP's
// path, to a running one, with and without --roots: both must accept or refuse it alike, and as
// the table says. Before the shared check, a reload without --roots did not verify the chain at
// all, so a leaf with an unknown critical extension started refused and reloaded fine.
func TestChainCheckSameAtStartAndReload(t *testing.T) {
	site := newTestSite(t)
	dir := t.TempDir()
	asCA := func(c *x509.Certificate) {
		c.IsCA, c.KeyUsage, c.ExtKeyUsage, c.DNSNames = true, x509.KeyUsageCertSign, nil, nil
	}
	rootKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	interKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	root := certFrom(t, "Check Root", rootKey, nil, rootKey, asCA)
	inter := certFrom(t, "Check Intermediate", interKey, root, rootKey, asCA)
	leaf := certFrom(t, "localhost", site.leafKey, inter, interKey, nil)
	expired := certFrom(t, "localhost", site.leafKey, inter, interKey, func(c *x509.Certificate) {
		c.NotBefore, c.NotAfter = time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour)
	})
	// Clients refuse a certificate with a critical extension they do not know.
	unknownCritical := certFrom(t, "localhost", site.leafKey, inter, interKey, func(c *x509.Certificate) {
		c.ExtraExtensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}, Critical: true, Value: []byte{5, 0}}}
	})
	otherKeyLeaf := certFrom(t, "localhost", otherKey, inter, interKey, nil)
	rootsPEM := writePEM(t, dir, "roots.pem", "CERTIFICATE", root.Raw)

	chains := []struct {
		name       string
		certs      []*x509.Certificate
		want       bool // accepted without --roots
		wantRooted bool // accepted with --roots
	}{
		{"good", []*x509.Certificate{leaf, inter}, true, true},
		{"missing intermediate", []*x509.Certificate{leaf}, true, false}, // only a warning without --roots
		{"expired leaf", []*x509.Certificate{expired, inter}, false, false},
		{"unknown critical extension", []*x509.Certificate{unknownCritical, inter}, false, false},
		{"leaf for another key", []*x509.Certificate{otherKeyLeaf, inter}, false, false},
	}
	good := writePEM(t, dir, "good.pem", "CERTIFICATE", leaf.Raw, inter.Raw)
	for _, rooted := range []bool{false, true} {
		for _, c := range chains {
			name := c.name
			want := c.want
			var extra []string
			if rooted {
				name += " with --roots"
				want = c.wantRooted
				extra = []string{"--roots", rootsPEM}
			}
			t.Run(name, func(t *testing.T) {
				var ders [][]byte
				for _, cert := range c.certs {
					ders = append(ders, cert.Raw)
				}
				offered := writePEM(t, t.TempDir(), "chain.pem", "CERTIFICATE", ders...)
				args := append([]string{"--signer", "file://" + site.keyPEM}, extra...)

				_, err := newTestEdge(t, append([]string{"--cert", offered}, args...)...)
				atStart := err == nil
				t.Logf("at start: %v", err)

				served := filepath.Join(t.TempDir(), "served.pem")
				copyFile(t, good, served)
				e, err := newTestEdge(t, append([]string{"--cert", served}, args...)...)
				if err != nil {
					t.Fatalf("the good chain: %v", err)
				}
				copyFile(t, offered, served)
				onReload := e.reloadChains(direct(e.setCert))

				if atStart != want || onReload != want {
					t.Errorf("accepted at start %v, on reload %v; want %v for both", atStart, onReload, want)
				}
			})
		}
	}
	_ = os.Remove(good)
}

// direct routes every chain to serve, as an edge with one stapler does.
func direct(serve func(*tlsglue.Chain) error) func(*tlsglue.Chain) (func() error, error) {
	return func(c *tlsglue.Chain) (func() error, error) { return func() error { return serve(c) }, nil }
}
