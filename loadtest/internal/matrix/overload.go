package matrix

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/tkeyless/tkeyless/loadtest/internal/load"
)

// OverloadOptions choose the overload sweep: open-loop full handshakes at
// multiples of each cluster's measured capacity, against an edge that sheds
// (its defaults, with the per-client budget off since all load comes from one
// address) and one that does not (--shed=false), to show goodput holding or
// collapsing.
type OverloadOptions struct {
	Thresholds  [][2]int      `json:"thresholds"`
	Factors     []float64     `json:"factors"`         // offered load as multiples of capacity
	Duration    time.Duration `json:"duration_ns"`     // per point
	SignTimeout time.Duration `json:"sign_timeout_ns"` // the edges' --sign-timeout
	// Where and when the sweep ran, and the machine's load average then
	// (other work on a shared machine slows every signature).
	Machine     *Machine `json:"machine,omitempty"`
	LoadAverage string   `json:"load_average,omitempty"`
}

// DefaultOverload is the sweep `loadtest matrix --overload` runs: about 5
// minutes on 2 cores.
func DefaultOverload() OverloadOptions {
	return OverloadOptions{Thresholds: [][2]int{{1, 2}, {2, 3}}, Factors: []float64{0.5, 1, 2, 5, 10},
		Duration: 10 * time.Second, SignTimeout: 5 * time.Second}
}

// OverloadPoint is one offered load against one edge.
type OverloadPoint struct {
	Config   Config      `json:"config"`
	Shed     bool        `json:"shed"`
	Capacity float64     `json:"capacity_rps"` // full handshakes/s measured closed loop
	Factor   float64     `json:"factor"`       // offered = factor × capacity
	Report   load.Report `json:"report"`
}

// RunOverload runs the overload sweep and adds its points to res.
func RunOverload(ctx context.Context, o Options, ov OverloadOptions, res *Results) error {
	m := thisMachine()
	ov.Machine = &m
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		ov.LoadAverage = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	res.OverloadOptions = &ov
	for _, tn := range ov.Thresholds {
		c := Config{Name: fmt.Sprintf("tkeyless (%d,%d)", tn[0], tn[1]), Kind: "tkeyless", T: tn[0], N: tn[1]}
		pts, err := overloadConfig(ctx, o, ov, c)
		if err != nil {
			return fmt.Errorf("overload %s: %w", c.Name, err)
		}
		res.Overload = append(res.Overload, pts...)
	}
	return nil
}

func overloadConfig(ctx context.Context, o Options, ov OverloadOptions, c Config) ([]OverloadPoint, error) {
	e, done, err := newConfigEnv(o, "tkeyless-overload-")
	if err != nil {
		return nil, err
	}
	defer done()
	fmt.Fprintf(o.Log, "== overload %s: starting\n", c.Name)
	if err := e.pki(ctx); err != nil {
		return nil, err
	}
	ca, err := newWebCA()
	if err != nil {
		return nil, err
	}
	cluster, err := e.startCluster(ctx, c.T, c.N, 0)
	if err != nil {
		return nil, err
	}
	pub, err := readPublicKey(cluster.pubPath)
	if err != nil {
		return nil, err
	}
	certPath := filepath.Join(e.dir, "site.pem")
	if err := ca.issue(pub, certPath); err != nil {
		return nil, err
	}
	signer := "keyless://" + joinComma(cluster.keyless)
	timeout := ov.SignTimeout.String()
	shedAddr, err := e.startEdge(ctx, "shed", certPath, signer, 0, "--sign-timeout", timeout, "--shed=true", "--client-allow", "127.0.0.0/8")
	if err != nil {
		return nil, err
	}
	openAddr, err := e.startEdge(ctx, "open", certPath, signer, 0, "--sign-timeout", timeout)
	if err != nil {
		return nil, err
	}
	tlsCfg := &tls.Config{RootCAs: ca.pool, ServerName: "localhost"}

	// Capacity: closed loop at two in flight against the shedding edge, whose
	// slots keep signatures within their deadline.
	lo := load.Options{URL: "https://" + shedAddr + "/", Concurrency: 2, Duration: ov.Duration, TLS: tlsCfg, Timeout: ov.SignTimeout + 5*time.Second}
	samples, elapsed, err := load.Run(ctx, lo, nil)
	if err != nil {
		return nil, err
	}
	cr := load.Summary(samples, elapsed)
	capacity := cr.Goodput
	if capacity <= 0 {
		return nil, fmt.Errorf("capacity run: no handshake succeeded: %v", cr.ByCause)
	}
	fmt.Fprintf(o.Log, "   capacity %.2f full handshakes/s\n", capacity)

	var pts []OverloadPoint
	for _, edge := range []struct {
		shed bool
		addr string
	}{{true, shedAddr}, {false, openAddr}} {
		for _, f := range ov.Factors {
			if err := waitIdle(ctx, shedAddr, tlsCfg, ov.SignTimeout); err != nil {
				return nil, err
			}
			lo := load.Options{URL: "https://" + edge.addr + "/", Rate: f * capacity, Arrival: load.ArrivalPoisson, Concurrency: 4096,
				Duration: ov.Duration, TLS: tlsCfg, Timeout: ov.SignTimeout + 5*time.Second}
			samples, elapsed, err := load.Run(ctx, lo, nil)
			if err != nil {
				return nil, err
			}
			r := load.Summary(samples, elapsed)
			r.Describe(lo)
			fmt.Fprintf(o.Log, "   shed=%-5v %4.1f× (%5.1f/s): %4d ok %4d err  goodput %5.2f/s  p50 %8.1fms  p99 %8.1fms\n",
				edge.shed, f, lo.Rate, r.Successes, r.Errors, r.Goodput, ms(r.Total.P50), ms(r.Total.P99))
			pts = append(pts, OverloadPoint{Config: c, Shed: edge.shed, Capacity: capacity, Factor: f, Report: r})
		}
	}
	return pts, nil
}

// waitIdle waits until one full handshake succeeds within the deadline: the
// signers have finished what an earlier point left them (they may go on with
// sessions the edge gave up on), so each point starts from a quiet cluster.
func waitIdle(ctx context.Context, addr string, tlsCfg *tls.Config, timeout time.Duration) error {
	deadline := time.Now().Add(3 * time.Minute)
	for {
		samples, _, err := load.Run(ctx, load.Options{URL: "https://" + addr + "/", Concurrency: 1, Requests: 1, TLS: tlsCfg, Timeout: timeout}, nil)
		if err != nil {
			return err
		}
		if len(samples) == 1 && samples[0].Err == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the cluster is still busy 3 minutes after the last point")
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// Overload runs the overload sweep alone (--overload-only) and writes every
// output into o.Out with the other results read from resultsPath (if it
// exists): their points are kept, and so are the sweep's points for
// configurations not measured now. If the sweep fails, nothing is written.
// Run runs a sweep after the matrix itself.
func Overload(ctx context.Context, o Options, ov OverloadOptions, resultsPath string) (*Results, error) {
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return nil, err
	}
	res := &Results{Machine: thisMachine()}
	if b, err := os.ReadFile(resultsPath); err == nil {
		if err := json.Unmarshal(b, res); err != nil {
			return nil, fmt.Errorf("%s: %w", resultsPath, err)
		}
	}
	// Points of the configurations measured now are replaced; others kept.
	var kept []OverloadPoint
	thresholds := ov.Thresholds
	for _, p := range res.Overload {
		if !slices.Contains(ov.Thresholds, [2]int{p.Config.T, p.Config.N}) {
			kept = append(kept, p)
			if !slices.Contains(thresholds, [2]int{p.Config.T, p.Config.N}) {
				thresholds = append(thresholds, [2]int{p.Config.T, p.Config.N})
			}
		}
	}
	if res.OverloadOptions != nil && (res.OverloadOptions.SignTimeout != ov.SignTimeout || res.OverloadOptions.Duration != ov.Duration) && len(kept) > 0 {
		return nil, fmt.Errorf("%s has an overload sweep with another --duration or --overload-sign-timeout (%v, %v); use the same, or measure every configuration again",
			resultsPath, res.OverloadOptions.Duration, res.OverloadOptions.SignTimeout)
	}
	res.Overload = kept
	if err := measureOverload(ctx, o, ov, res); err != nil {
		return nil, err // resultsPath and the other outputs stay as they were
	}
	res.OverloadOptions.Thresholds = thresholds
	return res, writeOutputs(res, o.Out)
}
