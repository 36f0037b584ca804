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
	if c := rep.Corrupt; c != nil {
		fmt.Fprintf(g.out, "CORRUPT: %s offset %d (index %d): %s; %d record(s) from there on would be lost by a forced repair\n",
			c.Segment, c.Offset, c.Index, c.Reason, rep.DroppedByForce)
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
			ok := rep.Corrupt == nil && len(decodeErrs) == 0
			var compared, mismatched int
			var mismatches []string
			stateDir := filepath.Join(g.dir, "state")
			if _, serr := os.Stat(stateDir); serr == nil {
				real, err := fsm.OpenStore(stateDir, fsm.StoreOptions{ReadOnly: true, Logger: quiet})
				if err != nil {
					return fail(exitFailed, err, "")
				}
				applied := real.AppliedIndex()
				for id, last := range lastIndex {
					want, err := scratch.Get(id)
					if err != nil || last > applied {
						continue // started before the log's first record, or not applied yet
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
				_ = g.printJSON(map[string]any{"ok": ok, "report": rep, "decode_errors": decodeErrs,
					"sagas_compared": compared, "sagas_mismatched": mismatched, "mismatches": mismatches})
			} else {
				printReport(g, rep)
				for _, d := range decodeErrs {
					fmt.Fprintf(g.out, "undecodable record: %s\n", d)
				}
				fmt.Fprintf(g.out, "replay: %d saga(s) rebuilt from the log, %d differ from the stored state %v\n",
					compared, mismatched, mismatches)
				if ok {
					fmt.Fprintln(g.out, "ok")
				}
				if rep.Torn != nil {
					fmt.Fprintln(g.out, "the torn tail (never acknowledged) is cut when the engine opens, or now with: sagactl wal repair")
				}
			}
			if !ok {
				return fail(exitFailed, errors.New("the log or the state is damaged"),
					"see what a repair would do: sagactl --dir "+g.dir+" wal repair --dry-run")
			}
			return nil
		},
	}
}

func newWalRepair(g *globals) *cobra.Command {
	var dryRun, force bool
	cmd := &cobra.Command{
		Use:   "repair [--dry-run] [--force]",
		Short: "Cut a damaged tail; say exactly what is dropped",
		Long: `repair makes the log openable again. A torn tail (an incomplete last write,
never acknowledged) is cut. Damage before the tail may sit among
acknowledged records: cutting there drops them and everything after, so it
needs --force. --dry-run only says what would be dropped.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			release, err := g.lockOffline()
			if err != nil {
				return err
			}
			defer release()
			rep, err := wal.Verify(g.walDir(), nil)
			if err != nil {
				return fail(exitFailed, err, "")
			}
			say := func(result string) error {
				if g.json() {
					return g.printJSON(map[string]any{"report": rep, "result": result})
				}
				fmt.Fprintln(g.out, result)
				return nil
			}
			if !g.json() {
				printReport(g, rep)
			}
			cut := uint64(0)
			switch {
			case rep.Corrupt != nil:
				cut = rep.Corrupt.Index
			case rep.Torn != nil:
				cut = rep.Torn.FirstIndex
			default:
				return say("nothing to repair")
			}
			// The state must not be ahead of the cut: it would then hold
			// transitions the log no longer has.
			applied := uint64(0)
			if _, serr := os.Stat(filepath.Join(g.dir, "state")); serr == nil {
				st, err := fsm.OpenStore(filepath.Join(g.dir, "state"), fsm.StoreOptions{ReadOnly: true,
					Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
				if err != nil {
					return fail(exitFailed, err, "")
				}
				applied = st.AppliedIndex()
				_ = st.CloseNoFlush()
			}
			if rep.Corrupt != nil && cut <= applied {
				// The damage lies in records the state has already applied
				// (and made durable): if whole segments hold only such
				// records, dropping them loses nothing.
				if dryRun {
					return say(fmt.Sprintf("dry run: the damage is at or before the state's applied index %d: "+
						"would drop the segments holding only records before index %d", applied, applied+1))
				}
				n, err := wal.DropFront(g.walDir(), applied+1)
				if err != nil {
					return fail(exitFailed, err, "")
				}
				after, err := wal.Verify(g.walDir(), nil)
				if err != nil {
					return fail(exitFailed, err, "")
				}
				if after.Corrupt == nil {
					return say(fmt.Sprintf("repaired: dropped %d segment(s) whose records the state already holds; nothing lost", n))
				}
				return fail(exitRefused, fmt.Errorf("the damage at index %d is in a segment that also holds records after the applied index %d",
					after.Corrupt.Index, applied), "restore the directory from a backup or replica")
			}
			if applied >= cut {
				return fail(exitRefused, fmt.Errorf("the state has applied the log up to index %d, at or past the cut at %d", applied, cut),
					"cutting would leave the state ahead of the log: restore the directory from a backup or replica")
			}
			if dryRun {
				return say(fmt.Sprintf("dry run: would cut the log before index %d", cut))
			}
			if rep.Corrupt != nil && !force {
				return fail(exitRefused, fmt.Errorf("refusing to drop %d record(s) from index %d on: they may have been acknowledged", rep.DroppedByForce, cut),
					"rerun with --force to accept the loss, or restore from a backup")
			}
			if _, err := wal.Repair(g.walDir(), force); err != nil {
				return fail(exitFailed, err, "")
			}
			return say(fmt.Sprintf("repaired: the log now ends before index %d", cut))
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "only say what would be dropped")
	cmd.Flags().BoolVar(&force, "force", false, "also cut damage among records that may have been acknowledged")
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
			if rep.Corrupt != nil {
				return fail(exitFailed, rep.Corrupt, "records after the damage are not shown: see sagactl wal verify")
			}
			return nil
		},
	}
	cmd.Flags().Uint64Var(&from, "from", 0, "first index")
	cmd.Flags().Uint64Var(&to, "to", 0, "last index (default: the end)")
	return cmd
}
