package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/tkeyless/tkeyless/node"
)

// TestAdmissionFlags: the command line overrides the file before the
// defaults derived from it are filled in, so --max-queue alone also sets
// the per-identity share to half of it (not half of the file's queue).
func TestAdmissionFlags(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.yaml")
	const file = `name: a
data_dir: data
peer_listen: 127.0.0.1:2407
tls: {ca: ca.pem, cert: a.pem, key: a-key.pem}
secrets: {key_file: secrets.key}
peers: [{name: b, addr: "b:2407"}]
max_queue: 64
`
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	load := func(args ...string) (node.Config, error) {
		var f admissionFlags
		cmd := &cobra.Command{Use: "serve"}
		f.register(cmd)
		if err := cmd.ParseFlags(args); err != nil {
			t.Fatal(err)
		}
		if err := f.check(cmd); err != nil {
			return node.Config{}, err
		}
		return node.LoadConfigWith(path, f.override(cmd))
	}
	for _, tc := range []struct {
		args               []string
		queue, perIdentity int
	}{
		{nil, 64, 32},
		{[]string{"--max-queue", "10"}, 10, 5},
		{[]string{"--max-queue", "10", "--max-queue-per-identity", "7"}, 10, 7},
	} {
		cfg, err := load(tc.args...)
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if cfg.MaxQueue != tc.queue || cfg.MaxQueuePerIdentity != tc.perIdentity {
			t.Errorf("%v: max_queue %d, per identity %d; want %d, %d", tc.args, cfg.MaxQueue, cfg.MaxQueuePerIdentity, tc.queue, tc.perIdentity)
		}
	}
	for _, args := range [][]string{{"--max-queue", "0"}, {"--sign-timeout", "-1s"}, {"--max-concurrent-sessions", "-2"}} {
		if _, err := load(args...); err == nil || !strings.Contains(err.Error(), "must be positive") {
			t.Errorf("%v: %v, want refused as not positive", args, err)
		}
	}
}
