package main

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/tkeyless/tkeyless/tlsglue"
)

// chainCheck is what a chain must pass before the edge serves it. The same check runs at start,
// on SIGHUP and after an ACME renewal: a chain the edge would refuse to start with is never
// swapped in while it runs, and the reverse. (Before, a reload without --roots skipped
// verification altogether, so a chain that no client accepts, e.g. a leaf with an unknown
// critical extension, was refused at start and served after SIGHUP.)
type chainCheck struct {
	roots       *x509.CertPool // nil: the system roots
	keyRef      keyRef
	key         crypto.PublicKey // a file:// signer's key: every chain must be for it
	strictRoots bool             // --roots given: a chain that does not reach them is refused
}

// check returns the first failure among chains (a reload applies whole or not at all). Failures
// that only some clients will notice are logged as warnings and let through: a certificate that
// expires soon, and without --roots a chain that does not reach a system root (private CAs are
// common behind an edge).
func (cc chainCheck) check(chains []*tlsglue.Chain, now time.Time, log zerolog.Logger) error {
	if len(chains) == 0 {
		return errors.New("no certificate chain to serve")
	}
	for i, c := range chains {
		if err := c.CheckValidity(now); err != nil {
			return err
		}
		ski, _ := tlsglue.SKI(c.Leaf.PublicKey)
		warnExpiry(log, c.Leaf, ski)
		if err := c.Verify(cc.roots, now); err != nil {
			if cc.strictRoots || !errors.Is(err, tlsglue.ErrMissingIntermediate) {
				return err
			}
			log.Warn().Err(err).Str("key", ski).Msg("the chain does not reach a system root; clients that do not trust its top certificate will fail (pass --roots to make this an error)")
		}
		switch {
		case cc.key != nil:
			if err := tlsglue.CheckKey(c, cc.key); err != nil {
				return fmt.Errorf("--signer %s holds one key: %w", cc.keyRef, err)
			}
		case cc.keyRef.ski != "" && i == 0:
			if err := tlsglue.CheckSKI(c, cc.keyRef.ski); err != nil {
				return fmt.Errorf("--signer %s: %w", cc.keyRef, err)
			}
		}
	}
	return nil
}
