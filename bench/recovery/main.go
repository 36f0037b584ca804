// Command recovery measures how long engine.Open takes to recover a log of
// N transitions that the state has never seen (the worst case after a
// crash: Pebble's memtable lost, everything replayed from the saga log).
//
//	go run ./bench/recovery -n 1000000
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sagaengine/saga/bench/internal/loggen"
	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/wal"
)

var (
	cpuprofile = flag.String("cpuprofile", "", "write a CPU profile of Open to this file")
	memprofile = flag.String("memprofile", "", "write a profile of the allocations made by Open to this file")
	cacheSize  = flag.Int64("cache", 0, "Pebble block cache in bytes (default: the engine's)")
)

func main() {
	n := flag.Int("n", 1_000_000, "transitions in the log")
	dir := flag.String("dir", "", "data directory (default: a temporary one, removed afterwards)")
	pending := flag.Int("pending", 0, "sagas left COMPENSATING at the end (resumed by Open)")
	flag.Parse()
	if err := run(*n, *pending, *dir); err != nil {
		fmt.Fprintln(os.Stderr, "recovery:", err)
		os.Exit(1)
	}
}

func run(n, pending int, dir string) error {
	if dir == "" {
		tmp, err := os.MkdirTemp("", "saga-recovery-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	t0 := time.Now()
	sagas, err := loggen.Write(dir, n, pending, wal.Options{Logger: quiet})
	if err != nil {
		return err
	}
	fmt.Printf("wrote %d transitions of %d sagas in %v\n", n, sagas, time.Since(t0).Round(time.Millisecond))

	var ms runtime.MemStats
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if *memprofile != "" {
		runtime.MemProfileRate = 64 << 10
	}
	ru0 := usage()
	t1 := time.Now()
	reg := compensation.NewRegistry()
	var undone atomic.Int64
	allDone := make(chan struct{})
	if err := reg.Register("undo", func(context.Context, compensation.Call) error {
		if undone.Add(1) == int64(pending) {
			close(allDone)
		}
		return nil
	}); err != nil {
		return err
	}
	e, err := engine.Open(dir, engine.Options{Logger: quiet, StoreCacheSize: *cacheSize, Registry: reg})
	if err != nil {
		return err
	}
	open := time.Since(t1)
	ru1 := usage()
	if *memprofile != "" {
		if err := writeAllocs(*memprofile); err != nil {
			return err
		}
	}
	if pending > 0 {
		<-allDone
		fmt.Printf("all %d pending compensations ran %v after Open began\n", pending, time.Since(t1).Round(time.Millisecond))
	}
	rs := e.Stats().Recovery
	runtime.ReadMemStats(&ms)
	if err := e.Close(); err != nil {
		return err
	}
	fmt.Printf("recovered: replayed %d transitions in %v (%.0f transitions/s), resumed %d sagas; heap %d MiB\n",
		rs.Replayed, open.Round(time.Millisecond), float64(rs.Replayed)/open.Seconds(), rs.Resumed, ms.HeapAlloc>>20)
	fmt.Printf("open: cpu %v user + %v sys, %d minor page faults\n",
		time.Duration(ru1.Utime.Nano()-ru0.Utime.Nano()).Round(time.Millisecond),
		time.Duration(ru1.Stime.Nano()-ru0.Stime.Nano()).Round(time.Millisecond), ru1.Minflt-ru0.Minflt)
	return nil
}

// usage is the process's resource usage so far: on a virtual machine
// whose host backs guest memory lazily, a page touched for the first time
// can cost more than the work done in it, so Open reports its faults.
func usage() syscall.Rusage {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru
}

// writeAllocs writes the allocation profile (everything since
// MemProfileRate was set, which was just before Open).
func writeAllocs(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
