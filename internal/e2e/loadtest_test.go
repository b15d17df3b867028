package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// loadReport is the part of loadtest's --json report these tests read.
type loadReport struct {
	Requests  int            `json:"requests"`
	Successes int            `json:"successes"`
	Errors    int            `json:"errors"`
	ByCause   map[string]int `json:"errors_by_cause"`
	Full      int            `json:"full_handshakes"`
	Resumed   int            `json:"resumed_handshakes"`
	Reused    int            `json:"reused_connections"`
}

// runLoadtest runs the loadtest binary to completion (bounded by a minute,
// far beyond its own --duration) and returns its report and exit error.
func runLoadtest(t *testing.T, args ...string) (loadReport, string, error) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "report.json")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binaries(t), "loadtest"), append(args, "--json", out, "--no-progress")...)
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("loadtest %s did not stop by itself:\n%s", strings.Join(args, " "), output.String())
	}
	var r loadReport
	b, rerr := os.ReadFile(out)
	if rerr != nil {
		t.Fatalf("loadtest wrote no report (%v):\n%s", rerr, output.String())
	}
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("report: %v", err)
	}
	return r, output.String(), err
}

// The load tester against a real edge whose key is a (1,2) cluster: the
// counts add up, full handshakes were signed by the cluster (one audit
// record each), resumed ones were not; and against a stopped edge it
// reports errors and stops, instead of hanging.
func TestLoadtestAgainstEdge(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	c := startCluster(t, 1, 2)
	certPath, webCA := c.siteCert(t)
	e := startEdge(t, c, certPath, staticSite(t))
	url := "https://" + e.addr + "/"
	before := c.auditCount()

	r, out, err := runLoadtest(t, "--url", url, "--ca", webCA, "--server-name", "localhost",
		"-c", "2", "-d", "3s", "--resume", "90")
	if err != nil {
		t.Fatalf("loadtest against a healthy edge: %v\n%s", err, out)
	}
	t.Logf("loadtest: %d requests, %d full, %d resumed, %d errors", r.Requests, r.Full, r.Resumed, r.Errors)
	if r.Requests == 0 || r.Requests != r.Successes+r.Errors {
		t.Fatalf("%d requests ≠ %d ok + %d errors", r.Requests, r.Successes, r.Errors)
	}
	if r.Full+r.Resumed+r.Reused != r.Successes || r.Resumed > r.Requests {
		t.Fatalf("%d full + %d resumed + %d reused ≠ %d ok", r.Full, r.Resumed, r.Reused, r.Successes)
	}
	if r.Errors != 0 || r.Full == 0 || r.Resumed == 0 {
		t.Fatalf("want full and resumed handshakes and no errors: %+v", r)
	}
	// The warm-up's full handshakes are signed too, and are not in the
	// report; every reported full handshake is one signature.
	if signed := c.auditCount() - before; signed < r.Full {
		t.Fatalf("%d full handshakes reported but the cluster signed only %d times", r.Full, signed)
	}

	e.proc.stop()
	start := time.Now()
	r, out, err = runLoadtest(t, "--url", url, "--ca", webCA, "--server-name", "localhost",
		"-c", "2", "-d", "2s", "--timeout", "1s")
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("loadtest against a stopped edge: %v, want a failing exit\n%s", err, out)
	}
	if r.Errors == 0 || r.Successes != 0 || r.Requests != r.Errors || len(r.ByCause) == 0 {
		t.Fatalf("against a stopped edge: %+v", r)
	}
	t.Logf("stopped edge: %d errors by cause %v in %v", r.Errors, r.ByCause, time.Since(start).Round(time.Millisecond))
}
