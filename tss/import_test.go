package tss

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"
)

// thresholdSigner is a crypto.Signer over a quorum of shares, signing in
// memory: what a signer node does for the edge, without the network.
type thresholdSigner struct {
	t      *testing.T
	quorum []*Share
}

func (s thresholdSigner) Public() crypto.PublicKey { return s.quorum[0].PublicKey() }

func (s thresholdSigner) Sign(_ io.Reader, digest []byte, _ crypto.SignerOpts) ([]byte, error) {
	return runSign(s.t, s.quorum, digest, nil)
}

// Import a plain P-256 key into a (1,3) cluster; two of the new shares sign
// under the original public key, and a TLS server serves the key's
// existing certificate with them.
func TestImportKey(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	// The certificate a plain Keyless server would have served.
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "imported.example"}, DNSNames: []string{"imported.example"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	certDER, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	pub := key.PublicKey

	parties := []string{"a", "b", "c"}
	mem := newMemnet()
	sessions := map[string]*ReshareSession{}
	imp, err := NewImportSession(key, "importer", parties, 1, nil, mem.outbox("importer"))
	if err != nil {
		t.Fatal(err)
	}
	key = nil // from here on, only the session's copy (zeroed by Run)
	sessions["importer"] = imp
	mem.join("importer", imp)
	for _, n := range parties {
		s, err := NewReshareSession(ImportConfig("importer", &pub, parties, 1), n, nil, testPreParams(t, reshareTestPreParams[n]), mem.outbox(n))
		if err != nil {
			t.Fatal(err)
		}
		sessions[n] = s
		mem.join(n, s)
	}
	shares, err := runReshareSessions(t, sessions)
	if err != nil {
		t.Fatal(err)
	}
	if len(shares) != 3 || shares["importer"] != nil {
		t.Fatalf("new shares for %v, want a, b, c only", shares)
	}
	if imp.dealt.Sign() != 0 {
		t.Fatal("the importer's copy of the key was not zeroed")
	}
	for _, n := range parties {
		if !shares[n].PublicKey().Equal(&pub) || shares[n].Threshold != 1 {
			t.Fatalf("%s: share of key %s t=%d, want the imported key %s with t=1", n, shares[n].KeyID(), shares[n].Threshold, KeyIDOf(&pub))
		}
	}
	mustSignAndVerify(t, &pub, shares["a"], shares["c"])

	// Serve a handshake with the existing certificate, signed by b and c.
	roots := x509.NewCertPool()
	cert, _ := x509.ParseCertificate(certDER)
	roots.AddCert(cert)
	srv, cli := net.Pipe()
	errc := make(chan error, 1)
	go func() {
		s := tls.Server(srv, &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{certDER}, PrivateKey: thresholdSigner{t, []*Share{shares["b"], shares["c"]}}}}})
		errc <- s.Handshake()
		s.Close()
	}()
	c := tls.Client(cli, &tls.Config{ServerName: "imported.example", RootCAs: roots, MinVersion: tls.VersionTLS13})
	if err := c.Handshake(); err != nil {
		t.Fatalf("handshake with the imported key's certificate: %v", err)
	}
	c.Close()
	if err := <-errc; err != nil {
		t.Fatalf("server handshake: %v", err)
	}
}

// A cluster node handed the key imports it: it deals as the one-party old
// committee and takes its own new share in the same ceremony, the way a
// node in both committees of a refresh does.
func TestImportByMember(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub := key.PublicKey
	parties := []string{"a", "b"}
	mem := newMemnet()
	sessions := map[string]*ReshareSession{}
	imp, err := NewImportSession(key, "a", parties, 1, testPreParams(t, reshareTestPreParams["a"]), mem.outbox("a"))
	if err != nil {
		t.Fatal(err)
	}
	sessions["a"] = imp
	mem.join("a", imp)
	b, err := NewReshareSession(ImportConfig("a", &pub, parties, 1), "b", nil, testPreParams(t, reshareTestPreParams["b"]), mem.outbox("b"))
	if err != nil {
		t.Fatal(err)
	}
	sessions["b"] = b
	mem.join("b", b)
	shares, err := runReshareSessions(t, sessions)
	if err != nil {
		t.Fatal(err)
	}
	if len(shares) != 2 {
		t.Fatalf("new shares for %v, want a and b", shares)
	}
	mustSignAndVerify(t, &pub, shares["a"], shares["b"])
}

func TestImportRejects(t *testing.T) {
	ob := OutboxFunc(func(context.Context, Outgoing) error { return nil })
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if _, err := NewImportSession(p384, "importer", []string{"a", "b"}, 1, nil, ob); err == nil || !strings.Contains(err.Error(), "P-256") {
		t.Fatalf("want a P-256 error, got %v", err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := NewImportSession(key, "a", []string{"a", "b"}, 1, nil, ob); err == nil || !strings.Contains(err.Error(), "pre-parameters") {
		t.Fatalf("want an importer among the new parties to need its pre-parameters, got %v", err)
	}
	if _, err := NewImportSession(key, "importer", []string{"a", "b"}, 2, nil, ob); err == nil {
		t.Fatal("accepted threshold 2 of 2 parties")
	}
	// A cluster node cannot pose as the importer: that side needs the key.
	_, err := NewReshareSession(ImportConfig("a", &key.PublicKey, []string{"b", "c"}, 1), "a", nil, nil, ob)
	if err == nil || !strings.Contains(err.Error(), "NewImportSession") {
		t.Fatalf("want a pointer to NewImportSession, got %v", err)
	}
}
