package matrix

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Rendering a real run (testdata: (2,3) and both baselines, measured at
// one concurrency level, and a made-up overload sweep of two points per
// edge) writes every output. One level once made the log
// axes degenerate and the plotting library panicked, losing the figures.
func TestRenderOneConcurrency(t *testing.T) {
	dir := t.TempDir()
	r, err := Render("testdata/one-concurrency.json", dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"results.json", "results.csv", "BENCHMARKS.md",
		"latency-resume0.png", "latency-resume0.svg", "throughput-resume90.png", "throughput-resume90.svg",
		"overload-goodput.png", "overload-goodput.svg", "overload-latency.png", "overload-latency.svg"} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s not written: %v", f, err)
		}
	}
	md := r.Markdown("plots/")
	for _, want := range []string{"tkeyless (2,3) presign", "gokeyless", "local key", "plots/latency-resume0.png",
		"## Overload", "plots/overload-goodput.png", "| tkeyless (2,3) | shedding | 1.00 | 10× | 10.0 | 9 | 91 | 0.90 | 0.90 |", "| tkeyless (2,3) | no shedding | 1.00 | 10× | 10.0 | 0 | 100 | 0.00 | 0.00 |"} {
		if !strings.Contains(md, want) {
			t.Errorf("BENCHMARKS.md lacks %q", want)
		}
	}
}

// A run compared with an earlier one (--compare) shows both side by side,
// and keeps the comparison through results.json, so --render and the
// overload sweep, which re-read it, do not lose it.
func TestRenderCompare(t *testing.T) {
	prev, err := LoadPrevious("testdata/one-concurrency.json")
	if err != nil {
		t.Fatal(err)
	}
	r, err := Render("testdata/one-concurrency.json", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(r.Markdown(""), "Against the previous run") {
		t.Fatal("a run without --compare shows a comparison")
	}
	// The earlier run was twice as slow at (2,3), c=1.
	for i := range prev.Points {
		if prev.Points[i].Config == "tkeyless (2,3)" && prev.Points[i].Resume == 0 {
			prev.Points[i].P50 *= 2
			prev.Points[i].Goodput /= 2
		}
	}
	r.Previous = prev
	dir := t.TempDir()
	if err := r.write(dir); err != nil {
		t.Fatal(err)
	}
	again, err := Render(filepath.Join(dir, "results.json"), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	md := again.Markdown("")
	for _, want := range []string{"## Against the previous run", "| tkeyless (2,3) | 1 |", "| 0.50 |", "| 2.00 |", "| local key | 1 |", "| 1.00 |"} {
		if !strings.Contains(md, want) {
			t.Errorf("comparison lacks %q:\n%s", want, md)
		}
	}
	if _, err := LoadPrevious(filepath.Join(t.TempDir(), "missing.json")); err == nil {
		t.Error("a missing file to compare with was accepted")
	}
}
