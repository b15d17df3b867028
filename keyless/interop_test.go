package keyless

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"net"
	"testing"

	cfssllog "github.com/cloudflare/cfssl/log"
	gkclient "github.com/cloudflare/gokeyless/client"
	"github.com/cloudflare/gokeyless/protocol"
	gkserver "github.com/cloudflare/gokeyless/server"
)

func init() {
	// gokeyless logs every request through cfssl's global logger.
	cfssllog.Level = cfssllog.LevelFatal
}

// TestStockClientThroughOurServer: an unmodified gokeyless client, as a
// Keyless SSL edge would run it, signs through our endpoint.
func TestStockClientThroughOurServer(t *testing.T) {
	p := newPKI(t)
	key := newKey(t, elliptic.P256())
	backend := newKeyBackend(key)
	srv := startServer(t, p, backend)

	stock := gkclient.NewClient(p.client, p.ca.Pool())
	ctx := context.Background()
	signer, err := stock.NewRemoteSignerByPublicKey(ctx, srv.addr, &key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	for hash, d := range digests("stock client") {
		sig, err := signer.Sign(rand.Reader, d, hash)
		if err != nil {
			t.Fatalf("%v: %v", hash, err)
		}
		if !ecdsa.VerifyASN1(&key.PublicKey, d, sig) {
			t.Fatalf("%v: signature does not verify", hash)
		}
	}
	req := backend.lastRequest()
	if req.Authority != nil {
		t.Errorf("authority from a stock client = %x, want nil", req.Authority)
	}
	if req.Identity.Subject.CommonName != "edge-1" {
		t.Errorf("identity %q, want edge-1", req.Identity.Subject.CommonName)
	}

	other := newKey(t, elliptic.P256())
	otherSigner, err := stock.NewRemoteSignerByPublicKey(ctx, srv.addr, &other.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := otherSigner.Sign(rand.Reader, make([]byte, 32), crypto.SHA256); !errors.Is(err, protocol.ErrKeyNotFound) {
		t.Fatalf("unknown key through the stock client: %v, want KeyNotFound", err)
	}
}

// TestOurClientAgainstStockServer: our client against an unmodified
// gokeyless key server holding the key in memory, the Keyless SSL status quo
// that load tests compare with. The stock server speaks TLS 1.2 with AES-256-GCM
// suites only, and ignores our authority item.
func TestOurClientAgainstStockServer(t *testing.T) {
	p := newPKI(t)
	key := newKey(t, elliptic.P256())

	stock, err := gkserver.NewServer(nil, p.server, p.ca.Pool())
	if err != nil {
		t.Fatal(err)
	}
	keys := gkserver.NewDefaultKeystore()
	if err := keys.Add(nil, key); err != nil {
		t.Fatal(err)
	}
	stock.SetKeystore(keys)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	served := make(chan struct{})
	go func() { stock.Serve(l); close(served) }()
	t.Cleanup(func() { stock.Close(); <-served })

	authorized := 0
	c := newTestClient(t, p, []string{addr}, func(cfg *ClientConfig) {
		cfg.Authorize = func(protocol.Op, protocol.SKI, []byte) ([]byte, error) {
			authorized++
			return []byte("ignored by stock servers"), nil
		}
	})
	ctx := context.Background()
	signer, err := c.Signer(ctx, &key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	for hash, d := range digests("stock server") {
		sig, err := signer.Sign(rand.Reader, d, hash)
		if err != nil {
			t.Fatalf("%v: %v", hash, err)
		}
		if !ecdsa.VerifyASN1(&key.PublicKey, d, sig) {
			t.Fatalf("%v: signature does not verify", hash)
		}
	}
	if want := len(digests("stock server")); authorized != want {
		t.Errorf("Authorize called %d times for %d signatures", authorized, want)
	}
	if err := c.Ping(ctx, addr); err != nil {
		t.Errorf("Ping: %v", err)
	}

	other := newKey(t, elliptic.P256())
	_, err = c.Sign(ctx, skiOf(t, other), crypto.SHA256, make([]byte, 32))
	var re *RemoteError
	if !errors.As(err, &re) || re.Code != protocol.ErrKeyNotFound || re.Endpoint != addr {
		t.Fatalf("unknown key: %v, want RemoteError KeyNotFound", err)
	}

	ep := c.endpoints[0]
	ep.mu.Lock()
	cc := ep.conn
	ep.mu.Unlock()
	if cc == nil {
		t.Fatal("no pooled connection")
	}
	if v := cc.tc.ConnectionState().Version; v != 0x0303 {
		t.Errorf("negotiated TLS version %x with a stock server, expected TLS 1.2", v)
	}
}

// TestStockClientSeesOverloadedAsUnknown: a stock gokeyless client that gets
// tkeyless's ErrOverloaded (0x82) from our endpoint sees an error like any
// other: protocol.Error.String has no name for the code, so it reads
// "keyless: unknown error", and it does not crash or hang.
func TestStockClientSeesOverloadedAsUnknown(t *testing.T) {
	p := newPKI(t)
	key := newKey(t, elliptic.P256())
	backend := newKeyBackend(key)
	backend.before = func(context.Context, *Request) error { return ErrOverloaded }
	srv := startServer(t, p, backend)

	stock := gkclient.NewClient(p.client, p.ca.Pool())
	signer, err := stock.NewRemoteSignerByPublicKey(context.Background(), srv.addr, &key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	_, err = signer.Sign(rand.Reader, make([]byte, 32), crypto.SHA256)
	if !errors.Is(err, ErrOverloaded) || err.Error() != "keyless: unknown error" {
		t.Fatalf("stock client: %v, want protocol.Error 0x82 reading \"keyless: unknown error\"", err)
	}
}
