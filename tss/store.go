package tss

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/bnb-chain/tss-lib/v2/ecdsa/keygen"
)

// Store keeps a node's shares as files, one per key, named by KeyID,
// encrypted with the node's Sealer, with mode 0600 and atomic replacement
// so a crash never leaves half a share.
type Store struct {
	dir    string
	sealer *Sealer
}

// OpenStore opens (creating if needed) the share directory dir. Shares are
// sealed with s; a nil s is for tests only and reads and writes plaintext
// is refused on write.
func OpenStore(dir string, s *Sealer) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open share store: %w", err)
	}
	return &Store{dir: dir, sealer: s}, nil
}

const shareSuffix = ".share.json"

// shareFileV1 is the persisted form of a Share. Version it on any change.
type shareFileV1 struct {
	Version   int                       `json:"version"`
	Threshold int                       `json:"threshold"`
	Parties   []string                  `json:"parties"`
	Self      string                    `json:"self"`
	PublicKey []byte                    `json:"public_key"` // PKIX DER, for humans and cross-checks
	Data      keygen.LocalPartySaveData `json:"tss"`
}

func (st *Store) path(id KeyID) string { return filepath.Join(st.dir, id.String()+shareSuffix) }

// Save writes share, replacing any previous share of the same key.
func (st *Store) Save(s *Share) error {
	pkix, err := x509.MarshalPKIXPublicKey(s.pub)
	if err != nil {
		return fmt.Errorf("save share %s: %w", s.KeyID(), err)
	}
	b, err := json.Marshal(shareFileV1{Version: 1, Threshold: s.Threshold, Parties: s.Parties, Self: s.Self, PublicKey: pkix, Data: s.data})
	if err != nil {
		return fmt.Errorf("save share %s: %w", s.KeyID(), err)
	}
	sealed, err := st.sealer.seal(b)
	if err != nil {
		return fmt.Errorf("save share %s: %w", s.KeyID(), err)
	}
	return writeFileAtomic(st.path(s.KeyID()), sealed)
}

// Load reads the share of key id.
func (st *Store) Load(id KeyID) (*Share, error) {
	return loadShareFile(st.path(id), &id, st.sealer)
}

// List returns the ids of all stored keys.
func (st *Store) List() ([]KeyID, error) {
	ents, err := os.ReadDir(st.dir)
	if err != nil {
		return nil, fmt.Errorf("list shares: %w", err)
	}
	var ids []KeyID
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), shareSuffix)
		if !ok || e.IsDir() {
			continue
		}
		id, err := ParseKeyID(name)
		if err != nil {
			continue
		}
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i].String() < ids[j].String() })
	return ids, nil
}

func loadShareFile(path string, want *KeyID, sealer *Sealer) (*Share, error) {
	sealed, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load share: %w", err)
	}
	b, err := sealer.open(path, sealed)
	if err != nil {
		return nil, fmt.Errorf("load share: %w", err)
	}
	var f shareFileV1
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("load share %s: file is truncated or corrupt (%d bytes): %w", path, len(b), err)
	}
	if f.Version != 1 {
		return nil, fmt.Errorf("load share %s: format version %d not supported by this build (want 1)", path, f.Version)
	}
	s, err := newShare(f.Threshold, f.Parties, f.Self, f.Data)
	if err != nil {
		return nil, fmt.Errorf("load share %s: %w", path, err)
	}
	if pub, err := x509.ParsePKIXPublicKey(f.PublicKey); err != nil || !s.pub.Equal(pub.(*ecdsa.PublicKey)) {
		return nil, fmt.Errorf("load share %s: recorded public key does not match the share data", path)
	}
	if want != nil && s.KeyID() != *want {
		return nil, fmt.Errorf("load share %s: holds key %s, not %s", path, s.KeyID(), *want)
	}
	return s, nil
}

// writeFileAtomic writes b to path with mode 0600 through a temporary file
// and a rename, syncing both, so readers see the old or the new file whole.
func writeFileAtomic(path string, b []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
