// Package load is the load generator behind cmd loadtest: HTTPS requests to
// one target, each measured phase by phase (TCP connect, TLS handshake, time
// to first byte, total), with a chosen share of connections resuming an
// earlier TLS session.
//
// Closed loop (the default) keeps a fixed number of requests in flight: it
// slows down when the server does, which hides overload. Open loop (Rate > 0)
// starts requests at a given arrival rate whatever the server does, as a
// crowd of independent clients would, so goodput under overload shows.
package load

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Options describe one load run.
type Options struct {
	// URL is the https:// target.
	URL string
	// Concurrency is the number of workers, each with one request in
	// flight at a time.
	Concurrency int
	// Duration stops the run after this long; Requests after this many
	// requests. One of them must be set; the first reached ends the run.
	Duration time.Duration
	Requests int
	// ResumePercent is the share of connections (0–100) that offer the
	// worker's cached TLS session; the others handshake in full. A
	// worker's first connection is always full.
	ResumePercent int
	// KeepAlive reuses a worker's connection for its next request instead
	// of opening a new one per request.
	KeepAlive bool
	// TLS is the client configuration (roots, server name, versions). Its
	// session cache is replaced per worker.
	TLS *tls.Config
	// Timeout bounds one request, connect to last byte (default 10s).
	Timeout time.Duration
	// AllowRemote permits a target outside 127.0.0.0/8 and ::1.
	AllowRemote bool
	// NoWarmup measures each worker's first connection too. By default,
	// when ResumePercent > 0, each worker first makes one unmeasured full
	// handshake, so that the run measures the steady mix rather than the
	// workers' first, necessarily full, handshakes.
	NoWarmup bool

	// Rate, when positive, makes the run open loop: requests arrive at this
	// many per second (Arrival: evenly spaced or Poisson), each on a new
	// connection, whether or not earlier ones have finished. Concurrency
	// then bounds the requests outstanding at once (arrivals beyond it are
	// counted as errors "client: too many in flight", so a collapsing
	// server cannot exhaust the tester); Duration is required. Resumed
	// connections offer a session from a cache shared by all arrivals.
	Rate    float64
	Arrival string // ArrivalConstant (default) or ArrivalPoisson

	// Source, if set, is the local IP address connections come from, e.g.
	// 127.0.0.2, so one run can flood from one address while another
	// visits from a second.
	Source string
}

// Arrival processes of an open-loop run.
const (
	ArrivalConstant = "constant"
	ArrivalPoisson  = "poisson"
)

// errTooManyInFlight is the cause of an open-loop arrival the tester itself
// dropped.
const errTooManyInFlight = "client: too many in flight"

// Sample is one request.
type Sample struct {
	Start     time.Time
	Connect   time.Duration // 0 on a reused connection
	Handshake time.Duration // 0 on a reused connection
	TTFB      time.Duration // request written → first response byte
	Total     time.Duration
	Resumed   bool // the TLS session was resumed
	Reused    bool // keep-alive: no new connection at all
	Version   uint16
	Err       string // cause class, empty on success
}

// Handshake kinds, for reports.
const (
	KindFull    = "full"
	KindResumed = "resumed"
	KindReused  = "reused"
)

// Kind says which handshake the request paid for.
func (s Sample) Kind() string {
	switch {
	case s.Reused:
		return KindReused
	case s.Resumed:
		return KindResumed
	}
	return KindFull
}

// CheckTarget refuses targets that are not https, and (unless allowed)
// not on loopback: a load test must not hit someone else's server by
// mistake.
func CheckTarget(raw string, allowRemote bool) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("target %q: %w", raw, err)
	}
	if u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("target %q: want https://host:port/path", raw)
	}
	if allowRemote {
		return u, nil
	}
	host := u.Hostname()
	if host == "localhost" {
		return u, nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("target %s is not a loopback address; pass --allow-remote to load a server you run elsewhere", host)
	}
	return u, nil
}

// Run drives the load until ctx ends, the duration passes or the request
// count is reached, and returns every sample. tick, if set, is called after
// each request (for a progress bar).
func Run(ctx context.Context, o Options, tick func()) ([]Sample, time.Duration, error) {
	u, err := CheckTarget(o.URL, o.AllowRemote)
	if err != nil {
		return nil, 0, err
	}
	if o.Concurrency < 1 {
		return nil, 0, errors.New("concurrency must be at least 1")
	}
	if o.Duration <= 0 && o.Requests <= 0 {
		return nil, 0, errors.New("give a duration or a request count")
	}
	if o.ResumePercent < 0 || o.ResumePercent > 100 {
		return nil, 0, fmt.Errorf("resumption %d%%: want 0 to 100", o.ResumePercent)
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	var dialer net.Dialer
	if o.Source != "" {
		ip := net.ParseIP(o.Source)
		if ip == nil {
			return nil, 0, fmt.Errorf("source %q: want an IP address of this host, e.g. 127.0.0.2", o.Source)
		}
		dialer.LocalAddr = &net.TCPAddr{IP: ip}
	}
	if o.Rate > 0 {
		return runOpen(ctx, o, u, dialer, tick)
	}
	if o.Rate < 0 {
		return nil, 0, fmt.Errorf("rate %g: want arrivals per second, or 0 for a closed loop", o.Rate)
	}
	// issuing ends at the duration; requests in flight then still finish
	// (within their own timeout), so a point whose requests take longer
	// than its duration still measures them, and throughput counts them
	// over the time they really took.
	// The clock starts once every worker has warmed up.
	issuing, stopIssuing := context.WithCancel(ctx)
	defer stopIssuing()
	var warm sync.WaitGroup
	warm.Add(o.Concurrency)
	startc := make(chan struct{})
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "443")
	}
	path := u.RequestURI()
	if o.TLS == nil {
		o.TLS = &tls.Config{}
	}
	if o.TLS.ServerName == "" && !o.TLS.InsecureSkipVerify {
		o.TLS = o.TLS.Clone()
		o.TLS.ServerName = u.Hostname()
	}
	var budget chan struct{}
	if o.Requests > 0 {
		budget = make(chan struct{}, o.Requests)
		for range o.Requests {
			budget <- struct{}{}
		}
		close(budget)
	}
	var mu sync.Mutex
	var samples []Sample
	var wg sync.WaitGroup
	for range o.Concurrency {
		wg.Go(func() {
			w := &worker{o: o, dialer: dialer, addr: addr, host: u.Host, path: path, cache: tls.NewLRUClientSessionCache(4)}
			defer w.close()
			if o.ResumePercent > 0 && !o.NoWarmup {
				w.warmUp(ctx)
			}
			warm.Done()
			<-startc
			for issuing.Err() == nil {
				if budget != nil {
					if _, ok := <-budget; !ok {
						return
					}
				}
				s := w.do(ctx)
				if s.Err != "" && ctx.Err() != nil {
					// Cut off by an interrupt: not the target's fault.
					return
				}
				mu.Lock()
				samples = append(samples, s)
				mu.Unlock()
				if tick != nil {
					tick()
				}
				if s.Err != "" {
					// A failing target is not hammered in a tight loop.
					select {
					case <-issuing.Done():
					case <-time.After(10 * time.Millisecond):
					}
				}
			}
		})
	}
	warm.Wait()
	start := time.Now()
	if o.Duration > 0 {
		t := time.AfterFunc(o.Duration, stopIssuing)
		defer t.Stop()
	}
	close(startc)
	wg.Wait()
	return samples, time.Since(start), nil
}

type worker struct {
	o      Options
	dialer net.Dialer
	addr   string
	host   string
	path   string
	cache  tls.ClientSessionCache
	first  bool
	conn   *tls.Conn
	br     *bufio.Reader
}

// warmUp makes the worker's unmeasured first full handshake, so that its
// cache holds a session to resume; a loaded server may fail one, so it
// tries up to three times.
func (w *worker) warmUp(ctx context.Context) {
	for range 3 {
		s := w.do(ctx)
		w.close()
		if s.Err == "" || ctx.Err() != nil {
			return
		}
	}
}

func (w *worker) close() {
	if w.conn != nil {
		w.conn.Close()
		w.conn = nil
	}
}

func (w *worker) do(ctx context.Context) Sample {
	s := Sample{Start: time.Now()}
	ctx, cancel := context.WithTimeout(ctx, w.o.Timeout)
	defer cancel()
	if w.conn == nil {
		cfg := w.o.TLS.Clone()
		// Decide per connection whether to offer the cached session.
		if w.first && rand.IntN(100) < w.o.ResumePercent {
			cfg.ClientSessionCache = w.cache
		} else {
			// A fresh cache: nothing to resume, and the new ticket is
			// kept for later connections that should resume.
			cfg.ClientSessionCache = &recordingCache{into: w.cache}
		}
		w.first = true
		raw, err := w.dialer.DialContext(ctx, "tcp", w.addr)
		s.Connect = time.Since(s.Start)
		if err != nil {
			s.Err, s.Total = classify(err), time.Since(s.Start)
			return s
		}
		hs := time.Now()
		c := tls.Client(raw, cfg)
		if err := c.HandshakeContext(ctx); err != nil {
			raw.Close()
			s.Handshake = time.Since(hs)
			s.Err, s.Total = "tls: "+classify(err), time.Since(s.Start)
			return s
		}
		s.Handshake = time.Since(hs)
		w.conn, w.br = c, bufio.NewReader(c)
	} else {
		s.Reused = true
	}
	st := w.conn.ConnectionState()
	s.Resumed, s.Version = st.DidResume, st.Version
	if dl, ok := ctx.Deadline(); ok {
		_ = w.conn.SetDeadline(dl)
	}
	connHeader := "close"
	if w.o.KeepAlive {
		connHeader = "keep-alive"
	}
	sent := time.Now()
	if _, err := fmt.Fprintf(w.conn, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: tkeyless-loadtest\r\nConnection: %s\r\n\r\n", w.path, w.host, connHeader); err != nil {
		w.close()
		s.Err, s.Total = "write: "+classify(err), time.Since(s.Start)
		return s
	}
	if _, err := w.br.Peek(1); err != nil {
		w.close()
		s.Err, s.Total = "read: "+classify(err), time.Since(s.Start)
		return s
	}
	s.TTFB = time.Since(sent)
	resp, err := http.ReadResponse(w.br, nil)
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	s.Total = time.Since(s.Start)
	if err != nil {
		w.close()
		s.Err = "read: " + classify(err)
		return s
	}
	if resp.StatusCode/100 != 2 {
		s.Err = fmt.Sprintf("http %d", resp.StatusCode)
	}
	if !w.o.KeepAlive || resp.Close {
		w.close()
	}
	return s
}

// recordingCache offers no session but keeps the tickets the server sends,
// for the worker's later resuming connections.
type recordingCache struct{ into tls.ClientSessionCache }

func (r *recordingCache) Get(string) (*tls.ClientSessionState, bool) { return nil, false }
func (r *recordingCache) Put(k string, cs *tls.ClientSessionState)   { r.into.Put(k, cs) }

// classify names an error's cause in a few stable words, so errors can be
// counted by cause.
func classify(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "closed by server"
	}
	var ae tls.AlertError
	if errors.As(err, &ae) {
		return "alert " + ae.Error()
	}
	msg := err.Error()
	if i := strings.LastIndex(msg, ": "); i >= 0 {
		msg = msg[i+2:]
	}
	return msg
}

// Stats summarize a set of durations. Percentiles come from an HDR
// histogram (microsecond resolution, 3 significant digits, up to 10
// minutes): exact enough for latency, in constant memory whatever the count.
type Stats struct {
	N    int           `json:"n"`
	Mean time.Duration `json:"mean_ns"`
	P50  time.Duration `json:"p50_ns"`
	P95  time.Duration `json:"p95_ns"`
	P99  time.Duration `json:"p99_ns"`
	Max  time.Duration `json:"max_ns"`
}

// Summarize computes Stats over ds.
func Summarize(ds []time.Duration) Stats {
	if len(ds) == 0 {
		return Stats{}
	}
	h := hdrhistogram.New(1, int64(10*time.Minute/time.Microsecond), 3)
	var maxD time.Duration
	for _, d := range ds {
		// RecordValue refuses a value beyond the top (and records nothing),
		// so clamp it: beyond 10 minutes counts at the top. The range is
		// fixed and every value now fits, so there is no error to handle.
		_ = h.RecordValue(min(max(1, d.Microseconds()), h.HighestTrackableValue()))
		maxD = max(maxD, d)
	}
	us := func(v int64) time.Duration { return time.Duration(v) * time.Microsecond }
	return Stats{N: len(ds), Mean: time.Duration(h.Mean() * float64(time.Microsecond)),
		P50: us(h.ValueAtQuantile(50)), P95: us(h.ValueAtQuantile(95)), P99: us(h.ValueAtQuantile(99)), Max: maxD}
}

// Report is what a run measured; its JSON (loadtest --json, the matrix's
// results.json) is one schema with stable snake_case names. Latencies are
// of successful requests only.
type Report struct {
	Mode        string         `json:"mode"`               // "closed" or "open"
	Concurrency int            `json:"concurrency"`        // closed: in flight; open: bound on outstanding
	Rate        float64        `json:"rate_rps,omitempty"` // open: arrivals per second asked for
	Arrival     string         `json:"arrival,omitempty"`  // open: constant or poisson
	Source      string         `json:"source,omitempty"`   // local address connections came from
	Requests    int            `json:"requests"`           // arrivals (open) or requests made (closed)
	Successes   int            `json:"successes"`
	Errors      int            `json:"errors"`
	ByCause     map[string]int `json:"errors_by_cause,omitempty"`
	Full        int            `json:"full_handshakes"`
	Resumed     int            `json:"resumed_handshakes"`
	Reused      int            `json:"reused_connections"`
	Versions    map[string]int `json:"tls_versions"`
	Elapsed     time.Duration  `json:"elapsed_ns"`
	Offered     float64        `json:"offered_rps"` // requests per second
	Goodput     float64        `json:"goodput_rps"` // successes per second
	// Total is the whole request; FullTotal and ResumedTotal split it by
	// handshake kind; Connect, Handshake, TTFB are phases.
	Total        Stats `json:"total"`
	FullTotal    Stats `json:"full_total"`
	ResumedTotal Stats `json:"resumed_total"`
	Connect      Stats `json:"connect"`
	Handshake    Stats `json:"handshake"`
	TTFB         Stats `json:"ttfb"`
}

// Describe fills the report's description of the run from its options.
func (r *Report) Describe(o Options) {
	r.Mode, r.Concurrency, r.Source = "closed", o.Concurrency, o.Source
	if o.Rate > 0 {
		r.Mode, r.Rate, r.Arrival = "open", o.Rate, o.Arrival
		if r.Arrival == "" {
			r.Arrival = ArrivalConstant
		}
	}
}

// Summary builds the report of a run's samples.
func Summary(samples []Sample, elapsed time.Duration) Report {
	r := Report{Requests: len(samples), ByCause: map[string]int{}, Versions: map[string]int{}, Elapsed: elapsed}
	var total, full, resumed, connect, handshake, ttfb []time.Duration
	for _, s := range samples {
		if s.Err != "" {
			r.Errors++
			r.ByCause[s.Err]++
			continue
		}
		r.Successes++
		r.Versions[tls.VersionName(s.Version)]++
		total = append(total, s.Total)
		ttfb = append(ttfb, s.TTFB)
		switch s.Kind() {
		case KindFull:
			r.Full++
			full = append(full, s.Total)
		case KindResumed:
			r.Resumed++
			resumed = append(resumed, s.Total)
		case KindReused:
			r.Reused++
		}
		if !s.Reused {
			connect = append(connect, s.Connect)
			handshake = append(handshake, s.Handshake)
		}
	}
	if elapsed > 0 {
		r.Goodput = float64(r.Successes) / elapsed.Seconds()
		r.Offered = float64(r.Requests) / elapsed.Seconds()
	}
	r.Total, r.FullTotal, r.ResumedTotal = Summarize(total), Summarize(full), Summarize(resumed)
	r.Connect, r.Handshake, r.TTFB = Summarize(connect), Summarize(handshake), Summarize(ttfb)
	return r
}

// Print writes the report for people.
func (r Report) Print(w io.Writer) {
	if r.Mode == "open" {
		fmt.Fprintf(w, "open loop, %s arrivals at %.1f/s (at most %d outstanding)", r.Arrival, r.Rate, r.Concurrency)
	} else {
		fmt.Fprintf(w, "closed loop, %d in flight", r.Concurrency)
	}
	if r.Source != "" {
		fmt.Fprintf(w, ", from %s", r.Source)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "requests %d: %d ok, %d errors in %v — offered %.1f req/s, goodput %.1f req/s\n", r.Requests, r.Successes, r.Errors, r.Elapsed.Round(time.Millisecond), r.Offered, r.Goodput)
	fmt.Fprintf(w, "handshakes: %d full, %d resumed, %d on reused connections; versions %v\n", r.Full, r.Resumed, r.Reused, r.Versions)
	fmt.Fprintf(w, "%-16s %8s %10s %10s %10s %10s %10s\n", "", "n", "mean", "p50", "p95", "p99", "max")
	for _, row := range []struct {
		name string
		s    Stats
	}{{"total", r.Total}, {"total (full)", r.FullTotal}, {"total (resumed)", r.ResumedTotal}, {"connect", r.Connect}, {"tls handshake", r.Handshake}, {"first byte", r.TTFB}} {
		if row.s.N == 0 {
			continue
		}
		fmt.Fprintf(w, "%-16s %8d %10s %10s %10s %10s %10s\n", row.name, row.s.N, ms(row.s.Mean), ms(row.s.P50), ms(row.s.P95), ms(row.s.P99), ms(row.s.Max))
	}
	for cause, n := range r.ByCause {
		fmt.Fprintf(w, "error %q: %d\n", cause, n)
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d.Microseconds())/1000) }
