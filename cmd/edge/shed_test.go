package main

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"
	"github.com/spf13/pflag"

	"github.com/tkeyless/tkeyless/keyless"
	"github.com/tkeyless/tkeyless/tlsglue"
)

// Shedding is overload, not sickness: /healthz stays 200 with "overloaded" while the edge sheds,
// shed handshakes do not count towards "cannot sign", and "cannot sign" wins over "overloaded".
func TestSignHealthOverloaded(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	h := &signHealth{log: zerolog.Nop(), now: func() time.Time { return now }}
	status := func(view http.Handler) (int, string) {
		rec := httptest.NewRecorder()
		view.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
		return rec.Code, rec.Body.String()
	}
	shed := tlsglue.SignEvent{Err: &tlsglue.ShedError{Reason: tlsglue.ShedQueueFull}}
	for range 3 * failuresBeforeUnhealthy {
		h.record(shed)
	}
	if code, body := status(h.public()); code != 200 || body != "overloaded" {
		t.Fatalf("public, shedding: %d %q, want 200 overloaded", code, body)
	}
	if code, body := status(h.detail()); code != 200 || !strings.Contains(body, "overloaded") || !strings.Contains(body, "queue is full") {
		t.Fatalf("detail, shedding: %d %q", code, body)
	}

	now = now.Add(overloadedFor)
	if code, body := status(h.public()); code != 200 || body != "ok" {
		t.Fatalf("public, %v after the last shed: %d %q, want ok", overloadedFor, code, body)
	}

	h.record(shed)
	fail := tlsglue.SignEvent{Err: errors.New("keyless signer 10.0.0.1:2407: connection refused")}
	for range failuresBeforeUnhealthy {
		h.record(fail)
	}
	if code, body := status(h.public()); code != http.StatusServiceUnavailable || body != "cannot sign" {
		t.Fatalf("public, shedding and failing: %d %q, want 503 cannot sign", code, body)
	}
}

// parseShedFlags registers the shed flags on a fresh flag set and parses args.
func parseShedFlags(t *testing.T, args ...string) *shedFlags {
	t.Helper()
	o := &shedFlags{}
	f := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	o.register(f)
	if err := f.Parse(args); err != nil {
		t.Fatal(err)
	}
	return o
}

func TestShedFlags(t *testing.T) {
	ref, err := parseKeyRef("keyless://10.0.0.1:2407,10.0.0.2:2407,10.0.0.3:2407")
	if err != nil {
		t.Fatal(err)
	}
	o := parseShedFlags(t, "--client-allow", "192.0.2.9/24", "--client-allow", "::ffff:10.0.0.1", "--client-ipv4-prefix", "32", "--client-rate", "5")
	sh, err := o.shedder(ref, 8*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	p := sh.Policy()
	want := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("10.0.0.1/32")}
	if p.MaxInFlight != 3*signingSlotsPerSigner || p.MaxQueue != p.MaxInFlight || p.ClientShare != p.MaxInFlight || p.ClientRate != 5 || p.ClientBurst != tlsglue.DefaultClientBurst ||
		p.IPv4Prefix != 32 || p.TargetLatency != 2*time.Second || p.IPv6Prefix != tlsglue.DefaultIPv6Prefix || len(p.Allow) != 2 || p.Allow[0] != want[0] || p.Allow[1] != want[1] {
		t.Errorf("policy = %+v", p)
	}

	off, err := parseShedFlags(t, "--shed=false", "--client-rate", "5").shedder(ref, 8*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if p := off.Policy(); p.MaxInFlight != 0 || p.ClientRate != 0 {
		t.Errorf("--shed=false: policy %+v sheds", p)
	}

	for _, bad := range [][]string{
		{"--client-allow", "not-an-address"},
		{"--client-allow", "10.0.0.0/33"},
		{"--client-ipv4-prefix", "0"},
		{"--client-ipv6-prefix", "129"},
		{"--max-signing", "-1"},
		{"--client-burst", "0"},
		{"--client-share", "-1"},
		{"--sign-latency-target", "-1s"},
	} {
		if _, err := parseShedFlags(t, bad...).shedder(ref, 8*time.Second); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

// A handshake the signers refused as overloaded (keyless code 0x82, as the keyless client
// returns it after trying every signer it had time for) is overload too: /healthz stays 200
// "overloaded" however many there are, and the shed metric counts it under signer_overloaded,
// not as a signer error.
func TestSignersOverloadedIsOverload(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	h := &signHealth{log: zerolog.Nop(), now: func() time.Time { return now }}
	sh, err := tlsglue.NewShedder(tlsglue.ShedPolicy{})
	if err != nil {
		t.Fatal(err)
	}
	m := newEdgeMetrics(sh)
	refused := tlsglue.SignEvent{Key: "3f2a", Duration: 2 * time.Millisecond, Err: fmt.Errorf("keyless sign with key 3f2a: %w",
		errors.Join(&keyless.RemoteError{Code: keyless.ErrOverloaded, Endpoint: "10.0.0.1:2407"},
			&keyless.RemoteError{Code: keyless.ErrOverloaded, Endpoint: "10.0.0.2:2407"}))}
	for range 3 * failuresBeforeUnhealthy {
		h.record(refused)
		m.sign(refused)
	}
	for name, view := range map[string]http.Handler{"public": h.public(), "detail": h.detail()} {
		rec := httptest.NewRecorder()
		view.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
		if rec.Code != 200 || !strings.HasPrefix(rec.Body.String(), "overloaded") {
			t.Errorf("%s /healthz with the signers overloaded: %d %q, want 200 overloaded", name, rec.Code, rec.Body.String())
		}
	}
	if got := counterValue(t, m.shed.WithLabelValues(shedSignerOverloaded)); got != 3*failuresBeforeUnhealthy {
		t.Errorf("shed{reason=%q} = %v, want %d", shedSignerOverloaded, got, 3*failuresBeforeUnhealthy)
	}
	if got := counterValue(t, m.signerErrors); got != 0 {
		t.Errorf("signer errors = %v, want 0: overload is not a signer failure", got)
	}

	// Any other failure still counts: a signer that cannot sign is not overloaded.
	fail := tlsglue.SignEvent{Err: &keyless.RemoteError{Code: keyless.ErrNoQuorum, Endpoint: "10.0.0.1:2407"}}
	for range failuresBeforeUnhealthy {
		h.record(fail)
		m.sign(fail)
	}
	rec := httptest.NewRecorder()
	h.public().ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
	if rec.Code != http.StatusServiceUnavailable {
		t.Errorf("after %d no-quorum answers: %d %q, want 503", failuresBeforeUnhealthy, rec.Code, rec.Body.String())
	}
	if got := counterValue(t, m.signerErrors); got != failuresBeforeUnhealthy {
		t.Errorf("signer errors = %v, want %d", got, failuresBeforeUnhealthy)
	}
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var d dto.Metric
	if err := c.Write(&d); err != nil {
		t.Fatal(err)
	}
	return d.GetCounter().GetValue()
}
