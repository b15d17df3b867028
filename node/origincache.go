package node

import (
	"crypto/x509"
	"fmt"
	"sync"
	"time"

	"github.com/tkeyless/tkeyless/internal/pki"
)

// originCache remembers the origin certificates that echoes carried and
// that verified against one trust set's cluster CA (echo.go,
// checkOriginSig). In a session of three every member checks two echoes
// per online round, each carrying the certificate of the broadcast's
// origin; parsing it and verifying its chain every time cost more CPU than
// the round's own signature checks. A hit skips only that work: the
// origin's signature over the echoed hash is still verified every time.
//
// An entry is exactly as good as a fresh x509 verification would be: the
// cache belongs to one trustSet (a reload starts an empty one) and an entry
// answers only for the pool it verified against, the chain's signatures, key usage and constraints do not
// depend on time, and an entry is used only inside the validity window of
// every certificate of the chain it verified with; outside it the
// certificate is verified again (and refused if it has expired).
//
// It holds at most maxOrigins certificates, each one the cluster CA
// issued: only verified certificates are kept, so a peer sending garbage
// cannot grow it, and once full it stops remembering (every check still
// works, at the old cost).
type originCache struct {
	mu sync.Mutex
	m  map[string]*verifiedOrigin // by the certificate's DER
}

// maxOrigins bounds an originCache: far more node certificates than a
// cluster has at once, with room for rotations.
const maxOrigins = 256

// verifiedOrigin is a certificate whose chain verified against roots, and
// the window in which that verification holds.
type verifiedOrigin struct {
	cert        *x509.Certificate
	id          pki.Identity
	roots       *x509.CertPool
	from, until time.Time
}

func newOriginCache() *originCache { return &originCache{m: map[string]*verifiedOrigin{}} }

// verify returns the certificate der and the identity it names, if its
// chain verifies against roots at now: from the cache when it verified
// before and now is inside the window, by a full verification otherwise.
func (c *originCache) verify(der []byte, roots *x509.CertPool, now time.Time) (*verifiedOrigin, error) {
	c.mu.Lock()
	vo := c.m[string(der)]
	c.mu.Unlock()
	if vo != nil && vo.roots == roots && !now.Before(vo.from) && !now.After(vo.until) {
		return vo, nil
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("origin certificate: %w", err)
	}
	chains, err := cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return nil, fmt.Errorf("origin certificate not from the cluster CA: %w", err)
	}
	id, err := pki.IdentityOf(cert)
	if err != nil {
		return nil, fmt.Errorf("origin certificate: %w", err)
	}
	vo = &verifiedOrigin{cert: cert, id: id, roots: roots, from: cert.NotBefore, until: cert.NotAfter}
	for _, ca := range chains[0] {
		if ca.NotBefore.After(vo.from) {
			vo.from = ca.NotBefore
		}
		if ca.NotAfter.Before(vo.until) {
			vo.until = ca.NotAfter
		}
	}
	c.mu.Lock()
	if _, known := c.m[string(der)]; known || len(c.m) < maxOrigins {
		c.m[string(der)] = vo
	}
	c.mu.Unlock()
	return vo, nil
}
