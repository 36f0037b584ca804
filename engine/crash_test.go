package engine

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/fsm"
	"github.com/sagaengine/saga/wal"
)

// The crash test: a child process runs a mixed saga workload and is killed
// with SIGKILL at a random moment, again and again on the same directory.
// Actions and compensations append to a ledger file (the outside world);
// the OnTransition hook appends every applied transition to an ack file
// before its caller is acknowledged. Afterwards the parent checks:
//   - every transition in the ack file is in the recovered history;
//   - no side effect happened for a saga the engine does not know;
//   - after resuming, every saga is COMPLETED or FAILED;
//   - every step of a FAILED saga whose action ran was compensated, and the
//     compensations ran in reverse step order (first runs), at least once;
//     half the sagas are pipelined (DurabilityPipelined), for which this
//     is the whole of what the mode promises;
//   - a third of the sagas are a fan-out of parallel branches with their
//     own journal and checks: see crash_dag_test.go.
//
// SAGA_CRASH_KILLS sets the number of kills (default 20), SAGA_CRASH_SEED
// the seed (printed on failure).

const crashChildEnv = "SAGA_CRASH_CHILD_DIR"

func crashRegistry(dir string) (*compensation.Registry, func(), error) {
	ledger, err := os.OpenFile(filepath.Join(dir, "ledger"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, nil, err
	}
	reg := compensation.NewRegistry()
	closeJournal, err := registerDAG(reg, dir)
	if err != nil {
		ledger.Close()
		return nil, nil, err
	}
	write := func(s string) error {
		_, err := ledger.WriteString(s + "\n")
		return err
	}
	_ = reg.RegisterAction("work", func(ctx context.Context, c compensation.Call) ([]byte, error) {
		// The input names the step that fails ("fail=3"), so the outcome
		// is the same after a restart.
		if string(c.Input) == "fail="+strconv.Itoa(c.StepIndex) {
			return nil, compensation.Permanent(errors.New("injected step failure"))
		}
		if err := write(fmt.Sprintf("do %s %d", c.SagaID, c.StepIndex)); err != nil {
			return nil, err
		}
		return []byte(strconv.Itoa(c.StepIndex)), nil
	})
	_ = reg.Register("undo", func(ctx context.Context, c compensation.Call) error {
		// One compensation in ten fails its first attempt, to exercise retries.
		if c.Attempt == 1 && len(c.SagaID) > 0 && c.SagaID[len(c.SagaID)-1]%10 == 0 {
			return errors.New("transient compensation failure")
		}
		return write(fmt.Sprintf("undo %s %d", c.SagaID, c.StepIndex))
	})
	return reg, func() { ledger.Close(); closeJournal() }, nil
}

func crashDefinitions() []Definition {
	var defs []Definition
	for n := 3; n <= 10; n++ {
		d := Definition{Name: fmt.Sprintf("w%d", n)}
		for k := 0; k < n; k++ {
			sd := StepDef{Name: fmt.Sprintf("s%d", k), Action: "work", Compensation: "undo",
				CompensationRetry: RetryPolicy{InitialBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, Multiplier: 2}}
			if n%2 == 1 {
				sd.OnUncertain = fsm.UncertainRetry
			}
			d.Steps = append(d.Steps, sd)
		}
		defs = append(defs, d)
		// The same shape in pipelined mode: a step's record is durable
		// only while the next step runs, and after a kill both are
		// compensated as uncertain, so the ledger checks hold for it too.
		p := d
		p.Name, p.Durability = fmt.Sprintf("p%d", n), DurabilityPipelined
		defs = append(defs, p)
	}
	defs = append(defs, dagDefinitions()...)
	// Nested sagas two deep: nest2 runs nest1 as its step 1, which runs
	// w3 as its own step 1. The input is every level's ("fail=1" fails
	// w3's s1, so all three fail; "fail=3" fails nest2's s3 after both
	// children completed, so they are reverted).
	step := func(k int) StepDef {
		// Retried when uncertain: a kill does not turn most of them into
		// aborts, so that children complete and are reverted.
		return StepDef{Name: fmt.Sprintf("s%d", k), Action: "work", Compensation: "undo", OnUncertain: fsm.UncertainRetry,
			CompensationRetry: RetryPolicy{InitialBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, Multiplier: 2}}
	}
	defs = append(defs, Definition{Name: "nest1", Steps: []StepDef{step(0), {Name: "s1", Child: "w3"}}})
	return append(defs, Definition{Name: "nest2", Steps: []StepDef{step(0), {Name: "s1", Child: "nest1"}, step(2), step(3)}})
}

// TestCrashChild is the child's workload; it only runs under the parent.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashChildEnv)
	if dir == "" {
		t.Skip("run by TestCrashRecovery in a child process")
	}
	seed, _ := strconv.ParseUint(os.Getenv("SAGA_CRASH_CHILD_SEED"), 10, 64)
	// The parent kills this process within seconds; the deadline ends an
	// orphan.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	reg, closeLedger, err := crashRegistry(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer closeLedger()
	acks, err := os.OpenFile(filepath.Join(dir, "acks"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	e, err := Open(filepath.Join(dir, "engine"), Options{
		Registry: reg, Logger: quiet,
		// Small segments and frequent checkpoints: kills also land in
		// segment rotation and log truncation.
		WAL:             walOptions(4 << 10),
		CheckpointEvery: 500,
		Hooks: Hooks{OnTransition: func(ev TransitionEvent) {
			if ev.Saga != nil {
				fmt.Fprintf(acks, "ack %s %d %d\n", ev.Saga.ID, ev.Saga.Seq, ev.Index)
			}
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range crashDefinitions() {
		if _, err := e.Define(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			for {
				if rng.IntN(6) == 0 { // nested sagas
					input := []string{"fail=-1", "fail=0", "fail=1", "fail=2", "fail=3", "fail=3", "fail=3"}[rng.IntN(7)]
					if _, err := e.Run(ctx, "nest2", []byte(input), StartOptions{}); err != nil {
						return
					}
					continue
				}
				if rng.IntN(3) == 0 { // a fan-out
					def := []string{"fanc", "fanr", "fanm"}[rng.IntN(3)]
					if _, err := e.Run(ctx, def, []byte(dagInput(rng)), StartOptions{}); err != nil {
						return
					}
					continue
				}
				n := 3 + rng.IntN(8)
				input := "fail=-1"
				if rng.IntN(5) == 0 { // about one saga in five fails
					input = "fail=" + strconv.Itoa(rng.IntN(n))
				}
				kind := "w"
				if rng.IntN(2) == 0 {
					kind = "p" // pipelined
				}
				if _, err := e.Run(ctx, fmt.Sprintf("%s%d", kind, n), []byte(input), StartOptions{}); err != nil {
					return
				}
			}
		}(w)
	}
	wg.Wait() // until SIGKILL
}

func TestCrashRecovery(t *testing.T) {
	if os.Getenv(crashChildEnv) != "" {
		t.Skip("child")
	}
	kills := 20
	if s := os.Getenv("SAGA_CRASH_KILLS"); s != "" {
		kills, _ = strconv.Atoi(s)
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("SAGA_CRASH_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("crash test: %d kills, seed %d (rerun with SAGA_CRASH_SEED=%d)", kills, seed, seed)
	defer func() {
		if t.Failed() {
			fmt.Printf("CRASH TEST FAILED: rerun with SAGA_CRASH_SEED=%d SAGA_CRASH_KILLS=%d\n", seed, kills)
		}
	}()
	rng := rand.New(rand.NewPCG(seed, 0))
	dir := t.TempDir()
	for k := 0; k < kills; k++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+dir, fmt.Sprintf("SAGA_CRASH_CHILD_SEED=%d", rng.Uint64()))
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// A random moment: during open and recovery (even kills, timed from
		// the start), or in the workload (odd kills, timed from the child's
		// next acknowledgement, so that a slow start on a loaded machine
		// does not leave the test with nothing acknowledged).
		if k%2 == 1 {
			if !waitForAck(dir, ackSize(dir)) {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
				t.Fatalf("kill %d: the child acknowledged nothing in 2 minutes:\n%s", k, out.String())
			}
			time.Sleep(time.Duration(rng.IntN(200)) * time.Millisecond)
		} else {
			time.Sleep(time.Duration(20+rng.IntN(400)) * time.Millisecond)
		}
		_ = cmd.Process.Signal(syscall.SIGKILL)
		err := cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("kill %d: child ended by itself (%v) before the kill:\n%s", k, err, out.String())
		}
		if k%5 == 4 || k == kills-1 {
			checkAcks(t, dir, seed)
		}
	}
	checkFinal(t, dir)
}

// ackSize is the size of the acks file the children append to.
func ackSize(dir string) int64 {
	fi, err := os.Stat(filepath.Join(dir, "acks"))
	if err != nil {
		return 0
	}
	return fi.Size()
}

// waitForAck waits, for at most 2 minutes, until a child acknowledges a
// transition past size bytes of the acks file; false if none came.
func waitForAck(dir string, size int64) bool {
	for deadline := time.Now().Add(2 * time.Minute); ackSize(dir) <= size; time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

func walOptions(segment int) wal.Options { return wal.Options{SegmentSize: segment} }

// checkAcks opens the engine in this process and checks every
// acknowledged transition survived.
func checkAcks(t *testing.T, dir string, seed uint64) {
	t.Helper()
	reg, closeLedger, err := crashRegistry(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer closeLedger()
	e := openT(t, filepath.Join(dir, "engine"), Options{Registry: reg, WAL: walOptions(4 << 10), CheckpointEvery: 500})
	defer e.Close()
	f, err := os.Open(filepath.Join(dir, "acks"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	histories := map[string][]fsm.HistoryEntry{}
	n := 0
	for sc.Scan() {
		var id string
		var seq, idx uint64
		if _, err := fmt.Sscanf(sc.Text(), "ack %s %d %d", &id, &seq, &idx); err != nil {
			continue // a line torn by the kill
		}
		h, ok := histories[id]
		if !ok {
			if h, err = e.History(ctx, id); err != nil {
				t.Fatalf("acknowledged saga %s lost: %v (seed %d)", id, err, seed)
			}
			histories[id] = h
		}
		if uint64(len(h)) < seq || h[seq-1].Index != idx {
			t.Fatalf("acknowledged transition %s#%d at log index %d lost (history has %d) (seed %d)", id, seq, idx, len(h), seed)
		}
		n++
	}
	if n == 0 {
		t.Fatal("the child acknowledged nothing: the test exercised nothing")
	}
}

// checkFinal resumes everything, waits for every saga to settle and checks
// the ledger against the outcomes.
func checkFinal(t *testing.T, dir string) {
	reg, closeLedger, err := crashRegistry(dir)
	if err != nil {
		t.Fatal(err)
	}
	e := openT(t, filepath.Join(dir, "engine"), Options{Registry: reg, WAL: walOptions(4 << 10)})
	// Resuming a parent may start a child saga that did not exist when a
	// pass of the list went by: list again until a pass finds nothing new.
	states := map[string]*Status{}
	for fresh := true; fresh; {
		fresh = false
		after := ""
		for {
			page, next, err := e.List(ctx, fsm.Query{After: after, Limit: 500})
			if err != nil {
				t.Fatal(err)
			}
			for _, st := range page {
				if states[st.ID] != nil {
					continue
				}
				fresh = true
				wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				final, err := e.Wait(wctx, st.ID)
				cancel()
				if err != nil {
					t.Fatalf("saga %s did not settle: %v", st.ID, err)
				}
				if !final.State.Terminal() {
					t.Fatalf("saga %s ended %s, want COMPLETED or FAILED", st.ID, final.State)
				}
				states[st.ID] = final
			}
			if next == "" {
				break
			}
			after = next
		}
	}
	must(t, e.Close())
	closeLedger()

	data, err := os.ReadFile(filepath.Join(dir, "ledger"))
	if err != nil {
		t.Fatal(err)
	}
	did := map[string]map[int]bool{}
	undone := map[string][]int{}
	undonePos := map[string][]int{} // ledger line of each undo, as undone
	for pos, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var op, id string
		var step int
		if _, err := fmt.Sscanf(line, "%s %s %d", &op, &id, &step); err != nil {
			t.Fatalf("bad ledger line %q", line)
		}
		if _, ok := states[id]; !ok {
			t.Fatalf("side effect %q for a saga the engine does not know: persist-before-side-effect broken", line)
		}
		if op == "do" {
			if did[id] == nil {
				did[id] = map[int]bool{}
			}
			did[id][step] = true
		} else {
			undone[id] = append(undone[id], step)
			undonePos[id] = append(undonePos[id], pos)
		}
	}
	checkNested(t, states, undone, undonePos)
	var completed, failed, compensations int
	for id, st := range states {
		if st.Saga.Parallel() {
			continue // a fan-out: checkDAGJournal below
		}
		switch st.State {
		case fsm.StateCompleted:
			completed++
			if len(undone[id]) > 0 {
				t.Fatalf("completed saga %s was compensated: %v", id, undone[id])
			}
			for k := range st.Steps {
				if st.Steps[k].Child == "" && !did[id][k] { // a child step runs no action of its own
					t.Fatalf("completed saga %s: step %d never ran", id, k)
				}
			}
		case fsm.StateFailed:
			failed++
			var first []int
			seen := map[int]bool{}
			for _, s := range undone[id] {
				if !seen[s] {
					seen[s] = true
					first = append(first, s)
				}
			}
			for s := range did[id] {
				if !seen[s] {
					t.Fatalf("failed saga %s: step %d ran but was never compensated (undone %v)", id, s, undone[id])
				}
			}
			if !slices.IsSortedFunc(first, func(a, b int) int { return b - a }) {
				t.Fatalf("failed saga %s: compensations not in reverse order: %v", id, undone[id])
			}
			for _, s := range st.Steps {
				if s.Status == fsm.StepDone || s.Status == fsm.StepCompensating {
					t.Fatalf("failed saga %s: step %s left %s", id, s.Name, s.Status)
				}
			}
			compensations += len(first)
		}
	}
	t.Logf("%d sagas: %d sequences completed, %d failed, %d compensations", len(states), completed, failed, compensations)
	if completed == 0 || failed == 0 || compensations == 0 {
		t.Fatal("the workload did not exercise both outcomes")
	}
	completed, failed, parallel, acrossKills := checkDAGJournal(t, dir, states)
	t.Logf("fan-outs: %d completed, %d failed, %d with branches compensated in parallel, %d with compensations across a kill",
		completed, failed, parallel, acrossKills)
	if completed == 0 || failed == 0 || parallel == 0 {
		t.Fatal("the workload did not exercise both outcomes of fan-outs, or parallel compensation")
	}
}

// checkNested checks the nested sagas of the crash workload: a child ends
// as its parent does (a completed child of a failed parent was reverted),
// and a child is compensated whole before its parent compensates any
// step before the one that ran it.
func checkNested(t *testing.T, states map[string]*Status, undone map[string][]int, undonePos map[string][]int) {
	t.Helper()
	var parents, reverted int
	for id, st := range states {
		p := st.Saga.Parent
		if p == "" {
			continue
		}
		ps, ok := states[p]
		if !ok {
			t.Fatalf("child saga %s names parent %s, which the engine does not know", id, p)
		}
		k := -1
		for i := range ps.Steps {
			if ChildID(p, i) == id {
				k = i
			}
		}
		if k < 0 {
			t.Fatalf("child saga %s is not the child of any step of %s", id, p)
		}
		if st.State != ps.State {
			t.Fatalf("child saga %s ended %s, its parent %s %s", id, st.State, p, ps.State)
		}
		if ps.Saga.Depth == 0 {
			parents++
		}
		if st.LastError != nil && st.LastError.Kind == "reverted" {
			reverted++
		}
		last := -1
		if n := len(undonePos[id]); n > 0 {
			last = undonePos[id][n-1]
		}
		for j, s := range undone[p] {
			if s < k && undonePos[p][j] < last {
				t.Fatalf("parent %s compensated step %d (ledger line %d) before its child %s at step %d was compensated whole (line %d)",
					p, s, undonePos[p][j], id, k, last)
			}
		}
	}
	t.Logf("nested: %d top-level sagas with children, %d children reverted", parents, reverted)
	if parents == 0 || reverted == 0 {
		t.Fatal("the workload did not exercise nested sagas and their revert")
	}
}
