package e2e

import (
	"bufio"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cloudflare/gokeyless/protocol"

	"github.com/tkeyless/tkeyless/internal/pki"
	"github.com/tkeyless/tkeyless/keyless"
)

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

// auditRecord is one signing audit record a signer logged: event "sign" on the coordinator
// (one per request), "member_sign" on each other quorum member.
type auditRecord struct {
	Event          string  `json:"event"`
	Outcome        string  `json:"outcome"`
	Request        string  `json:"request"`
	DurMS          float64 `json:"dur_ms"`
	QueueMS        float64 `json:"queue_ms"`
	EndedUnixMS    int64   `json:"ended_unix_ms"`
	DeadlineUnixMS *int64  `json:"deadline_unix_ms"`
	PastDeadlineMS *int64  `json:"past_deadline_ms"`
}

// audits are the audit records a node logged after skip bytes of its output.
func audits(t *testing.T, out string, skip int) []auditRecord {
	t.Helper()
	var recs []auditRecord
	for line := range strings.SplitSeq(out[min(skip, len(out)):], "\n") {
		if !strings.Contains(line, `"message":"audit"`) || !strings.Contains(line, `_unix_ms"`) {
			continue
		}
		var r auditRecord
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("audit record %q: %v", line, err)
		}
		if r.Event == "sign" || r.Event == "member_sign" {
			recs = append(recs, r)
		}
	}
	return recs
}

// budget is how long after its start a record's deadline was: the time the requester gave it.
func (r auditRecord) budget() time.Duration {
	started := float64(r.EndedUnixMS) - r.DurMS
	return time.Duration((float64(*r.DeadlineUnixMS) - started) * float64(time.Millisecond))
}

// sessionTime is the median time the signed coordinator records spent signing (waiting for a
// session slot excluded); 0 if there are none.
func sessionTime(recs []auditRecord) time.Duration {
	var d []time.Duration
	for _, r := range recs {
		if r.Event == "sign" && r.Outcome == "signed" {
			d = append(d, time.Duration((r.DurMS-r.QueueMS)*float64(time.Millisecond)))
		}
	}
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[len(d)/2]
}

// TestHandshakeFlood floods a (1,2) cluster's edge with full handshakes from one address
// (127.0.0.2) at ten times what the cluster can sign, for several seconds. Meanwhile a visitor
// from another address (127.0.0.3) makes one full handshake a second and nearly all of them
// succeed; a returning client keeps resuming about as fast as without the flood; the edge says
// "overloaded" and stays healthy; every process stays up with bounded memory; and no signer
// keeps working on a request more than one session time past its deadline, by every signer's
// audit records (coordinator and member), where one session time is measured before the flood.
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
	// The edge, and the returning client below, run ahead of every other process on this
	// machine when the test may raise them (it runs as root): in production the edge has its
	// own CPUs, but here its two cores are shared with the signers and with other packages'
	// tests, and the resumed handshakes' latency would measure the kernel's sharing of them,
	// not whether the edge makes resumptions wait behind signatures.
	raised := raisePriority(t, e.proc.cmd.Process.Pid)
	metrics := "http://" + metricsAddr + "/metrics"
	target := []string{"--url", "https://" + e.addr + "/", "--ca", webCA, "--server-name", "localhost"}

	// Unloaded: how fast a returning client resumes, and what the cluster signs per second
	// (from the allowed 127.0.0.1, as many in flight as the edge allows).
	// Returning clients arrive at a fixed rate (open loop): a closed loop would resume as fast
	// as the machine allows, hundreds a second, and its own CPU would starve the signers.
	returningRate := []string{"--rate", "50", "--resume", "100"}
	unloadedRun := startLoad(t, append(append(target, returningRate...), "-d", "3s")...)
	if raised {
		raisePriority(t, unloadedRun.cmd.Process.Pid)
	}
	unloaded := unloadedRun.wait(t)
	if unloaded.ResumedTotal.N == 0 {
		t.Fatalf("resumption run resumed nothing: %+v", unloaded)
	}
	capacityFrom := map[string]int{}
	for _, sn := range c.nodes {
		capacityFrom[sn.name] = len(sn.proc.Output())
	}
	capacity := startLoad(t, append(target, "-c", "4", "-d", "4s", "--resume", "0")...).wait(t)
	if capacity.Successes == 0 {
		t.Fatalf("capacity run: %+v", capacity)
	}
	// One session time, unloaded: the median signing time on the coordinators during the
	// capacity run, waiting for a session slot excluded.
	var before []auditRecord
	for _, sn := range c.nodes {
		before = append(before, audits(t, sn.proc.Output(), capacityFrom[sn.name])...)
	}
	session := sessionTime(before)
	if session == 0 {
		t.Fatalf("no signed audit records from the capacity run (%d records)", len(before))
	}
	// With one signature at a time, a visitor may wait for the flood's running signature and
	// then needs its own: two signing times must fit in the deadline, and the cluster must
	// sign without errors before any flood. On a machine this busy with other work, what
	// depends on how fast the cluster signs (the visitor's and the flood's successes, the
	// resumption latency) cannot be shown: the flood still runs, the rest is checked (processes
	// up, bounded memory, /healthz, deadlines in the audit log), and the test then skips.
	perSignature := max(time.Duration(float64(time.Second)/capacity.Goodput), capacity.FullTotal.P99)
	busy := ""
	if capacity.Errors > 0 || 2*perSignature > signTimeout {
		busy = fmt.Sprintf("this machine signs only %.2f/s now (load from elsewhere), p99 %v, errors %v before any flood: two signatures do not fit in the %v deadline, so the visitor's, the flood's and resumption's figures are not checked",
			capacity.Goodput, capacity.FullTotal.P99, capacity.ByCause, signTimeout)
		t.Log(busy)
	}
	t.Logf("unloaded: %.2f full handshakes/s (p50 %v, errors %v), one session %v; resumed p50 %v over %d", capacity.Goodput,
		capacity.FullTotal.P50, capacity.ByCause, session, unloaded.ResumedTotal.P50, unloaded.ResumedTotal.N)

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
		// The capacity run's handshakes beyond what the signers could take in time were
		// refused as overloaded (keyless code 0x82), which the edge reports for 10 s.
		if capacity.Errors == 0 || got != "overloaded" {
			t.Fatalf("public /healthz before the flood: %q", got)
		}
		waitFor(t, 30*time.Second, func() bool { return hc.get(t) == "ok" })
	}

	// One full handshake a second, unless this machine (shared with other suites) signs so
	// slowly that this would be more than a third of what it signs: then a third. The flood
	// holds the other half of the edge's signing slots, so the visitor's fair share is half the
	// capacity; asking exactly that would keep its queue at the edge full by construction (and
	// the capacity measured a minute earlier moves with the other suites' load), while a third
	// still asks whether the flood leaves the visitor its share.
	visitRate := min(1, capacity.Goodput/3)
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
		for _, reason := range shedReasons {
			shed += metric(t, metrics, `tkeyless_edge_handshakes_shed_total{reason="`+reason+`"}`)
		}
		return shed > 0
	})
	visitor := startLoad(t, append(target, "--source", "127.0.0.3", "--rate", strconv.FormatFloat(visitRate, 'f', 2, 64),
		"-d", visitFor.String(), "--resume", "0", "--timeout", signTimeout.String())...)
	returning := startLoad(t, append(append(target, returningRate...), "-d", "15s")...)
	if raised {
		raisePriority(t, returning.cmd.Process.Pid)
	}

	// Resident memory while the flood lasts, sampled every 250 ms. Only the
	// sampler writes rssMax; it is read after <-sampled, so needs no lock.
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
					rssMax[p.name] = max(rssMax[p.name], rss)
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
	for _, reason := range shedReasons {
		t.Logf("shed %s: %.0f", reason, metric(t, metrics, `tkeyless_edge_handshakes_shed_total{reason="`+reason+`"}`))
	}
	t.Logf("signing slots now: %.0f", metric(t, metrics, "tkeyless_edge_signing_slots"))

	if busy == "" {
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
	}
	if health != "overloaded" {
		t.Errorf("public /healthz during the flood: %q, want 200 overloaded", health)
	}
	if raised {
		checkNiceness(t, e.proc.name, e.proc.cmd.Process.Pid, foreground)
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
	// The edge gives up on a signature at its deadline, which each request carries to its
	// signer; a signer that works on after that spends CPU on an answer nobody waits for.
	// Allowed: one session time past it, on the coordinator and on every member.
	for _, sn := range c.nodes {
		recs := audits(t, sn.proc.Output(), auditFrom[sn.name])
		outcomes := map[string]int{}
		var worst time.Duration
		for _, r := range recs {
			outcomes[r.Event+"/"+r.Outcome]++
			if r.PastDeadlineMS == nil {
				t.Errorf("%s: audit record %s/%s of request %s has no deadline", sn.name, r.Event, r.Outcome, r.Request)
				continue
			}
			past := time.Duration(*r.PastDeadlineMS) * time.Millisecond
			worst = max(worst, past)
			if past > session {
				t.Errorf("%s: %s of request %s ended %s, %v past its deadline: more than one session time (%v)", sn.name, r.Event, r.Request, r.Outcome, past, session)
			}
		}
		t.Logf("%s: %d audit records during the flood %v; at most %v past a deadline", sn.name, len(recs), outcomes, worst)
		if len(recs) == 0 {
			t.Errorf("%s: no audit records during the flood", sn.name)
		}
	}
	if busy != "" {
		t.Skip(busy) // after the checks above: one that failed still fails the test
	}
	// After the flood: the visitor's address is still served.
	after := startLoad(t, append(target, "--source", "127.0.0.3", "-n", "1", "--resume", "0")...).wait(t)
	if after.Successes != 1 {
		t.Errorf("a full handshake after the flood: %+v", after)
	}
}

// shedReasons are the edge's shed metric's reasons: its own (tlsglue) and the signers' refusals.
var shedReasons = []string{"client_budget", "client_share", "queue_full", "deadline", "signer_overloaded"}

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

// TestSignerFollowsEdgeDeadline: each keyless request carries the time its requester waits
// (tag 0xC1), and a signer works to that deadline, not its own sign_timeout (20 s here).
//   - A request whose deadline passes mid-session is cancelled on the coordinator and the
//     member, less than one session time past the requester's deadline, although the
//     requester's connection stays open (before, the session ran to its end).
//   - A request with less time left than a session takes on its signer (by the signer's
//     estimate, once it has coordinated a session) is refused at once as overloaded (keyless
//     code 0x82), and the client fails with that answer, before its deadline.
//   - An edge whose handshakes the signers refuse so answers /healthz 200 "overloaded", not 503
//     "cannot sign", and counts them as shed for reason signer_overloaded.
func TestSignerFollowsEdgeDeadline(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	c := startCluster(t, 1, 2)
	a, b := c.nodes[0], c.nodes[1]
	tc, err := pki.MutualTLS(c.caPath, c.edgeCert, c.edgeKey)
	if err != nil {
		t.Fatal(err)
	}
	onlyA, err := keyless.NewClient(keyless.ClientConfig{Endpoints: []string{a.keylessAddr}, TLS: tc})
	if err != nil {
		t.Fatal(err)
	}
	defer onlyA.Close()
	pub := c.publicKey(t).(*ecdsa.PublicKey)
	ski, _ := protocol.GetSKI(pub)
	sign := func(kc *keyless.Client, budget time.Duration, what string) (time.Duration, error) {
		ctx, cancel := context.WithTimeout(context.Background(), budget)
		defer cancel()
		d := sha256.Sum256([]byte(what))
		start := time.Now()
		_, err := kc.Sign(ctx, ski, crypto.SHA256, d[:])
		return time.Since(start), err
	}
	fromA, fromB := len(a.proc.Output()), len(b.proc.Output())
	// The request's audit record on node: the one, after skip bytes, with the outcome.
	record := func(sn *signerNode, skip int, event, outcome string) auditRecord {
		t.Helper()
		var found *auditRecord
		waitFor(t, 30*time.Second, func() bool {
			for _, r := range audits(t, sn.proc.Output(), skip) {
				if r.Event == event {
					found = &r
					return true
				}
			}
			return false
		})
		if found.Outcome != outcome || found.DeadlineUnixMS == nil || found.PastDeadlineMS == nil {
			t.Fatalf("%s: %s record %+v, want outcome %s with its deadline", sn.name, event, *found, outcome)
		}
		return *found
	}

	// A fresh cluster has no session time estimate, so it admits a request whatever its
	// deadline (only a signed session teaches it one); a 2-party session takes a few hundred
	// ms on an idle 2-core machine. The member writes a record only once a's Prepare reached
	// it within the budget, which the first request after keygen may miss (first use of the
	// share, a busy machine): then a asks again, up to five times.
	const short = 100 * time.Millisecond
	var coord, member auditRecord
	for attempt := 1; ; attempt++ {
		fromA, fromB = len(a.proc.Output()), len(b.proc.Output())
		if _, err := sign(onlyA, short, fmt.Sprintf("given up %d", attempt)); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("a signature in %v: %v, want the client to give up at its deadline", short, err)
		}
		coord = record(a, fromA, "sign", "cancelled")
		joined := false
		for end := time.Now().Add(5 * time.Second); !joined && time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
			for _, r := range audits(t, b.proc.Output(), fromB) {
				if r.Event == "member_sign" {
					joined = true
				}
			}
		}
		if joined {
			member = record(b, fromB, "member_sign", "cancelled")
			break
		}
		if attempt == 5 {
			t.Fatalf("b never joined a session within %v in %d attempts (a's record: %+v)", short, attempt, coord)
		}
		t.Logf("attempt %d: b did not join within %v (a's record: outcome %s); again", attempt, short, coord.Outcome)
	}

	// One session time, unhurried.
	fromA = len(a.proc.Output())
	if _, err := sign(onlyA, 20*time.Second, "unhurried"); err != nil {
		t.Fatal(err)
	}
	session := sessionTime([]auditRecord{record(a, fromA, "sign", "signed")})
	for _, r := range []auditRecord{coord, member} {
		t.Logf("one session: %v; the given-up request's %s record: deadline %v after its start, ended %d ms past it",
			session, r.Event, r.budget().Round(time.Millisecond), *r.PastDeadlineMS)
		// The deadline is the client's (short, plus the trip), not the signer's 20 s.
		if r.budget() > short+500*time.Millisecond {
			t.Errorf("%s: deadline %v after the request started, want the client's %v", r.Event, r.budget(), short)
		}
		if past := time.Duration(*r.PastDeadlineMS) * time.Millisecond; past > session {
			t.Errorf("%s: stopped %v past the deadline, more than one session time (%v)", r.Event, past, session)
		}
	}

	// Less time than a session takes on a, which has just measured one: a refuses at once, and
	// the client fails with that answer before its deadline.
	fromA = len(a.proc.Output())
	took, err := sign(onlyA, session/3, "too little time")
	if !errors.Is(err, keyless.ErrOverloaded) || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a signature in a third of a session time: %v, want keyless.ErrOverloaded before the deadline", err)
	}
	t.Logf("refused as overloaded in %v: %v", took, err)
	if r := record(a, fromA, "sign", "overloaded"); r.budget() > session/3+500*time.Millisecond {
		t.Errorf("overloaded record: deadline %v after the request started, want the client's %v", r.budget(), session/3)
	}

	// An edge whose handshakes get only half a session: the signers refuse them as
	// overloaded. The edge's own shedding is off, so that only the signers' answer counts.
	// (The edge gives its first signer two thirds of that, a third of a session: with
	// sessions of 150 ms, less would leave too little for the keyless round trip on a
	// loaded machine, and the edge would give up before the refusal came.)
	certPath, webCA := c.siteCert(t)
	metricsAddr := freeAddrs(t, 1)[0]
	e := startEdge(t, c, certPath, staticSite(t), "--shed=false", "--metrics-listen", metricsAddr,
		"--sign-timeout", (session / 2).Round(time.Millisecond).String())
	for i := range 2 * 5 { // twice what makes an edge whose signatures fail "cannot sign"
		conn, err := tls.Dial("tcp", e.addr, &tls.Config{RootCAs: rootsFrom(t, webCA), ServerName: "localhost"})
		if err == nil {
			conn.Close()
			t.Fatalf("handshake %d succeeded in half a session time", i)
		}
	}
	code, body := httpGet(t, "http://"+metricsAddr+"/healthz")
	if code != http.StatusOK || !strings.HasPrefix(body, "overloaded") {
		t.Errorf("/healthz with the signers refusing as overloaded: %d %q, want 200 overloaded", code, body)
	}
	if n := metric(t, "http://"+metricsAddr+"/metrics", `tkeyless_edge_handshakes_shed_total{reason="signer_overloaded"}`); n < 10 {
		t.Errorf("shed{reason=signer_overloaded} = %v, want the 10 refused handshakes", n)
	}
}
