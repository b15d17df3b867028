package node

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"strings"
	"time"
)

// Revocation names the identities this node refuses although the cluster CA
// issued them: an edge whose host was lost, a retired signer. Both sources
// may be used together; `signer serve` reads them again on SIGHUP.
type Revocation struct {
	// CRL is a certificate revocation list issued by the cluster CA (PEM
	// "X509 CRL" or DER), as any real CA publishes it. Its signature is
	// checked against the cluster CA; a CRL it does not verify, or that
	// does not parse whole, fails the load (at a reload the previous list
	// stays in force). A CRL past its next update is still applied (it
	// still names what it revoked) and a warning is logged.
	CRL string `yaml:"crl"`
	// List is a plain text file for a CA that publishes no CRL: one entry
	// per line, "name <certificate common name>" (every certificate of that
	// identity, now and later) or "serial <hex serial number>" (one
	// certificate); "#" starts a comment.
	List string `yaml:"list"`
}

// revocationList is the loaded form of Revocation. A nil list revokes
// nothing.
type revocationList struct {
	names     map[string]bool
	serials   map[string]bool // from List: hex serial, any issuer
	crlIssuer []byte          // raw subject of the CRL's issuer
	crl       map[string]bool // hex serial, revoked by crlIssuer
	stale     time.Time       // the CRL's next update, if already past
}

// serialHex is a certificate's serial number as the list writes it.
func serialHex(c *x509.Certificate) string { return hex.EncodeToString(c.SerialNumber.Bytes()) }

// loadRevocations reads r; cas are the cluster CA certificates a CRL must be
// signed by.
func loadRevocations(r Revocation, cas []*x509.Certificate) (*revocationList, error) {
	l := &revocationList{names: map[string]bool{}, serials: map[string]bool{}, crl: map[string]bool{}}
	if r.List != "" {
		if err := l.readList(r.List); err != nil {
			return nil, err
		}
	}
	if r.CRL != "" {
		if err := l.readCRL(r.CRL, cas); err != nil {
			return nil, err
		}
	}
	return l, nil
}

func (l *revocationList) readList(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("revocation list: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for line := 1; sc.Scan(); line++ {
		text, _, _ := strings.Cut(sc.Text(), "#")
		fields := strings.Fields(text)
		if len(fields) == 0 {
			continue
		}
		if len(fields) != 2 {
			return fmt.Errorf("revocation list %s line %d: want \"name <identity>\" or \"serial <hex>\", got %q", path, line, strings.TrimSpace(text))
		}
		switch fields[0] {
		case "name":
			l.names[fields[1]] = true
		case "serial":
			s, ok := parseSerial(fields[1])
			if !ok {
				return fmt.Errorf("revocation list %s line %d: serial %q is not hexadecimal (colons allowed, as openssl prints it)", path, line, fields[1])
			}
			l.serials[s] = true
		default:
			return fmt.Errorf("revocation list %s line %d: unknown entry %q; want name or serial", path, line, fields[0])
		}
	}
	return sc.Err()
}

// parseSerial normalizes a hex serial ("0A:1b:..." or "0a1b...") to the
// form serialHex gives.
func parseSerial(s string) (string, bool) {
	n, ok := new(big.Int).SetString(strings.ReplaceAll(s, ":", ""), 16)
	if !ok || n.Sign() < 0 {
		return "", false
	}
	return hex.EncodeToString(n.Bytes()), true
}

func (l *revocationList) readCRL(path string, cas []*x509.Certificate) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("CRL: %w", err)
	}
	der := b
	if bytes.Contains(b, []byte("-----BEGIN")) {
		blk, rest := pem.Decode(b)
		if blk == nil || blk.Type != "X509 CRL" {
			return fmt.Errorf("CRL %s: no whole PEM \"X509 CRL\" block (truncated?)", path)
		}
		if len(bytes.TrimSpace(rest)) != 0 {
			return fmt.Errorf("CRL %s: more than one PEM block; give one CRL from the cluster CA", path)
		}
		der = blk.Bytes
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return fmt.Errorf("CRL %s: %w", path, err)
	}
	var signed bool
	for _, ca := range cas {
		if crl.CheckSignatureFrom(ca) == nil {
			signed = true
			break
		}
	}
	if !signed {
		return fmt.Errorf("CRL %s (issuer %q) is not signed by the cluster CA; give the CRL of the CA in tls.ca", path, crl.Issuer.String())
	}
	l.crlIssuer = crl.RawIssuer
	for _, e := range crl.RevokedCertificateEntries {
		l.crl[hex.EncodeToString(e.SerialNumber.Bytes())] = true
	}
	if !crl.NextUpdate.IsZero() && time.Now().After(crl.NextUpdate) {
		l.stale = crl.NextUpdate
	}
	return nil
}

// check reports whether cert is revoked, and by which entry.
func (l *revocationList) check(cert *x509.Certificate) (string, bool) {
	if l == nil {
		return "", false
	}
	if l.names[cert.Subject.CommonName] {
		return "name listed in the revocation list", true
	}
	s := serialHex(cert)
	if l.serials[s] {
		return "serial listed in the revocation list", true
	}
	if l.crl[s] && bytes.Equal(cert.RawIssuer, l.crlIssuer) {
		return "serial revoked by the CRL", true
	}
	return "", false
}

// size is how many entries the list holds, for logs.
func (l *revocationList) size() int {
	if l == nil {
		return 0
	}
	return len(l.names) + len(l.serials) + len(l.crl)
}
