package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

var exposureRE = regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`)

// TestSystemdUnits checks the units in examples/systemd: systemd-analyze
// verify finds nothing wrong (with ExecStart pointing at this tree's
// binaries), their sandbox scores an exposure of 2.0 or less, every
// ExecStart parses as a command of its binary, and every credential a unit
// loads is one the guide's configuration reads (and the other way round).
func TestSystemdUnits(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries")
	}
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed (apt-get install systemd; make tools tries): cannot check the units")
	}
	bin := binaries(t)
	guide, err := os.ReadFile(filepath.Join(repoRoot(t), "docs", "deploy.md"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, unit := range []string{"tkeyless-signer.service", "tkeyless-edge.service"} {
		t.Run(unit, func(t *testing.T) {
			src, err := os.ReadFile(filepath.Join(repoRoot(t), "examples", "systemd", unit))
			if err != nil {
				t.Fatal(err)
			}
			text := strings.ReplaceAll(string(src), "/usr/local/bin/", bin+"/")
			path := filepath.Join(dir, unit)
			if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command(analyze, "verify", path).CombinedOutput(); err != nil || len(strings.TrimSpace(string(out))) > 0 {
				t.Errorf("systemd-analyze verify %s: %v\n%s", unit, err, out)
			}
			out, err := exec.Command(analyze, "security", "--offline=true", path).CombinedOutput()
			m := exposureRE.FindSubmatch(out)
			if m == nil {
				t.Fatalf("systemd-analyze security --offline=true %s: %v, no exposure level in:\n%s", unit, err, out)
			}
			if level, _ := strconv.ParseFloat(string(m[1]), 64); level > 2.0 {
				t.Errorf("%s: exposure %.1f, want ≤ 2.0:\n%s", unit, level, out)
			}

			var exec0 []string
			for _, line := range strings.Split(text, "\n") {
				if cmd, ok := strings.CutPrefix(line, "ExecStart="); ok {
					exec0 = strings.Fields(cmd)
				}
				if cred, ok := strings.CutPrefix(line, "LoadCredential="); ok {
					name, _, _ := strings.Cut(cred, ":")
					want := "$RUN_CREDS/" + name
					if !strings.Contains(string(guide), want) {
						t.Errorf("%s loads credential %s, which the guide's configuration never reads (%s)", unit, name, want)
					}
				}
			}
			if len(exec0) == 0 {
				t.Fatalf("%s: no ExecStart", unit)
			}
			if out, err := exec.Command(exec0[0], append(exec0[1:], "--help")...).CombinedOutput(); err != nil {
				t.Errorf("%s: ExecStart %v does not parse: %v\n%s", unit, exec0, err, out)
			}
		})
	}
	// The other way round: each $RUN_CREDS file the guide's configurations
	// name is loaded by the unit that reads that configuration.
	for _, m := range regexp.MustCompile(`\$RUN_CREDS/([\w.-]+)`).FindAllSubmatch(guide, -1) {
		name := string(m[1])
		found := false
		for _, unit := range []string{"tkeyless-signer.service", "tkeyless-edge.service"} {
			src, _ := os.ReadFile(filepath.Join(repoRoot(t), "examples", "systemd", unit))
			found = found || strings.Contains(string(src), "LoadCredential="+name+":")
		}
		if !found {
			t.Errorf("the guide reads credential %s, which no unit loads", name)
		}
	}
}
