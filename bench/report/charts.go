package report

import (
	"fmt"
	"path/filepath"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"

	"github.com/kubenat/kubenat/bench/datapath"
)

// commaTicks labels the default ticks with thousands separators.
type commaTicks struct{}

func (commaTicks) Ticks(lo, hi float64) []plot.Tick {
	ts := plot.DefaultTicks{}.Ticks(lo, hi)
	for i := range ts {
		if ts[i].Label != "" {
			if ts[i].Value == float64(int(ts[i].Value)) {
				ts[i].Label = thousands(int(ts[i].Value))
			}
		}
	}
	return ts
}

// series is one line of a chart: medians with min–max error bars.
type series struct {
	name         string
	x, y, lo, hi []float64
	dashed       bool
}

// lineChart draws series over a logarithmic x axis of Service counts.
type lineChart struct {
	title, xLabel, yLabel string
	logY                  bool
	series                []series
	// targets are horizontal reference lines (name → y).
	targets []series
}

func (lc lineChart) save(file string) error {
	p := plot.New()
	p.Title.Text = lc.title
	p.X.Label.Text = lc.xLabel
	p.Y.Label.Text = lc.yLabel
	p.Legend.Top = true
	p.Legend.Left = true
	p.Add(plotter.NewGrid())
	var xs []float64
	for _, s := range append(slices.Clone(lc.series), lc.targets...) {
		for _, x := range s.x {
			if !slices.Contains(xs, x) {
				xs = append(xs, x)
			}
		}
	}
	slices.Sort(xs)
	if len(xs) > 0 && xs[0] > 0 {
		p.X.Scale = plot.LogScale{}
		var ticks []plot.Tick
		for _, x := range xs {
			ticks = append(ticks, plot.Tick{Value: x, Label: thousands(int(x))})
		}
		p.X.Tick.Marker = plot.ConstantTicks(ticks)
		p.X.Min, p.X.Max = xs[0]/1.5, xs[len(xs)-1]*1.5
	}
	if lc.logY {
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	} else {
		p.Y.Tick.Marker = commaTicks{}
	}
	for i, s := range lc.series {
		if len(s.x) == 0 {
			continue
		}
		xys := make(plotter.XYs, len(s.x))
		errs := make(plotter.YErrors, len(s.x))
		for j := range s.x {
			xys[j] = plotter.XY{X: s.x[j], Y: s.y[j]}
			if s.lo != nil {
				errs[j].Low, errs[j].High = s.y[j]-s.lo[j], s.hi[j]-s.y[j]
			}
		}
		l, pts, err := plotter.NewLinePoints(xys)
		if err != nil {
			return fmt.Errorf("chart %q, %s: %w", lc.title, s.name, err)
		}
		l.Color = plotutil.Color(i)
		pts.Color = plotutil.Color(i)
		pts.Shape = plotutil.Shape(i)
		if s.dashed {
			l.Dashes = plotutil.Dashes(1)
		}
		p.Add(l, pts)
		p.Legend.Add(s.name, l, pts)
		if s.lo != nil {
			eb, err := plotter.NewYErrorBars(struct {
				plotter.XYs
				plotter.YErrors
			}{xys, errs})
			if err != nil {
				return fmt.Errorf("chart %q, %s: %w", lc.title, s.name, err)
			}
			eb.Color = plotutil.Color(i)
			p.Add(eb)
		}
	}
	for _, t := range lc.targets {
		xys := plotter.XYs{{X: xs[0] / 1.5, Y: t.y[0]}, {X: xs[len(xs)-1] * 1.5, Y: t.y[0]}}
		l, err := plotter.NewLine(xys)
		if err != nil {
			return err
		}
		l.Dashes = []vg.Length{vg.Points(2), vg.Points(3)}
		l.Color = plotutil.Color(6)
		p.Add(l)
		p.Legend.Add(t.name, l)
	}
	p.Legend.ThumbnailWidth = vg.Points(20)
	p.Legend.Padding = vg.Points(1)
	p.Y.Min = min(p.Y.Min, 0)
	if !lc.logY {
		// Room above the data for the legend.
		p.Y.Max *= 1.0 + 0.09*float64(len(lc.series)+len(lc.targets))
	}
	if lc.logY {
		p.Y.Min = 0
		for _, s := range lc.series {
			for _, v := range append(slices.Clone(s.y), s.lo...) {
				if v > 0 && (p.Y.Min == 0 || v < p.Y.Min) {
					p.Y.Min = v
				}
			}
		}
		p.Y.Min /= 2
		p.Y.Max *= 4 * float64(len(lc.series)+len(lc.targets))
	}
	return p.Save(7*vg.Inch, 4.5*vg.Inch, file)
}

// writeCharts draws every chart the results allow and returns them by key.
func writeCharts(dir string, r *Results) (map[string]chart, error) {
	charts := map[string]chart{}
	save := func(key, file, title string, lc lineChart) error {
		lc.title = title
		if err := lc.save(filepath.Join(dir, file)); err != nil {
			return fmt.Errorf("drawing %s: %w", file, err)
		}
		charts[key] = chart{file: "bench/" + file, title: title}
		return nil
	}
	if d := r.Datapath; d != nil && len(d.Points) > 0 {
		for _, pp := range []struct{ direct, spread, svc, key, file string }{
			{datapath.PodToPodIP, datapath.PodToPodIPs, datapath.PodToClusterIP, "pod", "pod"},
			{datapath.ExternalToPodIP, datapath.ExternalToPodIPs, datapath.ExternalToNodePort, "external", "external"},
		} {
			var rate, lat lineChart
			rate.xLabel, rate.yLabel = "other Services installed", "new connections per second"
			lat.xLabel, lat.yLabel, lat.logY = "other Services installed", "connect latency p50 (s)", true
			rate.series = append(rate.series, rateSeries(d, datapath.None, pp.direct, pp.direct+", no ruleset", true))
			lat.series = append(lat.series, latSeries(d, datapath.None, pp.direct, pp.direct+", no ruleset", true))
			if measured(d, datapath.None, pp.spread) {
				rate.series = append(rate.series, rateSeries(d, datapath.None, pp.spread, pp.spread+", no ruleset", true))
			}
			for _, rs := range rulesets(d) {
				if datapath.IsTen(rs) {
					continue // the same as its ruleset at 10, per size
				}
				rate.series = append(rate.series, rateSeries(d, rs, pp.svc, rs, false))
				lat.series = append(lat.series, latSeries(d, rs, pp.svc, rs, false))
			}
			if err := save("rate-"+pp.key, "datapath-rate-"+pp.file+".png", pp.svc+": new connections per second (one client thread)", rate); err != nil {
				return nil, err
			}
			if err := save("latency-"+pp.key, "datapath-latency-"+pp.file+".png", pp.svc+": connect latency, p50", lat); err != nil {
				return nil, err
			}
		}
		if len(d.Throughputs) > 0 {
			if err := throughputChart(filepath.Join(dir, "datapath-throughput.png"), d); err != nil {
				return nil, err
			}
			charts["throughput"] = chart{file: "bench/datapath-throughput.png", title: "Throughput of one established TCP flow"}
		}
	}
	if cs := r.ControlPlane; len(cs) > 0 {
		var cold, change, rss lineChart
		cold.xLabel, cold.yLabel, cold.logY = "Services (× 5 endpoints)", "seconds", true
		change.xLabel, change.yLabel, change.logY = "Services (× 5 endpoints)", "seconds", true
		rss.xLabel, rss.yLabel = "Services (× 5 endpoints)", "MiB"
		var total, nftPart, p50, p99, peak, objs series
		total.name, nftPart.name = "empty → programmed (median)", "of which libnftables (median)"
		p50.name, p99.name = "endpoint change p50", "endpoint change p99"
		peak.name, objs.name = "agent peak RSS (median)", "objects alone"
		for _, c := range cs {
			if c.Services < 2 {
				continue
			}
			x := float64(c.Services)
			total.x, total.y = append(total.x, x), append(total.y, coldStat(&c, coldSeconds).Median)
			nftPart.x, nftPart.y = append(nftPart.x, x), append(nftPart.y, coldStat(&c, coldNFT).Median)
			p50.x, p50.y = append(p50.x, x), append(p50.y, PercentileNS(c.ChangeLatencies, 50))
			p99.x, p99.y = append(p99.x, x), append(p99.y, PercentileNS(c.ChangeLatencies, 99))
			peak.x, peak.y = append(peak.x, x), append(peak.y, coldStat(&c, coldPeakMiB).Median)
			objs.x, objs.y = append(objs.x, x), append(objs.y, float64(c.ObjectsRSS>>20))
		}
		if len(total.x) > 0 {
			cold.series = []series{total, nftPart}
			change.series = []series{p50, p99}
			change.targets = []series{{name: "target: p99 < 20 ms at 50,000", y: []float64{targetChangeP99At50k}}}
			rss.series = []series{peak, objs}
			rss.targets = []series{{name: "target: < 300 MiB at 50,000", y: []float64{targetRSSAt50kMiB}}}
			if err := save("cold", "controlplane-cold.png", "Empty kernel to all rules programmed", cold); err != nil {
				return nil, err
			}
			if err := save("change", "controlplane-change.png", "One endpoint change: delivered to committed", change); err != nil {
				return nil, err
			}
			if err := save("rss", "controlplane-rss.png", "Agent peak RSS", rss); err != nil {
				return nil, err
			}
		}
	}
	return charts, nil
}

func rateSeries(d *datapath.Results, ruleset, path, name string, dashed bool) series {
	s := series{name: name, dashed: dashed}
	for _, n := range sizes(d) {
		st := rateStat(d.Find(ruleset, path, n))
		if st.N == 0 || n <= 0 {
			continue
		}
		s.x, s.y, s.lo, s.hi = append(s.x, float64(n)), append(s.y, st.Median), append(s.lo, st.Min), append(s.hi, st.Max)
	}
	return s
}

func latSeries(d *datapath.Results, ruleset, path, name string, dashed bool) series {
	s := series{name: name, dashed: dashed}
	for _, n := range sizes(d) {
		st := latStat(d.Find(ruleset, path, n), false)
		if st.N == 0 || n <= 0 {
			continue
		}
		s.x, s.y, s.lo, s.hi = append(s.x, float64(n)), append(s.y, st.Median), append(s.lo, st.Min), append(s.hi, st.Max)
	}
	return s
}

// throughputChart draws grouped bars: one group per ruleset, one bar per
// (path, number of Services).
func throughputChart(file string, d *datapath.Results) error {
	p := plot.New()
	p.Title.Text = "Throughput of one established TCP flow"
	p.Y.Label.Text = "Gbit/s (median; whiskers: min–max)"
	p.Add(plotter.NewGrid())
	groups := []string{datapath.None}
	for _, rs := range rulesets(d) {
		if !datapath.IsTen(rs) {
			groups = append(groups, rs)
		}
	}
	type bar struct {
		pod  bool
		size int
	}
	var bars []bar
	for _, t := range d.Throughputs {
		b := bar{pod: t.Path == datapath.PodToClusterIP || t.Path == datapath.PodToPodIP, size: t.Services}
		if !slices.Contains(bars, b) {
			bars = append(bars, b)
		}
	}
	slices.SortFunc(bars, func(a, b bar) int {
		if a.pod != b.pod {
			if a.pod {
				return -1
			}
			return 1
		}
		return a.size - b.size
	})
	width := vg.Points(12)
	// Bars of a group sit 0.18 data units apart (~13 pt at this size);
	// XMin places them in data units, so the whiskers can follow.
	step := 0.18
	for i, b := range bars {
		vals := make(plotter.Values, len(groups))
		var xys plotter.XYs
		var errs plotter.YErrors
		for g, rs := range groups {
			for _, t := range d.Throughputs {
				pod := t.Path == datapath.PodToClusterIP || t.Path == datapath.PodToPodIP
				if t.Ruleset != rs || pod != b.pod || t.Services != b.size {
					continue
				}
				s := Summarize(t.Samples)
				vals[g] = s.Median * 8 / 1e9
				xys = append(xys, plotter.XY{X: float64(g) + step*(float64(i)-float64(len(bars)-1)/2), Y: vals[g]})
				errs = append(errs, struct{ Low, High float64 }{(s.Median - s.Min) * 8 / 1e9, (s.Max - s.Median) * 8 / 1e9})
			}
		}
		bc, err := plotter.NewBarChart(vals, width)
		if err != nil {
			return fmt.Errorf("drawing the throughput chart: %w", err)
		}
		bc.Color = plotutil.Color(i)
		bc.LineStyle.Width = 0
		bc.XMin = step * (float64(i) - float64(len(bars)-1)/2)
		p.Add(bc)
		from := "the external client"
		if b.pod {
			from = "a pod"
		}
		p.Legend.Add(fmt.Sprintf("from %s, %s other Services", from, thousands(b.size)), bc)
		if len(xys) > 0 {
			eb, err := plotter.NewYErrorBars(struct {
				plotter.XYs
				plotter.YErrors
			}{xys, errs})
			if err != nil {
				return fmt.Errorf("drawing the throughput chart: %w", err)
			}
			p.Add(eb)
		}
	}
	p.NominalX(groups...)
	p.Legend.Top = true
	p.Y.Min = 0
	p.Y.Max *= 1.45
	return p.Save(8*vg.Inch, 4.5*vg.Inch, file)
}
