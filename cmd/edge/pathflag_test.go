package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// looksLikePath is a second, independent opinion on which serve flags hold paths: their help
// text speaks of a file or directory. A new flag that takes a path but is declared as a plain
// string fails TestEveryPathFlagIsResolved.
var looksLikePath = regexp.MustCompile(`(?i)\b(file|directory|PEM|bundle)\b`)

// notPaths are flags whose help mentions files without their value being a path.
var notPaths = map[string]bool{
	"signer":      true, // a key reference (keyless://… or file:///…), not a path
	"acme-domain": true,
	"acme-ca":     true, // a URL
	"listen":      true,
	"max-signing": true, // "a file:// key"
}

// TestEveryPathFlagIsResolved sets every path flag of edge serve from a configuration file with a
// relative value, and checks each comes out relative to the file's directory; and that every flag
// whose help speaks of a file or directory is a path flag.
func TestEveryPathFlagIsResolved(t *testing.T) {
	flags := rootServeFlags(t)
	dir := t.TempDir()
	var yaml strings.Builder
	want := map[string]string{}
	var paths []string
	flags.VisitAll(func(f *pflag.Flag) {
		if f.Name == "config" || f.Name == "help" {
			return
		}
		if !isPathFlag(f) {
			if looksLikePath.MatchString(f.Usage) && !notPaths[f.Name] {
				t.Errorf("--%s: its help (%q) speaks of a file, but it is a %s flag; declare it with pathVar/pathsVar so a config file resolves it",
					f.Name, f.Usage, f.Value.Type())
			}
			return
		}
		paths = append(paths, f.Name)
		fmt.Fprintf(&yaml, "%s: rel/%s\n", f.Name, f.Name)
		w := filepath.Join(dir, "rel", f.Name)
		if f.Value.Type() == pathsType {
			w = "[" + w + "]"
		}
		want[f.Name] = w
	})
	for _, name := range []string{"cert", "keyless-cert", "keyless-key", "keyless-ca", "static", "ticket-secret", "roots",
		"acme-storage", "acme-ca-roots", "public-key"} {
		if _, ok := want[name]; !ok {
			t.Errorf("--%s is not a path flag", name)
		}
	}
	path := filepath.Join(dir, "edge.yaml")
	if err := os.WriteFile(path, []byte(yaml.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := applyConfigFile(flags, path); err != nil {
		t.Fatal(err)
	}
	for name, w := range want {
		if got := flags.Lookup(name).Value.String(); got != w {
			t.Errorf("--%s from the config file = %q, want %q", name, got, w)
		}
	}
	t.Logf("path flags: %v", paths)
}
