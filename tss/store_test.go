package tss

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
	// A marker of the plaintext JSON long enough not to occur in ~20 KB of
	// ciphertext by chance (the two bytes "Xi" do, one run in three).
	if !strings.HasPrefix(string(raw), "age-encryption.org/v1") || strings.Contains(string(raw), `"threshold":`) {
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

// A share sealed with one passphrase and opened with another: a clear error
// naming the file, the file untouched, and the right passphrase still opens
// it.
func TestStoreWrongPassphrase(t *testing.T) {
	shares := fixtureShares(t, 1, 2)
	right, err := NewPassphraseSealer("correct horse battery staple")
	if err != nil {
		t.Fatal(err)
	}
	wrong, err := NewPassphraseSealer("correct horse battery stable")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	st, _ := OpenStore(dir, right)
	if err := st.Save(shares[0]); err != nil {
		t.Fatal(err)
	}
	path := st.path(shares[0].KeyID())
	before, _ := os.ReadFile(path)
	other, _ := OpenStore(dir, wrong)
	_, err = other.Load(shares[0].KeyID())
	if !errors.Is(err, ErrWrongKey) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "passphrase does not decrypt") {
		t.Fatalf("want ErrWrongKey naming %s and the passphrase, got %v", path, err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Fatal("a failed load changed the share file")
	}
	if _, err := st.Load(shares[0].KeyID()); err != nil {
		t.Fatalf("the right passphrase no longer opens the share: %v", err)
	}
}

// A wrong key must not make the node regenerate (and so overwrite) its
// pre-parameters: their Paillier key is in every share it holds.
func TestLoadOrGeneratePreParamsWrongKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "preparams.age")
	if err := SavePreParams(path, testPreParams(t, 0), testSealer(t)); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second) // generation would take far longer
	defer cancel()
	_, generated, err := LoadOrGeneratePreParams(ctx, path, testSealer(t), nil)
	if !errors.Is(err, ErrWrongKey) || generated {
		t.Fatalf("want ErrWrongKey and no generation, got generated=%t, %v", generated, err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Fatal("pre-parameters file changed")
	}
}

// A share file cut anywhere gives a "truncated or corrupt" error naming it,
// and the other keys in the store still list and load.
func TestStoreDamagedShareCostsOnlyItself(t *testing.T) {
	damaged, intact := fixtureShares(t, 1, 2)[0], fixtureShares(t, 1, 3)[0]
	st, err := OpenStore(t.TempDir(), testSealer(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*Share{damaged, intact} {
		if err := st.Save(s); err != nil {
			t.Fatal(err)
		}
	}
	path := st.path(damaged.KeyID())
	whole, _ := os.ReadFile(path)
	for name, b := range map[string][]byte{
		"empty":             {},
		"inside first line": whole[:10],
		"inside header":     whole[:60],
		"in the payload":    whole[:len(whole)-40],
		"last byte":         whole[:len(whole)-1],
		"flipped bit":       append(append([]byte{}, whole[:len(whole)-5]...), whole[len(whole)-5]^1, 0, 0, 0, 0)[:len(whole)],
	} {
		t.Run(name, func(t *testing.T) {
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := st.Load(damaged.KeyID())
			if err == nil || !strings.Contains(err.Error(), "truncated or corrupt") || !strings.Contains(err.Error(), path) {
				t.Fatalf("want a truncated-or-corrupt error naming %s, got %v", path, err)
			}
			if errors.Is(err, ErrWrongKey) {
				t.Fatalf("damage reported as a wrong key: %v", err)
			}
			ids, err := st.List()
			if err != nil || len(ids) != 2 {
				t.Fatalf("List = %v, %v; want both keys", ids, err)
			}
			if _, err := st.Load(intact.KeyID()); err != nil {
				t.Fatalf("intact share no longer loads: %v", err)
			}
		})
	}
}

func TestStoreStageCommitDiscard(t *testing.T) {
	shares := fixtureShares(t, 1, 2)
	id := shares[0].KeyID()
	st, err := OpenStore(t.TempDir(), testSealer(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Save(shares[0]); err != nil {
		t.Fatal(err)
	}
	// Stand-in for a resharing's output: another share of the same key.
	next := shares[1]
	self := func() string {
		t.Helper()
		s, err := st.Load(id)
		if err != nil {
			t.Fatal(err)
		}
		return s.Self
	}

	// Staged: the current share stays in use, List is unchanged.
	if err := st.Stage(next); err != nil {
		t.Fatal(err)
	}
	if got := self(); got != "a" {
		t.Fatalf("Load after Stage returned %s's share, want the current (a)", got)
	}
	if ids, _ := st.List(); len(ids) != 1 {
		t.Fatalf("List after Stage = %v", ids)
	}
	if ids, _ := st.Staged(); len(ids) != 1 || ids[0] != id {
		t.Fatalf("Staged = %v, want [%s]", ids, id)
	}
	// Discarded: nothing changes.
	if err := st.Discard(id); err != nil {
		t.Fatal(err)
	}
	if err := st.Discard(id); err != nil {
		t.Fatalf("second Discard: %v", err)
	}
	if got := self(); got != "a" {
		t.Fatal("Discard changed the current share")
	}
	if _, err := st.Commit(id); err == nil {
		t.Fatal("committed a share that was never staged")
	}
	// A damaged staged share is not committed; the current one stays.
	if err := st.Stage(next); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(st.stagedPath(id))
	os.WriteFile(st.stagedPath(id), b[:len(b)/2], 0o600)
	if _, err := st.Commit(id); err == nil || !strings.Contains(err.Error(), "current share kept") {
		t.Fatalf("want a refusal to commit a damaged share, got %v", err)
	}
	if got := self(); got != "a" {
		t.Fatal("a failed Commit changed the current share")
	}
	// Committed: the staged share replaces the current one.
	if err := st.Stage(next); err != nil {
		t.Fatal(err)
	}
	got, err := st.Commit(id)
	if err != nil || got.Self != "b" || self() != "b" {
		t.Fatalf("Commit = %v, %v; want b's share current", got, err)
	}
	if ids, _ := st.Staged(); len(ids) != 0 {
		t.Fatalf("Staged after Commit = %v", ids)
	}
	// Deleted: gone, and a second Delete is not an error.
	if err := st.Delete(id); err != nil {
		t.Fatal(err)
	}
	if err := st.Delete(id); err != nil {
		t.Fatal(err)
	}
	if ids, _ := st.List(); len(ids) != 0 {
		t.Fatalf("List after Delete = %v", ids)
	}
	if _, err := st.Load(id); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load after Delete: %v", err)
	}
}
