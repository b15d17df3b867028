package tss

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
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
// sealed with s. A nil s is for tests only: it reads the plaintext test
// fixtures, and refuses every write, so no share is written unencrypted.
func OpenStore(dir string, s *Sealer) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open share store: %w", err)
	}
	return &Store{dir: dir, sealer: s}, nil
}

const (
	shareSuffix = ".share.json"
	// stagedSuffix marks a share a resharing produced and the cluster has
	// not yet committed: List and Load never return it.
	stagedSuffix = ".share.staged"
)

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

func (st *Store) stagedPath(id KeyID) string {
	return filepath.Join(st.dir, id.String()+stagedSuffix)
}

// Save writes share, replacing any previous share of the same key.
func (st *Store) Save(s *Share) error {
	return st.write(st.path(s.KeyID()), s, "save share")
}

func (st *Store) write(path string, s *Share, doing string) error {
	pkix, err := x509.MarshalPKIXPublicKey(s.pub)
	if err != nil {
		return fmt.Errorf("%s %s: %w", doing, s.KeyID(), err)
	}
	b, err := json.Marshal(shareFileV1{Version: 1, Threshold: s.Threshold, Parties: s.Parties, Self: s.Self, PublicKey: pkix, Data: s.data})
	if err != nil {
		return fmt.Errorf("%s %s: %w", doing, s.KeyID(), err)
	}
	sealed, err := st.sealer.seal(b)
	clear(b)
	if err != nil {
		return fmt.Errorf("%s %s: %w", doing, s.KeyID(), err)
	}
	if err := writeFileAtomic(path, sealed); err != nil {
		return fmt.Errorf("%s %s: %w", doing, s.KeyID(), err)
	}
	return nil
}

// Stage writes the share a resharing produced beside the key's current
// share, which stays in use. A resharing succeeded only if every new member
// finished it: until the coordinator has heard that from all of them, each
// member keeps its old share, so a ceremony that fails late (one member's
// last proof check) leaves the key usable with the old shares. Then every
// member calls Commit, or Discard if the ceremony failed.
func (st *Store) Stage(s *Share) error {
	return st.write(st.stagedPath(s.KeyID()), s, "stage share")
}

// Commit makes the staged share of id the current one, replacing (in one
// rename) the old share, which then exists nowhere on this node except in
// backups taken before. It decrypts and checks the staged share first, and
// returns it.
func (st *Store) Commit(id KeyID) (*Share, error) {
	staged := st.stagedPath(id)
	s, err := loadShareFile(staged, &id, st.sealer)
	if err != nil {
		return nil, fmt.Errorf("commit share %s: staged share unusable, current share kept: %w", id, err)
	}
	if err := os.Rename(staged, st.path(id)); err != nil {
		return nil, fmt.Errorf("commit share %s: %w", id, err)
	}
	syncDir(st.dir)
	return s, nil
}

// Discard removes the staged share of id after a failed resharing. The
// current share is untouched. Discarding nothing is not an error.
func (st *Store) Discard(id KeyID) error {
	if err := os.Remove(st.stagedPath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("discard staged share %s: %w", id, err)
	}
	return nil
}

// Staged lists the keys with a staged share: resharings this node finished
// but was not told to commit or discard, for instance because it restarted.
// It must ask the cluster which way the ceremony went; the key works with
// the current share meanwhile only if the ceremony failed.
func (st *Store) Staged() ([]KeyID, error) { return st.list(stagedSuffix) }

// Delete removes this node's share of id, and any staged one: for a node
// that a resharing left out of the key's committee, once the ceremony is
// committed. A share is the one thing a node cannot get back, so callers
// should delete only after the new committee's shares are committed.
func (st *Store) Delete(id KeyID) error {
	for _, p := range []string{st.stagedPath(id), st.path(id)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("delete share %s: %w", id, err)
		}
	}
	syncDir(st.dir)
	return nil
}

// Load reads the share of key id.
func (st *Store) Load(id KeyID) (*Share, error) {
	return loadShareFile(st.path(id), &id, st.sealer)
}

// List returns the ids of all stored keys. It reads file names only, so a
// damaged share file is listed, and fails on its own when loaded.
func (st *Store) List() ([]KeyID, error) { return st.list(shareSuffix) }

func (st *Store) list(suffix string) ([]KeyID, error) {
	ents, err := os.ReadDir(st.dir)
	if err != nil {
		return nil, fmt.Errorf("list shares: %w", err)
	}
	var ids []KeyID
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), suffix)
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
	defer clear(b)
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
	syncDir(dir)
	return nil
}

// syncDir makes a rename or removal in dir durable.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}
