package tss

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"math/big"
	"os"
	"testing"

	"github.com/cloudflare/gokeyless/protocol"
)

// testdata/digest-scalar.json holds digest → scalar vectors that any
// implementation (another language, another library) can check itself
// against: SEC 1 §4.1.3 step 5 for P-256.
type scalarVector struct {
	Digest string `json:"digest"`
	Scalar string `json:"scalar"`
}

func TestDigestScalarVectors(t *testing.T) {
	b, err := os.ReadFile("testdata/digest-scalar.json")
	if err != nil {
		t.Fatal(err)
	}
	var vs []scalarVector
	if err := json.Unmarshal(b, &vs); err != nil {
		t.Fatal(err)
	}
	if len(vs) == 0 {
		t.Fatal("no vectors")
	}
	for _, v := range vs {
		d, _ := hex.DecodeString(v.Digest)
		want, _ := new(big.Int).SetString(v.Scalar, 16)
		if got := DigestScalar(d); got.Cmp(want) != 0 {
			t.Errorf("digest %s: scalar %x, want %x", v.Digest, got, want)
		}
	}
}

// A signature over DigestScalar(digest) must verify with crypto/ecdsa over
// the digest itself, for every digest length TLS uses.
func TestDigestScalarMatchesCryptoECDSA(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for _, n := range []int{28, 32, 48, 64} {
		d := make([]byte, n)
		rand.Read(d)
		// Sign the truncated digest with crypto/ecdsa, verify with the full one.
		e := DigestScalar(d).FillBytes(make([]byte, 32))
		sig, err := ecdsa.SignASN1(rand.Reader, key, e)
		if err != nil {
			t.Fatal(err)
		}
		if !ecdsa.VerifyASN1(&key.PublicKey, d, sig) {
			t.Errorf("%d-byte digest: scalar differs from crypto/ecdsa's", n)
		}
	}
}

func TestCheckDigest(t *testing.T) {
	if err := CheckDigest(crypto.SHA256, make([]byte, 32)); err != nil {
		t.Error(err)
	}
	if err := CheckDigest(crypto.SHA224, make([]byte, 28)); err != nil {
		t.Error(err)
	}
	if err := CheckDigest(crypto.SHA224, make([]byte, 32)); err == nil {
		t.Error("accepted a 32-byte SHA-224 digest")
	}
	if err := CheckDigest(crypto.SHA384, make([]byte, 32)); err == nil {
		t.Error("accepted a 32-byte SHA-384 digest")
	}
	if err := CheckDigest(crypto.SHA1, make([]byte, 20)); err == nil {
		t.Error("accepted SHA-1")
	}
}

// KeyID is gokeyless's SKI, so a key has one name everywhere.
func TestKeyIDIsGokeylessSKI(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ski, err := protocol.GetSKI(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if KeyIDOf(&key.PublicKey) != KeyID(ski) {
		t.Fatal("KeyID differs from gokeyless SKI")
	}
	id, err := ParseKeyID(KeyIDOf(&key.PublicKey).String())
	if err != nil || id != KeyID(ski) {
		t.Fatalf("ParseKeyID round trip: %v", err)
	}
}

func TestRoundOf(t *testing.T) {
	for typ, want := range map[string]int{
		"binance.tsslib.ecdsa.signing.SignRound1Message1": 1,
		"binance.tsslib.ecdsa.signing.SignRound9Message":  9,
		"binance.tsslib.ecdsa.keygen.KGRound2Message2":    2,
		"nothing": 0,
	} {
		if got := RoundOf(typ); got != want {
			t.Errorf("RoundOf(%q) = %d, want %d", typ, got, want)
		}
	}
}
