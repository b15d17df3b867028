package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// testSite is a CA, a server certificate it issued (through an intermediate) for localhost and
// 127.0.0.1, and the certificate's key, written to files the edge reads. The CA also issues the
// identities of keyless tests. (internal/testpki has no intermediates and does not hand out its
// CA certificate, which curl --cacert and --keyless-ca need.)
type testSite struct {
	caPEM    string // CA certificate, for clients
	chainPEM string // leaf then intermediate
	keyPEM   string // the leaf's private key (PKCS#8)
	leafKey  *ecdsa.PrivateKey
	pool     *x509.CertPool
	root     *x509.Certificate
	rootKey  *ecdsa.PrivateKey
}

func newTestSite(t *testing.T) testSite {
	t.Helper()
	dir := t.TempDir()
	root, rootKey := issue(t, "Edge Test Root", nil, nil, true)
	inter, interKey := issue(t, "Edge Test Intermediate", root, rootKey, true)
	leaf, leafKey := issue(t, "localhost", inter, interKey, false)

	s := testSite{leafKey: leafKey, pool: x509.NewCertPool(), root: root, rootKey: rootKey}
	s.pool.AddCert(root)
	s.caPEM = writePEM(t, dir, "ca.pem", "CERTIFICATE", root.Raw)
	s.chainPEM = writePEM(t, dir, "chain.pem", "CERTIFICATE", leaf.Raw, inter.Raw)
	der, err := x509.MarshalPKCS8PrivateKey(leafKey)
	if err != nil {
		t.Fatal(err)
	}
	s.keyPEM = writePEM(t, dir, "key.pem", "PRIVATE KEY", der)
	return s
}

var testSerial int64

func issue(t *testing.T, cn string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, isCA bool) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	testSerial++
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(testSerial),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(30 * 24 * time.Hour),
		BasicConstraintsValid: true,
		IsCA:                  isCA,
		KeyUsage:              x509.KeyUsageDigitalSignature,
	}
	if isCA {
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
		tmpl.DNSNames = []string{cn}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

func writePEM(t *testing.T, dir, name, typ string, ders ...[]byte) string {
	t.Helper()
	var out []byte
	for _, der := range ders {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})...)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func (s testSite) clientTLS(version uint16) *tls.Config {
	return &tls.Config{RootCAs: s.pool, MinVersion: version, MaxVersion: version}
}
