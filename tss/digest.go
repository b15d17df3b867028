package tss

import (
	"crypto"
	"fmt"
	"math/big"
)

// DigestScalar turns a message digest into the integer ECDSA signs, as
// FIPS 186-5 and SEC 1 prescribe: the leftmost bits of the digest, as many as
// the curve order has. SHA-384 and SHA-512 digests are truncated to 256 bits
// for P-256; a SHA-256 digest is used whole. crypto/ecdsa does the same, so a
// signature made over this scalar verifies with ecdsa.VerifyASN1(pub, digest).
func DigestScalar(digest []byte) *big.Int {
	orderBits := curve.Params().N.BitLen()
	orderBytes := (orderBits + 7) / 8
	if len(digest) > orderBytes {
		digest = digest[:orderBytes]
	}
	e := new(big.Int).SetBytes(digest)
	if excess := len(digest)*8 - orderBits; excess > 0 {
		e.Rsh(e, uint(excess))
	}
	return e
}

// CheckDigest verifies that digest is a whole digest of one of the hashes
// TLS signs with ECDSA.
func CheckDigest(hash crypto.Hash, digest []byte) error {
	switch hash {
	case crypto.SHA224, crypto.SHA256, crypto.SHA384, crypto.SHA512:
	default:
		return fmt.Errorf("hash %v not supported: want SHA-224, SHA-256, SHA-384 or SHA-512", hash)
	}
	if len(digest) != hash.Size() {
		return fmt.Errorf("digest is %d bytes, %v needs %d", len(digest), hash, hash.Size())
	}
	return nil
}
