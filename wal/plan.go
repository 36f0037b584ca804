package wal

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// ErrLost is returned by Open (and is the Problem of a Plan) when the log no
// longer holds records it once made durable: its EXTENT file, or the
// caller's applied index, says it reached further than its segments do.
// Open changes nothing then: the log is not taken for a new one.
var ErrLost = errors.New("wal: acknowledged records are missing from the log")

// Cut is a truncation of one segment file.
type Cut struct {
	Segment string `json:"segment"`
	Offset  int64  `json:"offset"` // the new size
	Bytes   int64  `json:"bytes"`  // bytes dropped
}

// Plan is what has to happen to a log before it can be used, decided from
// its files alone before anything changes. Open carries out a Safe plan by
// itself and refuses any other with its Problem, leaving every file as it
// was; Repair carries out an unsafe one only when forced. A dry run prints
// the plan the real run will carry out.
//
// The changes are made in this order: Truncate, Remove, Restart; then the
// EXTENT file is rewritten.
type Plan struct {
	Report  *Report
	Extent  *Extent // the log's EXTENT file; nil when it has none
	Applied uint64  // the caller's applied index (see Options.Applied)

	Truncate *Cut     // cut one segment; nil for none
	Remove   []string // segment files to remove, oldest first
	// Restart, if not 0, is the index the log continues from, empty: every
	// segment is removed and an empty one starting there is created. Used
	// when the caller's state holds every record the log still needs.
	Restart uint64

	// Safe is true when the changes drop nothing that may have been
	// acknowledged and that the caller's state does not already hold.
	Safe bool
	// Lost is the number of records, possibly acknowledged, that an unsafe
	// plan drops or finds missing (at least that many).
	Lost uint64
	// Problem says why the log cannot be used as it is; nil when it can, or
	// when a safe change is all it needs. It matches ErrCorrupt or ErrLost.
	Problem error
	// Summary is one sentence on what the changes do, or "nothing to do".
	Summary string
}

// Exists reports whether dir holds a log: an EXTENT file or a segment.
func Exists(dir string) (bool, error) {
	ext, err := ReadExtent(dir)
	if err != nil || ext != nil {
		return ext != nil, err
	}
	segs, err := segmentFiles(dir)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	return len(segs) > 0, err
}

// Changes reports whether carrying out the plan changes any segment file.
func (p *Plan) Changes() bool {
	return p.Truncate != nil || len(p.Remove) > 0 || p.Restart != 0
}

// Plan decides, without changing anything, what Open (or Repair) would do
// to the log in dir. applied is the index up to which the caller's durable
// state holds every record (0 if it keeps none).
func PlanRepair(dir string, applied uint64) (*Plan, error) {
	ext, err := ReadExtent(dir)
	if err != nil {
		return nil, err
	}
	segs, err := segmentFiles(dir)
	if errors.Is(err, os.ErrNotExist) {
		segs, err = nil, nil
	}
	if err != nil {
		return nil, err
	}
	rep, err := verifySegments(segs, nil)
	if err != nil {
		return nil, err
	}
	if len(segs) > 0 {
		if rep.PendingTruncation, err = hasPending(dir); err != nil {
			return nil, err
		}
	}
	return decide(segs, rep, ext, applied)
}

// lastValid is the index of the last record before any damage: the index
// before the first segment when there is none.
func lastValid(rep *Report, segs []segmentFile) uint64 {
	switch {
	case rep.Records > 0:
		return rep.LastIndex
	case len(segs) > 0:
		return segs[0].first - 1
	}
	return 0
}

func decide(segs []segmentFile, rep *Report, ext *Extent, applied uint64) (*Plan, error) {
	p := &Plan{Report: rep, Extent: ext, Applied: applied}
	if n := rep.Newer; n != nil {
		// Records this build cannot read are not damage: nothing to cut.
		p.Problem = fmt.Errorf("%w: %s offset %d (index %d): %s", ErrNewerFormat, filepath.Base(n.Segment), n.Offset, n.Index, n.Reason)
		p.Summary = "leave it as it is: the log holds records of a newer version, which this version does not cut, even forced; use a newer version"
		return p, nil
	}
	valid := lastValid(rep, segs)
	known, source := applied, fmt.Sprintf("the state has applied index %d", applied)
	if ext != nil && ext.Last > known {
		known, source = ext.Last, fmt.Sprintf("the log's EXTENT file says it held index %d", ext.Last)
	}
	tailGone := ext != nil && ext.TailStart > 0 && (len(segs) == 0 || segs[len(segs)-1].first < ext.TailStart)
	short := valid < known || tailGone
	damaged := rep.Corrupt != nil
	// heldAll: the log was closed cleanly at ext.Last and the state holds
	// every record up to it, so no record of the log is needed any more.
	// A state past ext.Last is no such proof: the state applies only what
	// the log holds, so a log closed before it is an older copy of the
	// log (a backup put back), which lacks the acknowledged records after
	// the state's index.
	heldAll := ext != nil && ext.Clean && applied == ext.Last && applied >= valid

	switch {
	case !damaged && !short:
		p.Safe = true
		if t := rep.Torn; t != nil {
			p.Truncate = &Cut{Segment: t.Segment, Offset: t.Offset, Bytes: t.Bytes}
			p.Summary = fmt.Sprintf("cut the torn tail of %s: %d byte(s) from offset %d, an interrupted write that was never acknowledged (%s)",
				filepath.Base(t.Segment), t.Bytes, t.Offset, t.Reason)
		} else {
			p.Summary = "nothing to do"
		}
		return p, nil
	case damaged && !tailGone && ext != nil && ext.Clean && valid >= ext.Last && rep.Corrupt.Index > ext.Last && applied <= ext.Last:
		// Closed cleanly at ext.Last, which is intact: whatever follows was
		// written after the log was closed, not by it. (Unless the state
		// is past ext.Last: then this is an older copy of the log; see
		// heldAll.)
		c := rep.Corrupt
		p.Safe = true
		p.Truncate = &Cut{Segment: c.Segment, Offset: c.Offset, Bytes: fileSize(c.Segment) - c.Offset}
		for _, s := range segs {
			if s.path > c.Segment {
				p.Remove = append(p.Remove, s.path)
			}
		}
		p.Summary = fmt.Sprintf("cut %d byte(s) after index %d, where the log was closed cleanly: they were never part of it (%s)",
			p.Truncate.Bytes, ext.Last, c.Reason)
		return p, nil
	case heldAll:
		p.Safe = true
		p.Remove, p.Restart = paths(segs), applied+1
		p.Summary = fmt.Sprintf("the log was closed cleanly at index %d and the state holds every record up to %d: "+
			"remove the damaged log's %d segment(s) and continue it, empty, from index %d; nothing is lost",
			ext.Last, applied, len(segs), applied+1)
		return p, nil
	}
	// Segments all of whose records the state holds may be dropped: if the
	// damage lies in them, what remains is whole.
	keep := segs
	for len(keep) > 1 && keep[1].first <= applied+1 {
		keep = keep[1:]
	}
	if dropped := len(segs) - len(keep); dropped > 0 && !tailGone {
		rest, err := verifySegments(keep, nil)
		if err != nil {
			return nil, err
		}
		if rest.Corrupt == nil && rest.Newer == nil && lastValid(rest, keep) >= known {
			p.Safe = true
			p.Remove = paths(segs[:dropped])
			p.Summary = fmt.Sprintf("remove the %d oldest segment(s), whose records (all before index %d) the state holds, and the damage with them",
				dropped, keep[0].first)
			if t := rest.Torn; t != nil {
				p.Truncate = &Cut{Segment: t.Segment, Offset: t.Offset, Bytes: t.Bytes}
				p.Summary += fmt.Sprintf("; cut the torn tail of %s (%d byte(s))", filepath.Base(t.Segment), t.Bytes)
			}
			return p, nil
		}
	}

	// Unsafe: records that may have been acknowledged are damaged or gone.
	// Say so, and plan what a forced repair would do.
	if damaged {
		c := rep.Corrupt
		p.Problem = c
		// The records from the damage on: counted, and at least up to the
		// highest index the log is known (or seen) to have held.
		reach := max(known, rep.HighestDropped)
		p.Lost = rep.DroppedByForce
		if reach >= c.Index && reach-c.Index+1 > p.Lost {
			p.Lost = reach - c.Index + 1
		}
		if c.Index <= applied {
			// Cutting at the damage would leave the state ahead of the log:
			// what is lost is what only the log held, after applied.
			p.Remove, p.Restart = paths(segs), applied+1
			p.Lost = 0
			if reach > applied {
				p.Lost = reach - applied
			}
			p.Summary = fmt.Sprintf("remove every segment and continue the log, empty, from index %d (after the state's applied index); "+
				"records after %d that only the log held are lost", applied+1, applied)
			return p, nil
		}
		p.Truncate = &Cut{Segment: c.Segment, Offset: c.Offset, Bytes: fileSize(c.Segment) - c.Offset}
		for _, s := range segs {
			if s.path > c.Segment {
				p.Remove = append(p.Remove, s.path)
			}
		}
		p.Summary = fmt.Sprintf("cut %s at offset %d and remove the %d segment(s) after it: the log then ends at index %d, "+
			"and at least %d record(s) from index %d on, which may have been acknowledged, are lost",
			filepath.Base(c.Segment), c.Offset, len(p.Remove), c.Index-1, p.Lost, c.Index)
		return p, nil
	}
	what := fmt.Sprintf("the log ends at index %d, but %s", valid, source)
	if tailGone {
		last := "none is left"
		if len(segs) > 0 {
			last = fmt.Sprintf("the last one left starts at %d", segs[len(segs)-1].first)
		}
		what = fmt.Sprintf("the log's tail segment, which starts at index %d, is gone (%s)", ext.TailStart, last)
	}
	p.Problem = fmt.Errorf("%w: %s; its segment files were removed or replaced", ErrLost, what)
	if known > valid {
		p.Lost = known - valid
	}
	switch {
	case applied > valid:
		p.Remove, p.Restart = paths(segs), applied+1
		p.Summary = fmt.Sprintf("accept the loss: remove every segment and continue the log, empty, from index %d (after the state's applied index)", applied+1)
	default:
		if t := rep.Torn; t != nil {
			p.Truncate = &Cut{Segment: t.Segment, Offset: t.Offset, Bytes: t.Bytes}
		}
		p.Summary = fmt.Sprintf("accept the loss: keep the log as it is, ending at index %d, and record that in its EXTENT file", valid)
	}
	return p, nil
}

func paths(segs []segmentFile) []string {
	out := make([]string, len(segs))
	for i, s := range segs {
		out[i] = s.path
	}
	return out
}

func fileSize(path string) int64 {
	if fi, err := os.Stat(path); err == nil {
		return fi.Size()
	}
	return 0
}

// carryOut makes the changes of p in dir and fsyncs the directory. A crash
// part way leaves a log whose next plan finishes the job: segments go
// oldest first, and the restart segment is created last.
func (p *Plan) carryOut(dir string) error {
	if c := p.Truncate; c != nil {
		if err := truncateFile(c.Segment, c.Offset); err != nil {
			return err
		}
	}
	for _, path := range p.Remove {
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("wal: remove %s: %w", path, err)
		}
	}
	if p.Restart != 0 {
		f, err := os.OpenFile(filepath.Join(dir, segmentName(p.Restart)), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o640)
		if err == nil {
			err = f.Sync()
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			return fmt.Errorf("wal: create the segment the log continues from: %w", err)
		}
	}
	if !p.Changes() {
		return nil
	}
	return syncDir(dir)
}

// segmentName is tidwall's name of the segment starting at index.
func segmentName(index uint64) string { return fmt.Sprintf("%020d", index) }

// Repair carries out the plan of the log in dir (see PlanRepair): a safe
// plan always, an unsafe one only with force. Without force an unsafe plan
// is refused with its Problem and nothing changes. It returns the plan it
// followed (or refused) and rewrites the EXTENT file after any change.
func Repair(dir string, applied uint64, force bool) (*Plan, error) {
	p, err := PlanRepair(dir, applied)
	if err != nil {
		return nil, err
	}
	if errors.Is(p.Problem, ErrNewerFormat) {
		return p, fmt.Errorf("%w; refusing, even with force: nothing was changed", p.Problem)
	}
	if !p.Safe && !force {
		return p, fmt.Errorf("%w; refusing without force: %s", p.Problem, p.Summary)
	}
	if !p.Changes() && p.Problem == nil {
		return p, nil
	}
	if err := p.carryOut(dir); err != nil {
		return p, err
	}
	segs, err := segmentFiles(dir)
	if err != nil {
		return p, err
	}
	rep, err := verifySegments(segs, nil)
	if err != nil {
		return p, err
	}
	if rep.Corrupt != nil || rep.Torn != nil {
		return p, fmt.Errorf("wal: the log is still damaged after the repair: %+v", rep)
	}
	x := Extent{Last: lastValid(rep, segs)}
	if len(segs) > 0 {
		x.TailStart = segs[len(segs)-1].first
	}
	return p, writeExtent(dir, x, false)
}
