package tlsglue

import (
	"bytes"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/cloudflare/gokeyless/protocol"
	"github.com/smallstep/pkcs7"
)

// Chain is the certificate chain an edge serves: the leaf whose key lives on the signers, and the
// intermediates a client needs to reach a root it trusts, in the order they are sent (the
// leaf's issuer first). A self-signed root is never part of a Chain: clients must already have it.
//
// Build one with LoadChain; a Chain is read-only once built and safe to share between handshakes.
type Chain struct {
	Leaf          *x509.Certificate
	Intermediates []*x509.Certificate
	// OCSPStaple, if set, is a DER OCSP response for the leaf that handshakes staple (see
	// FetchOCSP).
	OCSPStaple []byte
}

// loadedCert is a parsed certificate and the file it came from, for error messages.
type loadedCert struct {
	cert *x509.Certificate
	file string
}

// LoadChain reads certificates from PEM files (one certificate or a bundle, in any order) or DER
// files (one or more concatenated certificates) and orders them leaf first, each followed by its
// issuer. Issuers are matched by subject and checked by signature, so the order in the files
// does not matter, duplicates are dropped, and a self-signed root is left out.
//
// It refuses, with a message naming the file, input that is not a certificate chain: a file
// without certificates, a private key or a certificate request where a certificate belongs, and
// certificates that form more than one chain (several leaves).
func LoadChain(paths ...string) (*Chain, error) {
	if len(paths) == 0 {
		return nil, errors.New("load certificate chain: no certificate file given")
	}
	var certs []loadedCert
	seen := make(map[string]bool)
	for _, path := range paths {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("load certificate chain: %w", err)
		}
		found, err := parseCertificateFile(path, data)
		if err != nil {
			return nil, fmt.Errorf("load certificate chain: %w", err)
		}
		for _, c := range found {
			if seen[string(c.Raw)] {
				continue
			}
			seen[string(c.Raw)] = true
			certs = append(certs, loadedCert{cert: c, file: path})
		}
	}
	chain, err := orderChain(certs)
	if err != nil {
		return nil, fmt.Errorf("load certificate chain from %s: %w", strings.Join(paths, ", "), err)
	}
	return chain, nil
}

// LoadChains is LoadChain for files that may hold several sites' chains: it builds one chain
// per leaf (each with its own intermediates, which chains may share), in the order the leaves
// first appear in the files, so an edge can serve each to the names it covers. The first is
// the default.
func LoadChains(paths ...string) ([]*Chain, error) {
	if len(paths) == 0 {
		return nil, errors.New("load certificate chains: no certificate file given")
	}
	var certs []loadedCert
	seen := make(map[string]bool)
	for _, path := range paths {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("load certificate chains: %w", err)
		}
		found, err := parseCertificateFile(path, data)
		if err != nil {
			return nil, fmt.Errorf("load certificate chains: %w", err)
		}
		for _, c := range found {
			if !seen[string(c.Raw)] {
				seen[string(c.Raw)] = true
				certs = append(certs, loadedCert{cert: c, file: path})
			}
		}
	}
	leaves := findLeaves(certs)
	if len(leaves) == 0 {
		return nil, fmt.Errorf("load certificate chains from %s: no leaf certificate", strings.Join(paths, ", "))
	}
	chains := make([]*Chain, 0, len(leaves))
	for _, l := range leaves {
		chains = append(chains, chainFrom(l.cert, certs))
	}
	return chains, nil
}

// findLeaves returns the certificates that issued none of the others, leaving out self-signed
// roots when there is anything else.
func findLeaves(certs []loadedCert) []loadedCert {
	var leaves []loadedCert
	for i, c := range certs {
		issuesAnother := false
		for j, other := range certs {
			if i != j && issued(c.cert, other.cert) {
				issuesAnother = true
				break
			}
		}
		if !issuesAnother {
			leaves = append(leaves, c)
		}
	}
	if len(leaves) > 1 {
		var notRoots []loadedCert
		for _, l := range leaves {
			if !(l.cert.IsCA && selfSigned(l.cert)) {
				notRoots = append(notRoots, l)
			}
		}
		if len(notRoots) > 0 {
			leaves = notRoots
		}
	}
	return leaves
}

// chainFrom walks up from leaf through its issuers among certs, stopping before a self-signed
// root.
func chainFrom(leaf *x509.Certificate, certs []loadedCert) *Chain {
	chain := &Chain{Leaf: leaf}
	inChain := map[*x509.Certificate]bool{leaf: true}
	for cur := leaf; !selfSigned(cur); {
		parent := findIssuer(cur, certs, inChain)
		if parent == nil || selfSigned(parent) {
			break
		}
		chain.Intermediates = append(chain.Intermediates, parent)
		inChain[parent] = true
		cur = parent
	}
	return chain
}

// parseCertificateFile returns the certificates in one file, PEM or DER. It names the file and,
// when it can tell, what the file holds instead of a certificate.
func parseCertificateFile(path string, data []byte) ([]*x509.Certificate, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, fmt.Errorf("file %s is empty: no certificate found", path)
	}
	if bytes.Contains(data, []byte("-----BEGIN ")) {
		return parsePEMCertificates(path, data)
	}
	certs, err := x509.ParseCertificates(data)
	if err == nil && len(certs) > 0 {
		return certs, nil
	}
	if p7, p7err := pkcs7.Parse(data); p7err == nil {
		return pkcs7Certificates(path, p7)
	}
	// Not DER certificates: say what it is when it is something we recognise.
	if _, csrErr := x509.ParseCertificateRequest(data); csrErr == nil {
		return nil, fmt.Errorf("file %s holds a CSR, not a certificate: %s", path, csrAdvice)
	}
	if isDERPrivateKey(data) {
		return nil, fmt.Errorf("file %s holds a private key, not a certificate: %s", path, keyAdvice)
	}
	return nil, fmt.Errorf("file %s: no certificate found (neither PEM nor DER certificates): %v", path, err)
}

const (
	csrAdvice = "have a CA sign it and give the issued certificate (with its intermediates) instead"
	keyAdvice = "give the certificate chain here; the private key stays with the signer (keyless://… or file://…)"
)

func parsePEMCertificates(path string, data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for n := 1; ; n++ {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		switch {
		case block.Type == "CERTIFICATE":
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("file %s: PEM block %d: parse certificate: %w", path, n, err)
			}
			certs = append(certs, c)
		case block.Type == "PKCS7" || block.Type == "PKCS #7 SIGNED DATA" || block.Type == "CMS":
			p7, err := pkcs7.Parse(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("file %s: PEM block %d: parse PKCS#7: %w", path, n, err)
			}
			found, err := pkcs7Certificates(path, p7)
			if err != nil {
				return nil, err
			}
			certs = append(certs, found...)
		case strings.Contains(block.Type, "CERTIFICATE REQUEST"):
			return nil, fmt.Errorf("file %s holds a CSR, not a certificate: %s", path, csrAdvice)
		case strings.Contains(block.Type, "PRIVATE KEY"):
			return nil, fmt.Errorf("file %s holds a private key (PEM %q), not a certificate: %s", path, block.Type, keyAdvice)
		default:
			return nil, fmt.Errorf("file %s: PEM block %d is %q, not a CERTIFICATE", path, n, block.Type)
		}
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("file %s: no certificate found (no readable PEM CERTIFICATE block)", path)
	}
	return certs, nil
}

// pkcs7Certificates returns the certificates of a PKCS#7 (.p7b) bundle,
// the form some CAs deliver chains in.
func pkcs7Certificates(path string, p7 *pkcs7.PKCS7) ([]*x509.Certificate, error) {
	if len(p7.Certificates) == 0 {
		return nil, fmt.Errorf("file %s: PKCS#7 bundle holds no certificate", path)
	}
	return p7.Certificates, nil
}

func isDERPrivateKey(der []byte) bool {
	if _, err := x509.ParsePKCS8PrivateKey(der); err == nil {
		return true
	}
	if _, err := x509.ParseECPrivateKey(der); err == nil {
		return true
	}
	if _, err := x509.ParsePKCS1PrivateKey(der); err == nil {
		return true
	}
	return false
}

// issued reports whether parent issued child: the names match and parent's key signed child.
func issued(parent, child *x509.Certificate) bool {
	return bytes.Equal(child.RawIssuer, parent.RawSubject) && child.CheckSignatureFrom(parent) == nil
}

func selfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature) == nil
}

// orderChain finds the one leaf among certs (the certificate that issued no other) and walks up
// from it through its issuers, stopping before a self-signed root.
func orderChain(certs []loadedCert) (*Chain, error) {
	if len(certs) == 0 {
		return nil, errors.New("no certificate found")
	}
	var leaves []loadedCert
	for i, c := range certs {
		issuesAnother := false
		for j, other := range certs {
			if i != j && issued(c.cert, other.cert) {
				issuesAnother = true
				break
			}
		}
		if !issuesAnother {
			leaves = append(leaves, c)
		}
	}
	if len(leaves) > 1 {
		// A stray root in a bundle is harmless: it is never sent. Anything else is a second chain.
		var notRoots []loadedCert
		for _, l := range leaves {
			if !(l.cert.IsCA && selfSigned(l.cert)) {
				notRoots = append(notRoots, l)
			}
		}
		if len(notRoots) > 0 {
			leaves = notRoots
		}
	}
	switch len(leaves) {
	case 0:
		return nil, errors.New("no leaf certificate: every certificate issued another one")
	case 1:
	default:
		names := make([]string, len(leaves))
		for i, l := range leaves {
			names[i] = fmt.Sprintf("%q (%s)", l.cert.Subject.String(), l.file)
		}
		return nil, fmt.Errorf("%d leaf certificates that do not chain to one another: %s; give one leaf with its intermediates",
			len(leaves), strings.Join(names, ", "))
	}

	chain := &Chain{Leaf: leaves[0].cert}
	inChain := map[*x509.Certificate]bool{chain.Leaf: true}
	for cur := chain.Leaf; !selfSigned(cur); {
		parent := findIssuer(cur, certs, inChain)
		if parent == nil || selfSigned(parent) {
			break
		}
		chain.Intermediates = append(chain.Intermediates, parent)
		inChain[parent] = true
		cur = parent
	}
	return chain, nil
}

// findIssuer returns the issuer of c among certs that is not already in the chain. When a bundle
// holds both a self-signed root and a cross-signed version of it, it prefers the cross-signed
// one: the bundle's author included it to be sent.
func findIssuer(c *x509.Certificate, certs []loadedCert, inChain map[*x509.Certificate]bool) *x509.Certificate {
	var root *x509.Certificate
	for _, p := range certs {
		if inChain[p.cert] || !issued(p.cert, c) {
			continue
		}
		if !selfSigned(p.cert) {
			return p.cert
		}
		root = p.cert
	}
	return root
}

// CheckValidity reports a leaf that is expired or not yet valid at now, or
// an intermediate that is, with the dates.
func (c *Chain) CheckValidity(now time.Time) error {
	for i, cert := range append([]*x509.Certificate{c.Leaf}, c.Intermediates...) {
		what := "leaf certificate"
		if i > 0 {
			what = "intermediate certificate"
		}
		switch {
		case now.After(cert.NotAfter):
			return fmt.Errorf("%s %q expired on %s (%s ago); renew it", what, cert.Subject.String(),
				cert.NotAfter.UTC().Format(time.RFC3339), now.Sub(cert.NotAfter).Round(time.Minute))
		case now.Before(cert.NotBefore):
			return fmt.Errorf("%s %q is not valid until %s (in %s); check the clock, or wait", what, cert.Subject.String(),
				cert.NotBefore.UTC().Format(time.RFC3339), cert.NotBefore.Sub(now).Round(time.Minute))
		}
	}
	return nil
}

// ErrMissingIntermediate is returned by Verify when the chain stops at a
// certificate whose issuer is neither in the chain nor a trusted root.
var ErrMissingIntermediate = errors.New("missing intermediate certificate")

// Verify checks that the chain leads from the leaf to one of roots (the
// system roots if nil) at now, as a client would. A chain that stops short
// of a trusted root gets an error wrapping ErrMissingIntermediate that
// names the issuer to add.
func (c *Chain) Verify(roots *x509.CertPool, now time.Time) error {
	if err := c.CheckValidity(now); err != nil {
		return err
	}
	if roots == nil {
		var err error
		if roots, err = x509.SystemCertPool(); err != nil {
			return fmt.Errorf("verify chain: system roots: %w", err)
		}
	}
	inter := x509.NewCertPool()
	for _, ic := range c.Intermediates {
		inter.AddCert(ic)
	}
	_, err := c.Leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	var ua x509.UnknownAuthorityError
	if errors.As(err, &ua) {
		top := c.Leaf
		if len(c.Intermediates) > 0 {
			top = c.Intermediates[len(c.Intermediates)-1]
		}
		return fmt.Errorf("%w: %q is issued by %q, which is neither in the files given nor a trusted root; add that intermediate (or, for a private CA, give its root)",
			ErrMissingIntermediate, top.Subject.String(), top.Issuer.String())
	}
	if err != nil {
		return fmt.Errorf("verify chain: %w", err)
	}
	return nil
}

// TLSCertificate returns the chain as a tls.Certificate whose private key is key, typically a
// signer that forwards each handshake's digest to the signer cluster. The returned value shares
// the chain's parsed certificates; it does not copy them.
func (c *Chain) TLSCertificate(key crypto.Signer) tls.Certificate {
	raw := make([][]byte, 0, 1+len(c.Intermediates))
	raw = append(raw, c.Leaf.Raw)
	for _, ic := range c.Intermediates {
		raw = append(raw, ic.Raw)
	}
	return tls.Certificate{Certificate: raw, PrivateKey: key, Leaf: c.Leaf, OCSPStaple: c.OCSPStaple}
}

// SKI returns the gokeyless subject key identifier of pub as lower-case hex: the name under which
// signers and gokeyless servers know a key.
func SKI(pub crypto.PublicKey) (string, error) {
	ski, err := skiOf(pub)
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(ski[:]), nil
}

// skiOf is the gokeyless SKI of pub: a SHA-1 of its encoding, computed once per served chain
// (see servedChain), not per handshake. Tests count its calls with testHookSKI.
func skiOf(pub crypto.PublicKey) (protocol.SKI, error) {
	if testHookSKI != nil {
		testHookSKI()
	}
	ski, err := protocol.GetSKI(pub)
	if err != nil {
		return ski, fmt.Errorf("compute SKI of %T: %w", pub, err)
	}
	return ski, nil
}

// testHookSKI, set only by tests, is called at every SKI computation.
var testHookSKI func()

// CheckKey reports whether the chain's leaf certificate is for the public key pub, and when it is
// not, names both keys by SKI so the operator can tell which certificate or which key is wrong.
func CheckKey(chain *Chain, pub crypto.PublicKey) error {
	if chain == nil || chain.Leaf == nil {
		return errors.New("check key: no certificate chain")
	}
	want, err := SKI(pub)
	if err != nil {
		return fmt.Errorf("check key: %w", err)
	}
	return checkSKI(chain, want)
}

// checkSKI compares the SKI of the chain's leaf key with want (hex).
func checkSKI(chain *Chain, want string) error {
	have, err := SKI(chain.Leaf.PublicKey)
	if err != nil {
		return fmt.Errorf("check key: certificate %q: %w", chain.Leaf.Subject.String(), err)
	}
	if !strings.EqualFold(have, want) {
		return fmt.Errorf("certificate public key does not match cluster key %s; this certificate belongs to key %s", strings.ToLower(want), have)
	}
	return nil
}

// CheckSKI is CheckKey for a key known only by its SKI in hex, as a keyless:// key reference
// names it.
func CheckSKI(chain *Chain, ski string) error {
	if chain == nil || chain.Leaf == nil {
		return errors.New("check key: no certificate chain")
	}
	if b, err := hex.DecodeString(ski); err != nil || len(b) != len(protocol.SKI{}) {
		return fmt.Errorf("check key: %q is not an SKI (40 hex digits)", ski)
	}
	return checkSKI(chain, ski)
}
