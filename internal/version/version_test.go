package version

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestInfoString(t *testing.T) {
	for _, tc := range []struct {
		in   Info
		want string
	}{
		{Info{Version: "(devel)", Commit: "unknown", Go: "go1.26.8"}, "(devel) (commit unknown) go1.26.8"},
		{Info{Version: "v1.2.0", Commit: "1a2b", Dirty: true, Time: "2026-12-03T13:00:00Z", Go: "go1.26.8"},
			"v1.2.0 (commit 1a2b, dirty, 2026-12-03T13:00:00Z) go1.26.8"},
	} {
		if got := tc.in.String(); got != tc.want {
			t.Errorf("String() = %q, want %q", got, tc.want)
		}
	}
}

// TestGetUnstamped: a test binary has neither linker values nor VCS data
// (go test does not stamp), and still names its toolchain.
func TestGetUnstamped(t *testing.T) {
	i := Get()
	if i.Go != runtime.Version() {
		t.Errorf("Go = %q, want %q", i.Go, runtime.Version())
	}
	if i.Commit == "" || i.Version == "" {
		t.Errorf("empty fields in %+v", i)
	}
}

// TestVersionFlag builds both commands the way the Makefile does, with
// the linker stamping a commit, and runs their --version.
func TestVersionFlag(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries")
	}
	bin := t.TempDir()
	const pkg = "github.com/tkeyless/tkeyless/internal/version"
	ldflags := "-X " + pkg + ".release=v9.9.9-test -X " + pkg + ".commit=0123456789abcdef -X " + pkg + ".dirty=true"
	build := exec.Command("go", "build", "-buildvcs=false", "-ldflags", ldflags, "-o", bin+"/",
		"github.com/tkeyless/tkeyless/cmd/signer", "github.com/tkeyless/tkeyless/cmd/edge")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, name := range []string{"signer", "edge"} {
		out, err := exec.Command(filepath.Join(bin, name), "--version").CombinedOutput()
		if err != nil {
			t.Fatalf("%s --version: %v\n%s", name, err, out)
		}
		want := name + " version v9.9.9-test (commit 0123456789abcdef, dirty) " + runtime.Version()
		if got := strings.TrimSpace(string(out)); got != want {
			t.Errorf("%s --version = %q, want %q", name, got, want)
		}
	}
}
