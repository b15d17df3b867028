package node

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tkeyless/tkeyless/internal/pki"
)

// TestOriginCache: a cached origin certificate is trusted exactly when a
// fresh verification would trust it. Only certificates that verify are
// kept; an entry is not used outside its chain's validity window; another
// CA's certificate is refused every time; the cache stops growing at
// maxOrigins and keeps answering.
func TestOriginCache(t *testing.T) {
	dir := t.TempDir()
	issue := func(caDir, name string) (*pki.CA, *x509.Certificate) {
		t.Helper()
		ca, err := pki.InitCA(filepath.Join(dir, caDir), caDir)
		if err != nil {
			t.Fatal(err)
		}
		certPath, keyPath, err := ca.IssueIdentity(filepath.Join(dir, caDir), name, pki.RoleNode, nil)
		if err != nil {
			t.Fatal(err)
		}
		pair, err := tls.LoadX509KeyPair(certPath, keyPath)
		if err != nil {
			t.Fatal(err)
		}
		return ca, pair.Leaf
	}
	ca, a := issue("cluster", "a")
	_, stranger := issue("other", "a")
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	now := time.Now()

	c := newOriginCache()
	first, err := c.verify(a.Raw, roots, now)
	if err != nil {
		t.Fatalf("the cluster's own node certificate: %v", err)
	}
	if first.id.Name != "a" || first.id.Role != pki.RoleNode || !first.cert.Equal(a) {
		t.Fatalf("identity %+v", first.id)
	}
	if again, err := c.verify(a.Raw, roots, now.Add(time.Minute)); err != nil || again != first {
		t.Fatalf("second check: %v (cached entry reused: %t)", err, again == first)
	}

	for _, tc := range []struct {
		name string
		der  []byte
		at   time.Time
		want string
	}{
		{"another CA's certificate", stranger.Raw, now, "not from the cluster CA"},
		{"another CA's certificate, again", stranger.Raw, now, "not from the cluster CA"},
		{"bytes that are no certificate", []byte("not a certificate"), now, "origin certificate"},
		{"a cached certificate after it expired", a.Raw, a.NotAfter.Add(time.Second), "not from the cluster CA"},
		{"a cached certificate before it is valid", a.Raw, a.NotBefore.Add(-time.Second), "not from the cluster CA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := c.verify(tc.der, roots, tc.at); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("verify: %v, want an error saying %q", err, tc.want)
			}
		})
	}
	if len(c.m) != 1 {
		t.Fatalf("cache holds %d certificates; only the one that verified belongs there", len(c.m))
	}
	// An entry answers only for the pool it verified against.
	otherRoots := x509.NewCertPool()
	if _, err := c.verify(a.Raw, otherRoots, now); err == nil {
		t.Fatal("a cached certificate verified under another pool")
	}

	t.Run("full", func(t *testing.T) {
		full := newOriginCache()
		for i := range maxOrigins {
			full.m[fmt.Sprint(i)] = first
		}
		if _, err := full.verify(a.Raw, roots, now); err != nil {
			t.Fatalf("a full cache refused a valid certificate: %v", err)
		}
		if len(full.m) != maxOrigins {
			t.Fatalf("a full cache grew to %d", len(full.m))
		}
	})
}
