// Command plot draws the key curves of bench/results/latest.json to PNG:
// throughput vs concurrency (ours and the peer's, happy and failure
// paths) and overhead vs step duration. A module of its own, so the
// library never depends on the plotting code.
//
//	go run . -in ../results/latest.json -out ../results
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

type figure struct {
	Name string           `json:"name"`
	Rows []map[string]any `json:"rows"`
}

type report struct {
	Machine map[string]any `json:"machine"`
	Figures []figure       `json:"figures"`
}

func num(v any) (float64, bool) {
	f, ok := v.(float64)
	return f, ok
}

func find(r *report, prefix string) *figure {
	for i := range r.Figures {
		if strings.HasPrefix(r.Figures[i].Name, prefix) {
			return &r.Figures[i]
		}
	}
	return nil
}

func main() {
	in := flag.String("in", "../results/latest.json", "the harness report")
	out := flag.String("out", "../results", "directory for the PNG files")
	flag.Parse()
	b, err := os.ReadFile(*in)
	if err != nil {
		fmt.Fprintln(os.Stderr, "plot:", err)
		os.Exit(1)
	}
	var r report
	if err := json.Unmarshal(b, &r); err != nil {
		fmt.Fprintln(os.Stderr, "plot:", err)
		os.Exit(1)
	}
	if err := throughput(&r, filepath.Join(*out, "throughput.png")); err != nil {
		fmt.Fprintln(os.Stderr, "plot:", err)
		os.Exit(1)
	}
	if err := overhead(&r, filepath.Join(*out, "overhead.png")); err != nil {
		fmt.Fprintln(os.Stderr, "plot:", err)
		os.Exit(1)
	}
}

// throughput: sagas/s vs concurrency, log-log.
func throughput(r *report, path string) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("4-step sagas/s vs concurrency (fsync ≈ %v µs)", r.Machine["fsync_256B_append_median_us"])
	p.X.Label.Text, p.Y.Label.Text = "concurrent sagas", "sagas/s"
	p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
	p.X.Tick.Marker, p.Y.Tick.Marker = plot.LogTicks{Prec: -1}, plot.LogTicks{Prec: -1}
	series := map[string]plotter.XYs{}
	if f := find(r, "2."); f != nil {
		for _, row := range f.Rows {
			c, _ := num(row["concurrency"])
			v, _ := num(row["sagas_per_s"])
			k := fmt.Sprintf("engine, %v path", row["path"])
			series[k] = append(series[k], plotter.XY{X: c, Y: v})
		}
	}
	if f := find(r, "8."); f != nil {
		for _, row := range f.Rows {
			if row["figure"] != "throughput" {
				continue
			}
			v, ok := num(row["peer"])
			if !ok {
				continue
			}
			var pathName string
			var c float64
			fmt.Sscanf(strings.ReplaceAll(fmt.Sprint(row["case"]), ",", ""), "%s c=%g", &pathName, &c)
			k := fmt.Sprintf("go-workflows, %s path", pathName)
			series[k] = append(series[k], plotter.XY{X: c, Y: v})
		}
	}
	return save(p, series, path, false)
}

// overhead: overhead % vs step duration, concurrency 1, log-log.
func overhead(r *report, path string) error {
	p := plot.New()
	p.Title.Text = "Overhead of a 4-step saga vs step duration (concurrency 1)"
	p.X.Label.Text, p.Y.Label.Text = "step duration (ms)", "overhead (%)"
	p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
	p.X.Tick.Marker, p.Y.Tick.Marker = plot.LogTicks{Prec: -1}, plot.LogTicks{Prec: -1}
	series := map[string]plotter.XYs{}
	if f := find(r, "1."); f != nil {
		for _, row := range f.Rows {
			if c, _ := num(row["concurrency"]); c != 1 {
				continue
			}
			d, err := time.ParseDuration(fmt.Sprint(row["step_work"]))
			v, _ := num(row["overhead_pct"])
			if err == nil && v > 0 {
				series["engine"] = append(series["engine"], plotter.XY{X: float64(d) / float64(time.Millisecond), Y: v})
			}
		}
	}
	if f := find(r, "8."); f != nil {
		for _, row := range f.Rows {
			if row["figure"] != "overhead" {
				continue
			}
			var ms float64
			fmt.Sscanf(fmt.Sprint(row["case"]), "%gms", &ms)
			if v, ok := num(row["peer"]); ok && v > 0 && ms > 0 {
				series["go-workflows"] = append(series["go-workflows"], plotter.XY{X: ms, Y: v})
			}
		}
	}
	// The seed plan's targets, for reference.
	series["target"] = plotter.XYs{{X: 1, Y: 5}, {X: 10, Y: 1}}
	return save(p, series, path, true)
}

// save draws the series; legendTop puts the legend in the top right
// corner (else the bottom right), wherever the curves leave room.
func save(p *plot.Plot, series map[string]plotter.XYs, path string, legendTop bool) error {
	names := make([]string, 0, len(series))
	for k := range series {
		names = append(names, k)
	}
	sort.Strings(names)
	for i, name := range names {
		pts := series[name]
		sort.Slice(pts, func(a, b int) bool { return pts[a].X < pts[b].X })
		l, s, err := plotter.NewLinePoints(pts)
		if err != nil {
			return err
		}
		l.Color = plotutil.Color(i)
		s.Color = plotutil.Color(i)
		if name == "target" {
			l.Color, s.Color = color.Gray{Y: 128}, color.Gray{Y: 128}
			l.Dashes = []vg.Length{vg.Points(4), vg.Points(4)}
		}
		p.Add(l, s)
		p.Legend.Add(name, l, s)
	}
	p.Legend.Top = legendTop
	return p.Save(8*vg.Inch, 5*vg.Inch, path)
}
