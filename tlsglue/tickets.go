package tlsglue

import (
	"crypto/hkdf"
	"crypto/sha256"
	"fmt"
	"os"
	"time"
)

// MinTicketSecretLen is the shortest ticket secret accepted: 32 bytes, the size of the key it
// derives.
const MinTicketSecretLen = 32

// ticketKeyLabel is the HKDF info string. Changing it invalidates every ticket in a fleet, so it
// carries a version.
const ticketKeyLabel = "tkeyless ticket key v1"

// TicketKeys returns the session ticket keys for tls.Config.SetSessionTicketKeys, derived from a
// secret shared by a fleet of edges with HKDF-SHA256: the first key encrypts new tickets, all of
// them decrypt. Every edge with the same secret derives the same keys, so a client's ticket
// resumes on any edge and costs no signature.
//
// For now it returns one key and ignores now; rotation by epoch (a key per period, the previous
// ones kept for decryption) will use now without changing callers. It returns nil if secret is
// shorter than MinTicketSecretLen.
func TicketKeys(secret []byte, now time.Time) [][32]byte {
	_ = now
	if len(secret) < MinTicketSecretLen {
		return nil
	}
	k, err := hkdf.Key(sha256.New, secret, nil, ticketKeyLabel, 32)
	if err != nil {
		// Only in FIPS 140-only mode with a short secret, which the length check excludes.
		return nil
	}
	var key [32]byte
	copy(key[:], k)
	return [][32]byte{key}
}

// LoadTicketSecret reads a ticket secret file: its bytes, as they are, are the secret (a file
// made by `head -c 32 /dev/urandom` or `openssl rand -hex 32` both work). Copy the same file to
// every edge of a fleet.
func LoadTicketSecret(path string) ([]byte, error) {
	secret, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load ticket secret: %w", err)
	}
	if len(secret) < MinTicketSecretLen {
		return nil, fmt.Errorf("load ticket secret: file %s holds %d bytes; it needs at least %d (make one with: head -c 32 /dev/urandom > %s)",
			path, len(secret), MinTicketSecretLen, path)
	}
	return secret, nil
}
