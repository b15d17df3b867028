package tlsglue

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"
)

// benchmarkHandshake measures handshakes between crypto/tls's client and an edge config with an
// in-memory key, over net.Pipe: what the edge costs besides its signer. BenchmarkHandshake/full
// includes one local ECDSA signature; divide a cluster-backed handshake by it to see what the
// signers add. BenchmarkHandshake/resumed needs no signature at all.
func BenchmarkHandshake(b *testing.B) {
	p := newPKIChain(b, "leaf.test")
	cfg, err := ServerConfig(ServerOptions{
		Chain: &Chain{Leaf: p.leaf.cert, Intermediates: []*x509.Certificate{p.inter.cert}},
		Keys:  LocalKey{Key: p.leaf.key},
	})
	if err != nil {
		b.Fatal(err)
	}
	handshake := func(client *tls.Config) tls.ConnectionState {
		cc, sc := net.Pipe()
		defer cc.Close()
		defer sc.Close()
		srv := tls.Server(sc, cfg)
		done := make(chan error, 1)
		go func() {
			err := srv.Handshake()
			if err == nil {
				_, err = srv.Write([]byte{1}) // after the TLS 1.3 tickets
			}
			done <- err
		}()
		c := tls.Client(cc, client)
		if err := c.Handshake(); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Read(make([]byte, 1)); err != nil {
			b.Fatal(err)
		}
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		return c.ConnectionState()
	}
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		b.Run(tls.VersionName(v)+"/full", func(b *testing.B) {
			client := &tls.Config{RootCAs: p.pool(), ServerName: "leaf.test", MinVersion: v, MaxVersion: v}
			for b.Loop() {
				handshake(client)
			}
		})
		b.Run(tls.VersionName(v)+"/resumed", func(b *testing.B) {
			client := &tls.Config{RootCAs: p.pool(), ServerName: "leaf.test", MinVersion: v, MaxVersion: v,
				ClientSessionCache: tls.NewLRUClientSessionCache(1)}
			handshake(client)
			for b.Loop() {
				if !handshake(client).DidResume {
					b.Fatal("did not resume")
				}
			}
		})
	}
}
