package tlsglue

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"strings"
)

// CreateCSR returns a PEM certificate signing request for names, signed by signer. The signer is
// meant to be the threshold cluster (the key exists nowhere else), so the request is the one way
// to get a certificate for the cluster's key: hand the PEM to a CA, then serve what it issues.
//
// names are DNS names (wildcards allowed) or IP addresses; the first is also the subject's
// common name (when it fits in one). The signature is checked against signer's public key before the CSR is returned.
func CreateCSR(signer crypto.Signer, names []string) ([]byte, error) {
	if signer == nil {
		return nil, errors.New("create CSR: no signer")
	}
	if len(names) == 0 {
		return nil, errors.New("create CSR: no names; give at least one DNS name or IP address")
	}
	tmpl := &x509.CertificateRequest{}
	if cn := strings.TrimSpace(names[0]); len(cn) <= 64 { // the X.509 upper bound on a common name
		tmpl.Subject = pkix.Name{CommonName: cn}
	}
	for _, name := range names {
		name = strings.TrimSpace(name)
		switch {
		case name == "":
			return nil, errors.New("create CSR: empty name")
		case net.ParseIP(name) != nil:
			tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(name))
		default:
			tmpl.DNSNames = append(tmpl.DNSNames, name)
		}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, signer)
	if err != nil {
		return nil, fmt.Errorf("create CSR for %s: %w", strings.Join(names, ", "), err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("create CSR for %s: parse the result: %w", strings.Join(names, ", "), err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("create CSR for %s: the signer's signature does not verify against its public key: %w", strings.Join(names, ", "), err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}
