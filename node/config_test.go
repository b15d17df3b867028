package node

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// TestConfigDefaults: every setting an operator leaves out gets the value
// its documentation promises, and what an operator sets is kept.
func TestConfigDefaults(t *testing.T) {
	twoPeers := []Peer{{Name: "b", Addr: "b:1"}, {Name: "c", Addr: "c:1"}}
	var cfg Config
	cfg.Peers = twoPeers
	cfg.setDefaults()
	for _, tc := range []struct {
		setting   string
		got, want any
	}{
		{"sign_timeout", cfg.SignTimeout, Duration(10 * time.Second)},
		{"stall_timeout", cfg.StallTimeout, Duration(2 * time.Second)},
		{"max_queue", cfg.MaxQueue, 64},
		{"max_sessions", cfg.MaxSessions, 128},
		{"max_concurrent_sessions (the CPU count)", cfg.MaxConcurrentSessions, runtime.NumCPU()},
		{"max_queue_per_identity (max_queue / 2)", cfg.MaxQueuePerIdentity, 32},
		{"identity_queue (an identity without an override)", cfg.identityQueueLimit("edge"), 32},
		{"max_sessions_per_peer (max_sessions / nodes)", cfg.MaxSessionsPerPeer, 128 / 3},
		{"abort_budget", cfg.AbortBudget, 10},
		{"authority_window", cfg.AuthorityWindow, Duration(30 * time.Second)},
		{"keygen_timeout", cfg.KeygenTimeout, Duration(2 * time.Minute)},
		{"presign.depth (off)", cfg.Presign.Depth, 0},
		{"presign.max_age", cfg.Presign.MaxAge, Duration(10 * time.Minute)},
	} {
		if tc.got != tc.want {
			t.Errorf("default %s = %v, want %v", tc.setting, tc.got, tc.want)
		}
	}

	small := Config{MaxSessions: 16, Peers: twoPeers}
	small.setDefaults()
	if small.MaxSessionsPerPeer != 8 {
		t.Errorf("max_sessions_per_peer with max_sessions 16 and 3 nodes = %d, want the floor of 8", small.MaxSessionsPerPeer)
	}

	over := Config{MaxQueue: 8, IdentityQueue: map[string]int{"big": 6}}
	over.setDefaults()
	if over.MaxQueuePerIdentity != 4 || over.identityQueueLimit("big") != 6 || over.identityQueueLimit("small") != 4 {
		t.Errorf("max_queue 8, identity_queue {big: 6}: per identity %d, big %d, small %d; want 4, 6, 4",
			over.MaxQueuePerIdentity, over.identityQueueLimit("big"), over.identityQueueLimit("small"))
	}

	set := Config{SignTimeout: Duration(time.Second), MaxQueue: 3, MaxSessionsPerPeer: 5, AbortBudget: 1, Presign: PresignConfig{Depth: 2, MaxAge: Duration(time.Minute)}}
	set.setDefaults()
	if set.SignTimeout != Duration(time.Second) || set.MaxQueue != 3 || set.MaxSessionsPerPeer != 5 || set.AbortBudget != 1 || set.Presign.MaxAge != Duration(time.Minute) {
		t.Errorf("defaults overwrote settings: %+v", set)
	}
}

// TestConfigValidate: each inconsistent setting is named in the error.
func TestConfigValidate(t *testing.T) {
	valid := func() Config {
		c := Config{Name: "a", DataDir: "/d", PeerListen: ":1", TLS: TLSFiles{CA: "ca", Cert: "c", Key: "k"},
			Peers: []Peer{{Name: "b", Addr: "b:1"}}, Access: []Grant{{Identity: "edge", Keys: []string{"*"}}}}
		c.setDefaults()
		return c
	}
	if err := func() *Config { c := valid(); return &c }().Validate(); err != nil {
		t.Fatalf("a valid configuration: %v", err)
	}
	for _, tc := range []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"no name", func(c *Config) { c.Name = "" }, "name is required"},
		{"no data_dir", func(c *Config) { c.DataDir = "" }, "data_dir is required"},
		{"no peer_listen", func(c *Config) { c.PeerListen = "" }, "peer_listen is required"},
		{"no tls key", func(c *Config) { c.TLS.Key = "" }, "tls.ca, tls.cert and tls.key are required"},
		{"negative max_sessions", func(c *Config) { c.MaxSessions = -1 }, "must be positive"},
		{"negative max_queue", func(c *Config) { c.MaxQueue = -1 }, "must be positive"},
		{"negative max_concurrent_sessions", func(c *Config) { c.MaxConcurrentSessions = -1 }, "must be positive"},
		{"an identity_queue of zero", func(c *Config) { c.IdentityQueue = map[string]int{"edge": 0} }, `identity_queue "edge"`},
		{"negative abort_budget", func(c *Config) { c.AbortBudget = -1 }, "abort_budget -1"},
		{"presign.depth too deep", func(c *Config) { c.Presign.Depth = 65 }, "presign.depth 65"},
		{"negative presign.depth", func(c *Config) { c.Presign.Depth = -1 }, "presign.depth -1"},
		{"peer without address", func(c *Config) { c.Peers = append(c.Peers, Peer{Name: "c"}) }, "needs name and addr"},
		{"peer named like this node", func(c *Config) { c.Peers = append(c.Peers, Peer{Name: "a", Addr: "x"}) }, `peer name "a" used twice`},
		{"peer named twice", func(c *Config) { c.Peers = append(c.Peers, Peer{Name: "b", Addr: "x"}) }, `peer name "b" used twice`},
		{"grant without keys", func(c *Config) { c.Access = append(c.Access, Grant{Identity: "edge2"}) }, "needs identity and keys"},
		{"grant without identity", func(c *Config) { c.Access = append(c.Access, Grant{Keys: []string{"*"}}) }, "needs identity and keys"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := valid()
			tc.change(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate: %v, want an error saying %q", err, tc.want)
			}
		})
	}
}

// TestLoadConfig: a YAML file is read strictly (an unknown setting is a
// mistake, not something to ignore), relative paths are taken from the
// file's directory, durations are Go durations, and the result is
// validated.
func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const good = `name: a
data_dir: data
peer_listen: 127.0.0.1:2407
tls: {ca: /etc/tkeyless/ca.pem, cert: pki/a.pem, key: pki/a-key.pem}
secrets: {key_file: secrets.key}
peers: [{name: b, addr: "b:2407"}]
sign_timeout: 1500ms
presign: {depth: 4, max_age: 90s}
revocation: {crl: pki/ca.crl, list: revoked.txt}
`
	cfg, err := LoadConfig(write("good.yaml", good))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ what, got, want string }{
		{"data_dir", cfg.DataDir, filepath.Join(dir, "data")},
		{"tls.cert", cfg.TLS.Cert, filepath.Join(dir, "pki", "a.pem")},
		{"tls.ca (absolute)", cfg.TLS.CA, "/etc/tkeyless/ca.pem"},
		{"secrets.key_file", cfg.Secrets.KeyFile, filepath.Join(dir, "secrets.key")},
		{"revocation.crl", cfg.Revocation.CRL, filepath.Join(dir, "pki", "ca.crl")},
		{"revocation.list", cfg.Revocation.List, filepath.Join(dir, "revoked.txt")},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %q, want %q", tc.what, tc.got, tc.want)
		}
	}
	if cfg.SignTimeout != Duration(1500*time.Millisecond) || cfg.Presign.MaxAge != Duration(90*time.Second) || cfg.Presign.Depth != 4 {
		t.Errorf("durations or presign read wrong: %+v", cfg)
	}
	if cfg.StallTimeout != Duration(2*time.Second) {
		t.Errorf("defaults not applied: stall_timeout %v", cfg.StallTimeout)
	}

	for _, tc := range []struct{ name, body, want string }{
		{"unknown setting", good + "colour: blue\n", "colour"},
		{"duration without a unit", strings.Replace(good, "1500ms", "1500", 1), "line 7"},
		{"invalid", strings.Replace(good, "name: a\n", "", 1), "name is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := write(tc.name+".yaml", tc.body)
			_, err := LoadConfig(p)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), p) {
				t.Fatalf("LoadConfig: %v, want an error naming %s and saying %q", err, p, tc.want)
			}
		})
	}
	if _, err := LoadConfig(filepath.Join(dir, "missing.yaml")); err == nil || !strings.Contains(err.Error(), "read config") {
		t.Fatalf("LoadConfig of a missing file: %v", err)
	}

	out, err := yaml.Marshal(struct {
		D Duration `yaml:"d"`
	}{Duration(1500 * time.Millisecond)})
	if err != nil || string(out) != "d: 1.5s\n" {
		t.Fatalf("a Duration marshals as %q, %v; want a Go duration string", out, err)
	}
}

// TestSealerChoice: the secrets key comes from a key file, else a
// passphrase file, else TKEYLESS_PASSPHRASE; with none of them the error
// says how to make one.
func TestSealerChoice(t *testing.T) {
	dir := t.TempDir()
	pass := filepath.Join(dir, "pass")
	if err := os.WriteFile(pass, []byte("a passphrase long enough\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	short := filepath.Join(dir, "short")
	if err := os.WriteFile(short, []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		secrets Secrets
		env     string
		want    string // "" for a sealer
	}{
		{"passphrase file", Secrets{PassphraseFile: pass}, "", ""},
		{"environment", Secrets{}, "another long passphrase", ""},
		{"missing key file", Secrets{KeyFile: filepath.Join(dir, "none.key")}, "", "none.key"},
		{"missing passphrase file", Secrets{PassphraseFile: filepath.Join(dir, "none")}, "", "secrets passphrase"},
		{"short passphrase", Secrets{PassphraseFile: short}, "", "too short"},
		{"nothing", Secrets{}, "", "signer secrets-key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("TKEYLESS_PASSPHRASE", tc.env)
			cfg := Config{Secrets: tc.secrets}
			s, err := cfg.Sealer()
			switch {
			case tc.want == "" && (err != nil || s == nil):
				t.Fatalf("Sealer: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Sealer: %v, want an error saying %q", err, tc.want)
			}
		})
	}
}
