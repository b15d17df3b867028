package tss

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"sync"

	"github.com/bnb-chain/tss-lib/v2/ecdsa/keygen"

	"github.com/tkeyless/tkeyless/tss/internal/gg18"
)

// KeyID names a cluster key: the SHA-1 of the public key's uncompressed
// point, which is the Subject Key Identifier gokeyless uses to address keys
// (protocol.GetSKI), so a key has one name on the wire, in files and in logs.
type KeyID [sha1.Size]byte

// KeyIDOf computes the KeyID of a P-256 public key.
func KeyIDOf(pub *ecdsa.PublicKey) KeyID {
	//nolint:staticcheck // the uncompressed point is what SKI hashes.
	return sha1.Sum(elliptic.Marshal(pub.Curve, pub.X, pub.Y))
}

// String is the lowercase hex form used in file names and logs.
func (k KeyID) String() string { return hex.EncodeToString(k[:]) }

// ParseKeyID parses the hex form of a KeyID.
func ParseKeyID(s string) (KeyID, error) {
	var k KeyID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(k) {
		return k, fmt.Errorf("key id %q: want %d hex bytes", s, len(k))
	}
	copy(k[:], b)
	return k, nil
}

// Share is one node's share of a cluster key, with what the node needs to
// sign with it: the threshold, the members, and its Paillier secrets. It is
// secret: never log it, and store it only through a Store.
type Share struct {
	// Threshold is t: any Threshold+1 of the Parties sign.
	Threshold int
	// Parties are the node names holding a share, in tss-lib's order.
	Parties []string
	// Self is the node this share belongs to.
	Self string

	data keygen.LocalPartySaveData
	pub  *ecdsa.PublicKey

	crtOnce sync.Once
	crt     *paillierCRT
	crtErr  error

	// rings are the range-proof moduli the signing engine computes with,
	// prepared once per share and reused by every session (engine.go):
	// this share's own (CRT with its safe primes) and every other
	// holder's (fixed-base tables), by Ñ.
	ringsMu sync.Mutex
	rings   map[string]gg18.Ring
}

// ring returns the signing engine's view of the range-proof modulus Ñ with
// bases h1, h2: this share's own (the shortcuts need its α and primes,
// checked; a record without them computes plainly) or another holder's,
// with fixed-base tables. Building a peer's tables costs about two
// exponentiations, once per share.
func (s *Share) ring(nTilde, h1, h2 *big.Int) (gg18.Ring, error) {
	if nTilde == nil || h1 == nil || h2 == nil {
		return nil, errors.New("range-proof parameters missing")
	}
	key := nTilde.Text(16) + "/" + h1.Text(16) + "/" + h2.Text(16)
	s.ringsMu.Lock()
	defer s.ringsMu.Unlock()
	if r, ok := s.rings[key]; ok {
		return r, nil
	}
	var r gg18.Ring
	own := s.data.NTildei
	if own != nil && own.Cmp(nTilde) == 0 && s.data.H1i != nil && s.data.H1i.Cmp(h1) == 0 && s.data.H2i != nil && s.data.H2i.Cmp(h2) == 0 {
		if or, err := gg18.NewOwnRing(nTilde, h1, h2, s.data.Alpha, s.data.P, s.data.Q); err == nil {
			r = or
		} else if r, err = gg18.NewPlainRing(nTilde, h1, h2); err != nil {
			return nil, err
		}
	} else {
		pr, err := gg18.NewPeerRing(nTilde, h1, h2)
		if err != nil {
			return nil, err
		}
		r = pr
	}
	if s.rings == nil {
		s.rings = map[string]gg18.Ring{}
	}
	s.rings[key] = r
	return r, nil
}

// paillierKey is this share's own Paillier key prepared for CRT
// decryption, made once per share.
func (s *Share) paillierKey() (*paillierCRT, error) {
	s.crtOnce.Do(func() { s.crt, s.crtErr = newPaillierCRT(s.data.PaillierSK) })
	return s.crt, s.crtErr
}

func newShare(threshold int, parties []string, self string, data keygen.LocalPartySaveData) (*Share, error) {
	if data.ECDSAPub == nil {
		return nil, errors.New("share has no public key")
	}
	pub := &ecdsa.PublicKey{Curve: curve, X: data.ECDSAPub.X(), Y: data.ECDSAPub.Y()}
	if !curve.IsOnCurve(pub.X, pub.Y) {
		return nil, errors.New("share public key is not on P-256")
	}
	if threshold < 1 || threshold >= len(parties) {
		return nil, fmt.Errorf("threshold %d invalid for %d parties", threshold, len(parties))
	}
	if !slices.Contains(parties, self) {
		return nil, fmt.Errorf("self %q not among parties %v", self, parties)
	}
	if len(data.Ks) != len(parties) {
		return nil, fmt.Errorf("share holds %d party keys, want %d", len(data.Ks), len(parties))
	}
	return &Share{Threshold: threshold, Parties: parties, Self: self, data: data, pub: pub}, nil
}

// PublicKey returns the cluster key's public key.
func (s *Share) PublicKey() *ecdsa.PublicKey { return s.pub }

// KeyID returns the cluster key's id.
func (s *Share) KeyID() KeyID { return KeyIDOf(s.pub) }

// Quorum is how many parties must take part in a signature: t+1.
func (s *Share) Quorum() int { return s.Threshold + 1 }

// Fingerprint is a digest of the key's public data as this share records
// it: the threshold, the parties in order, the public key and every party's
// public verification share (X_j = x_j·G). Every share of one key from one
// ceremony has the same fingerprint, so comparing them after a ceremony
// catches a dealer that gave members inconsistent views (different
// commitments to different members) before anyone switches to the new
// shares. It reveals nothing secret.
func (s *Share) Fingerprint() []byte {
	h := sha256.New()
	fmt.Fprintf(h, "tkeyless share fingerprint v1\x00%d\x00", s.Threshold)
	for _, p := range s.Parties {
		fmt.Fprintf(h, "%s\x00", p)
	}
	h.Write(elliptic.Marshal(curve, s.pub.X, s.pub.Y))
	for _, x := range s.data.BigXj {
		if x == nil {
			h.Write([]byte{0})
			continue
		}
		h.Write(elliptic.Marshal(curve, x.X(), x.Y()))
	}
	return h.Sum(nil)
}
