package tlsglue

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cloudflare/gokeyless/protocol"
	"github.com/smallstep/pkcs7"
)

func TestLoadChainOrder(t *testing.T) {
	p := newPKIChain(t, "leaf.test")
	i2 := makeCert(t, "Test Intermediate 2", p.inter, true)
	deepLeaf := makeCert(t, "deep.test", i2, false)
	selfSigned := makeCert(t, "self.test", nil, false)
	otherRoot := makeCert(t, "Unrelated Root", nil, true)

	type file struct {
		name string
		data []byte
	}
	tests := []struct {
		name  string
		files []file
		leaf  *testCert
		inter []*testCert
	}{
		{"bundle leaf first", []file{{"b.pem", pemCerts(p.leaf, p.inter)}}, p.leaf, []*testCert{p.inter}},
		{"bundle reversed with root", []file{{"b.pem", pemCerts(p.root, p.inter, p.leaf)}}, p.leaf, []*testCert{p.inter}},
		{"root in the middle", []file{{"b.pem", pemCerts(p.inter, p.root, p.leaf)}}, p.leaf, []*testCert{p.inter}},
		{"two intermediates shuffled", []file{{"b.pem", pemCerts(p.inter, deepLeaf, p.root, i2)}}, deepLeaf, []*testCert{i2, p.inter}},
		{"separate files", []file{{"root.pem", pemCerts(p.root)}, {"inter.pem", pemCerts(p.inter)}, {"leaf.pem", pemCerts(p.leaf)}}, p.leaf, []*testCert{p.inter}},
		{"DER files", []file{{"inter.der", p.inter.cert.Raw}, {"leaf.crt", p.leaf.cert.Raw}}, p.leaf, []*testCert{p.inter}},
		{"concatenated DER", []file{{"chain.der", append(append([]byte{}, p.inter.cert.Raw...), p.leaf.cert.Raw...)}}, p.leaf, []*testCert{p.inter}},
		{"PEM and DER mixed", []file{{"leaf.pem", pemCerts(p.leaf)}, {"inter.der", p.inter.cert.Raw}}, p.leaf, []*testCert{p.inter}},
		{"duplicates", []file{{"a.pem", pemCerts(p.leaf, p.inter)}, {"b.pem", pemCerts(p.inter, p.leaf)}}, p.leaf, []*testCert{p.inter}},
		{"leaf only", []file{{"leaf.pem", pemCerts(p.leaf)}}, p.leaf, nil},
		{"self-signed leaf", []file{{"self.pem", pemCerts(selfSigned)}}, selfSigned, nil},
		{"stray root ignored", []file{{"b.pem", pemCerts(otherRoot, p.leaf, p.inter)}}, p.leaf, []*testCert{p.inter}},
		{"PKCS#7 DER", []file{{"chain.p7b", p7b(t, p.root, p.leaf, p.inter)}}, p.leaf, []*testCert{p.inter}},
		{"PKCS#7 PEM", []file{{"chain.p7b", pem.EncodeToMemory(&pem.Block{Type: "PKCS7", Bytes: p7b(t, p.inter, p.leaf)})}}, p.leaf, []*testCert{p.inter}},
		{"PKCS#7 beside PEM", []file{{"leaf.pem", pemCerts(p.leaf)}, {"inter.p7b", p7b(t, p.inter)}}, p.leaf, []*testCert{p.inter}},
		{"text around PEM blocks", []file{{"b.pem", append([]byte("subject=CN=leaf.test\n"), pemCerts(p.leaf, p.inter)...)}}, p.leaf, []*testCert{p.inter}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			var paths []string
			for _, f := range tt.files {
				paths = append(paths, writeFile(t, dir, f.name, f.data))
			}
			chain, err := LoadChain(paths...)
			if err != nil {
				t.Fatal(err)
			}
			if !chain.Leaf.Equal(tt.leaf.cert) {
				t.Errorf("leaf = %q, want %q", chain.Leaf.Subject, tt.leaf.cert.Subject)
			}
			var got, want []string
			for _, c := range chain.Intermediates {
				got = append(got, c.Subject.CommonName)
			}
			for _, c := range tt.inter {
				want = append(want, c.cert.Subject.CommonName)
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("intermediates = %v, want %v", got, want)
			}
		})
	}
}

func TestLoadChainRejects(t *testing.T) {
	p := newPKIChain(t, "leaf.test")
	other := newPKIChain(t, "other.test")
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecDER, _ := x509.MarshalECPrivateKey(key)
	pkcs8DER, _ := x509.MarshalPKCS8PrivateKey(key)
	csrPEM, err := CreateCSR(key, []string{"leaf.test"})
	if err != nil {
		t.Fatal(err)
	}
	csrBlock, _ := pem.Decode(csrPEM)

	tests := []struct {
		name string
		file string
		data []byte
		want string // the error must contain this, with the file's path in place of %s
	}{
		{"empty", "empty.pem", nil, "file %s is empty: no certificate found"},
		{"no PEM certificate", "notes.pem", []byte("-----BEGIN nothing"), "file %s: no certificate found"},
		{"garbage", "junk.crt", []byte("this is not a certificate"), "file %s: no certificate found (neither PEM nor DER certificates)"},
		{"PEM CSR", "x.pem", csrPEM, "file %s holds a CSR, not a certificate: have a CA sign it"},
		{"DER CSR", "x.der", csrBlock.Bytes, "file %s holds a CSR, not a certificate: "},
		{"PEM EC key", "key.pem", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER}), `file %s holds a private key (PEM "EC PRIVATE KEY"), not a certificate`},
		{"PEM PKCS#8 key", "key.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8DER}), `file %s holds a private key (PEM "PRIVATE KEY"), not a certificate`},
		{"DER key", "key.der", pkcs8DER, "file %s holds a private key, not a certificate"},
		{"key after certificate", "both.pem", append(pemCerts(p.leaf), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER})...), "file %s holds a private key"},
		{"other PEM block", "x.pem", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{1}}), `file %s: PEM block 1 is "PUBLIC KEY", not a CERTIFICATE`},
		{"broken certificate", "x.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2, 3}}), "file %s: PEM block 1: parse certificate:"},
		{"two leaves", "two.pem", pemCerts(p.leaf, p.inter, other.leaf, other.inter), `2 leaf certificates that do not chain to one another: "CN=leaf.test" (%[1]s), "CN=other.test" (%[1]s); give one leaf with its intermediates`},
		{"unrelated intermediate", "x.pem", pemCerts(p.leaf, other.inter), "2 leaf certificates that do not chain"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, t.TempDir(), tt.file, tt.data)
			_, err := LoadChain(path)
			if err == nil {
				t.Fatal("LoadChain succeeded")
			}
			want := tt.want
			if strings.Contains(want, "%") {
				want = fmt.Sprintf(want, path)
			}
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error = %q\nwant it to contain %q", err, want)
			}
		})
	}

	t.Run("no files", func(t *testing.T) {
		if _, err := LoadChain(); err == nil || !strings.Contains(err.Error(), "no certificate file given") {
			t.Errorf("error = %v", err)
		}
	})
	t.Run("missing file", func(t *testing.T) {
		if _, err := LoadChain(t.TempDir() + "/nope.pem"); err == nil || !strings.Contains(err.Error(), "nope.pem") {
			t.Errorf("error = %v", err)
		}
	})
}

func TestCheckKey(t *testing.T) {
	p := newPKIChain(t, "leaf.test")
	chain := &Chain{Leaf: p.leaf.cert}
	if err := CheckKey(chain, p.leaf.key.Public()); err != nil {
		t.Fatalf("matching key: %v", err)
	}

	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherSKI, _ := protocol.GetSKI(other.Public())
	leafSKI, _ := protocol.GetSKI(p.leaf.key.Public())
	want := fmt.Sprintf("certificate public key does not match cluster key %s; this certificate belongs to key %s", otherSKI, leafSKI)
	if err := CheckKey(chain, other.Public()); err == nil || err.Error() != want {
		t.Errorf("mismatch error = %v\nwant %s", err, want)
	}
	if err := CheckSKI(chain, strings.ToUpper(otherSKI.String())); err == nil || err.Error() != want {
		t.Errorf("CheckSKI mismatch error = %v\nwant %s", err, want)
	}
	if err := CheckSKI(chain, leafSKI.String()); err != nil {
		t.Errorf("CheckSKI matching: %v", err)
	}
	if err := CheckSKI(chain, "abc"); err == nil || !strings.Contains(err.Error(), "not an SKI") {
		t.Errorf("CheckSKI bad hex: %v", err)
	}
}

func TestTLSCertificate(t *testing.T) {
	p := newPKIChain(t, "leaf.test")
	chain := &Chain{Leaf: p.leaf.cert, Intermediates: []*x509.Certificate{p.inter.cert}}
	c := chain.TLSCertificate(p.leaf.key)
	if len(c.Certificate) != 2 || string(c.Certificate[0]) != string(p.leaf.cert.Raw) || string(c.Certificate[1]) != string(p.inter.cert.Raw) {
		t.Fatal("certificate list is not leaf, intermediate")
	}
	if c.Leaf != p.leaf.cert || c.PrivateKey != p.leaf.key {
		t.Fatal("leaf or key not set")
	}
}

// p7b makes a certificates-only PKCS#7 bundle (DER), as CAs deliver .p7b files.
func p7b(t *testing.T, certs ...*testCert) []byte {
	t.Helper()
	var raw []byte
	for _, c := range certs {
		raw = append(raw, c.cert.Raw...)
	}
	b, err := pkcs7.DegenerateCertificate(raw)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// An expired or not-yet-valid leaf and a chain missing its intermediate
// are refused with what is wrong and what to do.
func TestChainVerify(t *testing.T) {
	p := newPKIChain(t, "leaf.test")
	full := &Chain{Leaf: p.leaf.cert, Intermediates: []*x509.Certificate{p.inter.cert}}
	if err := full.Verify(p.pool(), time.Now()); err != nil {
		t.Fatalf("complete chain: %v", err)
	}
	err := full.Verify(p.pool(), time.Now().Add(48*time.Hour))
	if err == nil || !strings.Contains(err.Error(), `leaf certificate "CN=leaf.test" expired on`) {
		t.Fatalf("expired leaf: %v", err)
	}
	err = full.CheckValidity(time.Now().Add(-2 * time.Hour))
	if err == nil || !strings.Contains(err.Error(), "is not valid until") {
		t.Fatalf("not-yet-valid leaf: %v", err)
	}
	leafOnly := &Chain{Leaf: p.leaf.cert}
	err = leafOnly.Verify(p.pool(), time.Now())
	if !errors.Is(err, ErrMissingIntermediate) || !strings.Contains(err.Error(), `issued by "CN=Test Intermediate"`) {
		t.Fatalf("missing intermediate: %v", err)
	}
}
