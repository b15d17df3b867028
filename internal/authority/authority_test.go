package authority

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math/big"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tkeyless/tkeyless/internal/pki"
)

func testSetup(t *testing.T, role pki.Role) (*Signer, *Verifier) {
	s, v, _, _ := testCA(t, role)
	return s, v
}

func testCA(t *testing.T, role pki.Role) (*Signer, *Verifier, *pki.CA, string) {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.InitCA(dir, "test CA")
	if err != nil {
		t.Fatal(err)
	}
	s, v := issue(t, ca, dir, role)
	return s, v, ca, dir
}

func issue(t *testing.T, ca *pki.CA, dir string, role pki.Role) (*Signer, *Verifier) {
	t.Helper()
	certPath, keyPath, err := ca.IssueIdentity(dir, "id-"+string(role), role, nil)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pki.LoadPool(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	return &Signer{Cert: pair.Leaf, Key: pair.PrivateKey.(*ecdsa.PrivateKey)}, &Verifier{Roots: pool}
}

func testRequest() Request {
	r := Request{Op: 0x15, Digest: make([]byte, 32)}
	copy(r.SKI[:], "0123456789abcdefghij")
	rand.Read(r.Digest)
	return r
}

func TestVerify(t *testing.T) {
	s, v := testSetup(t, pki.RoleEdge)
	req := testRequest()
	a, err := s.Sign(req)
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.Verify(a, req)
	if err != nil {
		t.Fatal(err)
	}
	if c.Identity.Name != "id-edge" || c.Identity.Role != pki.RoleEdge {
		t.Fatalf("claims %+v", c.Identity)
	}
	// Verified twice before use is fine (a retried session); once used, a replay.
	if _, err := v.Verify(a, req); err != nil {
		t.Fatalf("second verify before use: %v", err)
	}
	if err := v.MarkUsed(c); err != nil {
		t.Fatalf("MarkUsed on a fresh id: %v", err)
	}
	if err := v.MarkUsed(c); !errors.Is(err, ErrReplay) {
		t.Fatalf("MarkUsed twice: %v", err)
	}
	// Verify says ErrReplay too: a member waits on it for a finish under
	// way that may give the id back (node's checkSignRequest).
	if _, err := v.Verify(a, req); !errors.Is(err, ErrReplay) || !strings.Contains(err.Error(), "replay") {
		t.Fatalf("replay: %v", err)
	}
}

func TestVerifyRefuses(t *testing.T) {
	s, v, ca, dir := testCA(t, pki.RoleEdge)
	req := testRequest()
	a, err := s.Sign(req)
	if err != nil {
		t.Fatal(err)
	}
	altered := req
	altered.Digest = append([]byte(nil), req.Digest...)
	altered.Digest[0] ^= 1
	otherKey := req
	otherKey.SKI[0] ^= 1
	otherOp := req
	otherOp.Op = 0x16

	_, stranger := testSetup(t, pki.RoleEdge) // another cluster's CA
	nodeS, nodeV := issue(t, ca, dir, pki.RoleNode)
	nodeA, _ := nodeS.Sign(req)
	old := &Signer{Cert: s.Cert, Key: s.Key, Now: func() time.Time { return time.Now().Add(-time.Minute) }}
	oldA, _ := old.Sign(req)

	for _, tc := range []struct {
		name string
		v    *Verifier
		a    []byte
		req  Request
		want string
	}{
		{"altered digest", v, a, altered, "does not cover"},
		{"other key", v, a, otherKey, "does not cover"},
		{"other operation", v, a, otherOp, "does not cover"},
		{"stale", v, oldA, req, "outside"},
		{"foreign CA", stranger, a, req, "cluster CA"},
		{"node identity", nodeV, nodeA, req, "may not request"},
		{"empty", v, nil, req, "no request authority"},
		{"truncated", v, a[:len(a)-3], req, "truncated"},
		{"trailing", v, append(append([]byte(nil), a...), 0), req, "trailing"},
		{"bad version", v, append([]byte{9}, a[1:]...), req, "version"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.v.Verify(tc.a, tc.req)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want error containing %q, got %v", tc.want, err)
			}
		})
	}
}

func FuzzDecode(f *testing.F) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big1()}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	cert, _ := x509.ParseCertificate(der)
	a, _ := (&Signer{Cert: cert, Key: key}).Sign(testRequest())
	f.Add(a)
	f.Add([]byte{1})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := decode(b)
		if err == nil && (d == nil || len(d.cert) > len(b)) {
			t.Fatal("decode accepted inconsistent input")
		}
		v := &Verifier{Roots: x509.NewCertPool()}
		_, _ = v.Verify(b, testRequest())
	})
}

func big1() *big.Int { return big.NewInt(1) }
