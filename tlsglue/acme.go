package tlsglue

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/rs/zerolog"
	"go.uber.org/zap"
)

// ACME certificates for a key that exists nowhere.
//
// certmagic's managed mode keeps a PEM private key beside each certificate, which a threshold
// key cannot be. So the edge uses certmagic only as an ACME client: ACMEIssuer.Issue takes a
// CSR, which CreateCSR builds and the signer cluster signs (one threshold signature), and
// returns the chain. Storage (certmagic's FileStorage) keeps the ACME account key and, here, the
// issued chains, never a site key. Renewal scheduling is ACME.Run's: at two thirds of the
// certificate's lifetime (or RenewBefore its end), with backoff on failure, and at once on
// RenewNow. Each new chain goes to the caller's reload function, which swaps it in for new
// handshakes (ReloadableServerConfig) without dropping connections.

// ACMEOptions configure ACME issuance.
type ACMEOptions struct {
	// CA is the ACME directory URL (certmagic.LetsEncryptProductionCA for Let's Encrypt).
	CA string
	// Email is the account contact; optional.
	Email string
	// Names are the DNS names (or IPs) of the certificate; the first is its common name.
	Names []string
	// TrustedRoots verify the ACME server's own TLS certificate (a private CA such as Pebble's);
	// nil means the system roots.
	TrustedRoots *x509.CertPool
	// StorageDir keeps the ACME account and the issued chains.
	StorageDir string
	// HTTPPort is where the HTTP-01 challenge is answered (default 80). TLS-ALPN-01 is not
	// used: the edge's TLS port serves the site.
	HTTPPort int
	// RenewBefore renews a certificate this long before it expires; zero renews at two thirds
	// of its lifetime.
	RenewBefore time.Duration
	Logger      zerolog.Logger
}

// ACME obtains and renews one certificate for Signer's key.
type ACME struct {
	opts    ACMEOptions
	signer  crypto.Signer
	issuer  *certmagic.ACMEIssuer
	current atomic.Pointer[Chain]
	renew   chan struct{}
}

// NewACME prepares issuance for signer's public key; nothing is requested yet.
func NewACME(opts ACMEOptions, signer crypto.Signer) (*ACME, error) {
	if opts.CA == "" || len(opts.Names) == 0 || opts.StorageDir == "" {
		return nil, errors.New("acme: a CA directory URL, at least one name and a storage directory are required")
	}
	if opts.HTTPPort == 0 {
		opts.HTTPPort = 80
	}
	if err := os.MkdirAll(opts.StorageDir, 0o700); err != nil {
		return nil, fmt.Errorf("acme: storage: %w", err)
	}
	cfg := certmagic.NewDefault()
	cfg.Storage = &certmagic.FileStorage{Path: opts.StorageDir}
	cfg.Logger = zap.NewNop()
	issuer := certmagic.NewACMEIssuer(cfg, certmagic.ACMEIssuer{
		CA:                      opts.CA,
		TestCA:                  opts.CA,
		Email:                   opts.Email,
		Agreed:                  true,
		TrustedRoots:            opts.TrustedRoots,
		DisableTLSALPNChallenge: true,
		AltHTTPPort:             opts.HTTPPort,
		Logger:                  zap.NewNop(),
	})
	return &ACME{opts: opts, signer: signer, issuer: issuer, renew: make(chan struct{}, 1)}, nil
}

// Current is the chain last obtained or loaded, or nil.
func (a *ACME) Current() *Chain { return a.current.Load() }

// chainPath is where the issued chain is kept.
func (a *ACME) chainPath() string {
	name := strings.NewReplacer("*", "_wildcard", "/", "_", ":", "_").Replace(a.opts.Names[0])
	return filepath.Join(a.opts.StorageDir, "tkeyless-"+name+".pem")
}

// Load returns the stored chain if it is for this key and these names and still valid, so a
// restart does not ask the CA again.
func (a *ACME) Load() (*Chain, error) {
	chain, err := LoadChain(a.chainPath())
	if err != nil {
		return nil, err
	}
	if err := CheckKey(chain, a.signer.Public()); err != nil {
		return nil, err
	}
	if err := chain.CheckValidity(time.Now()); err != nil {
		return nil, err
	}
	for _, n := range a.opts.Names {
		if chain.Leaf.VerifyHostname(n) != nil {
			return nil, fmt.Errorf("stored certificate does not cover %s", n)
		}
	}
	a.current.Store(chain)
	return chain, nil
}

// Obtain asks the CA for a new certificate: a CSR signed by the cluster, the ACME order, and a
// check that the issued leaf is for the cluster's key.
func (a *ACME) Obtain(ctx context.Context) (*Chain, error) {
	csrPEM, err := CreateCSR(a.signer, a.opts.Names)
	if err != nil {
		return nil, fmt.Errorf("acme: %w", err)
	}
	blk, _ := pem.Decode(csrPEM)
	if blk == nil {
		return nil, errors.New("acme: CSR is not PEM")
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("acme: %w", err)
	}
	issued, err := a.issuer.Issue(ctx, csr)
	if err != nil {
		return nil, fmt.Errorf("acme: order for %s at %s: %w", strings.Join(a.opts.Names, ", "), a.opts.CA, err)
	}
	certs, err := parsePEMCertificates(a.opts.CA, issued.Certificate)
	if err != nil {
		return nil, fmt.Errorf("acme: issued chain: %w", err)
	}
	var loaded []loadedCert
	for _, c := range certs {
		loaded = append(loaded, loadedCert{cert: c, file: a.opts.CA})
	}
	chain, err := orderChain(loaded)
	if err != nil {
		return nil, fmt.Errorf("acme: issued chain: %w", err)
	}
	if err := CheckKey(chain, a.signer.Public()); err != nil {
		return nil, fmt.Errorf("acme: the CA issued a certificate for another key: %w", err)
	}
	if err := writeFileAtomic(a.chainPath(), issued.Certificate); err != nil {
		a.opts.Logger.Warn().Err(err).Msg("issued certificate not stored; it is served, but a restart will order again")
	}
	a.current.Store(chain)
	a.opts.Logger.Info().Strs("names", a.opts.Names).Str("serial", chain.Leaf.SerialNumber.String()).
		Time("not_after", chain.Leaf.NotAfter).Str("ca", a.opts.CA).Msg("ACME certificate obtained")
	return chain, nil
}

// RenewNow makes Run renew at once (an operator's request).
func (a *ACME) RenewNow() {
	select {
	case a.renew <- struct{}{}:
	default:
	}
}

// renewAt is when the current chain should be renewed.
func (a *ACME) renewAt(c *Chain) time.Time {
	if a.opts.RenewBefore > 0 {
		return c.Leaf.NotAfter.Add(-a.opts.RenewBefore)
	}
	life := c.Leaf.NotAfter.Sub(c.Leaf.NotBefore)
	return c.Leaf.NotBefore.Add(life * 2 / 3)
}

// Run renews the certificate until ctx ends, handing each new chain to use. A failed renewal is
// retried with backoff (1 minute, doubling to 1 hour) while the current certificate is served.
func (a *ACME) Run(ctx context.Context, use func(*Chain) error) {
	backoff := time.Minute
	for {
		var wait time.Duration
		if c := a.current.Load(); c != nil {
			wait = time.Until(a.renewAt(c))
		}
		select {
		case <-ctx.Done():
			return
		case <-a.renew:
		case <-time.After(max(wait, 0)):
		}
		octx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		chain, err := a.Obtain(octx)
		cancel()
		if err == nil {
			err = use(chain)
		}
		if err != nil {
			a.opts.Logger.Error().Err(err).Dur("retry_in", backoff).Msg("ACME renewal failed; still serving the current certificate")
			select {
			case <-ctx.Done():
				return
			case <-a.renew:
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, time.Hour)
			continue
		}
		backoff = time.Minute
	}
}

func writeFileAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
