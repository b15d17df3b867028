package peerwire

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

//go:generate sh -c "$(go -C tools tool -n buf) generate"

// TestGeneratedCodeIsCurrent runs `buf generate` (the tools pinned in
// tools/go.mod, as `make generate` does) into a temporary directory and
// checks the result is the committed gen/ byte for byte: peer.proto and
// the generated code cannot drift apart.
func TestGeneratedCodeIsCurrent(t *testing.T) {
	if testing.Short() {
		t.Skip("builds buf (about two minutes on a cold build cache)")
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command on PATH to run buf and the plugins with")
	}
	out, err := exec.Command("go", "-C", "tools", "tool", "-n", "buf").Output()
	if err != nil {
		t.Fatalf("build buf from tools/go.mod: %v", err)
	}
	buf := strings.TrimSpace(string(out))
	dir := t.TempDir()
	cmd := exec.Command(buf, "generate", "--output", dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("buf generate: %v\n%s", err, stderr.String())
	}
	var committed, fresh []string
	for _, root := range []struct {
		dir  string
		list *[]string
	}{{"gen", &committed}, {filepath.Join(dir, "gen"), &fresh}} {
		err := filepath.WalkDir(root.dir, func(path string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				rel, _ := filepath.Rel(root.dir, path)
				*root.list = append(*root.list, rel)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if strings.Join(committed, " ") != strings.Join(fresh, " ") {
		t.Fatalf("generated files %v, committed %v: run `make generate` and commit gen/", fresh, committed)
	}
	for _, f := range committed {
		a, _ := os.ReadFile(filepath.Join("gen", f))
		b, _ := os.ReadFile(filepath.Join(dir, "gen", f))
		if !bytes.Equal(a, b) {
			t.Errorf("gen/%s differs from what peer.proto generates: run `make generate` and commit it", f)
		}
	}
}
