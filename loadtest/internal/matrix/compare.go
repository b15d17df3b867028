package matrix

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"
)

// Previous is what an earlier run measured, carried in this run's
// results.json so BENCHMARKS.md shows the two side by side: a change to
// the signers is judged by its before and after in one document, not by
// two files from different days that a reader must line up by hand.
type Previous struct {
	Source string          `json:"source"` // the results.json it was read from
	Date   time.Time       `json:"date"`
	Points []PreviousPoint `json:"points"`
	Warm   []PreviousWarm  `json:"warm,omitempty"`
}

// PreviousPoint is one closed-loop point of the earlier run.
type PreviousPoint struct {
	Config      string        `json:"config"`
	Concurrency int           `json:"concurrency"`
	Resume      int           `json:"resume_percent"`
	P50         time.Duration `json:"p50_ns"`
	Goodput     float64       `json:"goodput_rps"`
}

// PreviousWarm is one warm-pool figure of the earlier run.
type PreviousWarm struct {
	Config     string        `json:"config"`
	P50        time.Duration `json:"p50_ns"`
	RefillRate float64       `json:"refill_per_s"`
}

// LoadPrevious reads the figures to compare with from an earlier run's
// results.json. Read it before the run starts: the run overwrites
// results.json in its output directory, which is usually this file.
func LoadPrevious(path string) (*Previous, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the run to compare with: %w", err)
	}
	var r Results
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(r.Points) == 0 && len(r.Warm) == 0 {
		return nil, fmt.Errorf("%s: no measurements to compare with", path)
	}
	p := &Previous{Source: path, Date: r.Machine.Date}
	for _, pt := range r.Points {
		p.Points = append(p.Points, PreviousPoint{Config: pt.Config.Name, Concurrency: pt.Concurrency, Resume: pt.Resume,
			P50: pt.Report.Total.P50, Goodput: pt.Report.Goodput})
	}
	for _, w := range r.Warm {
		p.Warm = append(p.Warm, PreviousWarm{Config: w.Config.Name, P50: w.P50, RefillRate: w.RefillRate})
	}
	return p, nil
}

// compareMarkdown writes the section that sets this run's full handshakes
// (0 % resumption) and warm pools beside the previous run's, for every
// configuration and concurrency both measured. Nothing without a Previous.
func (r *Results) compareMarkdown(b *strings.Builder) {
	prev := r.Previous
	if prev == nil {
		return
	}
	fmt.Fprintf(b, "## Against the previous run (%s)\n\n", prev.Date.Format("2006-01-02 15:04 MST"))
	b.WriteString("The same matrix measured earlier (`--compare`), set beside this run: full handshakes at 0% resumption, and the warm pools. ")
	b.WriteString("Read the baselines' rows first (local key, gokeyless): nothing of theirs changed, so their ratios are the machine's own drift between the two runs, ")
	b.WriteString("and a tkeyless ratio means something only well outside them. A presign point at c=1 counts the requests after the pool ran dry too, ")
	b.WriteString("so it moves with how many requests fit in the point's time; the warm-pool table is the presigned figure.\n\n")
	ratio := func(now, before float64) string {
		if before == 0 {
			return "—"
		}
		return fmt.Sprintf("%.2f", now/before)
	}
	if len(r.Warm) > 0 {
		b.WriteString("| warm pool | p50 before | p50 now | now ÷ before | refill before | refill now |\n|---|---|---|---|---|---|\n")
		for _, w := range r.Warm {
			for _, pw := range prev.Warm {
				if pw.Config == w.Config.Name {
					fmt.Fprintf(b, "| %s | %.2f ms | %.2f ms | %s | %.2f/s | %.2f/s |\n", w.Config.Name, ms(pw.P50), ms(w.P50),
						ratio(ms(w.P50), ms(pw.P50)), pw.RefillRate, w.RefillRate)
				}
			}
		}
		b.WriteString("\n")
	}
	b.WriteString("| config | c | p50 before | p50 now | now ÷ before | req/s before | req/s now | now ÷ before |\n|---|---|---|---|---|---|---|---|\n")
	for _, p := range r.Points {
		if p.Resume != 0 {
			continue
		}
		for _, pp := range prev.Points {
			if pp.Config == p.Config.Name && pp.Concurrency == p.Concurrency && pp.Resume == 0 {
				now := p.Report
				fmt.Fprintf(b, "| %s | %d | %.2f ms | %.2f ms | %s | %.1f | %.1f | %s |\n", p.Config.Name, p.Concurrency,
					ms(pp.P50), ms(now.Total.P50), ratio(ms(now.Total.P50), ms(pp.P50)), pp.Goodput, now.Goodput, ratio(now.Goodput, pp.Goodput))
			}
		}
	}
	b.WriteString("\n")
}
