package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// floodReport is the part of loadtest's --json report the flood test reads.
type floodReport struct {
	Requests     int            `json:"requests"`
	Successes    int            `json:"successes"`
	Errors       int            `json:"errors"`
	ByCause      map[string]int `json:"errors_by_cause"`
	Full         int            `json:"full_handshakes"`
	Resumed      int            `json:"resumed_handshakes"`
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
	done chan struct{}
	r    floodReport
	log  bytes.Buffer
	err  error
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
	go func() {
		defer close(l.done)
		defer cancel()
		if err := cmd.Wait(); err != nil && ctx.Err() != nil {
			l.err = fmt.Errorf("did not stop by itself: %w", err)
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

func (l *loadRun) wait(t *testing.T) floodReport {
	t.Helper()
	<-l.done
	if l.err != nil {
		t.Fatalf("loadtest %s: %v\n%s", strings.Join(l.args, " "), l.err, l.log.String())
	}
	return l.r
}

// rssBytes reads a process's resident set from /proc.
func rssBytes(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// metric reads one sample of a series from a Prometheus text endpoint, 0 if absent.
func metric(t *testing.T, url, series string) float64 {
	t.Helper()
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(url)
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, _ := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v
		}
	}
	return 0
}

var auditDuration = regexp.MustCompile(`"dur_ms":([0-9.]+)`)

// longestAudit is the longest signing request in the audit records a node logged after skip
// bytes of its output.
func longestAudit(out string, skip int) time.Duration {
	var longest time.Duration
	for line := range strings.SplitSeq(out[min(skip, len(out)):], "\n") {
		if !strings.Contains(line, `"event":"sign"`) {
			continue
		}
		if m := auditDuration.FindStringSubmatch(line); m != nil {
			ms, _ := strconv.ParseFloat(m[1], 64)
			longest = max(longest, time.Duration(ms*float64(time.Millisecond)))
		}
	}
	return longest
}

// TestHandshakeFlood floods a (1,2) cluster's edge with full handshakes from one address
// (127.0.0.2) at ten times what the cluster can sign, for several seconds. Meanwhile a visitor
// from another address (127.0.0.3) makes one full handshake a second and nearly all of them
// succeed; a returning client keeps resuming about as fast as without the flood; the edge says
// "overloaded" and stays healthy; every process stays up with bounded memory; and no signer
// works on a request long past its deadline.
func TestHandshakeFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	// Longer than the default 5 s: this machine's two cores are shared with other test
	// suites, and a single (1,2) signature has been seen to take 1.5 s here under that load.
	const signTimeout = 10 * time.Second
	c := startCluster(t, 1, 2)
	certPath, webCA := c.siteCert(t)
	metricsAddr := freeAddrs(t, 1)[0]
	// One budget per address, so the flood (127.0.0.2) and the visitor (127.0.0.3) are two
	// clients; by default they would share 127.0.0.0/24. Every other knob keeps its default.
	e := startEdge(t, c, certPath, staticSite(t), "--client-ipv4-prefix", "32", "--metrics-listen", metricsAddr,
		"--sign-timeout", signTimeout.String())
	metrics := "http://" + metricsAddr + "/metrics"
	target := []string{"--url", "https://" + e.addr + "/", "--ca", webCA, "--server-name", "localhost"}

	// Unloaded: how fast a returning client resumes, and what the cluster signs per second
	// (from the allowed 127.0.0.1, as many in flight as the edge allows).
	unloaded := startLoad(t, append(target, "-c", "1", "-d", "3s", "--resume", "100")...).wait(t)
	if unloaded.ResumedTotal.N == 0 {
		t.Fatalf("resumption run resumed nothing: %+v", unloaded)
	}
	capacity := startLoad(t, append(target, "-c", "4", "-d", "4s", "--resume", "0")...).wait(t)
	if capacity.Successes == 0 {
		t.Fatalf("capacity run: %+v", capacity)
	}
	sessionTime := capacity.FullTotal.P50
	// With one signature at a time, a visitor may wait for the flood's running signature and
	// then needs its own: two signing times must fit in the deadline, and the cluster must
	// sign without errors before any flood. A machine this busy with other work cannot show
	// anything about shedding.
	perSignature := max(time.Duration(float64(time.Second)/capacity.Goodput), capacity.FullTotal.P99)
	if capacity.Errors > 0 || 2*perSignature > signTimeout {
		t.Skipf("this machine signs only %.2f/s now (load from elsewhere), p99 %v, errors %v before any flood: two signatures do not fit in the %v deadline",
			capacity.Goodput, capacity.FullTotal.P99, capacity.ByCause, signTimeout)
	}
	t.Logf("unloaded: %.2f full handshakes/s (p50 %v, errors %v); resumed p50 %v over %d", capacity.Goodput, sessionTime, capacity.ByCause,
		unloaded.ResumedTotal.P50, unloaded.ResumedTotal.N)

	procs := []*proc{e.proc}
	for _, sn := range c.nodes {
		procs = append(procs, sn.proc)
	}
	rssBefore := map[string]int64{}
	for _, p := range procs {
		rss, err := rssBytes(p.cmd.Process.Pid)
		if err != nil {
			t.Fatal(err)
		}
		rssBefore[p.name] = rss
	}
	auditFrom := map[string]int{}
	for _, sn := range c.nodes {
		auditFrom[sn.name] = len(sn.proc.Output())
	}

	// The public /healthz is read on a session resumed from before the flood (a full handshake
	// from the allowed address would still wait for a signing slot behind the flood).
	hc := newHealthClient(e.addr, webCA, t)
	if got := hc.get(t); got != "ok" {
		t.Fatalf("public /healthz before the flood: %q", got)
	}

	// One full handshake a second, unless this machine (shared with other suites) signs so
	// slowly that the visitor alone would take half of it: then half the capacity, so the test
	// still asks whether the flood leaves the visitor its share.
	visitRate := min(1, capacity.Goodput/2)
	if visitRate < 1 {
		t.Logf("the cluster signs only %.2f/s on this machine now; the visitor comes at %.2f/s instead of 1/s", capacity.Goodput, visitRate)
	}
	visitFor := 15 * time.Second
	if visitRate < 1 {
		visitFor = 30 * time.Second
	}
	floodRate := 10 * capacity.Goodput
	flood := startLoad(t, append(target, "--source", "127.0.0.2", "--rate", strconv.FormatFloat(floodRate, 'f', 1, 64),
		"--arrival", "poisson", "-d", (visitFor+5*time.Second).String(), "--resume", "0", "--timeout", signTimeout.String())...)
	// Measure once the flood is being shed (for whichever reason comes first), not before.
	waitFor(t, 20*time.Second, func() bool {
		shed := 0.0
		for _, reason := range []string{"client_budget", "client_share", "queue_full", "deadline"} {
			shed += metric(t, metrics, `tkeyless_edge_handshakes_shed_total{reason="`+reason+`"}`)
		}
		return shed > 0
	})
	visitor := startLoad(t, append(target, "--source", "127.0.0.3", "--rate", strconv.FormatFloat(visitRate, 'f', 2, 64),
		"-d", visitFor.String(), "--resume", "0", "--timeout", signTimeout.String())...)
	returning := startLoad(t, append(target, "-c", "1", "-d", "15s", "--resume", "100")...)

	// Resident memory while the flood lasts, sampled every 250 ms.
	var mu sync.Mutex
	rssMax := map[string]int64{}
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			for _, p := range procs {
				if rss, err := rssBytes(p.cmd.Process.Pid); err == nil {
					mu.Lock()
					rssMax[p.name] = max(rssMax[p.name], rss)
					mu.Unlock()
				}
			}
			select {
			case <-stopSampling:
				return
			case <-tick.C:
			}
		}
	}()

	v := visitor.wait(t)
	r := returning.wait(t)
	// The public health check, while the flood still runs.
	health := hc.get(t)
	f := flood.wait(t)
	close(stopSampling)
	<-sampled

	t.Logf("flood from 127.0.0.2 at %.1f/s: %d arrivals, %d ok (%.2f/s), errors %v", floodRate, f.Requests, f.Successes, f.Goodput, f.ByCause)
	t.Logf("visitor from 127.0.0.3: %d of %d full handshakes ok, p50 %v, p99 %v; errors %v", v.Successes, v.Requests, v.FullTotal.P50, v.FullTotal.P99, v.ByCause)
	t.Logf("returning client: %d resumed, p50 %v (unloaded %v)", r.ResumedTotal.N, r.ResumedTotal.P50, unloaded.ResumedTotal.P50)
	for _, reason := range []string{"client_budget", "client_share", "queue_full", "deadline"} {
		t.Logf("shed %s: %.0f", reason, metric(t, metrics, `tkeyless_edge_handshakes_shed_total{reason="`+reason+`"}`))
	}
	t.Logf("signing slots now: %.0f", metric(t, metrics, "tkeyless_edge_signing_slots"))

	if v.Requests < 7 || float64(v.Successes) < 0.95*float64(v.Requests) {
		t.Errorf("visitor: %d of %d full handshakes succeeded, want ≥ 95%%", v.Successes, v.Requests)
	}
	if r.ResumedTotal.N == 0 || r.ResumedTotal.P50 > 2*unloaded.ResumedTotal.P50 {
		t.Errorf("resumed p50 under the flood %v over %d, want within 2× of unloaded %v", r.ResumedTotal.P50, r.ResumedTotal.N, unloaded.ResumedTotal.P50)
	}
	if r.Errors != 0 {
		t.Errorf("returning client: errors %v", r.ByCause)
	}
	if f.Errors == 0 || f.Successes == 0 {
		t.Errorf("flood: %d ok, %d errors; want it served within its budget and the rest shed", f.Successes, f.Errors)
	}
	if health != "overloaded" {
		t.Errorf("public /healthz during the flood: %q, want 200 overloaded", health)
	}
	for _, p := range procs {
		select {
		case <-p.done:
			t.Errorf("%s exited during the flood:\n%s", p.name, tail(p.Output(), 2048))
		default:
		}
		// Bounded: the flood must not grow a process by more than a small multiple of its size.
		if grown := rssMax[p.name] - rssBefore[p.name]; grown > 256<<20 {
			t.Errorf("%s grew by %d MiB during the flood (from %d MiB)", p.name, grown>>20, rssBefore[p.name]>>20)
		}
		t.Logf("%s: RSS %d MiB before, at most %d MiB during the flood", p.name, rssBefore[p.name]>>20, rssMax[p.name]>>20)
	}
	// The edge gives up on a signature at its deadline; a signer that works on after that
	// spends CPU on an answer nobody waits for. Allowed: one session time past it.
	for _, sn := range c.nodes {
		longest := longestAudit(sn.proc.Output(), auditFrom[sn.name])
		t.Logf("%s: longest signing request during the flood %v", sn.name, longest)
		if longest > signTimeout+sessionTime {
			t.Errorf("%s worked %v on one request, more than one session time (%v) past the deadline (%v)", sn.name, longest, sessionTime, signTimeout)
		}
	}
	// After the flood: the visitor's address is still served.
	after := startLoad(t, append(target, "--source", "127.0.0.3", "-n", "1", "--resume", "0")...).wait(t)
	if after.Successes != 1 {
		t.Errorf("a full handshake after the flood: %+v", after)
	}
}

// healthClient reads the edge's public /healthz over HTTPS, resuming its first session.
type healthClient struct {
	addr   string
	client *http.Client
}

func newHealthClient(addr, webCA string, t *testing.T) *healthClient {
	tr := &http.Transport{DisableKeepAlives: true, TLSClientConfig: &tls.Config{RootCAs: rootsFrom(t, webCA), ServerName: "localhost",
		ClientSessionCache: tls.NewLRUClientSessionCache(1)}}
	t.Cleanup(tr.CloseIdleConnections)
	return &healthClient{addr, &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// get returns the body of /healthz and fails the test unless the status is 200.
func (h *healthClient) get(t *testing.T) string {
	t.Helper()
	resp, err := h.client.Get("https://" + h.addr + "/healthz")
	if err != nil {
		t.Fatalf("healthz: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("healthz: %d %q, want 200", resp.StatusCode, b)
	}
	return string(b)
}
