package main

import (
	"fmt"
	"image/color"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

var palette = []color.Color{
	color.RGBA{0x88, 0x88, 0x88, 0xff}, // direct
	color.RGBA{0x1f, 0x77, 0xb4, 0xff},
	color.RGBA{0xff, 0x7f, 0x0e, 0xff},
	color.RGBA{0x2c, 0xa0, 0x2c, 0xff},
	color.RGBA{0xd6, 0x27, 0x28, 0xff},
	color.RGBA{0x94, 0x67, 0xbd, 0xff},
}

// chartGroup is one cluster of bars: a figure of one workload, each candidate relative to a
// reference candidate.
type chartGroup struct {
	label, workload, metric string
	refs                    []string // the first of these that was measured is the reference
}

// chart draws two panels: throughput relative to the direct path, and the proxy's cost
// (CPU per unit of work, memory per connection) relative to HAProxy (nginx for UDP).
func (r *report) chart(path string) error {
	var speed, cost []chartGroup
	for _, w := range r.ws {
		for _, m := range w.metrics {
			if m.key == w.primary && m.higher && w.name != "idle" {
				speed = append(speed, chartGroup{w.name, w.name, m.key, []string{"direct"}})
			}
		}
		if w.name == "idle" {
			cost = append(cost, chartGroup{"idle RSS/conn", w.name, "rss_kib_per_conn", []string{"haproxy", "nginx"}})
		} else {
			cost = append(cost, chartGroup{w.name + " CPU", w.name, w.cpuKey, []string{"haproxy", "nginx"}})
		}
	}
	top, err := r.barPlot("throughput relative to the direct path (higher is better)", speed, false)
	if err != nil {
		return err
	}
	bottom, err := r.barPlot("proxy cost relative to HAProxy (UDP: to nginx); lower is better", cost, true)
	if err != nil {
		return err
	}
	const w, h = 26 * vg.Centimeter, 22 * vg.Centimeter
	img := vgimg.New(w, h)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 2, Cols: 1, PadX: vg.Millimeter, PadY: 4 * vg.Millimeter,
		PadTop: 2 * vg.Millimeter, PadBottom: 2 * vg.Millimeter, PadLeft: 2 * vg.Millimeter, PadRight: 2 * vg.Millimeter}
	canvases := plot.Align([][]*plot.Plot{{top}, {bottom}}, tiles, dc)
	top.Draw(canvases[0][0])
	bottom.Draw(canvases[1][0])
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (r *report) barPlot(title string, groups []chartGroup, proxiesOnly bool) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = "ratio"
	p.Legend.Top = true
	p.Legend.Left = false
	var names []string
	for _, g := range groups {
		names = append(names, g.label)
	}
	var shown []*candidateColor
	for i, c := range r.cands {
		if proxiesOnly && c.direct() {
			continue
		}
		shown = append(shown, &candidateColor{c, palette[i%len(palette)]})
	}
	// Fill about five sixths of each group's share of the ~24 cm of plot width.
	barW := min(vg.Points(22), 24*vg.Centimeter/vg.Length(max(len(groups), 1))/vg.Length(len(shown)+1))
	top := 1.0
	for i, cc := range shown {
		vals := make(plotter.Values, len(groups))
		for gi, g := range groups {
			vals[gi] = r.relative(g, cc.c.name)
			top = max(top, vals[gi])
		}
		bars, err := plotter.NewBarChart(vals, barW)
		if err != nil {
			return nil, fmt.Errorf("bar chart: %w", err)
		}
		bars.Color = cc.col
		bars.LineStyle.Width = 0
		bars.Offset = barW * vg.Length(float64(i)-float64(len(shown)-1)/2)
		p.Add(bars)
		p.Legend.Add(cc.c.title, bars)
	}
	one := plotter.NewFunction(func(float64) float64 { return 1 })
	one.Dashes = []vg.Length{vg.Points(3), vg.Points(3)}
	one.XMin, one.XMax = -0.5, float64(len(groups))-0.5
	p.Add(one)
	p.NominalX(names...)
	p.Y.Min = 0
	p.Y.Max = top * 1.3 // room for the legend above the bars
	return p, nil
}

type candidateColor struct {
	c   *candidate
	col color.Color
}

// relative is a candidate's median of a group's figure divided by the reference's; 0 when
// either is missing.
func (r *report) relative(g chartGroup, cand string) float64 {
	s, ok := r.stat(g.workload, g.metric, cand)
	if !ok {
		return 0
	}
	for _, ref := range g.refs {
		if rs, ok := r.stat(g.workload, g.metric, ref); ok && rs.Median != 0 {
			return s.Median / rs.Median
		}
	}
	return 0
}
