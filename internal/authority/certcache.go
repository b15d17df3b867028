package authority

import (
	"crypto/sha256"
	"crypto/x509"
	"sync"
	"time"

	"github.com/tkeyless/tkeyless/internal/pki"
)

// chainCache remembers identity certificates that verified against a set
// of roots, with the stretch of time in which every certificate of one of
// their chains is valid. Parsing a certificate and verifying its chain
// costs a signature check and more on every member for every request,
// always for the same few edges; a hit costs a hash.
//
// An entry answers only for the very roots it was verified against (a
// reload that changes the CA replaces the pool, so old entries no longer
// match) and only at a time inside its validity; everything else about
// the authority (its signature, time, request id, revocation) is checked
// every time, as before.
type chainCache struct {
	mu      sync.Mutex
	entries map[[sha256.Size]byte]chainEntry
}

type chainEntry struct {
	roots     *x509.CertPool
	id        pki.Identity
	cert      *x509.Certificate
	notBefore time.Time
	notAfter  time.Time
}

// maxChainEntries bounds the cache: a cluster has a few edges and admins,
// and past the bound it simply starts over.
const maxChainEntries = 256

func (c *chainCache) get(roots *x509.CertPool, der []byte, at time.Time) (pki.Identity, *x509.Certificate, bool) {
	k := sha256.Sum256(der)
	c.mu.Lock()
	e, ok := c.entries[k]
	c.mu.Unlock()
	if !ok || e.roots != roots || at.Before(e.notBefore) || at.After(e.notAfter) {
		return pki.Identity{}, nil, false
	}
	return e.id, e.cert, true
}

// put records that der, parsed as cert and naming id, verified against
// roots with the given chains; at a later time it verifies the same way
// while every certificate of one chain is still valid.
func (c *chainCache) put(roots *x509.CertPool, der []byte, id pki.Identity, cert *x509.Certificate, chains [][]*x509.Certificate) {
	if len(chains) == 0 {
		return
	}
	e := chainEntry{roots: roots, id: id, cert: cert}
	// The chain valid the longest: x509 would accept any of them.
	for i, chain := range chains {
		nb, na := chain[0].NotBefore, chain[0].NotAfter
		for _, ca := range chain[1:] {
			if ca.NotBefore.After(nb) {
				nb = ca.NotBefore
			}
			if ca.NotAfter.Before(na) {
				na = ca.NotAfter
			}
		}
		if i == 0 || na.After(e.notAfter) {
			e.notBefore, e.notAfter = nb, na
		}
	}
	k := sha256.Sum256(der)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries == nil || len(c.entries) >= maxChainEntries {
		c.entries = map[[sha256.Size]byte]chainEntry{}
	}
	c.entries[k] = e
}
