package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// loadReport is the part of loadtest's --json report these tests read.
type loadReport struct {
	Requests     int            `json:"requests"`
	Successes    int            `json:"successes"`
	Errors       int            `json:"errors"`
	ByCause      map[string]int `json:"errors_by_cause"`
	Full         int            `json:"full_handshakes"`
	Resumed      int            `json:"resumed_handshakes"`
	Reused       int            `json:"reused_connections"`
	Goodput      float64        `json:"goodput_rps"`
	FullTotal    latency        `json:"full_total"`
	ResumedTotal latency        `json:"resumed_total"`
}

type latency struct {
	N   int           `json:"n"`
	P50 time.Duration `json:"p50_ns"`
	P99 time.Duration `json:"p99_ns"`
}

// loadRun is a loadtest process running in the background.
type loadRun struct {
	args []string
	out  string
	cmd  *exec.Cmd
	done chan struct{}
	r    loadReport
	log  bytes.Buffer
	exit error // the process's exit status (nil: it exited 0)
	err  error // no report to read: it did not stop, or wrote none
}

// startLoad starts the loadtest binary; wait returns its report. It is bounded by two
// minutes, far beyond any --duration used here.
func startLoad(t *testing.T, args ...string) *loadRun {
	t.Helper()
	l := &loadRun{args: args, out: filepath.Join(t.TempDir(), "report.json"), done: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	cmd := exec.CommandContext(ctx, filepath.Join(binaries(t), "loadtest"), append(args, "--json", l.out, "--no-progress")...)
	cmd.Stdout, cmd.Stderr = &l.log, &l.log
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("loadtest: %v", err)
	}
	l.cmd = cmd
	go func() {
		defer close(l.done)
		defer cancel()
		l.exit = cmd.Wait()
		if l.exit != nil && ctx.Err() != nil {
			l.err = fmt.Errorf("did not stop by itself: %w", l.exit)
			return
		}
		b, err := os.ReadFile(l.out)
		if err != nil {
			l.err = fmt.Errorf("no report: %w", err)
			return
		}
		l.err = json.Unmarshal(b, &l.r)
	}()
	t.Cleanup(func() { cancel(); <-l.done })
	return l
}

// wait returns the report of a run that stopped by itself, whatever its exit
// status (a run against a stopped edge exits non-zero and still reports).
func (l *loadRun) wait(t *testing.T) loadReport {
	t.Helper()
	<-l.done
	if l.err != nil {
		t.Fatalf("loadtest %s: %v\n%s", strings.Join(l.args, " "), l.err, l.log.String())
	}
	return l.r
}

// runLoadtest runs the loadtest binary to completion and returns its report,
// its output and its exit error.
func runLoadtest(t *testing.T, args ...string) (loadReport, string, error) {
	t.Helper()
	l := startLoad(t, args...)
	r := l.wait(t)
	return r, l.log.String(), l.exit
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
