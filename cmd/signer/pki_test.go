package main

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runSigner runs the signer command line in-process and returns what it
// wrote to stderr.
func runSigner(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := rootCmd()
	var stderr bytes.Buffer
	root.SetOut(io.Discard)
	root.SetErr(&stderr)
	root.SetArgs(args)
	err := root.Execute()
	return stderr.String(), err
}

// TestPKIRevokeTwice: `signer pki revoke` given a certificate twice, then
// again, lists its serial once in the CRL and says it was already revoked.
func TestPKIRevokeTwice(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	for _, args := range [][]string{
		{"pki", "init", "--dir", dir},
		{"pki", "issue", "--dir", dir, "--name", "e1", "--role", "edge"},
		{"pki", "issue", "--dir", dir, "--name", "e2", "--role", "edge"},
	} {
		if out, err := runSigner(t, args...); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	e1, e2 := filepath.Join(dir, "e1.pem"), filepath.Join(dir, "e2.pem")
	crlPath := filepath.Join(dir, "ca.crl")
	entries := func() int {
		t.Helper()
		b, err := os.ReadFile(crlPath)
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(b)
		if blk == nil {
			t.Fatalf("%s holds no PEM", crlPath)
		}
		crl, err := x509.ParseRevocationList(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return len(crl.RevokedCertificateEntries)
	}

	out1, err := runSigner(t, "pki", "revoke", "--dir", dir, "--cert", e1, "--cert", e1)
	if err != nil {
		t.Fatalf("first revoke: %v\n%s", err, out1)
	}
	if n := entries(); n != 1 {
		t.Fatalf("e1 given twice: %d CRL entries, want 1", n)
	}
	out2, err := runSigner(t, "pki", "revoke", "--dir", dir, "--cert", e1, "--cert", e2)
	if err != nil {
		t.Fatalf("second revoke: %v\n%s", err, out2)
	}
	if n := entries(); n != 2 {
		t.Fatalf("e1 again and e2: %d CRL entries, want 2", n)
	}
	if strings.Count(out1, `revoked "e1"`) != 1 || !strings.Contains(out1, "CRL "+crlPath+": 1 revoked") {
		t.Fatalf("first revoke said:\n%s", out1)
	}
	if !strings.Contains(out2, `already revoked "e1"`) || !strings.Contains(out2, `revoked "e2"`) || !strings.Contains(out2, "CRL "+crlPath+": 2 revoked") {
		t.Fatalf("second revoke said:\n%s", out2)
	}
}

// TestPKIRevokeBadCertFile: a --cert file that is not a PEM certificate is
// refused with its name, and no CRL is written.
func TestPKIRevokeBadCertFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	if out, err := runSigner(t, "pki", "init", "--dir", dir); err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}
	notPEM := filepath.Join(t.TempDir(), "notpem.pem")
	garbled := filepath.Join(t.TempDir(), "garbled.pem")
	if err := os.WriteFile(notPEM, []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(garbled, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("junk")}), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{notPEM, garbled} {
		_, err := runSigner(t, "pki", "revoke", "--dir", dir, "--cert", path)
		if err == nil || !strings.Contains(err.Error(), path) {
			t.Fatalf("--cert %s: %v, want an error naming the file", path, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "ca.crl")); !os.IsNotExist(err) {
		t.Fatalf("a CRL was written: %v", err)
	}
}
