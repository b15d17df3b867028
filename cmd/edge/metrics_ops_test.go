package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"

	"github.com/tkeyless/tkeyless/internal/version"
	"github.com/tkeyless/tkeyless/tlsglue"
)

// TestChainExpiryMetrics: every served chain has its expiry gauge, by its first name, and a
// SIGHUP reload updates each; build_info names this build.
func TestChainExpiryMetrics(t *testing.T) {
	site := newTestSite(t)
	dir := t.TempDir()
	asCA := func(c *x509.Certificate) {
		c.IsCA, c.KeyUsage, c.ExtKeyUsage, c.DNSNames = true, x509.KeyUsageCertSign, nil, nil
	}
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := certFrom(t, "Metrics CA", caKey, nil, caKey, asCA)
	leafFor := func(name string, notAfter time.Time) *x509.Certificate {
		return certFrom(t, name, site.leafKey, ca, caKey, func(c *x509.Certificate) {
			c.DNSNames, c.NotAfter = []string{name}, notAfter.Truncate(time.Second)
		})
	}
	a1, b1 := leafFor("a.test", time.Now().Add(20*24*time.Hour)), leafFor("b.test", time.Now().Add(40*24*time.Hour))
	fileA, fileB := writePEM(t, dir, "a.pem", "CERTIFICATE", a1.Raw, ca.Raw), writePEM(t, dir, "b.pem", "CERTIFICATE", b1.Raw, ca.Raw)
	e, err := newTestEdge(t, "--cert", fileA, "--cert", fileB, "--signer", "file://"+site.keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	expiry := func(name string) int64 { return int64(gaugeValue(t, e.metrics.certNotAfter.WithLabelValues(name))) }
	if got, want := expiry("a.test"), a1.NotAfter.Unix(); got != want {
		t.Errorf("a.test expiry %d, want %d", got, want)
	}
	if got, want := expiry("b.test"), b1.NotAfter.Unix(); got != want {
		t.Errorf("b.test expiry %d, want %d", got, want)
	}

	a2, b2 := leafFor("a.test", time.Now().Add(80*24*time.Hour)), leafFor("b.test", time.Now().Add(90*24*time.Hour))
	copyFile(t, writePEM(t, t.TempDir(), "a.pem", "CERTIFICATE", a2.Raw, ca.Raw), fileA)
	copyFile(t, writePEM(t, t.TempDir(), "b.pem", "CERTIFICATE", b2.Raw, ca.Raw), fileB)
	if !e.reloadChains(direct(e.setCert)) {
		t.Fatal("reload refused")
	}
	if got, want := expiry("a.test"), a2.NotAfter.Unix(); got != want {
		t.Errorf("after reload: a.test expiry %d, want %d", got, want)
	}
	if got, want := expiry("b.test"), b2.NotAfter.Unix(); got != want {
		t.Errorf("after reload: b.test expiry %d, want %d", got, want)
	}
	// A reload applies whole or not at all: when the second chain cannot be served, the
	// first is not served either.
	served := 0
	refuseSecond := func(c *tlsglue.Chain) (func() error, error) {
		if c.Leaf.DNSNames[0] == "b.test" {
			return nil, errors.New("no stapler for b.test")
		}
		return func() error { served++; return nil }, nil
	}
	if e.reloadChains(refuseSecond) || served != 0 {
		t.Errorf("a reload whose second chain has no route: applied, %d chains served", served)
	}

	families, err := e.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	v := version.Get()
	var build *dto.Metric
	for _, f := range families {
		if f.GetName() == "tkeyless_edge_build_info" && len(f.GetMetric()) == 1 {
			build = f.GetMetric()[0]
		}
	}
	if build == nil {
		t.Fatal("no tkeyless_edge_build_info")
	}
	labels := map[string]string{}
	for _, l := range build.GetLabel() {
		labels[l.GetName()] = l.GetValue()
	}
	if labels["version"] != v.Version || labels["go"] != v.Go || labels["commit"] == "" || build.GetGauge().GetValue() != 1 {
		t.Errorf("build_info %v = %v, want version %s, go %s", labels, build.GetGauge().GetValue(), v.Version, v.Go)
	}
}

// TestDurMsIsInteger: the edge logs dur_ms as whole milliseconds, as every tkeyless component
// should (zerolog's Dur writes a float with the process's settings).
func TestDurMsIsInteger(t *testing.T) {
	var buf bytes.Buffer
	h := &signHealth{log: zerolog.New(&buf).Level(zerolog.DebugLevel)}
	h.record(tlsglue.SignEvent{Key: "3f2a", Duration: 1500 * time.Microsecond})
	var line map[string]json.RawMessage
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("%v: %s", err, buf.String())
	}
	if got := string(line["dur_ms"]); got != "1" {
		t.Errorf("dur_ms = %s, want the integer 1", got)
	}
}
