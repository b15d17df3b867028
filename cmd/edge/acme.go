package main

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/pflag"

	"github.com/tkeyless/tkeyless/tlsglue"
)

// acmeFlags are the flags of ACME mode (see tlsglue/acme.go for the route: the CSR is signed by
// the signer cluster, certmagic only talks ACME).
type acmeFlags struct {
	domains     []string
	ca          string
	email       string
	caRoots     string
	storage     string
	httpPort    int
	renewBefore time.Duration
	publicKey   string
}

func (a *acmeFlags) register(f *pflag.FlagSet) {
	f.StringArrayVar(&a.domains, "acme-domain", nil, "get the certificate by ACME for this name (repeat for more names); replaces --cert")
	f.StringVar(&a.ca, "acme-ca", "https://acme-v02.api.letsencrypt.org/directory", "ACME directory URL")
	f.StringVar(&a.email, "acme-email", "", "ACME account contact email")
	pathVar(f, &a.caRoots, "acme-ca-roots", "", "PEM roots to trust for the ACME server's own TLS (a private CA such as Pebble's)")
	pathVar(f, &a.storage, "acme-storage", "acme", "directory for the ACME account and issued certificates (no site key: it has none); a file \""+renewRequestFile+"\" created in it makes the next SIGHUP renew at once")
	f.IntVar(&a.httpPort, "acme-http-port", 80, "port answering ACME HTTP-01 challenges")
	f.DurationVar(&a.renewBefore, "acme-renew-before", 0, "renew this long before expiry (default: at two thirds of the lifetime)")
	pathVar(f, &a.publicKey, "public-key", "", "the cluster key's PEM public key (as signer keygen writes it), for the CSR; needed with a keyless:// signer")
}

// startACME loads a stored certificate or obtains one before the edge serves.
func startACME(ctx context.Context, o *serveOptions, ref keyRef, keys tlsglue.KeySource, logger zerolog.Logger) (*tlsglue.ACME, *tlsglue.Chain, error) {
	var pub crypto.PublicKey
	switch {
	case o.acme.publicKey != "":
		b, err := os.ReadFile(o.acme.publicKey)
		if err != nil {
			return nil, nil, fmt.Errorf("--public-key: %w", err)
		}
		blk, _ := pem.Decode(b)
		if blk == nil || blk.Type != "PUBLIC KEY" {
			return nil, nil, fmt.Errorf("--public-key %s: no PEM PUBLIC KEY in it", o.acme.publicKey)
		}
		if pub, err = x509.ParsePKIXPublicKey(blk.Bytes); err != nil {
			return nil, nil, fmt.Errorf("--public-key %s: %w", o.acme.publicKey, err)
		}
	case ref.scheme == "file":
		pub = keys.(tlsglue.LocalKey).Key.Public()
	default:
		return nil, nil, fmt.Errorf("--acme-domain with %s: give the cluster key's public key with --public-key", ref)
	}
	signer, err := keys.Signer(ctx, pub)
	if err != nil {
		return nil, nil, fmt.Errorf("acme: %w", err)
	}
	var trust *x509.CertPool
	if o.acme.caRoots != "" {
		if trust, err = loadRoots(o.acme.caRoots); err != nil {
			return nil, nil, fmt.Errorf("--acme-ca-roots: %w", err)
		}
	}
	acme, err := tlsglue.NewACME(tlsglue.ACMEOptions{
		CA: o.acme.ca, Email: o.acme.email, Names: o.acme.domains, TrustedRoots: trust,
		StorageDir: o.acme.storage, HTTPPort: o.acme.httpPort, RenewBefore: o.acme.renewBefore,
		Logger: logger.With().Str("component", "acme").Logger(),
	}, signer)
	if err != nil {
		return nil, nil, err
	}
	if chain, err := acme.Load(); err == nil {
		logger.Info().Str("serial", chain.Leaf.SerialNumber.String()).Time("not_after", chain.Leaf.NotAfter).Msg("ACME certificate loaded from storage")
		return acme, chain, nil
	}
	octx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	chain, err := acme.Obtain(octx)
	if err != nil {
		return nil, nil, err
	}
	return acme, chain, nil
}

// renewRequestFile, created in --acme-storage, makes the next SIGHUP renew the certificate even
// if it is not due. A file, not a signal of its own: SIGHUP is what reload tooling sends
// routinely, and a routine reload must not order a certificate the CA counts against its
// weekly limits; only whoever can write the storage directory can ask for that.
const renewRequestFile = "renew"

// renewOnSIGHUP is SIGHUP in ACME mode: a renewal at once if the certificate is within its
// renewal window, or in any case if renewRequestFile exists (it is removed, so one request
// starts at most one renewal), within the rate limit of tlsglue.ACME.RenewNow.
func renewOnSIGHUP(acme *tlsglue.ACME, storage string, logger zerolog.Logger) {
	request := filepath.Join(storage, renewRequestFile)
	force := false
	if _, err := os.Stat(request); err == nil {
		force = true
		if err := os.Remove(request); err != nil {
			logger.Warn().Err(err).Str("file", request).Msg("SIGHUP: the renewal request file cannot be removed; every SIGHUP will ask for a renewal until it is")
		}
	}
	err := acme.RenewNow(force)
	var refused *tlsglue.RenewalRefused
	switch {
	case err == nil:
		logger.Info().Bool("forced", force).Msg("SIGHUP: renewing the ACME certificate now")
	case errors.As(err, &refused) && refused.Limited:
		ev := logger.Warn().Bool("forced", force).Str("reason", refused.Reason)
		if !refused.After.IsZero() {
			ev = ev.Time("retry_after", refused.After)
		}
		ev.Msg("SIGHUP: ACME renewal refused by the rate limit; still serving the current certificate")
	case errors.As(err, &refused):
		logger.Info().Time("due", refused.After).Str("request_file", request).
			Msg("SIGHUP: the ACME certificate is not due for renewal; to renew it anyway, create the request file and send SIGHUP again")
	default:
		logger.Error().Err(err).Msg("SIGHUP: ACME renewal")
	}
}
