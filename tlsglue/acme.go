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
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/rs/zerolog"
)

// ACME certificates for a key that exists nowhere.
//
// certmagic's managed mode keeps a PEM private key beside each certificate, which a threshold
// key cannot be. So the edge uses certmagic only as an ACME client: ACMEIssuer.Issue takes a
// CSR, which CreateCSR builds and the signer cluster signs (one threshold signature), and
// returns the chain. Storage (certmagic's FileStorage) keeps the ACME account key and, here, the
// issued chains, never a site key. Renewal scheduling is ACME.Run's: at two thirds of the
// certificate's lifetime (or RenewBefore its end), with backoff on failure, and at once on
// RenewNow, which an operator's request reaches only through a rate limit. Each new chain goes to
// the caller's reload function, which swaps it in for new handshakes (ReloadableServerConfig)
// without dropping connections.

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

// Renewals an operator asks for (RenewNow) are spaced RenewRequestInterval apart, an interval
// that doubles with every renewal failed in a row, up to maxRenewRequestInterval. A CA limits
// orders and failed validations per name (Let's Encrypt: 5 failures an hour, 5 duplicate
// certificates a week), and a certificate the CA refuses for that reason cannot be renewed when
// it is really needed; a scheduled renewal is never held back by the limit.
const (
	RenewRequestInterval    = 10 * time.Minute
	maxRenewRequestInterval = 4 * time.Hour
)

// ACME obtains and renews one certificate for Signer's key.
type ACME struct {
	opts    ACMEOptions
	signer  crypto.Signer
	issuer  *certmagic.ACMEIssuer
	current atomic.Pointer[Chain]
	renew   chan struct{}
	now     func() time.Time // the clock of renewal decisions; tests set it

	mu         sync.Mutex // guards the fields below: RenewNow and Run
	renewing   bool       // an order is under way
	failures   int        // renewals failed in a row since the last success
	lastAsked  time.Time  // when RenewNow last started a renewal
	lastFailed error      // why the last renewal failed, while failures > 0
}

var defaultLoggerOnce sync.Once

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
	zl := ZapLogger(opts.Logger)
	// certmagic's certificate cache is one per process, made by the first NewDefault with
	// certmagic.Default's logger: set it first, or the cache's lines bypass zerolog. (One edge
	// runs one ACME; a second keeps the first's cache logger.)
	defaultLoggerOnce.Do(func() { certmagic.Default.Logger = zl })
	cfg := certmagic.NewDefault()
	cfg.Storage = &certmagic.FileStorage{Path: opts.StorageDir}
	cfg.Logger = zl
	issuer := certmagic.NewACMEIssuer(cfg, certmagic.ACMEIssuer{
		CA:                      opts.CA,
		TestCA:                  opts.CA,
		Email:                   opts.Email,
		Agreed:                  true,
		TrustedRoots:            opts.TrustedRoots,
		DisableTLSALPNChallenge: true,
		AltHTTPPort:             opts.HTTPPort,
		Logger:                  cfg.Logger,
	})
	return &ACME{opts: opts, signer: signer, issuer: issuer, renew: make(chan struct{}, 1), now: time.Now}, nil
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

// RenewalRefused is why RenewNow started no renewal.
type RenewalRefused struct {
	Reason string
	// After is when the same request would be accepted; zero when that depends on a renewal
	// under way.
	After time.Time
	// Limited says the rate limit refused it: the certificate was due or the renewal forced.
	Limited bool
}

func (e *RenewalRefused) Error() string {
	if e.After.IsZero() {
		return "renewal not started: " + e.Reason
	}
	return fmt.Sprintf("renewal not started: %s; ask again after %s", e.Reason, e.After.Format(time.RFC3339))
}

// RenewNow is an operator's request to renew: it makes Run renew at once if the certificate is
// within its renewal window, or whatever its age if force is set, unless the rate limit
// (RenewRequestInterval, doubled per failure in a row) or a renewal under way holds it back. It
// returns nil when Run was told to renew, else a *RenewalRefused saying why not and until when.
func (a *ACME) RenewNow(force bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	if c := a.current.Load(); c != nil && !force {
		if at := a.renewAt(c); now.Before(at) {
			return &RenewalRefused{Reason: fmt.Sprintf("the certificate (serial %s) is not due for renewal", c.Leaf.SerialNumber), After: at}
		}
	}
	if a.renewing {
		return &RenewalRefused{Reason: "a renewal is under way", Limited: true}
	}
	if !a.lastAsked.IsZero() {
		interval := min(RenewRequestInterval<<min(a.failures, 16), maxRenewRequestInterval)
		if next := a.lastAsked.Add(interval); now.Before(next) {
			reason := fmt.Sprintf("at most one requested renewal every %s", interval)
			if a.failures > 0 {
				reason += fmt.Sprintf(" after %d failed in a row (last: %v)", a.failures, a.lastFailed)
			}
			return &RenewalRefused{Reason: reason, After: next, Limited: true}
		}
	}
	a.lastAsked = now
	select {
	case a.renew <- struct{}{}:
	default:
	}
	return nil
}

// startRenewal marks an order as under way; renewed records its outcome.
func (a *ACME) startRenewal() {
	a.mu.Lock()
	a.renewing = true
	a.mu.Unlock()
}

func (a *ACME) renewed(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.renewing = false
	if err != nil {
		a.failures++
		a.lastFailed = err
		return
	}
	a.failures, a.lastFailed = 0, nil
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
			wait = a.renewAt(c).Sub(a.now())
		}
		select {
		case <-ctx.Done():
			return
		case <-a.renew:
		case <-time.After(max(wait, 0)):
		}
		a.startRenewal()
		octx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		chain, err := a.Obtain(octx)
		cancel()
		if err == nil {
			err = use(chain)
		}
		a.renewed(err)
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
