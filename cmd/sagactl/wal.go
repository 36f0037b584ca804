package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/spf13/cobra"

	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/fsm"
	"github.com/sagaengine/saga/wal"
)

func newWal(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "wal",
		Short: "Verify, repair and dump the saga log of a stopped engine",
	}
	cmd.AddCommand(newWalVerify(g), newWalRepair(g), newWalDump(g))
	return cmd
}

// lockOffline takes the data directory's lock for commands that read or
// change the log's files directly.
func (g *globals) lockOffline() (func(), error) {
	if g.online() || g.dir == "" {
		return nil, fail(exitUsage, errors.New("wal commands work on a stopped engine's directory"), "pass --dir DIR")
	}
	// As openOffline: a --dir that does not exist, or that holds neither
	// wal/ nor state/, is a usage error, not a log with nothing to repair.
	if _, err := os.Stat(g.dir); err != nil {
		return nil, fail(exitUsage, fmt.Errorf("data directory %s: %w", g.dir, err), "")
	}
	_, werr := os.Stat(g.walDir())
	if _, serr := os.Stat(filepath.Join(g.dir, "state")); werr != nil && serr != nil {
		return nil, fail(exitUsage, fmt.Errorf("%w: %s holds no wal/ and no state/", engine.ErrNotDataDir, g.dir),
			"--dir names the directory an engine was opened on (it holds wal/ and state/)")
	}
	release, err := engine.LockDir(g.dir)
	if errors.Is(err, engine.ErrLocked) {
		return nil, fail(exitRefused, err, "stop the engine first: the log of a running engine is not touched")
	}
	if err != nil {
		return nil, fail(exitFailed, err, "")
	}
	return release, nil
}

func (g *globals) walDir() string { return filepath.Join(g.dir, "wal") }

// repairPlan is what the engine's Open (and wal repair) would do to the
// log of the stopped engine in g.dir, decided without changing a file.
func (g *globals) repairPlan() (*wal.Plan, error) {
	applied, err := engine.StoredAppliedIndex(g.dir)
	if err != nil {
		return nil, fail(exitFailed, err, "")
	}
	plan, err := wal.PlanRepair(g.walDir(), applied)
	if err != nil {
		return nil, fail(exitFailed, err, "")
	}
	return plan, nil
}

func printReport(g *globals, rep *wal.Report) {
	fmt.Fprintf(g.out, "log: %d segment(s), %d bytes, %d valid record(s)", rep.Segments, rep.Bytes, rep.Records)
	if rep.Records > 0 {
		fmt.Fprintf(g.out, ", indexes %d..%d", rep.FirstIndex, rep.LastIndex)
	}
	fmt.Fprintln(g.out)
	if t := rep.Torn; t != nil {
		fmt.Fprintf(g.out, "torn tail: %d byte(s) at %s offset %d (index %d would follow): %s\n",
			t.Bytes, t.Segment, t.Offset, t.FirstIndex, t.Reason)
	}
	if n := rep.Newer; n != nil {
		fmt.Fprintf(g.out, "NEWER FORMAT: %s offset %d (index %d): %s; this version reads no further\n", n.Segment, n.Offset, n.Index, n.Reason)
	}
	if c := rep.Corrupt; c != nil {
		fmt.Fprintf(g.out, "CORRUPT: %s offset %d (index %d): %s; %d record(s) from there on would be lost by a forced repair\n",
			c.Segment, c.Offset, c.Index, c.Reason, rep.DroppedByForce)
	}
	if rep.PendingTruncation {
		fmt.Fprintln(g.out, "pending truncation: a crash interrupted a truncation of the log (its .START or .END file is there); "+
			"the engine's Open finishes it, and the segments above are as they are before")
	}
}

func newWalVerify(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "verify",
		Short: "Check every record's CRC and index, decode it, and replay the log against the stored state",
		Long: `verify reads every record of the log without changing anything: its
checksum, its index (no gaps), that it decodes, and that replaying the log
into a scratch state gives the same sagas as the stored state (for every
saga whose whole history the log holds and the state has applied).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			release, err := g.lockOffline()
			if err != nil {
				return err
			}
			defer release() // one lock for the whole check
			quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
			scratch, err := fsm.OpenStore("scratch", fsm.StoreOptions{FS: vfs.NewMem(), Logger: quiet})
			if err != nil {
				return fail(exitFailed, err, "")
			}
			defer scratch.Close()
			// The scratch store replays the log through the same code as
			// the engine (renumbered from 1: it starts empty); lastIndex
			// remembers each saga's last transition in the real log.
			lastIndex := map[string]uint64{}
			var decodeErrs []string
			var batch []fsm.Entry
			flush := func() error {
				if len(batch) == 0 {
					return nil
				}
				_, err := scratch.ApplyBatch(batch)
				batch = batch[:0]
				return err
			}
			n := uint64(0)
			rep, err := wal.Verify(g.walDir(), func(idx uint64, p []byte) error {
				r, err := fsm.Decode(p)
				if err != nil {
					decodeErrs = append(decodeErrs, fmt.Sprintf("index %d: %v", idx, err))
					return nil
				}
				n++
				batch = append(batch, fsm.Entry{Index: n, Rec: r, Raw: p})
				if r.Saga != "" {
					lastIndex[r.Saga] = idx
				}
				if len(batch) == 1024 {
					return flush()
				}
				return nil
			})
			if err == nil {
				err = flush()
			}
			if err != nil {
				return fail(exitFailed, err, "")
			}
			plan, err := g.repairPlan()
			if err != nil {
				return err
			}
			applied := plan.Applied
			ok := rep.Corrupt == nil && plan.Problem == nil && len(decodeErrs) == 0
			var compared, mismatched, notApplied, checkpointed int
			var mismatches []string
			stateDir := filepath.Join(g.dir, "state")
			if _, serr := os.Stat(stateDir); serr == nil {
				real, err := fsm.OpenStore(stateDir, fsm.StoreOptions{ReadOnly: true, Logger: quiet})
				if err != nil {
					return fail(exitFailed, err, "")
				}
				for id, last := range lastIndex {
					want, err := scratch.Get(id)
					switch {
					case err != nil:
						checkpointed++ // started before the log's first record
						continue
					case last > applied:
						notApplied++ // the stored state has not applied its latest transitions yet
						continue
					}
					compared++
					if got, err := real.Get(id); err != nil || !reflect.DeepEqual(got, want) {
						mismatched++
						if len(mismatches) < 10 {
							mismatches = append(mismatches, id)
						}
					}
				}
				_ = real.CloseNoFlush()
			}
			ok = ok && mismatched == 0
			if g.json() {
				j := map[string]any{"ok": ok, "report": rep, "decode_errors": decodeErrs, "applied_index": applied,
					"sagas_compared": compared, "sagas_mismatched": mismatched, "mismatches": mismatches,
					"sagas_not_applied": notApplied, "sagas_checkpointed": checkpointed, "plan": toPlanJSON(plan)}
				_ = g.printJSON(j)
			} else {
				printReport(g, rep)
				for _, d := range decodeErrs {
					fmt.Fprintf(g.out, "undecodable record: %s\n", d)
				}
				if plan.Problem != nil {
					fmt.Fprintf(g.out, "problem: %v\n", plan.Problem)
				}
				fmt.Fprintf(g.out, "replay: %d saga(s) rebuilt from the log and compared with the stored state (applied index %d): %d differ %v\n",
					compared, applied, mismatched, mismatches)
				if notApplied > 0 {
					fmt.Fprintf(g.out, "not compared: %d saga(s) whose latest transitions come after index %d, which the stored state "+
						"has not applied yet (it is written at checkpoints and at Close); the engine replays them when it opens\n", notApplied, applied)
				}
				if checkpointed > 0 {
					fmt.Fprintf(g.out, "not compared: %d saga(s) that started before the log's first record (their start was checkpointed)\n", checkpointed)
				}
				if ok {
					fmt.Fprintf(g.out, "ok: %d record(s) verified (checksum, index, decoding); %d saga(s) compared\n", rep.Records, compared)
				}
				if plan.Safe && plan.Changes() {
					fmt.Fprintf(g.out, "the engine's Open, or sagactl wal repair, will %s\n", plan.Summary)
				}
			}
			if errors.Is(plan.Problem, wal.ErrNewerFormat) {
				return fail(exitFailed, plan.Problem, "not damage: verify it with a newer sagactl")
			}
			if !ok {
				return fail(exitFailed, errors.New("the log or the state is damaged"),
					"see what a repair would do: sagactl --dir "+g.dir+" wal repair --dry-run")
			}
			return nil
		},
	}
}

// planJSON is a repair plan in -o json.
type planJSON struct {
	Report     *wal.Report `json:"report"`
	Extent     *wal.Extent `json:"extent,omitempty"`
	Applied    uint64      `json:"applied_index"`
	Truncate   *wal.Cut    `json:"truncate,omitempty"`
	Remove     []string    `json:"remove,omitempty"`
	Restart    uint64      `json:"restart_at,omitempty"`
	NeedsForce bool        `json:"needs_force"`
	Lost       uint64      `json:"records_lost"`
	Problem    string      `json:"problem,omitempty"`
	Summary    string      `json:"summary"`
}

func toPlanJSON(p *wal.Plan) planJSON {
	j := planJSON{Report: p.Report, Extent: p.Extent, Applied: p.Applied, Truncate: p.Truncate, Remove: p.Remove,
		Restart: p.Restart, NeedsForce: !p.Safe, Lost: p.Lost, Summary: p.Summary}
	if p.Problem != nil {
		j.Problem = p.Problem.Error()
	}
	return j
}

// printPlan says what a repair does, change by change.
func printPlan(g *globals, p *wal.Plan) {
	if p.Problem != nil {
		fmt.Fprintf(g.out, "problem: %v\n", p.Problem)
	}
	if c := p.Truncate; c != nil {
		fmt.Fprintf(g.out, "  cut %s to %d bytes (drops %d)\n", c.Segment, c.Offset, c.Bytes)
	}
	for _, r := range p.Remove {
		fmt.Fprintf(g.out, "  remove %s\n", r)
	}
	if p.Restart != 0 {
		fmt.Fprintf(g.out, "  continue the log, empty, from index %d\n", p.Restart)
	}
	fmt.Fprintf(g.out, "plan: %s\n", p.Summary)
	if !p.Safe && !errors.Is(p.Problem, wal.ErrNewerFormat) {
		fmt.Fprintf(g.out, "needs --force: at least %d record(s) that may have been acknowledged are lost\n", p.Lost)
	}
}

func newWalRepair(g *globals) *cobra.Command {
	var dryRun, force bool
	cmd := &cobra.Command{
		Use:   "repair [--dry-run] [--force]",
		Short: "Cut a damaged tail; say exactly what is dropped",
		Long: `repair makes the log openable again, following the same plan as the
engine's Open, decided before any file changes:

  - a torn tail (an interrupted write, never acknowledged) is cut;
  - damage confined to records the state already holds is dropped, and
    the log continues after the state's applied index: nothing is lost;
  - anything else may drop acknowledged records: it needs --force, and
    without it repair refuses and changes nothing.

--dry-run prints the plan the real run carries out, including whether it
needs --force, and changes nothing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			release, err := g.lockOffline()
			if err != nil {
				return err
			}
			defer release()
			plan, err := g.repairPlan()
			if err != nil {
				return err
			}
			say := func(result string) error {
				if g.json() {
					return g.printJSON(map[string]any{"plan": toPlanJSON(plan), "result": result})
				}
				fmt.Fprintln(g.out, result)
				return nil
			}
			if !g.json() {
				printReport(g, plan.Report)
			}
			if !plan.Changes() && plan.Problem == nil {
				return say("nothing to repair")
			}
			if errors.Is(plan.Problem, wal.ErrNewerFormat) {
				if !g.json() {
					printPlan(g, plan)
				}
				if dryRun {
					return say("dry run: nothing changed; the real run refuses: the log was written by a newer version")
				}
				if g.json() {
					_ = say("refused")
				}
				return fail(exitFailed, fmt.Errorf("%w; nothing was changed", plan.Problem), "repair it, if at all, with a newer sagactl")
			}
			if !g.json() {
				printPlan(g, plan)
			}
			switch {
			case dryRun && !plan.Safe:
				return say("dry run: nothing changed; the real run refuses without --force, and with it carries out the plan above")
			case dryRun:
				return say("dry run: nothing changed; the real run carries out the plan above")
			case !plan.Safe && !force:
				if g.json() {
					_ = say("refused")
				}
				return fail(exitRefused, fmt.Errorf("refusing to drop at least %d record(s) that may have been acknowledged; nothing was changed", plan.Lost),
					"rerun with --force to accept the loss, or restore the directory from a backup or replica")
			}
			done, err := wal.Repair(g.walDir(), plan.Applied, force)
			if err != nil {
				return fail(exitFailed, err, "")
			}
			if done.Summary != plan.Summary {
				return fail(exitFailed, fmt.Errorf("the log changed while repairing: planned %q, did %q", plan.Summary, done.Summary), "")
			}
			return say("repaired: " + plan.Summary)
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the plan and change nothing")
	cmd.Flags().BoolVar(&force, "force", false, "also carry out a plan that drops records that may have been acknowledged")
	return cmd
}

// dumpRecord is one record of wal dump.
type dumpRecord struct {
	Index      uint64 `json:"index"`
	Kind       string `json:"kind"`
	Saga       string `json:"saga,omitempty"`
	At         string `json:"at"`
	Step       int    `json:"step"`
	Attempt    int    `json:"attempt,omitempty"`
	Definition string `json:"definition,omitempty"`
	Error      string `json:"error,omitempty"`
	Final      bool   `json:"final,omitempty"`
	Actor      string `json:"actor,omitempty"`
	Reason     string `json:"reason,omitempty"`
	Output     []byte `json:"output,omitempty"`
	Undecoded  string `json:"undecodable,omitempty"`
}

func newWalDump(g *globals) *cobra.Command {
	var from, to uint64
	cmd := &cobra.Command{
		Use:   "dump [--from I] [--to J]",
		Short: "Records as JSON lines",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if to > 0 && to < from {
				return fail(exitUsage, fmt.Errorf("--to %d is before --from %d", to, from), "")
			}
			release, err := g.lockOffline()
			if err != nil {
				return err
			}
			defer release()
			enc := json.NewEncoder(g.out)
			errStop := errors.New("stop")
			rep, err := wal.Verify(g.walDir(), func(idx uint64, p []byte) error {
				if idx < from {
					return nil
				}
				if to > 0 && idx > to {
					return errStop
				}
				d := dumpRecord{Index: idx}
				r, err := fsm.Decode(p)
				if err != nil {
					d.Undecoded = err.Error()
					return enc.Encode(d)
				}
				d.Kind, d.Saga, d.At, d.Step, d.Attempt = r.Kind.String(), r.Saga, time.Unix(0, r.At).UTC().Format(time.RFC3339Nano), r.Step, r.Attempt
				d.Final, d.Actor, d.Reason, d.Output = r.Final, r.Actor, r.Reason, r.Output
				if r.Err != nil {
					d.Error = r.Err.Error()
				}
				if r.Start != nil {
					d.Definition = r.Start.Definition
				}
				if r.Def != nil {
					d.Definition = r.Def.Name
				}
				return enc.Encode(d)
			})
			if err != nil && !errors.Is(err, errStop) {
				return fail(exitFailed, err, "")
			}
			if rep.Newer != nil {
				return fail(exitFailed, fmt.Errorf("%w: %s", wal.ErrNewerFormat, rep.Newer.Reason),
					"records from there on are not shown: dump them with a newer sagactl")
			}
			if rep.Corrupt != nil {
				return fail(exitFailed, rep.Corrupt, "records after the damage are not shown: see sagactl wal verify")
			}
			if from > 0 && (rep.Records == 0 || from > rep.LastIndex) {
				return fail(exitFailed, fmt.Errorf("--from %d is past the end of the log (it holds indexes %d..%d)", from, rep.FirstIndex, rep.LastIndex),
					"see the log's extent with: sagactl --dir "+g.dir+" wal verify")
			}
			if from > 0 && from < rep.FirstIndex {
				fmt.Fprintf(g.err, "note: the log starts at index %d; records before it were checkpointed and truncated\n", rep.FirstIndex)
			}
			return nil
		},
	}
	cmd.Flags().Uint64Var(&from, "from", 0, "first index")
	cmd.Flags().Uint64Var(&to, "to", 0, "last index (default: the end)")
	return cmd
}
