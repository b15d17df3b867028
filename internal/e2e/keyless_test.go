package e2e

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	gkclient "github.com/cloudflare/gokeyless/client"
	"github.com/cloudflare/gokeyless/protocol"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/tkeyless/tkeyless/internal/peerwire"
	"github.com/tkeyless/tkeyless/internal/pki"
	"github.com/tkeyless/tkeyless/keyless"
)

// TestKeylessEndpoint shows a signer node is a Keyless SSL drop-in (the
// stock gokeyless client signs through it) and that bad input on either
// endpoint costs only the connection it came on.
func TestKeylessEndpoint(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	c := startClusterWith(t, 1, 2, `access:
  - {identity: edge, keys: ["*"]}
  - {identity: legacy, keys: ["*"], legacy: true}
  - {identity: other, keys: ["0000000000000000000000000000000000000000"], legacy: true}
`)
	pub := c.publicKey(t).(*ecdsa.PublicKey)
	node := c.nodes[0]

	edgeTLS, err := tls.LoadX509KeyPair(c.edgeCert, c.edgeKey)
	if err != nil {
		t.Fatal(err)
	}
	// Stock gokeyless clients cannot send the end-to-end authority; the
	// signers accept them only for an identity marked legacy.
	pkiDir := filepath.Join(c.dir, "pki")
	run(t, "signer", "pki", "issue", "--dir", pkiDir, "--name", "legacy", "--role", "edge")
	legacyTLS, err := tls.LoadX509KeyPair(filepath.Join(pkiDir, "legacy.pem"), filepath.Join(pkiDir, "legacy-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	stock := gkclient.NewClient(legacyTLS, rootsFrom(t, c.caPath))
	// gokeyless pools connections per address process-wide, whatever the
	// client's identity; this test uses two identities on one address.
	atomic.StoreUint32(&gkclient.TestDisableConnectionPool, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// signs checks the cluster still signs through the stock client: the
	// proof that the node kept serving after each bad input.
	signs := func(t *testing.T) {
		t.Helper()
		signer, err := stock.NewRemoteSignerByPublicKey(ctx, node.keylessAddr, pub)
		if err != nil {
			t.Fatal(err)
		}
		d := sha256.Sum256([]byte("still serving"))
		sig, err := signer.Sign(rand.Reader, d[:], crypto.SHA256)
		if err != nil {
			t.Fatalf("stock gokeyless client: %v", err)
		}
		if !ecdsa.VerifyASN1(pub, d[:], sig) {
			t.Fatal("signature does not verify")
		}
	}

	t.Run("stock-gokeyless-client", func(t *testing.T) {
		signer, err := stock.NewRemoteSignerByPublicKey(ctx, node.keylessAddr, pub)
		if err != nil {
			t.Fatal(err)
		}
		msg := []byte("drop-in")
		// SHA-224 too: stock gokeyless servers sign it and its cli-tester checks it.
		d224, d256, d384, d512 := sha256.Sum224(msg), sha256.Sum256(msg), sha512.Sum384(msg), sha512.Sum512(msg)
		for _, tc := range []struct {
			h crypto.Hash
			d []byte
		}{{crypto.SHA224, d224[:]}, {crypto.SHA256, d256[:]}, {crypto.SHA384, d384[:]}, {crypto.SHA512, d512[:]}} {
			sig, err := signer.Sign(rand.Reader, tc.d, tc.h)
			if err != nil {
				t.Fatalf("%v: %v", tc.h, err)
			}
			if !ecdsa.VerifyASN1(pub, tc.d, sig) {
				t.Fatalf("%v: signature does not verify", tc.h)
			}
		}
	})

	t.Run("stock-client-not-legacy-refused", func(t *testing.T) {
		before := c.auditCount()
		notLegacy := gkclient.NewClient(edgeTLS, rootsFrom(t, c.caPath))
		signer, err := notLegacy.NewRemoteSignerByPublicKey(ctx, node.keylessAddr, pub)
		if err != nil {
			t.Fatal(err)
		}
		d := sha256.Sum256([]byte("no authority"))
		_, err = signer.Sign(rand.Reader, d[:], crypto.SHA256)
		if !errors.Is(err, protocol.ErrRemoteConfiguration) {
			t.Fatalf("stock client with a non-legacy identity: want ErrRemoteConfiguration, got %v", err)
		}
		if !strings.Contains(node.proc.Output(), "is not marked legacy") {
			t.Fatal("the signer's log does not say why it refused")
		}
		if c.auditCount() != before+1 {
			t.Fatal("refusal not in the audit log")
		}
		signs(t)
	})

	t.Run("identity-not-granted-key", func(t *testing.T) {
		run(t, "signer", "pki", "issue", "--dir", pkiDir, "--name", "other", "--role", "edge")
		otherTLS, err := tls.LoadX509KeyPair(filepath.Join(pkiDir, "other.pem"), filepath.Join(pkiDir, "other-key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		signer, err := gkclient.NewClient(otherTLS, rootsFrom(t, c.caPath)).NewRemoteSignerByPublicKey(ctx, node.keylessAddr, pub)
		if err != nil {
			t.Fatal(err)
		}
		d := sha256.Sum256([]byte("not yours"))
		if _, err := signer.Sign(rand.Reader, d[:], crypto.SHA256); !errors.Is(err, protocol.ErrKeyNotFound) {
			t.Fatalf("identity without a grant for the key: want KeyNotFound, got %v", err)
		}
		if !strings.Contains(node.proc.Output(), "identity is not granted this key") {
			t.Fatal("the signer's log does not say why it refused")
		}
		signs(t)
	})

	t.Run("edge-identity-on-peer-endpoint", func(t *testing.T) {
		tc, err := pki.MutualTLS(c.caPath, c.edgeCert, c.edgeKey)
		if err != nil {
			t.Fatal(err)
		}
		tc.ServerName = node.name
		cc, err := grpc.NewClient(node.peerAddr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		_, err = peerwire.NewClient(cc).Prepare(ctx, &peerwire.PrepareRequest{Version: peerwire.Version, Session: peerwire.NewSessionID(), Kind: peerwire.KindSign,
			Sign: &peerwire.SignRequest{Key: c.keyID, Quorum: []string{"a", "b"}, Hash: "SHA-256", Digest: make([]byte, 32), Edge: "edge"}})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("an edge identity calling the peer endpoint: want PermissionDenied, got %v", err)
		}
		signs(t)
	})

	t.Run("unknown-ski", func(t *testing.T) {
		other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		signer, err := stock.NewRemoteSignerByPublicKey(ctx, node.keylessAddr, &other.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		d := sha256.Sum256([]byte("x"))
		_, err = signer.Sign(rand.Reader, d[:], crypto.SHA256)
		if !errors.Is(err, protocol.ErrKeyNotFound) {
			t.Fatalf("want KeyNotFound, got %v", err)
		}
		signs(t)
	})

	t.Run("wrong-digest-length", func(t *testing.T) {
		// The stock client refuses to send a digest of the wrong length, so
		// this request goes out through tkeyless's own client.
		tc, err := pki.MutualTLS(c.caPath, c.edgeCert, c.edgeKey)
		if err != nil {
			t.Fatal(err)
		}
		kc, err := keyless.NewClient(keyless.ClientConfig{Endpoints: []string{node.keylessAddr}, TLS: tc})
		if err != nil {
			t.Fatal(err)
		}
		defer kc.Close()
		ski, _ := protocol.GetSKI(pub)
		for _, tc := range []struct {
			h crypto.Hash
			n int
		}{{crypto.SHA256, 20}, {crypto.SHA256, 48}, {crypto.SHA384, 32}, {crypto.SHA512, 63}} {
			_, err = kc.Sign(ctx, ski, tc.h, make([]byte, tc.n))
			if !errors.Is(err, protocol.ErrFormat) {
				t.Fatalf("%d-byte %v digest: want ErrFormat, got %v", tc.n, tc.h, err)
			}
		}
		signs(t)
	})

	t.Run("garbage-frame-keyless", func(t *testing.T) {
		conn, err := tls.Dial("tcp", node.keylessAddr, &tls.Config{Certificates: []tls.Certificate{edgeTLS}, RootCAs: rootsFrom(t, c.caPath), ServerName: "127.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		// A header claiming version 9 and a body of noise.
		if _, err := conn.Write(append([]byte{9, 9, 0, 16, 0, 0, 0, 1}, []byte("not a keyless op")...)); err != nil {
			t.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadAll(conn); err != nil && !isClosed(err) {
			t.Fatalf("want the server to close the connection, got %v", err)
		}
		signs(t)
	})

	t.Run("garbage-peer-endpoint", func(t *testing.T) {
		// Plain bytes where TLS is expected.
		raw, err := net.Dial("tcp", node.peerAddr)
		if err != nil {
			t.Fatal(err)
		}
		raw.Write([]byte("GET / HTTP/1.0\r\n\r\n\x00\x01\x02garbage"))
		raw.SetReadDeadline(time.Now().Add(10 * time.Second))
		io.ReadAll(raw)
		raw.Close()

		// A cluster identity whose calls name sessions that do not exist and
		// carry payloads that do not parse.
		run(t, "signer", "pki", "issue", "--dir", pkiDir, "--name", "z", "--role", "node")
		tc, err := pki.MutualTLS(c.caPath, filepath.Join(pkiDir, "z.pem"), filepath.Join(pkiDir, "z-key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		tc.ServerName = node.name
		cc, err := grpc.NewClient(node.peerAddr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		pc := peerwire.NewClient(cc)
		if _, err := pc.Deliver(ctx, &peerwire.Envelope{Version: peerwire.Version, Session: peerwire.NewSessionID(), Kind: peerwire.KindSign, From: "z", Payload: []byte("junk")}); err == nil || !strings.Contains(err.Error(), "unknown session") {
			t.Fatalf("Deliver to an unknown session: %v", err)
		}
		if _, err := pc.Prepare(ctx, &peerwire.PrepareRequest{Version: peerwire.Version, Session: peerwire.NewSessionID(), Kind: peerwire.KindSign,
			Sign: &peerwire.SignRequest{Key: c.keyID, Quorum: []string{"a", "z"}, Hash: "SHA-256", Digest: make([]byte, 32), Edge: "edge"}}); err == nil {
			t.Fatal("a node with no share joined a quorum")
		}
		// Bytes that are not a protobuf message at all.
		var out rawMessage
		if err := cc.Invoke(ctx, "/"+peerwire.ServiceName+"/Deliver", rawMessage("\xff\xfe{{{"), &out, grpc.ForceCodec(rawCodec{})); err == nil {
			t.Fatal("malformed message accepted")
		}
		signs(t)
	})
}

func isClosed(err error) bool {
	return errors.Is(err, io.EOF) || strings.Contains(err.Error(), "reset by peer") || strings.Contains(err.Error(), "closed")
}

// rawCodec sends bytes as they are, to put malformed messages on the wire.
type rawCodec struct{}
type rawMessage []byte

func (rawCodec) Name() string { return "proto" }
func (rawCodec) Marshal(v any) ([]byte, error) {
	if m, ok := v.(rawMessage); ok {
		return m, nil
	}
	return nil, fmt.Errorf("rawCodec marshals rawMessage, not %T", v)
}
func (rawCodec) Unmarshal(b []byte, v any) error {
	if m, ok := v.(*rawMessage); ok {
		*m = append((*m)[:0], b...)
		return nil
	}
	return fmt.Errorf("rawCodec unmarshals into *rawMessage, not %T", v)
}
