// Package matrix runs the loadtest scenario matrix: it starts local signer
// clusters for each (t,n), with and without presigning, and the two
// baselines (the same edge with its key in memory, and the edge with a
// stock gokeyless key server), sweeps concurrency and resumption against
// each, and writes the results as JSON, CSV, Markdown and plots.
package matrix

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/tkeyless/tkeyless/loadtest/internal/load"
)

// Options choose the matrix.
type Options struct {
	Bin           string // directory with signer and edge
	Repo          string // repository root (test pre-parameters)
	Out           string // where results and plots go
	Concurrencies []int
	Resumptions   []int
	Duration      time.Duration // per point
	PresignDepth  int
	Thresholds    [][2]int
	Log           io.Writer
	Keep          bool // keep each configuration's files and process logs
	// Previous, if set, is an earlier run's figures, carried into
	// results.json and set beside this run's in BENCHMARKS.md.
	Previous *Previous
}

// Reduced is the matrix `make bench` runs: about 6 minutes on 2 cores.
func Reduced() Options {
	return Options{Concurrencies: []int{1, 2, 4, 8}, Resumptions: []int{0, 90}, Duration: 3 * time.Second, PresignDepth: 8,
		Thresholds: [][2]int{{1, 2}, {1, 3}, {2, 3}}}
}

// Full is the whole matrix of the issue: concurrency up to 32.
func Full() Options {
	o := Reduced()
	o.Concurrencies, o.Duration = []int{1, 2, 4, 8, 16, 32}, 5*time.Second
	return o
}

// Config is one system under test.
type Config struct {
	Name     string `json:"name"`
	Kind     string `json:"kind"` // "local", "gokeyless" or "tkeyless"
	T        int    `json:"t,omitempty"`
	N        int    `json:"n,omitempty"`
	Presign  bool   `json:"presign,omitempty"`
	Baseline bool   `json:"baseline"`
}

// Point is one measurement.
type Point struct {
	Config      Config      `json:"config"`
	Concurrency int         `json:"concurrency"`
	Resume      int         `json:"resume_percent"`
	Report      load.Report `json:"report"`
	// Ratios to the baselines at the same concurrency and resumption:
	// p50 latency (higher is slower) and throughput (lower is slower).
	P50VsLocal      float64 `json:"p50_vs_local,omitempty"`
	P50VsGokeyless  float64 `json:"p50_vs_gokeyless,omitempty"`
	RateVsLocal     float64 `json:"rate_vs_local,omitempty"`
	RateVsGokeyless float64 `json:"rate_vs_gokeyless,omitempty"`
}

// Warm is a presigning cluster measured with a full pool.
type Warm struct {
	Config      Config        `json:"config"`
	Requests    int           `json:"requests"`
	P50         time.Duration `json:"p50_ns"`
	Mean        time.Duration `json:"mean_ns"`
	RefillTime  time.Duration `json:"refill_ns"`    // from a burst's last request to every pool full again, the mean over bursts
	RefillRate  float64       `json:"refill_per_s"` // presignatures made per second while refilling
	PoolPerNode int           `json:"pool_per_node"`
}

// Results are a whole run.
type Results struct {
	Machine Machine `json:"machine"`
	Options struct {
		Concurrencies []int  `json:"concurrencies"`
		Resumptions   []int  `json:"resumptions"`
		Duration      string `json:"duration_per_point"`
		PresignDepth  int    `json:"presign_depth"`
	} `json:"options"`
	Points []Point `json:"points"`
	Warm   []Warm  `json:"warm"`
	// The overload sweep, if it ran.
	OverloadOptions *OverloadOptions `json:"overload_options,omitempty"`
	Overload        []OverloadPoint  `json:"overload,omitempty"`
	// The earlier run this one is compared with (--compare), if any.
	Previous *Previous `json:"previous,omitempty"`
}

// The steps of Run and Overload that measure, and the one that writes the
// outputs: variables so that tests can check how the steps are put together
// without starting signer clusters.
var (
	measureMatrix   = measure
	measureOverload = RunOverload
	writeOutputs    = (*Results).write
)

// Run runs the matrix and, if ov is not nil, the overload sweep after it,
// and writes every output into o.Out once, at the end.
//
// If the sweep fails after the matrix finished, the matrix's outputs are
// written all the same, without any of the sweep (as a run without
// --overload would write them: a sweep cut short would read as a whole one),
// and Run returns them with the sweep's error; Overload (--overload-only)
// runs the sweep again and keeps them. Otherwise Run returns results only
// with a nil error.
func Run(ctx context.Context, o Options, ov *OverloadOptions) (*Results, error) {
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return nil, err
	}
	res, err := measureMatrix(ctx, o)
	if err != nil {
		return nil, err
	}
	if ov != nil {
		if err := measureOverload(ctx, o, *ov, res); err != nil {
			res.OverloadOptions, res.Overload = nil, nil
			if werr := writeOutputs(res, o.Out); werr != nil {
				return nil, errors.Join(err, werr)
			}
			return res, fmt.Errorf("%w (the matrix's results are written to %s without the overload sweep; --overload-only runs the sweep again and keeps them)", err, o.Out)
		}
	}
	if err := writeOutputs(res, o.Out); err != nil {
		return nil, err
	}
	return res, nil
}

// measure runs the matrix's configurations and returns their points,
// writing nothing.
func measure(ctx context.Context, o Options) (*Results, error) {
	res := &Results{Machine: thisMachine(), Previous: o.Previous}
	res.Options.Concurrencies, res.Options.Resumptions = o.Concurrencies, o.Resumptions
	res.Options.Duration, res.Options.PresignDepth = o.Duration.String(), o.PresignDepth
	configs := []Config{{Name: "local key", Kind: "local", Baseline: true}, {Name: "gokeyless", Kind: "gokeyless", Baseline: true}}
	for _, tn := range o.Thresholds {
		configs = append(configs, Config{Name: fmt.Sprintf("tkeyless (%d,%d)", tn[0], tn[1]), Kind: "tkeyless", T: tn[0], N: tn[1]})
	}
	for _, tn := range o.Thresholds {
		configs = append(configs, Config{Name: fmt.Sprintf("tkeyless (%d,%d) presign", tn[0], tn[1]), Kind: "tkeyless", T: tn[0], N: tn[1], Presign: true})
	}
	for _, c := range configs {
		pts, warm, err := runConfig(ctx, o, c)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", c.Name, err)
		}
		res.Points = append(res.Points, pts...)
		if warm != nil {
			res.Warm = append(res.Warm, *warm)
		}
	}
	res.ratios()
	return res, nil
}

func (r *Results) ratios() {
	find := func(kind string, c, resume int) *Point {
		for i := range r.Points {
			p := &r.Points[i]
			if p.Config.Kind == kind && p.Concurrency == c && p.Resume == resume {
				return p
			}
		}
		return nil
	}
	div := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return a / b
	}
	for i := range r.Points {
		p := &r.Points[i]
		if l := find("local", p.Concurrency, p.Resume); l != nil {
			p.P50VsLocal = div(float64(p.Report.Total.P50), float64(l.Report.Total.P50))
			p.RateVsLocal = div(p.Report.Goodput, l.Report.Goodput)
		}
		if g := find("gokeyless", p.Concurrency, p.Resume); g != nil {
			p.P50VsGokeyless = div(float64(p.Report.Total.P50), float64(g.Report.Total.P50))
			p.RateVsGokeyless = div(p.Report.Goodput, g.Report.Goodput)
		}
	}
}

// newConfigEnv makes a fresh directory for one configuration's processes;
// done stops them and removes the directory, unless o.Keep asks to keep it.
func newConfigEnv(o Options, prefix string) (e *env, done func(), err error) {
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return nil, nil, err
	}
	if o.Keep {
		fmt.Fprintf(o.Log, "   files and logs kept in %s\n", dir)
	}
	e = &env{bin: o.Bin, repo: o.Repo, dir: dir}
	return e, func() {
		e.close()
		if !o.Keep {
			os.RemoveAll(dir)
		}
	}, nil
}

func runConfig(ctx context.Context, o Options, c Config) ([]Point, *Warm, error) {
	e, done, err := newConfigEnv(o, "tkeyless-matrix-")
	if err != nil {
		return nil, nil, err
	}
	defer done()
	fmt.Fprintf(o.Log, "== %s: starting\n", c.Name)
	if err := e.pki(ctx); err != nil {
		return nil, nil, err
	}
	ca, err := newWebCA()
	if err != nil {
		return nil, nil, err
	}
	certPath := filepath.Join(e.dir, "site.pem")
	var signer string
	var cluster *signerCluster
	switch c.Kind {
	case "local", "gokeyless":
		key, err := plainKey(filepath.Join(e.dir, "site.key"))
		if err != nil {
			return nil, nil, err
		}
		if err := ca.issue(&key.PublicKey, certPath); err != nil {
			return nil, nil, err
		}
		signer = "file://" + filepath.Join(e.dir, "site.key")
		if c.Kind == "gokeyless" {
			addr, err := e.startGokeyless(ctx, key)
			if err != nil {
				return nil, nil, err
			}
			signer = "keyless://" + addr
		}
	case "tkeyless":
		depth := 0
		if c.Presign {
			depth = o.PresignDepth
		}
		if cluster, err = e.startCluster(ctx, c.T, c.N, depth); err != nil {
			return nil, nil, err
		}
		pub, err := readPublicKey(cluster.pubPath)
		if err != nil {
			return nil, nil, err
		}
		if err := ca.issue(pub, certPath); err != nil {
			return nil, nil, err
		}
		signer = "keyless://" + joinComma(cluster.keyless)
	}
	addr, err := e.startEdge(ctx, "site", certPath, signer, 0)
	if err != nil {
		return nil, nil, err
	}
	tlsCfg := &tls.Config{RootCAs: ca.pool, ServerName: "localhost"}
	target := "https://" + addr + "/"
	var warm *Warm
	if c.Presign {
		if warm, err = measureWarm(ctx, o, c, cluster, target, tlsCfg); err != nil {
			return nil, nil, err
		}
		fmt.Fprintf(o.Log, "   warm pool: %d requests p50 %v; refilled in %v (%.2f presignatures/s)\n", warm.Requests, warm.P50.Round(10*time.Microsecond), warm.RefillTime.Round(time.Millisecond), warm.RefillRate)
	}
	var pts []Point
	for _, resume := range o.Resumptions {
		for _, conc := range o.Concurrencies {
			lo := load.Options{URL: target, Concurrency: conc, Duration: o.Duration, ResumePercent: resume, TLS: tlsCfg, Timeout: 90 * time.Second}
			samples, elapsed, err := load.Run(ctx, lo, nil)
			if err != nil {
				return nil, nil, err
			}
			r := load.Summary(samples, elapsed)
			r.Describe(lo)
			fmt.Fprintf(o.Log, "   c=%-2d resume=%2d%%: %5d ok %3d err  p50 %8.2fms  %7.1f req/s  (%d full, %d resumed)\n",
				conc, resume, r.Successes, r.Errors, ms(r.Total.P50), r.Goodput, r.Full, r.Resumed)
			if r.Errors > 0 {
				fmt.Fprintf(o.Log, "        errors: %v\n", r.ByCause)
			}
			pts = append(pts, Point{Config: c, Concurrency: conc, Resume: resume, Report: r})
		}
	}
	return pts, warm, nil
}

// warmBursts is how many times measureWarm drains and refills the pools:
// one burst is only as many requests as one pool holds, too few for a
// stable median on a shared machine.
const warmBursts = 3

// measureWarm, warmBursts times, waits for every node's pool to fill,
// sends one full handshake at a time (as many as one node's pool holds),
// then times the refill. The p50 is over every burst's requests.
func measureWarm(ctx context.Context, o Options, c Config, cl *signerCluster, target string, tlsCfg *tls.Config) (*Warm, error) {
	if err := poll(ctx, 3*time.Minute, func() bool { return cl.presignReady(o.PresignDepth) }); err != nil {
		return nil, fmt.Errorf("presignature pools did not fill: %w", err)
	}
	var all []load.Sample
	var busy, refill time.Duration
	for range warmBursts {
		samples, elapsed, err := load.Run(ctx, load.Options{URL: target, Concurrency: 1, Requests: o.PresignDepth, TLS: tlsCfg, Timeout: 30 * time.Second}, nil)
		if err != nil {
			return nil, err
		}
		if r := load.Summary(samples, elapsed); r.Errors > 0 {
			return nil, fmt.Errorf("warm requests failed: %v", r.ByCause)
		}
		all, busy = append(all, samples...), busy+elapsed
		start := time.Now()
		if err := poll(ctx, 5*time.Minute, func() bool { return cl.presignReady(o.PresignDepth) }); err != nil {
			return nil, fmt.Errorf("presignature pools did not refill: %w", err)
		}
		refill += time.Since(start)
	}
	r := load.Summary(all, busy)
	return &Warm{Config: c, Requests: r.Successes, P50: r.FullTotal.P50, Mean: r.FullTotal.Mean, RefillTime: refill / warmBursts,
		RefillRate: float64(r.Successes) / refill.Seconds(), PoolPerNode: o.PresignDepth}, nil
}

func poll(ctx context.Context, limit time.Duration, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func joinComma(s []string) string {
	out := ""
	for i, x := range s {
		if i > 0 {
			out += ","
		}
		out += x
	}
	return out
}
