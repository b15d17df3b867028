package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudflare/gokeyless/protocol"
	"github.com/rs/zerolog"

	"github.com/tkeyless/tkeyless/keyless"
	"github.com/tkeyless/tkeyless/tlsglue"
)

// skiBackend is a keyless signer that, like a real one, finds the key by the request's SKI.
type skiBackend struct {
	key   *ecdsa.PrivateKey
	ski   protocol.SKI
	signs atomic.Int64
	wrong atomic.Int64 // requests naming another key
}

func (b *skiBackend) Sign(_ context.Context, req *keyless.Request) ([]byte, error) {
	if req.SKI != b.ski {
		b.wrong.Add(1)
		return nil, protocol.ErrKeyNotFound
	}
	b.signs.Add(1)
	return b.key.Sign(rand.Reader, req.Digest, req.Hash)
}

// TestKeylessSKIComputedAtLoad checks that a full handshake through a keyless:// signer names
// its key by the SKI computed when the chain was loaded, instead of hashing the public key
// again for every signature (twice per handshake, once in keylessSource.Signer and once in the
// signer's Sign, before). To tell the two apart from outside, the loaded key object is
// overwritten with another key after the configuration is built: an SKI computed from it at
// handshake time names a key the signer does not hold, and the handshake fails; the SKI
// carried from load names the right one. (Only the curve of the key object is used by
// crypto/tls, and the client checks the signature against the certificate's own bytes.)
func TestKeylessSKIComputedAtLoad(t *testing.T) {
	site := newTestSite(t)
	ski, err := protocol.GetSKI(&site.leafKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	backend := &skiBackend{key: site.leafKey, ski: ski}
	addr, edgeCert, edgeKey := startSigner(t, site, backend)
	ref, err := parseKeyRef("keyless://" + addr)
	if err != nil {
		t.Fatal(err)
	}
	src, err := newKeylessSource(ref, keylessTLS{cert: edgeCert, key: edgeKey, ca: site.caPEM}, 5*time.Second, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	chains, err := tlsglue.LoadChains(site.chainPEM)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := tlsglue.ServerConfig(tlsglue.ServerOptions{Chain: chains[0], Keys: src})
	if err != nil {
		t.Fatal(err)
	}
	cfg.SessionTicketsDisabled = true // every handshake is a full one

	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	*chains[0].Leaf.PublicKey.(*ecdsa.PublicKey) = other.PublicKey

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := tls.Server(c, cfg)
				if tc.Handshake() == nil {
					tc.Write([]byte{1})
				}
			}()
		}
	}()

	const handshakes = 6
	for i := range handshakes {
		v := []uint16{tls.VersionTLS12, tls.VersionTLS13}[i%2]
		c, err := tls.Dial("tcp", ln.Addr().String(), site.clientTLS(v))
		if err != nil {
			t.Fatalf("%s handshake %d: %v (requests naming another key: %d)", tls.VersionName(v), i, err, backend.wrong.Load())
		}
		if _, err := c.Read(make([]byte, 1)); err != nil {
			t.Fatalf("%s handshake %d: read: %v (requests naming another key: %d)", tls.VersionName(v), i, err, backend.wrong.Load())
		}
		c.Close()
	}
	if n, w := backend.signs.Load(), backend.wrong.Load(); n != handshakes || w != 0 {
		t.Errorf("%d handshakes: %d signatures for the loaded key, %d requests naming another key; want %d and 0", handshakes, n, w, handshakes)
	}
}
