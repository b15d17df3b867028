package node

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/tkeyless/tkeyless/tss"
)

// A backup is a gzip'd tar of a node's data directory as it is on disk —
// shares and pre-parameters stay encrypted with the node's secrets key,
// which is NOT in the backup — plus a manifest with each file's SHA-256, so
// a restore can tell a damaged backup from a good one.

const manifestName = "tkeyless-backup.json"

type backupManifest struct {
	Version int               `json:"version"`
	Node    string            `json:"node"`
	Created time.Time         `json:"created"`
	Files   map[string]string `json:"files"` // relative path → hex SHA-256
}

// Backup writes the node's data directory to w.
func Backup(cfg Config, w io.Writer) ([]string, error) {
	gz := gzip.NewWriter(w)
	tw := tar.NewWriter(gz)
	m := backupManifest{Version: 1, Node: cfg.Name, Created: time.Now().UTC(), Files: map[string]string{}}
	err := filepath.WalkDir(cfg.DataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(cfg.DataDir, path)
		if err != nil {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		m.Files[filepath.ToSlash(rel)] = hex.EncodeToString(sum[:])
		return writeTarFile(tw, filepath.ToSlash(rel), b)
	})
	if err != nil {
		return nil, fmt.Errorf("backup %s: %w", cfg.DataDir, err)
	}
	mb, _ := json.MarshalIndent(m, "", "  ")
	if err := writeTarFile(tw, manifestName, mb); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := gz.Close(); err != nil {
		return nil, err
	}
	var files []string
	for f := range m.Files {
		files = append(files, f)
	}
	slices.Sort(files)
	return files, nil
}

func writeTarFile(tw *tar.Writer, name string, b []byte) error {
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(b)), ModTime: time.Now()}); err != nil {
		return err
	}
	_, err := tw.Write(b)
	return err
}

// Restore unpacks a backup into the node's data directory. It checks every
// file against the manifest and that every share and the pre-parameters
// decrypt with the configured secrets key before writing anything, and
// refuses to replace a different existing file unless force is set: a
// backup taken before a resharing holds shares that no longer combine with
// the cluster's, and forcing one over a current share loses that share.
func Restore(cfg Config, r io.Reader, force bool) ([]string, error) {
	gz, err := gzip.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("restore: not a tkeyless backup: %w", err)
	}
	tr := tar.NewReader(gz)
	files := map[string][]byte{}
	var m *backupManifest
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("restore: truncated or corrupt backup: %w", err)
		}
		if h.Size > 64<<20 || !filepath.IsLocal(h.Name) {
			return nil, fmt.Errorf("restore: unexpected entry %q in backup", h.Name)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return nil, fmt.Errorf("restore: truncated or corrupt backup: %w", err)
		}
		if h.Name == manifestName {
			m = &backupManifest{}
			if err := json.Unmarshal(b, m); err != nil {
				return nil, fmt.Errorf("restore: manifest: %w", err)
			}
			continue
		}
		files[h.Name] = b
	}
	if m == nil || m.Version != 1 {
		return nil, errors.New("restore: backup has no (version 1) manifest")
	}
	if m.Node != cfg.Name {
		return nil, fmt.Errorf("restore: backup is of node %q, this is %q", m.Node, cfg.Name)
	}
	for name, want := range m.Files {
		b, ok := files[name]
		sum := sha256.Sum256(b)
		if !ok || hex.EncodeToString(sum[:]) != want {
			return nil, fmt.Errorf("restore: %s is missing or damaged in the backup; nothing restored", name)
		}
	}
	// Check the shares open with this node's key before touching anything.
	sealer, err := cfg.Sealer()
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "tkeyless-restore")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	for name, b := range files {
		if filepath.Dir(name) == "keys" {
			if err := os.WriteFile(filepath.Join(tmp, filepath.Base(name)), b, 0o600); err != nil {
				return nil, err
			}
		}
	}
	st, err := tss.OpenStore(tmp, sealer)
	if err != nil {
		return nil, err
	}
	ids, _ := st.List()
	for _, id := range ids {
		if _, err := st.Load(id); err != nil {
			return nil, fmt.Errorf("restore: %w; nothing restored", err)
		}
	}
	if b, ok := files["preparams.age"]; ok {
		p := filepath.Join(tmp, "preparams.age")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			return nil, err
		}
		if _, err := tss.LoadPreParams(p, sealer); err != nil {
			return nil, fmt.Errorf("restore: pre-parameters: %w; nothing restored", err)
		}
	}
	for name, b := range files {
		dst := filepath.Join(cfg.DataDir, filepath.FromSlash(name))
		if cur, err := os.ReadFile(dst); err == nil && string(cur) != string(b) && !force {
			return nil, fmt.Errorf("restore: %s exists and differs from the backup; use --force to replace it", dst)
		}
	}
	var restored []string
	for name, b := range files {
		dst := filepath.Join(cfg.DataDir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return restored, err
		}
		// Write beside, then rename: a crash mid-restore leaves each file
		// either as it was or as in the backup, never half of one.
		if err := os.WriteFile(dst+".restore", b, 0o600); err != nil {
			return restored, err
		}
		if err := os.Rename(dst+".restore", dst); err != nil {
			return restored, err
		}
		restored = append(restored, name)
	}
	slices.Sort(restored)
	return restored, nil
}
