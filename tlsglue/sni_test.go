package tlsglue

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"testing"
)

// keysByPub signs for any of its keys: a signer cluster holding several.
type keysByPub []crypto.Signer

func (k keysByPub) Signer(_ context.Context, pub crypto.PublicKey) (crypto.Signer, error) {
	for _, s := range k {
		if s.Public().(*ecdsa.PublicKey).Equal(pub) {
			return s, nil
		}
	}
	return nil, errors.New("no such key")
}

// Two sites, each on its own key, in one bundle: each name gets its own
// chain and signature; an unknown name gets the default; a reload replaces
// only the chain it takes over from.
func TestSNIChains(t *testing.T) {
	p := newPKIChain(t, "a.test")
	b := makeCert(t, "b.test", p.inter, false)
	dir := t.TempDir()
	bundle := writeFile(t, dir, "sites.pem", pemCerts(p.root, b, p.inter, p.leaf))
	chains, err := LoadChains(bundle)
	if err != nil {
		t.Fatal(err)
	}
	if len(chains) != 2 || chains[0].Leaf.Subject.CommonName != "b.test" || chains[1].Leaf.Subject.CommonName != "a.test" {
		t.Fatalf("want the chains of b.test then a.test (file order), got %d", len(chains))
	}
	for _, c := range chains {
		if len(c.Intermediates) != 1 || !c.Intermediates[0].Equal(p.inter.cert) {
			t.Fatal("each chain must carry the shared intermediate")
		}
	}
	cfg, reload, err := ReloadableServerConfig(ServerOptions{Chain: chains[0], More: chains[1:], Keys: keysByPub{p.leaf.key, b.key}})
	if err != nil {
		t.Fatal(err)
	}
	addr := serveTLS(t, cfg)
	for _, name := range []string{"a.test", "b.test"} {
		for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
			st := fetch(t, addr, &tls.Config{RootCAs: p.pool(), ServerName: name, MinVersion: v, MaxVersion: v})
			if st.PeerCertificates[0].Subject.CommonName != name {
				t.Fatalf("SNI %s got %s", name, st.PeerCertificates[0].Subject.CommonName)
			}
		}
	}
	// No SNI match: the default chain.
	if st := fetch(t, addr, &tls.Config{InsecureSkipVerify: true, ServerName: "other.test"}); st.PeerCertificates[0].Subject.CommonName != "b.test" {
		t.Fatal("an unknown name must get the default chain")
	}
	// A renewed a.test certificate replaces a.test's chain only.
	a2 := makeCertForKey(t, "a.test", p.inter, p.leaf.key)
	if err := reload(&Chain{Leaf: a2, Intermediates: []*x509.Certificate{p.inter.cert}}); err != nil {
		t.Fatal(err)
	}
	if st := fetch(t, addr, &tls.Config{RootCAs: p.pool(), ServerName: "a.test"}); !st.PeerCertificates[0].Equal(a2) {
		t.Fatal("the renewed a.test certificate is not served")
	}
	if st := fetch(t, addr, &tls.Config{RootCAs: p.pool(), ServerName: "b.test"}); !st.PeerCertificates[0].Equal(b.cert) {
		t.Fatal("reloading a.test changed b.test's chain")
	}
	// A certificate for a site not served is refused.
	c := makeCert(t, "c.test", p.inter, false)
	if err := reload(&Chain{Leaf: c.cert}); err == nil {
		t.Fatal("a reload added a new site")
	}
}
