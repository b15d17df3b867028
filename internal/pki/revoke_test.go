package pki

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// newTestCA creates a development CA in a temporary directory.
func newTestCA(t *testing.T, name string) *CA {
	t.Helper()
	ca, err := InitCA(t.TempDir(), name)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// issueTestCert has ca issue an edge identity and returns its certificate.
func issueTestCert(t *testing.T, ca *CA, name string) *x509.Certificate {
	t.Helper()
	certPath, _, err := ca.IssueIdentity(t.TempDir(), name, RoleEdge, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(certPath)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// readTestCRL reads the CRL at path as a signer would: PEM, signed by ca.
func readTestCRL(t *testing.T, ca *CA, path string) *x509.RevocationList {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "X509 CRL" {
		t.Fatalf("%s holds no PEM X509 CRL", path)
	}
	crl, err := x509.ParseRevocationList(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(ca.Cert); err != nil {
		t.Fatalf("CRL not signed by the CA: %v", err)
	}
	return crl
}

// entriesOf counts a serial's entries on crl and returns the first one's
// revocation time.
func entriesOf(crl *x509.RevocationList, cert *x509.Certificate) (n int, first time.Time) {
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber.Cmp(cert.SerialNumber) == 0 {
			if n == 0 {
				first = e.RevocationTime
			}
			n++
		}
	}
	return n, first
}

func serialsOf(rs []Revocation) []string {
	var s []string
	for _, r := range rs {
		s = append(s, r.Cert.SerialNumber.String())
	}
	return s
}

// TestRevokeTwiceKeepsFirstEntry: a certificate revoked again in a later
// call stays listed once, with the time of its first revocation, and is
// reported as already revoked; a new certificate in the same call is added.
func TestRevokeTwiceKeepsFirstEntry(t *testing.T) {
	ca := newTestCA(t, "test CA")
	a, b := issueTestCert(t, ca, "a"), issueTestCert(t, ca, "b")
	crlPath := filepath.Join(t.TempDir(), "ca.crl")
	t1 := time.Now().Truncate(time.Second)
	t2 := t1.Add(time.Hour)

	res, err := ca.Revoke(crlPath, []*x509.Certificate{a}, 24*time.Hour, t1)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Revoked) != 1 || len(res.AlreadyRevoked) != 0 {
		t.Fatalf("first call: revoked %v, already %v; want [a], []", serialsOf(res.Revoked), serialsOf(res.AlreadyRevoked))
	}

	res, err = ca.Revoke(crlPath, []*x509.Certificate{a, b}, 24*time.Hour, t2)
	if err != nil {
		t.Fatal(err)
	}

	crl := readTestCRL(t, ca, crlPath)
	if n, first := entriesOf(crl, a); n != 1 || !first.Equal(t1) {
		t.Fatalf("a listed %d times, first at %v; want once at %v", n, first, t1)
	}
	if n, first := entriesOf(crl, b); n != 1 || !first.Equal(t2) {
		t.Fatalf("b listed %d times, first at %v; want once at %v", n, first, t2)
	}
	if len(crl.RevokedCertificateEntries) != 2 {
		t.Fatalf("%d entries, want 2", len(crl.RevokedCertificateEntries))
	}
	if len(res.Revoked) != 1 || res.Revoked[0].Cert != b || !res.Revoked[0].Time.Equal(t2) {
		t.Fatalf("second call: newly revoked %v, want only b (%v) at %v", serialsOf(res.Revoked), b.SerialNumber, t2)
	}
	if len(res.AlreadyRevoked) != 1 || res.AlreadyRevoked[0].Cert != a || !res.AlreadyRevoked[0].Time.Equal(t1) {
		t.Fatalf("second call: already revoked %v, want a (%v) since %v", serialsOf(res.AlreadyRevoked), a.SerialNumber, t1)
	}
	if !res.CRL.NextUpdate.Equal(t2.Add(24*time.Hour)) || len(res.CRL.RevokedCertificateEntries) != 2 {
		t.Fatalf("result's CRL: next update %v, %d entries", res.CRL.NextUpdate, len(res.CRL.RevokedCertificateEntries))
	}
	if fi, err := os.Stat(crlPath); err != nil {
		t.Fatal(err)
	} else if fi.Mode().Perm() != 0o644 {
		t.Fatalf("CRL file mode %v, want 0644", fi.Mode().Perm())
	}
}

// TestRevokeSameCertTwiceInOneCall: a certificate given twice in one call
// is listed and reported once.
func TestRevokeSameCertTwiceInOneCall(t *testing.T) {
	ca := newTestCA(t, "test CA")
	a, b := issueTestCert(t, ca, "a"), issueTestCert(t, ca, "b")
	crlPath := filepath.Join(t.TempDir(), "ca.crl")
	res, err := ca.Revoke(crlPath, []*x509.Certificate{a, b, a}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	crl := readTestCRL(t, ca, crlPath)
	if n, _ := entriesOf(crl, a); n != 1 || len(crl.RevokedCertificateEntries) != 2 {
		t.Fatalf("a listed %d times among %d entries, want once among 2", n, len(crl.RevokedCertificateEntries))
	}
	if len(res.Revoked) != 2 || res.Revoked[0].Cert != a || res.Revoked[1].Cert != b || len(res.AlreadyRevoked) != 0 {
		t.Fatalf("revoked %v, already %v; want [a b], []", serialsOf(res.Revoked), serialsOf(res.AlreadyRevoked))
	}
}

// TestRevokeBumpsCRLNumber: every call, including one that only signs the
// CRL anew, writes a higher CRL number, starting from 1.
func TestRevokeBumpsCRLNumber(t *testing.T) {
	ca := newTestCA(t, "test CA")
	a := issueTestCert(t, ca, "a")
	crlPath := filepath.Join(t.TempDir(), "ca.crl")
	now := time.Now()
	for i, certs := range [][]*x509.Certificate{{a}, nil, {a}} {
		res, err := ca.Revoke(crlPath, certs, time.Hour, now.Add(time.Duration(i)*time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		crl := readTestCRL(t, ca, crlPath)
		if want := big.NewInt(int64(i + 1)); crl.Number.Cmp(want) != 0 || res.CRL.Number.Cmp(want) != 0 {
			t.Fatalf("call %d: CRL number %v (result %v), want %v", i+1, crl.Number, res.CRL.Number, want)
		}
		if len(crl.RevokedCertificateEntries) != 1 {
			t.Fatalf("call %d: %d entries, want 1", i+1, len(crl.RevokedCertificateEntries))
		}
	}
}

// unchanged fails the test unless path still holds want and no temporary
// file was left beside it.
func unchanged(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s was changed", path)
	}
	ents, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 {
		t.Fatalf("%d files beside the CRL's directory, want only the CRL: %v", len(ents), ents)
	}
}

// TestRevokeRefusesOtherCAsCRL: a CRL signed by another CA is not
// extended (nor overwritten).
func TestRevokeRefusesOtherCAsCRL(t *testing.T) {
	ca, other := newTestCA(t, "test CA"), newTestCA(t, "other CA")
	crlPath := filepath.Join(t.TempDir(), "ca.crl")
	if _, err := other.Revoke(crlPath, []*x509.Certificate{issueTestCert(t, other, "x")}, time.Hour, time.Now()); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(crlPath)
	if err != nil {
		t.Fatal(err)
	}
	_, err = ca.Revoke(crlPath, []*x509.Certificate{issueTestCert(t, ca, "a")}, time.Hour, time.Now())
	if err == nil || !strings.Contains(err.Error(), "not signed by the CA") {
		t.Fatalf("another CA's CRL: %v, want an error saying it is not signed by the CA", err)
	}
	unchanged(t, crlPath, before)
}

// TestRevokeRefusesNonCRL: a file at the CRL's path that is not a PEM CRL
// (another PEM block, text, a PEM CRL block that does not parse) is
// refused with an error naming it, and left as it is.
func TestRevokeRefusesNonCRL(t *testing.T) {
	ca := newTestCA(t, "test CA")
	a := issueTestCert(t, ca, "a")
	for name, content := range map[string][]byte{
		"certificate": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.Raw}),
		"text":        []byte("not a CRL\n"),
		"empty":       nil,
	} {
		t.Run(name, func(t *testing.T) {
			crlPath := filepath.Join(t.TempDir(), "ca.crl")
			if err := os.WriteFile(crlPath, content, 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := ca.Revoke(crlPath, []*x509.Certificate{a}, time.Hour, time.Now())
			if err == nil || !strings.Contains(err.Error(), crlPath+" holds no PEM X509 CRL") {
				t.Fatalf("got %v, want an error saying %s holds no PEM X509 CRL", err, crlPath)
			}
			unchanged(t, crlPath, content)
		})
	}
	t.Run("garbled", func(t *testing.T) {
		crlPath := filepath.Join(t.TempDir(), "ca.crl")
		content := pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: []byte("garbage")})
		if err := os.WriteFile(crlPath, content, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := ca.Revoke(crlPath, []*x509.Certificate{a}, time.Hour, time.Now())
		if err == nil || !strings.Contains(err.Error(), "CRL "+crlPath) {
			t.Fatalf("got %v, want an error naming CRL %s", err, crlPath)
		}
		unchanged(t, crlPath, content)
	})
}

// TestRevokeRefusesOtherCAsCert: a certificate issued by another CA is
// refused, even beside one of this CA's, and the CRL is not changed.
func TestRevokeRefusesOtherCAsCert(t *testing.T) {
	ca, other := newTestCA(t, "test CA"), newTestCA(t, "other CA")
	a, b := issueTestCert(t, ca, "a"), issueTestCert(t, ca, "b")
	foreign := issueTestCert(t, other, "foreign")
	crlPath := filepath.Join(t.TempDir(), "ca.crl")
	if _, err := ca.Revoke(crlPath, []*x509.Certificate{a}, time.Hour, time.Now()); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(crlPath)
	if err != nil {
		t.Fatal(err)
	}
	_, err = ca.Revoke(crlPath, []*x509.Certificate{b, foreign}, time.Hour, time.Now())
	if err == nil || !strings.Contains(err.Error(), `"foreign"`) || !strings.Contains(err.Error(), "not issued by the CA") {
		t.Fatalf("another CA's certificate: %v, want an error naming it as not issued by the CA", err)
	}
	unchanged(t, crlPath, before)

	// And with no CRL yet, none is created.
	fresh := filepath.Join(t.TempDir(), "ca.crl")
	if _, err := ca.Revoke(fresh, []*x509.Certificate{foreign}, time.Hour, time.Now()); err == nil {
		t.Fatal("another CA's certificate revoked into a new CRL")
	}
	if _, err := os.Stat(fresh); !os.IsNotExist(err) {
		t.Fatalf("a CRL was created: %v", err)
	}
}

// TestRevokeRefusesNonPositiveValidity: a CRL that is stale as soon as it
// is written is refused.
func TestRevokeRefusesNonPositiveValidity(t *testing.T) {
	ca := newTestCA(t, "test CA")
	crlPath := filepath.Join(t.TempDir(), "ca.crl")
	if _, err := ca.Revoke(crlPath, nil, 0, time.Now()); err == nil {
		t.Fatal("validity 0 accepted")
	}
	if _, err := os.Stat(crlPath); !os.IsNotExist(err) {
		t.Fatalf("a CRL was written: %v", err)
	}
}
