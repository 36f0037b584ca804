package main

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	twal "github.com/tidwall/wal"
)

// ceilingLog is the raw tidwall/wal group commit of figure 3, kept open so
// that its windows can alternate with the engine's (figure 3b).
type ceilingLog struct {
	dir     string
	l       *twal.Log
	reqs    chan chan struct{}
	stop    chan struct{}
	done    chan struct{}
	written atomic.Int64
}

func openCeiling() *ceilingLog {
	dir, _ := os.MkdirTemp("", "saga-ceiling-")
	l, err := twal.Open(dir, &twal.Options{NoSync: true, SegmentSize: 8 << 20})
	if err != nil {
		panic(err)
	}
	c := &ceilingLog{dir: dir, l: l, reqs: make(chan chan struct{}, 1024), stop: make(chan struct{}), done: make(chan struct{})}
	go c.commit()
	return c
}

// commit is the one committer: it takes every request queued, writes them
// as one batch, syncs, and answers them.
func (c *ceilingLog) commit() {
	defer close(c.done)
	rec := make([]byte, 120) // about an encoded transition plus framing
	var b twal.Batch
	idx := uint64(1)
	for {
		var batch []chan struct{}
		select {
		case r := <-c.reqs:
			batch = append(batch, r)
		case <-c.stop:
			return
		}
	drain:
		for {
			select {
			case r := <-c.reqs:
				batch = append(batch, r)
			default:
				break drain
			}
		}
		b.Clear()
		for range batch {
			b.Write(idx, rec)
			idx++
		}
		if err := c.l.WriteBatch(&b); err != nil {
			panic(err)
		}
		if err := c.l.Sync(); err != nil {
			panic(err)
		}
		c.written.Add(int64(len(batch)))
		for _, r := range batch {
			close(r)
		}
	}
}

// runFor runs 64 producers, each waiting for its record to be durable
// before it writes the next, for dur, and returns the records per second.
func (c *ceilingLog) runFor(dur time.Duration) float64 {
	w0 := c.written.Load()
	t := time.Now()
	deadline := t.Add(dur)
	var wg sync.WaitGroup
	for p := 0; p < 64; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				r := make(chan struct{})
				c.reqs <- r
				<-r
			}
		}()
	}
	wg.Wait()
	return float64(c.written.Load()-w0) / time.Since(t).Seconds()
}

func (c *ceilingLog) close() {
	close(c.stop)
	<-c.done
	c.l.Close()
	os.RemoveAll(c.dir)
}

// figPaired: the c=64 loads judged against the ceiling (the happy path,
// the failure path, the diamond), each in short windows that alternate
// with a window of the ceiling on the same disk, so that a share compares
// two measurements a second apart rather than two taken minutes apart on
// a disk whose fsync latency drifts (figure 2's and figure 3's points are
// each one window of their own). The share is the median over the rounds.
func figPaired() (Figure, map[string]float64) {
	rounds, win := 5, time.Second
	if *quick {
		rounds, win = 3, 300*time.Millisecond
	}
	fig := Figure{Name: "3b. Shares of the ceiling, paired (c=64)",
		Method: fmt.Sprintf("%d rounds; in each, for each load, a %v window of figure 3's ceiling and then a %v window of the load "+
			"(engine and ceiling open throughout); share = load transitions/s over the ceiling's records/s of the window before it; "+
			"median, min and max over the rounds", rounds, win, win)}
	type load struct {
		name string
		r    *rig
	}
	loads := []load{{"happy", newRig(0, -1)}, {"failure", newRig(0, 2)}, {"diamond", newDAGRig(diamondDef(), 0)}}
	c := openCeiling()
	shares := map[string][]float64{}
	perCommit := map[string][]float64{}
	ceilings := map[string][]float64{}
	fails := map[string]*failures{}
	for i := 0; i < rounds; i++ {
		for _, ld := range loads {
			progress("paired %s, round %d", ld.name, i+1)
			ceil := c.runFor(win)
			s0 := ld.r.e.Stats()
			t := time.Now()
			_, _, f := ld.r.runFor(64, win)
			el := time.Since(t).Seconds()
			s1 := ld.r.e.Stats()
			recs := float64(s1.Records - s0.Records)
			shares[ld.name] = append(shares[ld.name], 100*recs/el/ceil)
			perCommit[ld.name] = append(perCommit[ld.name], recs/float64(max(1, s1.Commits-s0.Commits)))
			ceilings[ld.name] = append(ceilings[ld.name], ceil)
			if fails[ld.name] == nil || f.n.Load() > 0 {
				fails[ld.name] = f
			}
		}
	}
	c.close()
	out := map[string]float64{}
	for _, ld := range loads {
		ld.r.close()
		s := shares[ld.name]
		lo, hi := s[0], s[0]
		for _, v := range s {
			lo, hi = min(lo, v), max(hi, v)
		}
		m := median(s)
		row := map[string]any{"load": ld.name, "share_of_ceiling_pct": round2(m), "min_pct": round2(lo), "max_pct": round2(hi),
			"records_per_commit": round2(median(perCommit[ld.name])), "ceiling_records_per_s": round(median(ceilings[ld.name])), "rounds": rounds}
		fails[ld.name].mark(row)
		fig.Rows = append(fig.Rows, row)
		out[ld.name] = m
		out[ld.name+"/per_commit"] = median(perCommit[ld.name])
	}
	return fig, out
}
