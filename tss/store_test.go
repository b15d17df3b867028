package tss

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testSealer makes a fresh secrets key for a test.
func testSealer(t *testing.T) *Sealer {
	t.Helper()
	path := filepath.Join(t.TempDir(), "secrets.key")
	if err := GenerateKeyFile(path); err != nil {
		t.Fatal(err)
	}
	s, err := NewKeyFileSealer(path)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestStoreRoundTrip(t *testing.T) {
	shares := fixtureShares(t, 1, 2)
	st, err := OpenStore(t.TempDir(), testSealer(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Save(shares[0]); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(st.path(shares[0].KeyID()))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("share file mode %v, want 0600", fi.Mode().Perm())
	}
	raw, _ := os.ReadFile(st.path(shares[0].KeyID()))
	if !strings.HasPrefix(string(raw), "age-encryption.org/v1") || strings.Contains(string(raw), "Xi") {
		t.Fatal("share file is not encrypted")
	}
	ids, err := st.List()
	if err != nil || len(ids) != 1 || ids[0] != shares[0].KeyID() {
		t.Fatalf("List = %v, %v", ids, err)
	}
	got, err := st.Load(ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if !got.PublicKey().Equal(shares[0].PublicKey()) || got.Self != "a" || got.Threshold != 1 {
		t.Fatalf("loaded share differs")
	}
	// The loaded share still signs with its partner.
	d := digests()["SHA-256"]
	if _, err := runSign(t, []*Share{got, shares[1]}, d, nil); err != nil {
		t.Fatalf("sign with reloaded share: %v", err)
	}
}

func TestStoreTruncatedShare(t *testing.T) {
	shares := fixtureShares(t, 1, 2)
	st, err := OpenStore(t.TempDir(), testSealer(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Save(shares[0]); err != nil {
		t.Fatal(err)
	}
	p := st.path(shares[0].KeyID())
	b, _ := os.ReadFile(p)
	if err := os.WriteFile(p, b[:len(b)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = st.Load(shares[0].KeyID())
	if err == nil || !strings.Contains(err.Error(), "truncated or corrupt") {
		t.Fatalf("want a truncated-file error, got %v", err)
	}
	// The rest of the store is untouched and still listed.
	if ids, err := st.List(); err != nil || len(ids) != 1 {
		t.Fatalf("List after corruption = %v, %v", ids, err)
	}
}

func TestStoreWrongKey(t *testing.T) {
	shares := fixtureShares(t, 1, 2)
	dir := t.TempDir()
	st, err := OpenStore(dir, testSealer(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Save(shares[0]); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(st.path(shares[0].KeyID()))
	for name, s := range map[string]func() (*Sealer, error){
		"other key file": func() (*Sealer, error) { return testSealer(t), nil },
		"passphrase":     func() (*Sealer, error) { return NewPassphraseSealer("not the right one at all") },
	} {
		sealer, err := s()
		if err != nil {
			t.Fatal(err)
		}
		other, _ := OpenStore(dir, sealer)
		_, err = other.Load(shares[0].KeyID())
		if err == nil || !strings.Contains(err.Error(), "wrong") || !strings.Contains(err.Error(), "nothing was changed") {
			t.Fatalf("%s: want a wrong-key error, got %v", name, err)
		}
	}
	after, _ := os.ReadFile(st.path(shares[0].KeyID()))
	if string(before) != string(after) {
		t.Fatal("a failed load changed the share file")
	}
	if _, err := st.Load(shares[0].KeyID()); err != nil {
		t.Fatalf("the right key no longer opens the share: %v", err)
	}
	// A plaintext share is refused when a key is configured.
	plain, _ := OpenStore(t.TempDir(), nil)
	if err := plain.Save(shares[0]); err == nil {
		t.Fatal("saved a share without a secrets key")
	}
}

func TestPassphraseSealer(t *testing.T) {
	if _, err := NewPassphraseSealer("short"); err == nil {
		t.Fatal("accepted a short passphrase")
	}
	s, err := NewPassphraseSealer("correct horse battery staple")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "pp.age")
	pp := testPreParams(t, 0)
	if err := SavePreParams(p, pp, s); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadPreParams(p, s); err != nil {
		t.Fatal(err)
	}
}

func TestPreParamsFileErrors(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "pp.json")
	b, _ := os.ReadFile(filepath.Join("testdata", "preparams", "party-0.json"))
	os.WriteFile(p, b[:100], 0o600)
	if _, err := LoadPreParams(p, nil); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("want truncated error, got %v", err)
	}
	os.WriteFile(p, []byte(`{"NTildei": 5}`), 0o600)
	if _, err := LoadPreParams(p, nil); err == nil {
		t.Fatal("accepted invalid pre-parameters")
	}
	// Encrypted and truncated.
	s := testSealer(t)
	if err := SavePreParams(p, testPreParams(t, 0), s); err != nil {
		t.Fatal(err)
	}
	enc, _ := os.ReadFile(p)
	os.WriteFile(p, enc[:len(enc)/2], 0o600)
	if _, err := LoadPreParams(p, s); err == nil || !strings.Contains(err.Error(), "truncated or corrupt") {
		t.Fatalf("want truncated error, got %v", err)
	}
}
