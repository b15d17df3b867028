package matrix

import (
	"bufio"
	"crypto/x509"
	"encoding/csv"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// Machine records where the figures were measured.
type Machine struct {
	CPU   string    `json:"cpu"`
	Cores int       `json:"cores"`
	Go    string    `json:"go"`
	OS    string    `json:"os"`
	Date  time.Time `json:"date"`
}

func thisMachine() Machine {
	m := Machine{Cores: runtime.NumCPU(), Go: runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH, Date: time.Now().UTC(), CPU: "unknown"}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}

func readPublicKey(path string) (any, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("no PEM public key in " + path)
	}
	return x509.ParsePKIXPublicKey(blk.Bytes)
}

// write saves results.json, results.csv, the plots and BENCHMARKS.md.
func (r *Results) write(dir string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil { // --render into a new directory
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), b, 0o644); err != nil {
		return err
	}
	if err := r.writeCSV(filepath.Join(dir, "results.csv")); err != nil {
		return err
	}
	for _, resume := range r.Options.Resumptions {
		if err := r.plot(dir, resume, "latency", "mean response time (ms)", func(p Point) float64 { return ms(p.Report.Total.Mean) }); err != nil {
			return err
		}
		if err := r.plot(dir, resume, "throughput", "throughput (requests/s)", func(p Point) float64 { return p.Report.Goodput }); err != nil {
			return err
		}
	}
	if len(r.Overload) > 0 {
		if err := r.plotOverload(dir, "goodput", "goodput (successful full handshakes/s)", false,
			func(p OverloadPoint) []float64 { return []float64{p.Report.Goodput} }); err != nil {
			return err
		}
		if err := r.plotOverload(dir, "latency", "p50 and p99 of successful handshakes (ms)", true,
			func(p OverloadPoint) []float64 { return []float64{ms(p.Report.Total.P50), ms(p.Report.Total.P99)} }); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(dir, "BENCHMARKS.md"), []byte(r.Markdown("")), 0o644)
}

func (r *Results) writeCSV(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	w := csv.NewWriter(f)
	_ = w.Write([]string{"config", "t", "n", "presign", "concurrency", "resume_percent", "requests", "successes", "errors", "full", "resumed",
		"mean_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms", "full_p50_ms", "resumed_p50_ms", "throughput_rps",
		"p50_vs_local", "p50_vs_gokeyless", "rate_vs_local", "rate_vs_gokeyless"})
	for _, p := range r.Points {
		rp := p.Report
		_ = w.Write([]string{p.Config.Name, fmt.Sprint(p.Config.T), fmt.Sprint(p.Config.N), fmt.Sprint(p.Config.Presign), fmt.Sprint(p.Concurrency), fmt.Sprint(p.Resume),
			fmt.Sprint(rp.Requests), fmt.Sprint(rp.Successes), fmt.Sprint(rp.Errors), fmt.Sprint(rp.Full), fmt.Sprint(rp.Resumed),
			f2(ms(rp.Total.Mean)), f2(ms(rp.Total.P50)), f2(ms(rp.Total.P95)), f2(ms(rp.Total.P99)), f2(ms(rp.Total.Max)),
			f2(ms(rp.FullTotal.P50)), f2(ms(rp.ResumedTotal.P50)), f2(rp.Goodput),
			f2(p.P50VsLocal), f2(p.P50VsGokeyless), f2(p.RateVsLocal), f2(p.RateVsGokeyless)})
	}
	w.Flush()
	return w.Error()
}

func f2(x float64) string { return fmt.Sprintf("%.2f", x) }

// plot draws one line per configuration against concurrency, as PNG and
// SVG: the paper's figure for latency, and throughput.
func (r *Results) plot(dir string, resume int, name, ylabel string, y func(Point) float64) (err error) {
	// gonum/plot panics on some degenerate data; a benchmark run must not
	// lose its results.json and CSV (written before) to a figure.
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("plot %s, %d%% resumed: %v", name, resume, v)
		}
	}()
	p := plot.New()
	p.Title.Text = fmt.Sprintf("HTTPS %s vs concurrency, %d%% resumed", name, resume)
	p.X.Label.Text = "concurrent requests"
	p.Y.Label.Text = ylabel
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.ConstantTicks(concTicks(r.Options.Concurrencies))
	p.Legend.Top, p.Legend.Left = true, true
	if name == "latency" {
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	}
	var names []string
	byName := map[string]plotter.XYs{}
	for _, pt := range r.Points {
		if pt.Resume != resume {
			continue
		}
		if _, ok := byName[pt.Config.Name]; !ok {
			names = append(names, pt.Config.Name)
		}
		v := y(pt)
		if v <= 0 {
			v = 0.01 // log scales cannot show zero
		}
		byName[pt.Config.Name] = append(byName[pt.Config.Name], plotter.XY{X: float64(pt.Concurrency), Y: v})
	}
	for i, n := range names {
		l, s, err := plotter.NewLinePoints(byName[n])
		if err != nil {
			return err
		}
		l.Color = plotutil.Color(i)
		l.Dashes = plotutil.Dashes(i / 4)
		s.Color, s.Shape = plotutil.Color(i), plotutil.Shape(i)
		if strings.Contains(n, "local") || strings.Contains(n, "gokeyless") {
			l.Width = vg.Points(2)
			l.Color = color.Gray{Y: uint8(60 + 80*i)}
			s.Color = l.Color
		}
		p.Add(l, s)
		p.Legend.Add(n, l, s)
	}
	// A log axis over one value (a single concurrency level, or equal
	// latencies) would span [0, 2] once gonum pads it, and log(0) panics:
	// give such an axis a decade around its value.
	if p.X.Min == p.X.Max {
		p.X.Min, p.X.Max = p.X.Min/2, p.X.Max*2
	}
	if _, isLog := p.Y.Scale.(plot.LogScale); isLog && p.Y.Min == p.Y.Max {
		p.Y.Min, p.Y.Max = p.Y.Min/2, p.Y.Max*2
	}
	p.Legend.ThumbnailWidth = vg.Points(20)
	p.Legend.TextStyle.Font.Size = vg.Points(8)
	p.Legend.Padding = vg.Points(1)
	base := filepath.Join(dir, fmt.Sprintf("%s-resume%d", name, resume))
	for _, ext := range []string{".png", ".svg"} {
		if err := p.Save(8*vg.Inch, 5*vg.Inch, base+ext); err != nil {
			return err
		}
	}
	return nil
}

func concTicks(cs []int) []plot.Tick {
	var t []plot.Tick
	for _, c := range cs {
		t = append(t, plot.Tick{Value: float64(c), Label: fmt.Sprint(c)})
	}
	return t
}

// Markdown renders BENCHMARKS.md; plotDir prefixes plot paths.
func (r *Results) Markdown(plotDir string) string {
	var b strings.Builder
	m := r.Machine
	fmt.Fprintf(&b, "# Benchmarks\n\nMeasured %s on %s, %d cores, %s, %s, by `loadtest matrix` (%s per point, presign depth %d). ",
		m.Date.Format("2006-01-02 15:04 MST"), m.CPU, m.Cores, m.OS, m.Go, r.Options.Duration, r.Options.PresignDepth)
	b.WriteString("Everything ran on this one machine over loopback: the load generator, the edge, every signer. ")
	b.WriteString("Absolute figures drift on shared machines; the ratios within one run are what to compare.\n\n")
	b.WriteString("- **local key**: the same edge with its private key in memory (no keyless).\n")
	b.WriteString("- **gokeyless**: the edge with an unmodified gokeyless key server holding a plain key (Keyless SSL as it is).\n")
	b.WriteString("- **tkeyless (t,n)**: the edge with a threshold signer cluster; **presign**: with a presignature pool on every node.\n\n")
	b.WriteString("Response time is connect to last byte of one HTTPS GET on a new connection. ")
	b.WriteString("At 0% resumption every request is a full handshake (one signature); at 90% nine in ten resume a TLS 1.3 session (no signature). ")
	b.WriteString("Ratios: p50 and throughput divided by the baseline's at the same concurrency and resumption.\n\n")
	for _, resume := range r.Options.Resumptions {
		fmt.Fprintf(&b, "![latency, %d%% resumed](%slatency-resume%d.png)\n![throughput, %d%% resumed](%sthroughput-resume%d.png)\n\n", resume, plotDir, resume, resume, plotDir, resume)
	}
	r.compareMarkdown(&b)
	if len(r.Warm) > 0 {
		b.WriteString("## Presigning with a warm pool\n\n")
		fmt.Fprintf(&b, "Full handshakes one at a time while every node's pool is full (as many as one pool holds), then the time until the pools are full again; %d such bursts, one p50 over all their requests.\n\n", warmBursts)
		b.WriteString("| config | requests | full-handshake p50 | mean | refill time | refill rate |\n|---|---|---|---|---|---|\n")
		for _, w := range r.Warm {
			fmt.Fprintf(&b, "| %s | %d | %.2f ms | %.2f ms | %.1f s | %.2f presignatures/s |\n", w.Config.Name, w.Requests, ms(w.P50), ms(w.Mean), w.RefillTime.Seconds(), w.RefillRate)
		}
		b.WriteString("\n")
	}
	for _, resume := range r.Options.Resumptions {
		fmt.Fprintf(&b, "## %d%% resumption\n\n", resume)
		b.WriteString("| config | c | ok | err | full | resumed | mean ms | p50 ms | p95 ms | p99 ms | max ms | req/s | p50 ×local | p50 ×gokeyless | req/s ×local | req/s ×gokeyless |\n")
		b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, p := range r.Points {
			if p.Resume != resume {
				continue
			}
			rp := p.Report
			fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %d | %.2f | %.2f | %.2f | %.2f | %.2f | %.1f | %.3g | %.3g | %.3g | %.3g |\n",
				p.Config.Name, p.Concurrency, rp.Successes, rp.Errors, rp.Full, rp.Resumed, ms(rp.Total.Mean), ms(rp.Total.P50), ms(rp.Total.P95),
				ms(rp.Total.P99), ms(rp.Total.Max), rp.Goodput, p.P50VsLocal, p.P50VsGokeyless, p.RateVsLocal, p.RateVsGokeyless)
		}
		b.WriteString("\n")
	}
	r.overloadMarkdown(&b, plotDir)
	b.WriteString("Raw data: `results.json`, `results.csv`. Reproduce: `make bench` (reduced matrix) or `go run ./loadtest matrix --full`.\n")
	return b.String()
}

// Render reads a results.json and writes its CSV, plots and Markdown into
// dir again, without measuring anything.
func Render(jsonPath, dir string) (*Results, error) {
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		return nil, err
	}
	var r Results
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", jsonPath, err)
	}
	return &r, writeOutputs(&r, dir)
}

// plotOverload draws, per configuration and edge (shedding or not), one line
// per value y gives (p50 then p99) against offered load as a multiple of
// capacity.
func (r *Results) plotOverload(dir, name, ylabel string, logY bool, y func(OverloadPoint) []float64) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("plot overload %s: %v", name, v)
		}
	}()
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Overload: %s vs offered full handshakes (open loop, Poisson)", name)
	p.X.Label.Text = "offered load (× measured capacity)"
	p.Y.Label.Text = ylabel
	p.X.Scale = plot.LogScale{}
	var ticks []plot.Tick
	if r.OverloadOptions != nil {
		for _, f := range r.OverloadOptions.Factors {
			ticks = append(ticks, plot.Tick{Value: f, Label: fmt.Sprintf("%g×", f)})
		}
	}
	p.X.Tick.Marker = plot.ConstantTicks(ticks)
	if logY {
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	}
	p.Legend.Top, p.Legend.Left = true, true
	type key struct {
		name string
		i    int
	}
	var keys []key
	lines := map[key]plotter.XYs{}
	for _, pt := range r.Overload {
		mode := "shedding"
		if !pt.Shed {
			mode = "no shedding"
		}
		for i, v := range y(pt) {
			k := key{fmt.Sprintf("%s, %s", pt.Config.Name, mode), i}
			if _, ok := lines[k]; !ok {
				keys = append(keys, k)
			}
			if v <= 0 && logY {
				v = 0.01
			}
			lines[k] = append(lines[k], plotter.XY{X: pt.Factor, Y: v})
		}
	}
	for n, k := range keys {
		l, s, err := plotter.NewLinePoints(lines[k])
		if err != nil {
			return err
		}
		l.Color, s.Color, s.Shape = plotutil.Color(n/len(y(r.Overload[0]))), plotutil.Color(n/len(y(r.Overload[0]))), plotutil.Shape(n)
		l.Dashes = plotutil.Dashes(k.i)
		label := k.name
		if len(y(r.Overload[0])) > 1 {
			label += []string{" p50", " p99"}[min(k.i, 1)]
		}
		p.Add(l, s)
		p.Legend.Add(label, l, s)
	}
	if _, isLog := p.Y.Scale.(plot.LogScale); isLog && p.Y.Min == p.Y.Max {
		p.Y.Min, p.Y.Max = p.Y.Min/2, p.Y.Max*2
	}
	p.Legend.TextStyle.Font.Size = vg.Points(8)
	base := filepath.Join(dir, "overload-"+name)
	for _, ext := range []string{".png", ".svg"} {
		if err := p.Save(8*vg.Inch, 5*vg.Inch, base+ext); err != nil {
			return err
		}
	}
	return nil
}

// overloadMarkdown writes the overload sweep's section, if it ran.
func (r *Results) overloadMarkdown(b *strings.Builder, plotDir string) {
	if len(r.Overload) == 0 || r.OverloadOptions == nil {
		return
	}
	ov := r.OverloadOptions
	b.WriteString("## Overload: goodput under a flood of full handshakes\n\n")
	if m := ov.Machine; m != nil {
		fmt.Fprintf(b, "Measured %s on %s, %d cores, %s, %s", m.Date.Format("2006-01-02 15:04 MST"), m.CPU, m.Cores, m.OS, m.Go)
		if ov.LoadAverage != "" {
			fmt.Fprintf(b, "; load average at the start %s (1, 5, 15 min)", ov.LoadAverage)
			var load1 float64
			if _, err := fmt.Sscan(ov.LoadAverage, &load1); err == nil && load1 > float64(m.Cores) {
				b.WriteString(": above the core count, other work was competing for the CPU, and absolute figures are low")
			}
		}
		b.WriteString(". ")
	}
	fmt.Fprintf(b, "Open loop (`loadtest --rate`, Poisson arrivals), every request a new connection and a full handshake, %v per point, "+
		"offered at multiples of the capacity measured closed loop just before; `--sign-timeout %v`. "+
		"**shedding**: the edge's defaults (adaptive signing slots, deadline-aware queue; the per-client budget off with `--client-allow 127.0.0.0/8`, "+
		"since all load comes from one address: this is the many-sources case). **no shedding**: `--shed=false`, as before issue #14. "+
		"Goodput is successful handshakes per second of the arrival window; latencies are of successful requests. "+
		"Between points the sweep waits until one handshake signs within the deadline again.\n\n", ov.Duration, ov.SignTimeout)
	fmt.Fprintf(b, "![overload goodput](%soverload-goodput.png)\n![overload latency](%soverload-latency.png)\n\n", plotDir, plotDir)
	b.WriteString("| config | edge | capacity /s | offered | offered /s | ok | err | goodput /s | goodput ÷ at 1× | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	at1 := map[string]float64{}
	for _, p := range r.Overload {
		if p.Factor == 1 {
			at1[fmt.Sprint(p.Config.Name, p.Shed)] = p.Report.Goodput
		}
	}
	for _, p := range r.Overload {
		mode := "shedding"
		if !p.Shed {
			mode = "no shedding"
		}
		ratio := "–"
		if g := at1[fmt.Sprint(p.Config.Name, p.Shed)]; g > 0 {
			ratio = fmt.Sprintf("%.2f", p.Report.Goodput/g)
		}
		rp := p.Report
		fmt.Fprintf(b, "| %s | %s | %.2f | %g× | %.1f | %d | %d | %.2f | %s | %.0f | %.0f |\n", p.Config.Name, mode, p.Capacity, p.Factor,
			rp.Rate, rp.Successes, rp.Errors, rp.Goodput, ratio, ms(rp.Total.P50), ms(rp.Total.P99))
	}
	b.WriteString("\n")
}
