package bench

import (
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

// Chart layout.
const (
	chartCols   = 3
	tileWidth   = 5 * vg.Inch
	tileHeight  = 3.6 * vg.Inch
	chartDPI    = 96
	cdfMinNines = 0   // p0
	cdfMaxNines = 4.2 // a little above p99.99
)

// subjectColor marks the subject's bars; peers get the palette.
var subjectColor = color.RGBA{R: 0xd6, G: 0x4e, B: 0x12, A: 0xff}

// WriteCharts renders the report's charts into dir as PNG and SVG and
// returns the files written: bars.* (one panel per workload, median with
// min–max whiskers per system) and latency.* (latency CDFs of the queue
// depth 1 workloads).
func (rep *Report) WriteCharts(dir string) ([]string, error) {
	var files []string
	if grid := rep.barPlots(); len(grid) > 0 {
		fs, err := saveGrid(grid, filepath.Join(dir, "bars"))
		if err != nil {
			return files, err
		}
		files = append(files, fs...)
	}
	if grid := rep.cdfPlots(); len(grid) > 0 {
		fs, err := saveGrid(grid, filepath.Join(dir, "latency"))
		if err != nil {
			return files, err
		}
		files = append(files, fs...)
	}
	return files, nil
}

// systemColors gives every system that ran a stable colour.
func (rep *Report) systemColors() map[string]color.Color {
	c := map[string]color.Color{}
	i := 0
	for _, s := range rep.Systems {
		switch {
		case s.Skipped != "":
		case s.Subject && len(c) == 0:
			c[s.Name] = subjectColor
		default:
			c[s.Name] = plotutil.Color(i)
			i++
		}
	}
	return c
}

func (rep *Report) barPlots() []*plot.Plot {
	ran := rep.ranSystems()
	colors := rep.systemColors()
	var out []*plot.Plot
	for _, wl := range rep.Work {
		p := plot.New()
		p.Title.Text = wl.Name
		p.Y.Label.Text = wl.Metric.String()
		p.Y.Min = 0
		p.Y.Tick.Marker = shortTicks{}
		var labels []string
		var tops plotter.XYLabels
		top := 0.0
		any := false
		for i, s := range ran {
			labels = append(labels, s)
			c := rep.cell(s, wl.Name)
			if c == nil {
				continue
			}
			any = true
			bar, err := plotter.NewBarChart(plotter.Values{c.Median}, tileWidth/vg.Length(len(ran)+2))
			if err != nil {
				panic(fmt.Sprintf("bench: bar chart: %v", err))
			}
			bar.XMin = float64(i)
			top = max(top, c.Max)
			tops.XYs = append(tops.XYs, plotter.XY{X: float64(i), Y: c.Max})
			tops.Labels = append(tops.Labels, fmtNum(c.Median))
			bar.Color = colors[s]
			bar.LineStyle.Width = 0
			p.Add(bar)
			if c.N > 1 {
				eb, err := plotter.NewYErrorBars(whisker{x: float64(i), y: c.Median, lo: c.Median - c.Min, hi: c.Max - c.Median})
				if err != nil {
					panic(fmt.Sprintf("bench: error bars: %v", err))
				}
				eb.LineStyle.Width = vg.Points(1.2)
				p.Add(eb)
			}
		}
		if !any {
			continue
		}
		p.Y.Max = top * 1.15
		if lb, err := plotter.NewLabels(tops); err == nil {
			for i := range lb.TextStyle {
				lb.TextStyle[i].XAlign = draw.XCenter
				lb.TextStyle[i].YAlign = draw.YBottom
			}
			lb.Offset = vg.Point{Y: vg.Points(3)}
			p.Add(lb)
		}
		p.NominalX(labels...)
		p.X.Tick.Label.Rotation = math.Pi / 8
		p.X.Tick.Label.XAlign = draw.XRight
		p.X.Tick.Label.YAlign = draw.YCenter
		g := plotter.NewGrid()
		g.Vertical.Color = nil
		p.Add(g)
		out = append(out, p)
	}
	return out
}

// shortTicks are gonum's default ticks labelled 25k rather than 25000.00.
type shortTicks struct{}

func (shortTicks) Ticks(min, max float64) []plot.Tick {
	t := plot.DefaultTicks{}.Ticks(min, max)
	for i := range t {
		if t[i].Label == "" {
			continue
		}
		switch v := t[i].Value; {
		case v >= 1000:
			t[i].Label = strconv.FormatFloat(v/1000, 'f', -1, 64) + "k"
		default:
			t[i].Label = strconv.FormatFloat(v, 'f', -1, 64)
		}
	}
	return t
}

// whisker is one error bar for plotter.NewYErrorBars.
type whisker struct{ x, y, lo, hi float64 }

func (w whisker) Len() int                       { return 1 }
func (w whisker) XY(int) (float64, float64)      { return w.x, w.y }
func (w whisker) YError(int) (low, high float64) { return w.lo, w.hi }

// nines maps a percentile to -log10(1-p/100): p50→0.3, p90→1, p99→2,
// p99.9→3, so the tail gets as much room as the body.
func nines(p float64) float64 { return -math.Log10(1 - p/100) }

// ninesTicks labels the nines axis with percentiles.
type ninesTicks struct{}

func (ninesTicks) Ticks(min, max float64) []plot.Tick {
	var t []plot.Tick
	for _, p := range []float64{0, 50, 90, 99, 99.9, 99.99} {
		if n := nines(p); n >= min && n <= max {
			t = append(t, plot.Tick{Value: n, Label: "p" + trimFloat(p)})
		}
	}
	return t
}

func trimFloat(f float64) string { return fmt.Sprintf("%g", f) }

func (rep *Report) cdfPlots() []*plot.Plot {
	colors := rep.systemColors()
	var out []*plot.Plot
	for _, wl := range rep.Work {
		if !wl.Latency {
			continue
		}
		p := plot.New()
		p.Title.Text = wl.Name + " latency"
		p.X.Label.Text = "latency (µs, log scale)"
		p.Y.Label.Text = "percentile"
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = plot.LogTicks{Prec: -1}
		p.Y.Tick.Marker = ninesTicks{}
		p.Y.Min, p.Y.Max = cdfMinNines, cdfMaxNines
		p.Legend.Top = true
		p.Legend.Left = true
		p.Legend.XOffs = vg.Points(6)
		p.Legend.YOffs = -vg.Points(4)
		any := false
		for _, s := range rep.ranSystems() {
			c := rep.cell(s, wl.Name)
			if c == nil || len(c.CDF) == 0 {
				continue
			}
			var pts plotter.XYs
			for _, q := range c.CDF {
				if q.Ns > 0 {
					pts = append(pts, plotter.XY{X: q.Ns / 1000, Y: nines(q.P)})
				}
			}
			if len(pts) == 0 {
				continue
			}
			l, sc, err := plotter.NewLinePoints(pts)
			if err != nil {
				panic(fmt.Sprintf("bench: line: %v", err))
			}
			l.Color, sc.Color = colors[s], colors[s]
			l.Width = vg.Points(1.8)
			sc.Shape = draw.CircleGlyph{}
			sc.Radius = vg.Points(2)
			p.Add(l, sc)
			p.Legend.Add(s, l)
			any = true
		}
		if !any {
			continue
		}
		p.Add(plotter.NewGrid())
		out = append(out, p)
	}
	return out
}

// saveGrid tiles plots chartCols wide and writes base.png and base.svg.
func saveGrid(plots []*plot.Plot, base string) ([]string, error) {
	cols := min(chartCols, len(plots))
	rows := (len(plots) + cols - 1) / cols
	grid := make([][]*plot.Plot, rows)
	for i := range grid {
		grid[i] = make([]*plot.Plot, cols)
	}
	for i, p := range plots {
		grid[i/cols][i%cols] = p
	}
	w, h := tileWidth*vg.Length(cols), tileHeight*vg.Length(rows)
	tiles := draw.Tiles{Rows: rows, Cols: cols, PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 4,
		PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	render := func(c vg.CanvasSizer) {
		dc := draw.New(c)
		dc.SetColor(color.White)
		dc.Fill(dc.Rectangle.Path())
		canvases := plot.Align(grid, tiles, dc)
		for j := range grid {
			for i, p := range grid[j] {
				if p != nil {
					p.Draw(canvases[j][i])
				}
			}
		}
	}
	png := vgimg.NewWith(vgimg.UseWH(w, h), vgimg.UseDPI(chartDPI))
	render(png)
	svg := vgsvg.New(w, h)
	render(svg)
	var files []string
	for _, f := range []struct {
		path string
		w    io.WriterTo
	}{{base + ".png", vgimg.PngCanvas{Canvas: png}}, {base + ".svg", svg}} {
		if err := writeFile(f.path, f.w); err != nil {
			return files, err
		}
		files = append(files, f.path)
	}
	return files, nil
}

func writeFile(path string, w io.WriterTo) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := w.WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	return f.Close()
}
