package matrix

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fakeRun stands in for Run's and Overload's measuring steps with the
// figures of testdata/one-concurrency.json, and counts the outputs'
// renders. The matrix gives that run's closed-loop points and warm pool;
// the sweep gives its overload points, then fails with sweepErr if set.
type fakeRun struct {
	renders  int
	sweepErr error
}

func newFakeRun(t *testing.T) *fakeRun {
	f := &fakeRun{}
	m, ov, w := measureMatrix, measureOverload, writeOutputs
	t.Cleanup(func() { measureMatrix, measureOverload, writeOutputs = m, ov, w })
	measureMatrix = func(context.Context, Options) (*Results, error) {
		res := fixture(t)
		res.OverloadOptions, res.Overload = nil, nil
		return res, nil
	}
	measureOverload = func(_ context.Context, _ Options, ov OverloadOptions, res *Results) error {
		res.OverloadOptions = &ov
		res.Overload = append(res.Overload, fixture(t).Overload...)
		return f.sweepErr
	}
	writeOutputs = func(r *Results, dir string) error {
		f.renders++
		return w(r, dir)
	}
	return f
}

func fixture(t *testing.T) *Results {
	t.Helper()
	b, err := os.ReadFile("testdata/one-concurrency.json")
	if err != nil {
		t.Fatal(err)
	}
	var r Results
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	return &r
}

// fixtureSweep is the overload options of the fixture's sweep.
func fixtureSweep(t *testing.T) OverloadOptions {
	return *fixture(t).OverloadOptions
}

// sameFiles fails unless dirs a and b hold the same files, byte for byte.
func sameFiles(t *testing.T, a, b string) {
	t.Helper()
	names := func(dir string) []string {
		es, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var n []string
		for _, e := range es {
			n = append(n, e.Name())
		}
		return n
	}
	na, nb := names(a), names(b)
	if !slices.Equal(na, nb) {
		t.Fatalf("different files: %v and %v", na, nb)
	}
	for _, n := range na {
		x, _ := os.ReadFile(filepath.Join(a, n))
		y, _ := os.ReadFile(filepath.Join(b, n))
		if !bytes.Equal(x, y) {
			t.Errorf("%s differs", n)
		}
	}
}

// A run with --overload renders its outputs once, after the sweep, where it
// rendered them after the matrix and again after the sweep; the files are
// those the two renders left.
func TestRunOverloadRendersOnce(t *testing.T) {
	f := newFakeRun(t)
	ctx := context.Background()
	dir := t.TempDir()
	ov := fixtureSweep(t)
	res, err := Run(ctx, Options{Out: dir, Log: io.Discard}, &ov)
	if err != nil {
		t.Fatal(err)
	}
	if f.renders != 1 {
		t.Errorf("matrix and overload sweep: outputs rendered %d times, want once", f.renders)
	}
	if len(res.Points) != 8 || len(res.Overload) != 4 {
		t.Errorf("%d points and %d overload points, want 8 and 4", len(res.Points), len(res.Overload))
	}
	md, _ := os.ReadFile(filepath.Join(dir, "BENCHMARKS.md"))
	if !bytes.Contains(md, []byte("## Overload")) || !bytes.Contains(md, []byte("## 0% resumption")) {
		t.Error("BENCHMARKS.md lacks the matrix or the overload sweep")
	}

	// The files the old order left: the matrix's outputs, then the sweep's
	// with the matrix's points read back from results.json.
	old := t.TempDir()
	if _, err := Run(ctx, Options{Out: old, Log: io.Discard}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := Overload(ctx, Options{Out: old, Log: io.Discard}, ov, filepath.Join(old, "results.json")); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, dir, old)
}

// If the sweep fails after the matrix finished, the matrix's outputs are
// written all the same (as without --overload, none of the sweep), once,
// and Run says so with the sweep's error. If the matrix fails, nothing is
// written.
func TestRunOverloadFails(t *testing.T) {
	f := newFakeRun(t)
	ctx := context.Background()
	errSweep := errors.New("overload tkeyless (1,2): the cluster did not start")
	f.sweepErr = errSweep
	dir := t.TempDir()
	ov := fixtureSweep(t)
	ov.Thresholds = append(ov.Thresholds, [2]int{1, 2}) // (2,3) measured, then (1,2) fails
	res, err := Run(ctx, Options{Out: dir, Log: io.Discard}, &ov)
	if !errors.Is(err, errSweep) || !strings.Contains(err.Error(), dir) {
		t.Errorf("Run's error %v, want the sweep's, naming %s", err, dir)
	}
	if res == nil || len(res.Points) != 8 || len(res.Overload) != 0 || res.OverloadOptions != nil {
		t.Fatalf("Run returned %+v, want the matrix's 8 points and no sweep", res)
	}
	if f.renders != 1 {
		t.Errorf("outputs rendered %d times, want once", f.renders)
	}
	back, err := Render(filepath.Join(dir, "results.json"), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if len(back.Points) != 8 || len(back.Warm) != 1 || len(back.Overload) != 0 || back.OverloadOptions != nil {
		t.Errorf("results.json holds %d points, %d warm, %d overload, options %v; want 8, 1, 0, none",
			len(back.Points), len(back.Warm), len(back.Overload), back.OverloadOptions)
	}
	f.sweepErr = nil
	plain := t.TempDir()
	if _, err := Run(ctx, Options{Out: plain, Log: io.Discard}, nil); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, dir, plain)

	f.renders = 0
	errMatrix := errors.New("tkeyless (2,3): the cluster did not start")
	measureMatrix = func(context.Context, Options) (*Results, error) { return nil, errMatrix }
	empty := t.TempDir()
	if res, err := Run(ctx, Options{Out: empty, Log: io.Discard}, &ov); !errors.Is(err, errMatrix) || res != nil {
		t.Errorf("a failed matrix: Run returned %v, %v", res, err)
	}
	if es, _ := os.ReadDir(empty); f.renders != 0 || len(es) != 0 {
		t.Errorf("a failed matrix: %d renders, %d files written", f.renders, len(es))
	}
}

// --overload-only renders once and keeps the matrix's points of the
// results.json it reads; a failed sweep leaves that file and the other
// outputs as they were.
func TestOverloadOnly(t *testing.T) {
	f := newFakeRun(t)
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := Run(ctx, Options{Out: dir, Log: io.Discard}, nil); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(filepath.Join(dir, "results.json"))

	f.renders, f.sweepErr = 0, errors.New("interrupted")
	if _, err := Overload(ctx, Options{Out: dir, Log: io.Discard}, fixtureSweep(t), filepath.Join(dir, "results.json")); err == nil {
		t.Fatal("a failed sweep returned no error")
	}
	if after, _ := os.ReadFile(filepath.Join(dir, "results.json")); f.renders != 0 || !bytes.Equal(before, after) {
		t.Errorf("a failed --overload-only: %d renders, results.json changed: %v", f.renders, !bytes.Equal(before, after))
	}

	f.sweepErr = nil
	res, err := Overload(ctx, Options{Out: dir, Log: io.Discard}, fixtureSweep(t), filepath.Join(dir, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	if f.renders != 1 || len(res.Points) != 8 || len(res.Warm) != 1 || len(res.Overload) != 4 {
		t.Errorf("--overload-only: %d renders, %d points, %d warm, %d overload; want 1, 8, 1, 4",
			f.renders, len(res.Points), len(res.Warm), len(res.Overload))
	}
}
