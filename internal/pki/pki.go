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

// Revocation is a certificate on the CA's CRL and the time the CRL first
// listed it.
type Revocation struct {
	Cert *x509.Certificate
	Time time.Time
}

// RevokeResult says what Revoke did, so that an operator can tell a typo'd
// or repeated revocation from a new one.
type RevokeResult struct {
	Revoked        []Revocation         // newly listed, revoked at now
	AlreadyRevoked []Revocation         // listed before this call, with their original time
	CRL            *x509.RevocationList // the CRL as written
}

// Revoke adds certs to the CA's certificate revocation list at crlPath
// (created if absent) and signs it anew, valid from now for validity.
//
// An existing file must be a PEM "X509 CRL" signed by this CA: anything
// else is refused and left as it is, since overwriting it could silently
// drop revocations another CA or an operator put there. Its entries are
// kept and its CRL number is bumped, so that a signer can tell the newer
// list. A serial is listed at most once: a certificate already on the list
// (or given twice) keeps its original revocation time, which is when it
// stopped being trusted. Every certificate must have been issued by this
// CA — a serial means nothing on another issuer's list — and if one is not,
// nothing is written.
//
// The new CRL replaces the file by a rename (mode 0644), so a signer
// reloading meanwhile reads the old list or the new one, never half of one.
func (ca *CA) Revoke(crlPath string, certs []*x509.Certificate, validity time.Duration, now time.Time) (RevokeResult, error) {
	if validity <= 0 {
		return RevokeResult{}, fmt.Errorf("CRL validity %v: want a positive duration", validity)
	}
	for _, cert := range certs {
		if cert == nil {
			return RevokeResult{}, errors.New("revoke: nil certificate")
		}
		if err := cert.CheckSignatureFrom(ca.Cert); err != nil {
			return RevokeResult{}, fmt.Errorf("certificate %q (serial %x) was not issued by the CA %q: %w", cert.Subject.CommonName, cert.SerialNumber, ca.Cert.Subject.CommonName, err)
		}
	}
	tmpl := &x509.RevocationList{Number: big.NewInt(1)}
	old, err := ca.readCRL(crlPath)
	if err != nil {
		return RevokeResult{}, err
	}
	// listed maps a serial to its entry's time; certificates of this CA
	// have distinct serials, so the serial identifies the certificate.
	listed := make(map[string]time.Time)
	if old != nil {
		tmpl.RevokedCertificateEntries = slices.Clone(old.RevokedCertificateEntries)
		for _, e := range old.RevokedCertificateEntries {
			if _, dup := listed[e.SerialNumber.String()]; !dup {
				listed[e.SerialNumber.String()] = e.RevocationTime
			}
		}
		if old.Number != nil {
			tmpl.Number = new(big.Int).Add(old.Number, big.NewInt(1))
		}
	}
	var res RevokeResult
	reported := make(map[string]bool)
	for _, cert := range certs {
		sn := cert.SerialNumber.String()
		if reported[sn] {
			continue
		}
		reported[sn] = true
		if t, ok := listed[sn]; ok {
			res.AlreadyRevoked = append(res.AlreadyRevoked, Revocation{Cert: cert, Time: t})
			continue
		}
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{SerialNumber: cert.SerialNumber, RevocationTime: now})
		res.Revoked = append(res.Revoked, Revocation{Cert: cert, Time: now})
	}
	// ThisUpdate a minute back: a signer whose clock runs slightly behind
	// must not see a CRL from the future.
	tmpl.ThisUpdate, tmpl.NextUpdate = now.Add(-time.Minute), now.Add(validity)
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.Cert, ca.Key)
	if err != nil {
		return RevokeResult{}, fmt.Errorf("sign CRL: %w", err)
	}
	if res.CRL, err = x509.ParseRevocationList(der); err != nil {
		return RevokeResult{}, fmt.Errorf("parse the signed CRL: %w", err)
	}
	if err := writeFileAtomic(crlPath, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o644); err != nil {
		return RevokeResult{}, fmt.Errorf("write CRL %s: %w", crlPath, err)
	}
	return res, nil
}

// readCRL reads the CA's CRL at path: nil if there is none yet.
func (ca *CA) readCRL(path string) (*x509.RevocationList, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read CRL: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "X509 CRL" {
		return nil, fmt.Errorf("%s holds no PEM X509 CRL; move it away to start a new one", path)
	}
	crl, err := x509.ParseRevocationList(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("CRL %s: %w", path, err)
	}
	if err := crl.CheckSignatureFrom(ca.Cert); err != nil {
		return nil, fmt.Errorf("CRL %s is not signed by the CA %q: %w", path, ca.Cert.Subject.CommonName, err)
	}
	return crl, nil
}

// writeFileAtomic writes b to a temporary file beside path and renames it
// into place, so that a reader sees the old content or the new, never a
// mix; on error path is left as it was.
func writeFileAtomic(path string, b []byte, mode os.FileMode) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(mode); err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
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
