package tss

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"filippo.io/age"
)

// Sealer encrypts what a node keeps on disk — its shares and its
// pre-parameters — with age (filippo.io/age: small, audited, and a file
// format other tools can open), to an X25519 key file or a passphrase.
// Keep the key file or passphrase away from the data directory: a stolen
// disk with both is as good as plaintext.
type Sealer struct {
	recipient age.Recipient
	identity  age.Identity
	source    string // for error messages: which key, never the key
}

// ErrWrongKey is returned when the configured secrets key (or passphrase)
// does not decrypt a file.
var ErrWrongKey = errors.New("wrong secrets key")

// ageHeader starts every age file; a share without it is plaintext.
var ageHeader = []byte("age-encryption.org/v1\n")

// NewKeyFileSealer reads an age X25519 identity ("AGE-SECRET-KEY-1…")
// from path.
func NewKeyFileSealer(path string) (*Sealer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("secrets key: %w", err)
	}
	ids, err := age.ParseIdentities(bytes.NewReader(b))
	if err != nil || len(ids) != 1 {
		return nil, fmt.Errorf("secrets key %s: want one age X25519 identity (signer secrets-key makes one)", path)
	}
	x, ok := ids[0].(*age.X25519Identity)
	if !ok {
		return nil, fmt.Errorf("secrets key %s: not an X25519 identity", path)
	}
	return &Sealer{recipient: x.Recipient(), identity: x, source: "key file " + path}, nil
}

// NewPassphraseSealer derives the key from a passphrase with scrypt (age's
// default work factor: about a second per file, on purpose).
func NewPassphraseSealer(passphrase string) (*Sealer, error) {
	passphrase = strings.TrimRight(passphrase, "\r\n")
	if len(passphrase) < 12 {
		return nil, errors.New("passphrase too short: use at least 12 characters")
	}
	r, err := age.NewScryptRecipient(passphrase)
	if err != nil {
		return nil, err
	}
	id, err := age.NewScryptIdentity(passphrase)
	if err != nil {
		return nil, err
	}
	return &Sealer{recipient: r, identity: id, source: "passphrase"}, nil
}

// GenerateKeyFile writes a new age X25519 identity to path (mode 0600),
// refusing to overwrite one: the shares it sealed would be lost.
func GenerateKeyFile(path string) error {
	if _, err := os.Stat(path); err == nil {
		return fmt.Errorf("secrets key %s already exists; not overwriting it", path)
	}
	id, err := age.GenerateX25519Identity()
	if err != nil {
		return err
	}
	return writeFileAtomic(path, []byte(fmt.Sprintf("# tkeyless node secrets key: decrypts this node's shares\n# public key: %s\n%s\n", id.Recipient(), id)))
}

// seal encrypts b. A nil Sealer is an error: production paths always seal.
func (s *Sealer) seal(b []byte) ([]byte, error) {
	if s == nil {
		return nil, errors.New("no secrets key configured: refusing to write a secret unencrypted")
	}
	var out bytes.Buffer
	w, err := age.Encrypt(&out, s.recipient)
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(b); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// open decrypts the contents of file path. With a nil Sealer it accepts
// only plaintext (the committed test fixtures); with one, only ciphertext.
func (s *Sealer) open(path string, b []byte) ([]byte, error) {
	encrypted := bytes.HasPrefix(b, ageHeader)
	switch {
	case s == nil && encrypted:
		return nil, fmt.Errorf("%s is encrypted and no secrets key is configured", path)
	case s == nil:
		return b, nil
	case bytes.HasPrefix(ageHeader, b):
		// Empty, or cut inside the first line: a crash or a full disk, not
		// a plaintext file.
		return nil, fmt.Errorf("%s: truncated or corrupt encrypted file (%d bytes)", path, len(b))
	case !encrypted:
		return nil, fmt.Errorf("%s is not encrypted: refusing a plaintext secret (was it written by a test, or copied by hand?)", path)
	}
	r, err := age.Decrypt(bytes.NewReader(b), s.identity)
	if err != nil {
		var noMatch *age.NoIdentityMatchError
		if errors.As(err, &noMatch) || strings.Contains(err.Error(), "incorrect passphrase") {
			return nil, fmt.Errorf("%s: %w: the %s does not decrypt this file (nothing was changed)", path, ErrWrongKey, s.source)
		}
		return nil, fmt.Errorf("%s: truncated or corrupt encrypted file: %w", path, err)
	}
	out, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("%s: truncated or corrupt encrypted file: %w", path, err)
	}
	return out, nil
}
