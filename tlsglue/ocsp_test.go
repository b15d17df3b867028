package tlsglue

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"
)

// An OCSP responder run by the issuing intermediate, answering status.
func ocspResponder(t *testing.T, issuer *testCert, status *atomic.Int32) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		req, err := ocsp.ParseRequest(body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		tmpl := ocsp.Response{Status: int(status.Load()), SerialNumber: req.SerialNumber,
			ThisUpdate: time.Now().Add(-time.Minute), NextUpdate: time.Now().Add(time.Hour), RevokedAt: time.Now().Add(-time.Hour)}
		der, err := ocsp.CreateResponse(issuer.cert, issuer.cert, tmpl, issuer.key)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/ocsp-response")
		w.Write(der)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// A leaf naming an OCSP responder gets its status stapled to handshakes; a
// revoked status is refused loudly; a leaf naming none has nothing to staple.
func TestOCSPStapling(t *testing.T) {
	p := newPKIChain(t, "leaf.test")
	var status atomic.Int32
	status.Store(ocsp.Good)
	url := ocspResponder(t, p.inter, &status)

	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(4242), Subject: pkix.Name{CommonName: "leaf.test"}, DNSNames: []string{"leaf.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), OCSPServer: []string{url},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.inter.cert, &key.PublicKey, p.inter.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	chain := &Chain{Leaf: leaf, Intermediates: []*x509.Certificate{p.inter.cert}}

	staple, resp, err := FetchOCSP(context.Background(), chain, nil)
	if err != nil || resp.Status != ocsp.Good {
		t.Fatalf("fetch: %v", err)
	}
	if refresh := StapleRefresh(resp); refresh.Before(time.Now()) || refresh.After(resp.NextUpdate) {
		t.Fatalf("refresh at %v, outside now..%v", refresh, resp.NextUpdate)
	}
	chain.OCSPStaple = staple
	cfg, err := ServerConfig(ServerOptions{Chain: chain, Keys: &countingKeys{key: key}})
	if err != nil {
		t.Fatal(err)
	}
	addr := serveTLS(t, cfg)
	st := fetch(t, addr, &tls.Config{RootCAs: p.pool(), ServerName: "leaf.test"})
	if !bytes.Equal(st.OCSPResponse, staple) {
		t.Fatal("the handshake did not staple the OCSP response")
	}

	status.Store(ocsp.Revoked)
	if _, _, err := FetchOCSP(context.Background(), chain, nil); err == nil || !strings.Contains(err.Error(), "REVOKED") {
		t.Fatalf("revoked: %v", err)
	}
	if _, _, err := FetchOCSP(context.Background(), &Chain{Leaf: p.leaf.cert, Intermediates: []*x509.Certificate{p.inter.cert}}, nil); !errors.Is(err, ErrNoOCSP) {
		t.Fatalf("no responder: %v", err)
	}
}
