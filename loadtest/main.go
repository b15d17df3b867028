// Command loadtest measures HTTPS handshakes against an edge under
// concurrent load, and runs the scenario matrix behind BENCHMARKS.md.
//
//	go run ./loadtest --url https://127.0.0.1:8443/ --ca demo/webca/ca.pem -c 8 -d 10s --resume 90
//	go run ./loadtest matrix --reduced --out docs/bench
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/tkeyless/tkeyless/loadtest/internal/load"
	"github.com/tkeyless/tkeyless/loadtest/internal/matrix"
	"github.com/tkeyless/tkeyless/loadtest/internal/wan"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := rootCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(1)
	}
}

func rootCmd() *cobra.Command {
	var o load.Options
	var caPath, serverName, version, jsonOut string
	var insecure, noProgress bool
	cmd := &cobra.Command{
		Use:   "loadtest --url https://127.0.0.1:8443/",
		Short: "Measure HTTPS handshakes against an edge under concurrent load",
		Long: `loadtest opens HTTPS connections to one target at a fixed concurrency, for a
duration or a number of requests, and measures each request: TCP connect,
TLS handshake, time to first byte, total; whether the handshake was full
(one signature from the signer cluster) or a resumed session (none); and
the TLS version. It reports mean, p50, p95, p99, max and throughput, and
errors by cause.

--resume sets the share of connections that offer the worker's cached TLS
session (0: every connection is a full handshake). --keepalive reuses
connections instead, which measures the web server more than TLS.

By default the loop is closed: -c requests in flight, each started when the
last ended, so the tester slows down with the server and hides overload.
--rate N makes it open: N arrivals per second (--arrival constant or
poisson), each a new connection, whatever the server does; -c then bounds
the requests outstanding (default 1024; arrivals beyond it are errors
"client: too many in flight"). Goodput is successful requests per second
of the arrival window; latencies are of successful requests; percentiles
come from an HDR histogram. --source 127.0.0.2 makes connections from that
local address (any 127.x.y.z works on Linux loopback).

--json writes the report with stable snake_case names: mode, concurrency,
rate_rps, arrival, source, requests, successes, errors, errors_by_cause,
full_handshakes, resumed_handshakes, reused_connections, tls_versions,
elapsed_ns, offered_rps, goodput_rps, and total, full_total, resumed_total,
connect, handshake, ttfb, each {n, mean_ns, p50_ns, p95_ns, p99_ns, max_ns}.

Only loopback targets are accepted unless --allow-remote is given.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tc := &tls.Config{ServerName: serverName, InsecureSkipVerify: insecure}
			switch version {
			case "1.2":
				tc.MinVersion, tc.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
			case "1.3":
				tc.MinVersion = tls.VersionTLS13
			case "", "any":
			default:
				return fmt.Errorf("--tls %q: want 1.2, 1.3 or any", version)
			}
			if caPath != "" {
				b, err := os.ReadFile(caPath)
				if err != nil {
					return fmt.Errorf("--ca: %w", err)
				}
				tc.RootCAs = x509.NewCertPool()
				if !tc.RootCAs.AppendCertsFromPEM(b) {
					return fmt.Errorf("--ca %s: no PEM certificate in it", caPath)
				}
			}
			o.TLS = tc
			if o.Rate > 0 && !cmd.Flags().Changed("concurrency") {
				o.Concurrency = 1024
			}
			if _, err := load.CheckTarget(o.URL, o.AllowRemote); err != nil {
				return err
			}
			var tick func()
			if !noProgress && term.IsTerminal(int(os.Stderr.Fd())) {
				var bar *progressbar.ProgressBar
				if o.Requests > 0 {
					bar = progressbar.NewOptions(o.Requests, progressbar.OptionSetWriter(os.Stderr), progressbar.OptionShowCount(), progressbar.OptionClearOnFinish())
				} else {
					bar = progressbar.NewOptions64(-1, progressbar.OptionSetWriter(os.Stderr), progressbar.OptionSetDescription("requests"),
						progressbar.OptionShowCount(), progressbar.OptionShowIts(), progressbar.OptionClearOnFinish())
				}
				defer bar.Finish()
				tick = func() { _ = bar.Add(1) }
			}
			samples, elapsed, err := load.Run(cmd.Context(), o, tick)
			if err != nil {
				return err
			}
			r := load.Summary(samples, elapsed)
			r.Describe(o)
			r.Print(os.Stdout)
			if jsonOut != "" {
				b, _ := json.MarshalIndent(r, "", "  ")
				if err := os.WriteFile(jsonOut, b, 0o644); err != nil {
					return err
				}
			}
			if r.Successes == 0 {
				return errors.New("no request succeeded")
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.URL, "url", "", "target, https://host:port/path")
	f.IntVarP(&o.Concurrency, "concurrency", "c", 1, "requests in flight at once (with --rate: at most this many outstanding, default 1024)")
	f.Float64Var(&o.Rate, "rate", 0, "open loop: this many arrivals per second, each a new connection (0: closed loop at -c)")
	f.StringVar(&o.Arrival, "arrival", load.ArrivalConstant, "with --rate: arrival process, constant (evenly spaced) or poisson")
	f.StringVar(&o.Source, "source", "", "local IP address to connect from, e.g. 127.0.0.2 (default: the system's choice)")
	f.DurationVarP(&o.Duration, "duration", "d", 10*time.Second, "stop after this long (0: only --requests)")
	f.IntVarP(&o.Requests, "requests", "n", 0, "stop after this many requests (0: only --duration)")
	f.IntVar(&o.ResumePercent, "resume", 0, "percent of connections that resume a cached TLS session (0–100)")
	f.BoolVar(&o.KeepAlive, "keepalive", false, "reuse connections between requests")
	f.DurationVar(&o.Timeout, "timeout", 10*time.Second, "bound on one request")
	f.BoolVar(&o.AllowRemote, "allow-remote", false, "allow a target outside loopback")
	f.StringVar(&caPath, "ca", "", "PEM CA to verify the edge's certificate (default: system roots)")
	f.StringVar(&serverName, "server-name", "", "TLS server name (default: the URL's host)")
	f.BoolVar(&insecure, "insecure", false, "do not verify the edge's certificate")
	f.StringVar(&version, "tls", "any", "TLS version: 1.2, 1.3 or any")
	f.StringVar(&jsonOut, "json", "", "also write the report as JSON to this file")
	f.BoolVar(&noProgress, "no-progress", false, "no progress bar (it is off anyway when stderr is not a terminal)")
	_ = cmd.MarkFlagRequired("url")
	cmd.AddCommand(matrixCmd(), wanCmd())
	return cmd
}

func matrixCmd() *cobra.Command {
	var full, quick, keep, overload, overloadOnly bool
	var bin, out, markdown, render, thresholds, compare string
	var concurrency []int
	var duration, overloadTimeout time.Duration
	cmd := &cobra.Command{
		Use:   "matrix",
		Short: "Sweep (t,n) × concurrency × resumption against local clusters and both baselines",
		Long: `matrix starts, on this machine, signer clusters for (1,2), (1,3) and (2,3),
with and without presigning, and two baselines: the edge with its key in
memory, and the edge with a stock gokeyless key server holding a plain key.
Against each it runs the load generator at every concurrency and resumption
level, and writes results.json, results.csv, BENCHMARKS.md and the plots
(PNG and SVG) into --out. Run it from the repository root after make build
(it uses bin/signer and bin/edge and the test pre-parameters in
tss/testdata, so no safe primes are generated).

The reduced matrix (the default) takes about 6 minutes on 2 cores;
--overload adds about 5 (make bench runs both, then the engine
benchmarks: about 15 minutes in all); --full sweeps concurrency up to 32.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o := matrix.Reduced()
			if full {
				o = matrix.Full()
			}
			if thresholds != "" {
				o.Thresholds = nil
				for _, tn := range strings.Split(thresholds, ";") {
					var t, n int
					if _, err := fmt.Sscanf(tn, "%d,%d", &t, &n); err != nil {
						return fmt.Errorf("--thresholds %q: want t,n pairs separated by ;", thresholds)
					}
					o.Thresholds = append(o.Thresholds, [2]int{t, n})
				}
			}
			if len(concurrency) > 0 {
				o.Concurrencies = concurrency
			}
			if quick {
				o.Thresholds, o.Concurrencies, o.Duration = [][2]int{{1, 2}}, []int{1, 2}, time.Second
			}
			if duration > 0 {
				o.Duration = duration
			}
			repo, err := os.Getwd()
			if err != nil {
				return err
			}
			if _, err := os.Stat(filepath.Join(repo, "tss", "testdata", "preparams")); err != nil {
				return errors.New("run matrix from the repository root (it needs tss/testdata/preparams)")
			}
			if bin, err = filepath.Abs(bin); err != nil {
				return err
			}
			o.Bin, o.Repo, o.Out, o.Log, o.Keep = bin, repo, out, os.Stderr, keep
			if compare != "" && (render != "" || overloadOnly) {
				return errors.New("--compare goes with a measuring run; --render and --overload-only keep the comparison their results.json holds")
			}
			if compare != "" {
				// Read now: the run overwrites --out/results.json, usually this file.
				if o.Previous, err = matrix.LoadPrevious(compare); err != nil {
					return err
				}
			}
			if _, err := os.Stat(filepath.Join(bin, "signer")); err != nil {
				return fmt.Errorf("%s/signer not found: run make build first", bin)
			}
			ov := matrix.DefaultOverload()
			if thresholds != "" {
				ov.Thresholds = o.Thresholds
			}
			if duration > 0 {
				ov.Duration = duration
			}
			if overloadTimeout > 0 {
				ov.SignTimeout = overloadTimeout
			}
			var res *matrix.Results
			var sweepErr error // the overload sweep failed; the matrix's own results were written
			switch {
			case render != "":
				res, err = matrix.Render(render, out)
			case overloadOnly:
				// Keep the closed-loop points of an earlier run; replace the sweep.
				res, err = matrix.Overload(cmd.Context(), o, ov, filepath.Join(out, "results.json"))
			default:
				var sweep *matrix.OverloadOptions
				if overload {
					sweep = &ov
				}
				// Run writes the outputs once, after the sweep if there is one.
				res, err = matrix.Run(cmd.Context(), o, sweep)
				if err != nil && res != nil {
					sweepErr, err = err, nil
				}
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "%d points written to %s\n", len(res.Points), out)
			if markdown != "" {
				rel, err := filepath.Rel(filepath.Dir(markdown), out)
				if err != nil {
					return err
				}
				if err := os.WriteFile(markdown, []byte(res.Markdown(filepath.ToSlash(rel)+"/")), 0o644); err != nil {
					return err
				}
				fmt.Fprintf(os.Stderr, "summary written to %s\n", markdown)
			}
			return sweepErr
		},
	}
	cmd.Flags().BoolVar(&full, "full", false, "the full matrix (concurrency 1–32, 5 s per point)")
	cmd.Flags().BoolVar(new(bool), "reduced", true, "the reduced matrix (the default)")
	cmd.Flags().BoolVar(&quick, "quick", false, "a smoke test of the matrix: (1,2) only, concurrency 1 and 2, 1 s per point")
	cmd.Flags().StringVar(&bin, "bin", "bin", "directory with the signer and edge binaries")
	cmd.Flags().StringVar(&out, "out", "docs/bench", "directory for the results and plots")
	cmd.Flags().DurationVar(&duration, "duration", 0, "override the time per point")
	cmd.Flags().StringVar(&thresholds, "thresholds", "", `only these (t,n), e.g. "1,2;2,3"`)
	cmd.Flags().IntSliceVar(&concurrency, "concurrency", nil, "only these concurrency levels, e.g. 1,8")
	cmd.Flags().BoolVar(&keep, "keep", false, "keep each configuration's directory (configs, process logs) for inspection")
	cmd.Flags().BoolVar(&overload, "overload", false, "also run the overload sweep: open-loop full handshakes at 0.5× to 10× the measured capacity of (1,2) and (2,3), with and without shedding (about 5 minutes more)")
	cmd.Flags().DurationVar(&overloadTimeout, "overload-sign-timeout", 0, "the overload sweep's edge --sign-timeout (default 5s, the edge's default; raise it on a machine busy with other work)")
	cmd.Flags().BoolVar(&overloadOnly, "overload-only", false, "run only the overload sweep, keeping the other results in --out/results.json")
	cmd.Flags().StringVar(&render, "render", "", "measure nothing: redraw the outputs from this results.json")
	cmd.Flags().StringVar(&compare, "compare", "", "an earlier run's results.json (e.g. the committed docs/bench/results.json): BENCHMARKS.md sets its full-handshake p50 and req/s and its warm pools beside this run's")
	cmd.Flags().StringVar(&markdown, "markdown", "BENCHMARKS.md", "also write the Markdown summary here, with plot links into --out (empty: only in --out)")
	return cmd
}

func wanCmd() *cobra.Command {
	var bin, out, render string
	var rtts []time.Duration
	var requests int
	var quick bool
	cmd := &cobra.Command{
		Use:   "wan",
		Short: "Full-handshake p50 across a simulated WAN, per (t,n), full and presigned, beside the round-trip model",
		Long: `wan starts, on this machine, a signer cluster and an edge for each (t,n) and
path (full GG18, presigned), with every edge → signer and signer → signer link
through its own toxiproxy proxy (in this process), and measures full
handshakes one at a time at each RTT. It writes wan.md (the table), wan.json
and the plot wan.png/wan.svg into --out. Run it from the repository root after
make build (make wan-bench does both).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if render != "" {
				res, err := wan.Render(render, out)
				if err != nil {
					return err
				}
				fmt.Fprintf(os.Stderr, "%d points redrawn into %s\n", len(res.Points), out)
				return nil
			}
			o := wan.Default()
			if len(rtts) > 0 {
				o.RTTs = rtts
			}
			if requests > 0 {
				o.Requests = requests
			}
			if quick {
				o.Thresholds, o.RTTs, o.Requests = [][2]int{{1, 2}}, []time.Duration{0, 10 * time.Millisecond}, 2
			}
			repo, err := os.Getwd()
			if err != nil {
				return err
			}
			if _, err := os.Stat(filepath.Join(repo, "tss", "testdata", "preparams")); err != nil {
				return errors.New("run wan from the repository root (it needs tss/testdata/preparams)")
			}
			if bin, err = filepath.Abs(bin); err != nil {
				return err
			}
			if _, err := os.Stat(filepath.Join(bin, "signer")); err != nil {
				return fmt.Errorf("%s/signer not found: run make build first", bin)
			}
			o.Bin, o.Repo, o.Out, o.Log = bin, repo, out, os.Stderr
			res, err := wan.Bench(cmd.Context(), o)
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "%d points written to %s\n", len(res.Points), out)
			return nil
		},
	}
	cmd.Flags().StringVar(&bin, "bin", "bin", "directory with the signer and edge binaries")
	cmd.Flags().StringVar(&out, "out", "docs/bench", "directory for wan.md, wan.json and the plots")
	cmd.Flags().DurationSliceVar(&rtts, "rtt", nil, "only these RTTs, e.g. 0,10ms,80ms (0 is the model's reference)")
	cmd.Flags().IntVar(&requests, "requests", 0, "full handshakes per point (default 3)")
	cmd.Flags().BoolVar(&quick, "quick", false, "a smoke test: (1,2) only, RTT 0 and 10 ms, 2 requests per point")
	cmd.Flags().StringVar(&render, "render", "", "measure nothing: apply the current model to this wan.json and redraw the outputs")
	return cmd
}
