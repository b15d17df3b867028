package tlsglue

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cloudflare/gokeyless/protocol"
)

// skiKeys is an SKIKeySource over a local key that records the SKIs it is handed.
type skiKeys struct {
	countingKeys
	mu   sync.Mutex
	skis []protocol.SKI
}

func (k *skiKeys) SignerSKI(ctx context.Context, pub crypto.PublicKey, ski protocol.SKI) (crypto.Signer, error) {
	k.mu.Lock()
	k.skis = append(k.skis, ski)
	k.mu.Unlock()
	return LocalKey{Key: k.key}.Signer(ctx, pub)
}

// TestSKIComputedOncePerChain: the SKI of a served key is computed when its chain is loaded and
// when it is reloaded, never during a handshake, and an SKIKeySource gets that SKI on every full
// handshake (Signer is not called).
func TestSKIComputedOncePerChain(t *testing.T) {
	var computed atomic.Int64
	testHookSKI = func() { computed.Add(1) }
	t.Cleanup(func() { testHookSKI = nil })

	p := newPKIChain(t, "leaf.test")
	keys := &skiKeys{countingKeys: countingKeys{key: p.leaf.key}}
	chain := &Chain{Leaf: p.leaf.cert, Intermediates: []*x509.Certificate{p.inter.cert}}
	cfg, reload, err := ReloadableServerConfig(ServerOptions{Chain: chain, Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	if n := computed.Load(); n != 1 {
		t.Fatalf("loading one chain computed %d SKIs, want 1", n)
	}
	cfg.SessionTicketsDisabled = true // every handshake is a full one
	addr := serveTLS(t, cfg)
	want, err := protocol.GetSKI(p.leaf.key.Public())
	if err != nil {
		t.Fatal(err)
	}

	handshakes := func(n int) {
		t.Helper()
		for i := range n {
			v := []uint16{tls.VersionTLS12, tls.VersionTLS13}[i%2]
			fetch(t, addr, &tls.Config{RootCAs: p.pool(), ServerName: "leaf.test", MinVersion: v, MaxVersion: v})
		}
	}
	handshakes(6)
	if n := computed.Load(); n != 1 {
		t.Errorf("6 full handshakes: %d SKI computations in all, want the 1 at load", n)
	}
	if err := reload(chain); err != nil {
		t.Fatal(err)
	}
	handshakes(4)
	if n := computed.Load(); n != 2 {
		t.Errorf("a reload and 4 more handshakes: %d SKI computations in all, want 2 (load, reload)", n)
	}

	if n := keys.signers.Load(); n != 0 {
		t.Errorf("Signer called %d times; an SKIKeySource should get SignerSKI", n)
	}
	keys.mu.Lock()
	defer keys.mu.Unlock()
	if len(keys.skis) != 10 {
		t.Fatalf("SignerSKI called %d times for 10 full handshakes", len(keys.skis))
	}
	for i, ski := range keys.skis {
		if ski != want {
			t.Errorf("handshake %d: SKI %s, want %s", i, ski, want)
		}
	}
}
