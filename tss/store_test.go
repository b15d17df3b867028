package tss

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestStoreRoundTrip(t *testing.T) {
	shares := fixtureShares(t, 1, 2)
	st, err := OpenStore(t.TempDir())
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
	st, err := OpenStore(t.TempDir())
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

func TestPreParamsFileErrors(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "pp.json")
	b, _ := os.ReadFile(filepath.Join("testdata", "preparams", "party-0.json"))
	os.WriteFile(p, b[:100], 0o600)
	if _, err := LoadPreParams(p); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("want truncated error, got %v", err)
	}
	os.WriteFile(p, []byte(`{"NTildei": 5}`), 0o600)
	if _, err := LoadPreParams(p); err == nil {
		t.Fatal("accepted invalid pre-parameters")
	}
}
