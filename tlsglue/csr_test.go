package tlsglue

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"testing"
)

func TestCreateCSR(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	out, err := CreateCSR(key, []string{"www.example.com", "*.example.com", "192.0.2.1"})
	if err != nil {
		t.Fatal(err)
	}
	block, rest := pem.Decode(out)
	if block == nil || block.Type != "CERTIFICATE REQUEST" || len(rest) != 0 {
		t.Fatalf("not one PEM CERTIFICATE REQUEST: %q", out)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Fatal(err)
	}
	if csr.Subject.CommonName != "www.example.com" {
		t.Errorf("CN = %q", csr.Subject.CommonName)
	}
	if got := fmt.Sprint(csr.DNSNames, csr.IPAddresses); got != "[www.example.com *.example.com] [192.0.2.1]" {
		t.Errorf("names = %s", got)
	}
	if !key.PublicKey.Equal(csr.PublicKey) {
		t.Error("CSR is not for the signer's key")
	}
	if csr.SignatureAlgorithm != x509.ECDSAWithSHA256 {
		t.Errorf("signature algorithm = %v", csr.SignatureAlgorithm)
	}

	if _, err := CreateCSR(key, nil); err == nil {
		t.Error("no names: want an error")
	}
	if _, err := CreateCSR(key, []string{"a.example", " "}); err == nil {
		t.Error("empty name: want an error")
	}
}
