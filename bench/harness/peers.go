package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"time"
)

// peerReport is what bench/peers prints.
type peerReport struct {
	Peer     string `json:"peer"`
	Overhead []struct {
		StepWork    string  `json:"step_work"`
		Concurrency int     `json:"concurrency"`
		OverheadPct float64 `json:"overhead_pct"`
	} `json:"overhead"`
	Throughput []struct {
		Path        string  `json:"path"`
		Concurrency int     `json:"concurrency"`
		SagasPerS   float64 `json:"sagas_per_s"`
	} `json:"throughput"`
}

// figPeers runs bench/peers (its own module) and sets the peer's figures
// beside ours, with the ratio.
func figPeers(tput map[string]float64, over map[time.Duration]float64) Figure {
	fig := Figure{Name: "8. Peers, same saga shapes, same run",
		Method: "bench/peers, its own module: go-workflows v1.4.2 (SQLite in its monoprocess backend); ratio = ours / peer's (throughput) or peer's / ours (overhead)"}
	progress("peers: go-workflows (bench/peers)")
	args := []string{"run", "."}
	if *quick {
		args = append(args, "-quick")
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = "bench/peers"
	cmd.Stderr = os.Stderr
	outb, err := cmd.Output()
	var rep peerReport
	if err == nil {
		err = json.Unmarshal(outb, &rep)
	}
	if err != nil {
		fig.Rows = append(fig.Rows, map[string]any{"peer": "go-workflows", "result": fmt.Sprintf("not measured: %v", err)})
		return fig
	}
	for _, o := range rep.Overhead {
		d, _ := time.ParseDuration(o.StepWork)
		row := map[string]any{"figure": "overhead", "case": fmt.Sprintf("%s steps, c=%d", o.StepWork, o.Concurrency),
			"peer": round2(o.OverheadPct), "ours": "-", "unit": "%", "ratio": "-"}
		if ours, ok := over[d]; ok && ours > 0 {
			row["ours"] = round2(ours)
			row["ratio"] = round2(o.OverheadPct / ours)
		}
		fig.Rows = append(fig.Rows, row)
	}
	for _, t := range rep.Throughput {
		row := map[string]any{"figure": "throughput", "case": fmt.Sprintf("%s, c=%d", t.Path, t.Concurrency),
			"peer": round(t.SagasPerS), "unit": "sagas/s", "ours": "-", "ratio": "-"}
		if ours, ok := tput[fmt.Sprintf("%s/%d", t.Path, t.Concurrency)]; ok {
			row["ours"] = round(ours)
			row["ratio"] = round2(ours / t.SagasPerS)
		}
		fig.Rows = append(fig.Rows, row)
	}
	return fig
}
