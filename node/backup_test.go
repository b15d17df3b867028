package node

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/tkeyless/tkeyless/tss"
)

// rewriteBackup rebuilds a backup with each entry passed through f, which
// may rename it, change it or drop it (keep false), and extra entries
// added at the end.
func rewriteBackup(t *testing.T, backup []byte, f func(name string, b []byte) (string, []byte, bool), extra map[string][]byte) []byte {
	t.Helper()
	gz, err := gzip.NewReader(bytes.NewReader(backup))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	var out bytes.Buffer
	gw := gzip.NewWriter(&out)
	tw := tar.NewWriter(gw)
	write := func(name string, b []byte) {
		if err := writeTarFile(tw, name, b); err != nil {
			t.Fatal(err)
		}
	}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if name, b, keep := f(h.Name, b); keep {
			write(name, b)
		}
	}
	for name, b := range extra {
		write(name, b)
	}
	if err := errors.Join(tw.Close(), gw.Close()); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// testBackupRestore: a backup of a node's data directory restores, on a
// node with the same name and secrets key, to a node that holds the same
// share. A restore checks everything before it writes anything: a damaged,
// truncated or foreign backup, or one whose shares the configured key
// cannot open, restores nothing; and it replaces a different existing file
// only when forced.
func testBackupRestore(t *testing.T, c *testCluster) {
	cfg := c.cfgs["c"]
	var buf bytes.Buffer
	files, err := Backup(cfg, &buf)
	if err != nil {
		t.Fatal(err)
	}
	backup := buf.Bytes()
	shareFile := ""
	for _, f := range files {
		if strings.HasPrefix(f, "keys/") && strings.Contains(f, c.key.String()) {
			shareFile = f
		}
	}
	if shareFile == "" || !slices.Contains(files, "preparams.age") {
		t.Fatalf("backup holds %v: no share of the key, or no pre-parameters", files)
	}

	restoredCfg := cfg
	restoredCfg.DataDir = t.TempDir()
	restored, err := Restore(restoredCfg, bytes.NewReader(backup), false)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(restored, files) {
		t.Fatalf("restored %v, backed up %v", restored, files)
	}
	for _, f := range []string{shareFile, "preparams.age"} {
		orig, _ := os.ReadFile(filepath.Join(cfg.DataDir, f))
		got, _ := os.ReadFile(filepath.Join(restoredCfg.DataDir, f))
		if len(orig) == 0 || !bytes.Equal(orig, got) {
			t.Fatalf("%s differs after a restore", f)
		}
	}
	// The same backup again changes nothing; a file that differs is
	// replaced only when forced. (Before a node starts on the directory:
	// starting rewrites its request id journal.)
	if _, err := Restore(restoredCfg, bytes.NewReader(backup), false); err != nil {
		t.Fatalf("restoring the same backup again: %v", err)
	}
	pp := filepath.Join(restoredCfg.DataDir, "preparams.age")
	if err := os.WriteFile(pp, []byte("newer"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Restore(restoredCfg, bytes.NewReader(backup), false); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("a restore over a different file: %v", err)
	}
	if b, _ := os.ReadFile(pp); string(b) != "newer" {
		t.Fatal("an unforced restore replaced a different file")
	}
	if _, err := Restore(restoredCfg, bytes.NewReader(backup), true); err != nil {
		t.Fatalf("a forced restore: %v", err)
	}
	if b, _ := os.ReadFile(pp); string(b) == "newer" {
		t.Fatal("a forced restore did not replace the file")
	}

	n, err := newNode(restoredCfg, zerolog.Nop(), c.dial)
	if err != nil {
		t.Fatalf("a node on the restored data directory: %v", err)
	}
	share, ok := n.share(c.key)
	orig, _ := c.nodes["c"].share(c.key)
	n.verifier.Close()
	for _, p := range n.peers {
		p.conn().Close()
	}
	if !ok || !bytes.Equal(share.Fingerprint(), orig.Fingerprint()) {
		t.Fatal("the restored node does not hold c's share")
	}

	// Another secrets key opens no share: the node refuses to start, and
	// a restore with it writes nothing.
	wrongCfg := restoredCfg
	wrongCfg.Secrets.KeyFile = filepath.Join(t.TempDir(), "other.key")
	if err := tss.GenerateKeyFile(wrongCfg.Secrets.KeyFile); err != nil {
		t.Fatal(err)
	}
	if n, err := newNode(wrongCfg, zerolog.Nop(), c.dial); err == nil || !errors.Is(err, tss.ErrWrongKey) || !strings.Contains(err.Error(), "check secrets") {
		if err == nil {
			n.verifier.Close()
		}
		t.Fatalf("a node with the wrong secrets key: %v", err)
	}
	wrongCfg.DataDir = t.TempDir()
	if _, err := Restore(wrongCfg, bytes.NewReader(backup), false); err == nil || !strings.Contains(err.Error(), "nothing restored") {
		t.Fatalf("a restore with the wrong secrets key: %v", err)
	}
	if entries, _ := os.ReadDir(wrongCfg.DataDir); len(entries) != 0 {
		t.Fatalf("a refused restore wrote %d files", len(entries))
	}

	flip := func(b []byte) []byte { b = slices.Clone(b); b[len(b)/2] ^= 1; return b }
	same := func(name string, b []byte) (string, []byte, bool) { return name, b, true }
	for _, tc := range []struct {
		name   string
		backup []byte
		want   string
	}{
		{"a damaged share", rewriteBackup(t, backup, func(name string, b []byte) (string, []byte, bool) {
			if name == shareFile {
				return name, flip(b), true
			}
			return name, b, true
		}, nil), "missing or damaged"},
		{"a missing share", rewriteBackup(t, backup, func(name string, b []byte) (string, []byte, bool) { return name, b, name != shareFile }, nil), "missing or damaged"},
		{"no manifest", rewriteBackup(t, backup, func(name string, b []byte) (string, []byte, bool) { return name, b, name != manifestName }, nil), "no (version 1) manifest"},
		{"a manifest that is not JSON", rewriteBackup(t, backup, func(name string, b []byte) (string, []byte, bool) {
			if name == manifestName {
				return name, []byte("{"), true
			}
			return name, b, true
		}, nil), "manifest"},
		{"another node's backup", rewriteBackup(t, backup, func(name string, b []byte) (string, []byte, bool) {
			if name == manifestName {
				var m backupManifest
				if err := json.Unmarshal(b, &m); err != nil {
					t.Fatal(err)
				}
				m.Node = "b"
				b, _ = json.Marshal(m)
			}
			return name, b, true
		}, nil), `backup is of node "b"`},
		{"an entry outside the data directory", rewriteBackup(t, backup, same, map[string][]byte{"../escape": []byte("x")}), "unexpected entry"},
		{"not a backup", []byte("plain text"), "not a tkeyless backup"},
		{"a truncated backup", backup[:len(backup)/2], "truncated or corrupt"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			target := restoredCfg
			target.DataDir = t.TempDir()
			if _, err := Restore(target, bytes.NewReader(tc.backup), false); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Restore: %v, want a refusal saying %q", err, tc.want)
			}
			if entries, _ := os.ReadDir(target.DataDir); len(entries) != 0 {
				t.Fatalf("a refused restore wrote %d files", len(entries))
			}
		})
	}
}
