package wan

import (
	"fmt"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// plot draws p50 against RTT, one solid line per (t,n) and path and its
// model dashed in the same colour, as base.png and base.svg.
func (r *Results) plot(base string) (err error) {
	// gonum/plot panics on some degenerate data; a benchmark run must not
	// lose its measurements to a drawing.
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("plot %s: %v", base, p)
		}
	}()
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Full-handshake p50 across a WAN (%s, %d cores)", r.Machine.Date.Format("2006-01-02"), r.Machine.Cores)
	p.X.Label.Text = "RTT on every edge–signer and signer–signer link (ms)"
	p.Y.Label.Text = "p50 (ms, log scale)"
	// Log: the full path costs seconds of CPU, the presigned one tens of
	// milliseconds; on one linear axis the latter is a flat line.
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Legend.Top, p.Legend.Left = false, false
	p.Legend.YOffs = vg.Points(20)
	for i, g := range r.groups() {
		var measured, model plotter.XYs
		for _, pt := range g {
			measured = append(measured, plotter.XY{X: ms(pt.RTT), Y: max(ms(pt.P50), 0.01)})
			model = append(model, plotter.XY{X: ms(pt.RTT), Y: max(ms(pt.Model), 0.01)})
		}
		name := fmt.Sprintf("(%d,%d) %s", g[0].T, g[0].N, pathName(g[0].Presigned))
		l, s, err := plotter.NewLinePoints(measured)
		if err != nil {
			return err
		}
		l.Color, s.Color, s.Shape = plotutil.Color(i), plotutil.Color(i), plotutil.Shape(i)
		ml, err := plotter.NewLine(model)
		if err != nil {
			return err
		}
		ml.Color, ml.Dashes = plotutil.Color(i), []vg.Length{vg.Points(4), vg.Points(3)}
		p.Add(l, s, ml)
		p.Legend.Add(name, l, s)
		p.Legend.Add(name+" model", ml)
	}
	p.Legend.ThumbnailWidth = vg.Points(20)
	p.Legend.TextStyle.Font.Size = vg.Points(8)
	p.Legend.Padding = vg.Points(1)
	p.Add(plotter.NewGrid())
	for _, ext := range []string{".png", ".svg"} {
		if err := p.Save(8*vg.Inch, 5*vg.Inch, base+ext); err != nil {
			return err
		}
	}
	return nil
}
