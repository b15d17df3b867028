// Package pki is tkeyless's cluster identity: the roles a certificate can
// carry (node, edge, admin), how a verified peer certificate is mapped to a
// name and role, and a small development CA that issues such certificates
// for demos, tests and first deployments.
//
// A production cluster can use any CA: what matters is that every signer
// trusts the CA that issued the node and edge certificates, and that each
// certificate carries its role as an Organizational Unit.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Role is what a certificate's holder may do in a cluster.
type Role string

// The roles. A role is the certificate's Subject OU "tkeyless-<role>".
const (
	RoleNode  Role = "node"  // a signer: peer endpoint, holds shares
	RoleEdge  Role = "edge"  // an HTTPS edge: keyless endpoint
	RoleAdmin Role = "admin" // an operator tool: ceremonies, CSRs
)

const ouPrefix = "tkeyless-"

// Identity is who is on the other end of a verified mTLS connection.
type Identity struct {
	Name string // the certificate's common name
	Role Role
	Cert *x509.Certificate
}

// IdentityOf reads name and role from a verified leaf certificate.
func IdentityOf(cert *x509.Certificate) (Identity, error) {
	if cert == nil {
		return Identity{}, errors.New("no client certificate")
	}
	if cert.Subject.CommonName == "" {
		return Identity{}, errors.New("client certificate has no common name")
	}
	for _, ou := range cert.Subject.OrganizationalUnit {
		r, ok := strings.CutPrefix(ou, ouPrefix)
		if ok && slices.Contains([]Role{RoleNode, RoleEdge, RoleAdmin}, Role(r)) {
			return Identity{Name: cert.Subject.CommonName, Role: Role(r), Cert: cert}, nil
		}
	}
	return Identity{}, fmt.Errorf("certificate %q carries no tkeyless role (want OU tkeyless-node, tkeyless-edge or tkeyless-admin)", cert.Subject.CommonName)
}

// IdentityFromState reads the identity of a verified TLS connection.
func IdentityFromState(cs tls.ConnectionState) (Identity, error) {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return Identity{}, errors.New("connection has no verified client certificate")
	}
	return IdentityOf(cs.VerifiedChains[0][0])
}

// CA is a development certificate authority kept in a directory as ca.pem
// and ca-key.pem. Its key is an ordinary file: fine for a demo or a lab,
// not for the CA that guards a production cluster.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	Dir  string
}

// InitCA creates a CA in dir, or loads the one already there.
func InitCA(dir, name string) (*CA, error) {
	if ca, err := LoadCA(dir); err == nil {
		return ca, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"tkeyless development CA"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(5, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	if err := writePEM(filepath.Join(dir, "ca.pem"), "CERTIFICATE", der, 0o644); err != nil {
		return nil, err
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	if err := writePEM(filepath.Join(dir, "ca-key.pem"), "PRIVATE KEY", kb, 0o600); err != nil {
		return nil, err
	}
	return LoadCA(dir)
}

// LoadCA loads a CA made by InitCA.
func LoadCA(dir string) (*CA, error) {
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem"))
	if err != nil {
		return nil, fmt.Errorf("load CA from %s: %w", dir, err)
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("load CA from %s: key cannot sign", dir)
	}
	return &CA{Cert: pair.Leaf, Key: signer, Dir: dir}, nil
}

// IssueIdentity makes a key and certificate for a cluster member and writes
// them to <dir>/<name>.pem and <dir>/<name>-key.pem. hosts become SANs (a
// node needs the addresses its peers dial).
func (ca *CA) IssueIdentity(dir, name string, role Role, hosts []string) (certPath, keyPath string, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: name, OrganizationalUnit: []string{ouPrefix + string(role)}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(1, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
	addHosts(tmpl, append([]string{name}, hosts...))
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return "", "", fmt.Errorf("issue %s certificate for %s: %w", role, name, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", err
	}
	certPath, keyPath = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	if err := writePEM(certPath, "CERTIFICATE", der, 0o644); err != nil {
		return "", "", err
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", err
	}
	return certPath, keyPath, writePEM(keyPath, "PRIVATE KEY", kb, 0o600)
}

// SignCSR issues a TLS server certificate for a CSR (the dev "web CA" that
// certifies the cluster key for a demo site). The CSR's own signature is
// checked: it proves the cluster key signed it.
func (ca *CA) SignCSR(csrDER []byte, validity time.Duration) ([]byte, error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("parse CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("CSR signature does not verify: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      csr.Subject,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     csr.DNSNames,
		IPAddresses:  csr.IPAddresses,
	}
	return x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, csr.PublicKey, ca.Key)
}

func addHosts(tmpl *x509.Certificate, hosts []string) {
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" && !slices.Contains(tmpl.DNSNames, h) {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err)
	}
	return n
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode)
}

// LoadPool reads a PEM CA bundle.
func LoadPool(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read CA bundle: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("CA bundle %s holds no PEM certificate", path)
	}
	return pool, nil
}

// MutualTLS builds the TLS configuration a cluster member uses both to
// serve and to dial: its own certificate, and the cluster CA for verifying
// the other side in both directions.
func MutualTLS(caPath, certPath, keyPath string) (*tls.Config, error) {
	pool, err := LoadPool(caPath)
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return nil, fmt.Errorf("load identity %s: %w", certPath, err)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}, nil
}
