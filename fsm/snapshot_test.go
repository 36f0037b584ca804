package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
)

func openDiskStore(t *testing.T) *Store {
	t.Helper()
	s, err := OpenStore(filepath.Join(t.TempDir(), "state"), StoreOptions{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// snapshotBytes is a snapshot of s, written out.
func snapshotBytes(t *testing.T, s *Store) []byte {
	t.Helper()
	snap, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	var buf bytes.Buffer
	if _, err := snap.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func mustHash(t *testing.T, s *Store) []byte {
	t.Helper()
	h, err := s.Hash()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// fill applies n sagas as commands of a replicated log, from source index src.
func fill(t *testing.T, s *Store, src uint64, prefix string, n int) uint64 {
	t.Helper()
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("%s-%03d", prefix, i)
		recs := []*Record{startRec(id, "key-"+id, "pay", "ship"), {Kind: KindStepCompleted, Saga: id, Step: 0, At: 2}}
		if _, err := s.ApplyCommand(src, entries(t, s.AppliedIndex()+1, recs...)); err != nil {
			t.Fatal(err)
		}
		src += 2 // a gap, as raft's non-command entries leave
	}
	return src
}

func TestSnapshotRestoreReproducesTheState(t *testing.T) {
	src := openDiskStore(t)
	next := fill(t, src, 1, "a", 50)
	snap, err := src.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	want := mustHash(t, src)
	// Applies after the snapshot are not in it.
	fill(t, src, next, "late", 5)
	var buf bytes.Buffer
	if _, err := snap.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	if a, so, err := ReadSnapshotHeader(bytes.NewReader(buf.Bytes())); err != nil || a != 100 || so != next-2 {
		t.Fatalf("snapshot header: applied %d source %d err %v; want 100, %d", a, so, err, next-2)
	}

	dst := openDiskStore(t)
	fill(t, dst, 1, "stale", 7) // state the restore must wipe
	if err := dst.Restore(bytes.NewReader(buf.Bytes())); err != nil {
		t.Fatal(err)
	}
	if got := mustHash(t, dst); !bytes.Equal(got, want) {
		t.Fatalf("restored hash %x, want %x", got, want)
	}
	if dst.SourceIndex() != next-2 || dst.AppliedIndex() != 100 {
		t.Fatalf("indexes after restore: source %d applied %d", dst.SourceIndex(), dst.AppliedIndex())
	}
	if _, err := dst.Get("stale-000"); !errors.Is(err, ErrUnknownSaga) {
		t.Fatalf("stale saga survived the restore: %v", err)
	}
	if sg, err := dst.Get("a-049"); err != nil || sg.State != StateInProgress {
		t.Fatalf("restored saga: %v %v", sg, err)
	}
	// The restored store keeps applying where the snapshot ended, and
	// refuses commands it already has.
	if _, err := dst.ApplyCommand(next-2, nil); err == nil {
		t.Fatal("a command at the snapshot's index was applied twice")
	}
	fill(t, dst, next, "late", 5)
	if !bytes.Equal(mustHash(t, dst), mustHash(t, src)) {
		t.Fatal("replicas diverged after applying the same commands")
	}
}

func TestRestoreRefusesDamagedSnapshotsAndChangesNothing(t *testing.T) {
	src := openDiskStore(t)
	fill(t, src, 1, "a", 20)
	good := snapshotBytes(t, src)

	dst := openDiskStore(t)
	fill(t, dst, 1, "mine", 3)
	before := mustHash(t, dst)
	flip := func(i int) []byte {
		b := append([]byte(nil), good...)
		b[i] ^= 0x40
		return b
	}
	cases := map[string][]byte{
		"empty":        nil,
		"bad magic":    flip(0),
		"bad version":  flip(len(snapshotMagic)),
		"flipped data": flip(len(good) / 2),
		"flipped crc":  flip(len(good) - 1),
		"truncated":    good[:len(good)-7],
		"cut in half":  good[:len(good)/2],
		"trailing":     append(append([]byte(nil), good...), 0),
		"huge length":  append([]byte(snapshotMagic+"\x01"), 0xff, 0xff, 0xff, 0xff, 0x0f),
	}
	for name, data := range cases {
		err := dst.Restore(bytes.NewReader(data))
		if !errors.Is(err, ErrBadSnapshot) {
			t.Errorf("%s: Restore = %v, want ErrBadSnapshot", name, err)
		}
		if !bytes.Equal(mustHash(t, dst), before) || dst.RestoreIncomplete() {
			t.Fatalf("%s: a refused restore changed the state", name)
		}
	}
	if _, err := dst.ApplyCommand(dst.SourceIndex()+1, nil); err != nil {
		t.Fatalf("store unusable after refused restores: %v", err)
	}
}

func TestApplyCommandOrdersSourceIndexes(t *testing.T) {
	s := openDiskStore(t)
	if _, err := s.ApplyCommand(5, entries(t, 1, startRec("x", "", "a"))); err != nil {
		t.Fatal(err)
	}
	for _, src := range []uint64{5, 4} {
		if _, err := s.ApplyCommand(src, entries(t, 2, startRec("y", "", "a"))); err == nil {
			t.Fatalf("command index %d after 5 was accepted", src)
		}
	}
	// An empty command moves the source index only.
	if _, err := s.ApplyCommand(9, nil); err != nil || s.SourceIndex() != 9 || s.AppliedIndex() != 1 {
		t.Fatalf("empty command: err %v source %d applied %d", err, s.SourceIndex(), s.AppliedIndex())
	}
	if _, err := s.Get("y"); !errors.Is(err, ErrUnknownSaga) {
		t.Fatal("a refused command changed the state")
	}
}

func TestApplyCommandsEqualsOneByOne(t *testing.T) {
	one, all := openDiskStore(t), openDiskStore(t)
	var cmds []Command
	next := uint64(1)
	for i := 0; i < 20; i++ {
		id := fmt.Sprintf("c-%02d", i)
		recs := []*Record{startRec(id, "k-"+id, "pay", "ship")}
		if i%3 == 0 {
			recs = append(recs, &Record{Kind: KindStepCompleted, Saga: id, Step: 0, At: 2})
		}
		if i%5 == 0 {
			recs = nil // a command that carried nothing
		}
		es := entries(t, next, recs...)
		next += uint64(len(es))
		cmds = append(cmds, Command{Source: uint64(3 * (i + 1)), Entries: es})
		if _, err := one.ApplyCommand(uint64(3*(i+1)), es); err != nil {
			t.Fatal(err)
		}
	}
	res, err := all.ApplyCommands(cmds)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range cmds {
		if len(res[i]) != len(c.Entries) {
			t.Fatalf("command %d: %d results for %d entries", i, len(res[i]), len(c.Entries))
		}
	}
	if !bytes.Equal(mustHash(t, one), mustHash(t, all)) || one.SourceIndex() != all.SourceIndex() {
		t.Fatal("applying commands together differs from applying them one by one")
	}
	if _, err := all.ApplyCommands([]Command{{Source: 61}, {Source: 61}}); err == nil {
		t.Fatal("repeated command index accepted")
	}
}

// A reader that read a definition from the disk before a Restore and
// caches it after the Restore ended must not leave the old state's
// version in the cache: the restored store would refuse the next
// version the leader accepts, and the members diverge. (The reader is
// held between its read and its caching by a seam; without one, see
// replication's TestRestoreKeepsTheLatestDefinitionOfTheNewState.)
func TestARestoreBetweenAReadersReadAndItsCachingLeavesNoStaleDefinition(t *testing.T) {
	def := func(v int) *Record {
		return &Record{Kind: KindDefine, At: 1, Def: &Definition{Name: "order", Version: v,
			Steps: []StepDef{{Name: fmt.Sprint("step-v", v), Compensation: "undo"}}}}
	}
	src := openDiskStore(t)
	for v := 1; v <= 2; v++ {
		if _, err := src.ApplyCommand(uint64(v), entries(t, src.AppliedIndex()+1, def(v))); err != nil {
			t.Fatal(err)
		}
	}
	snapshot := snapshotBytes(t, src)

	dst := openDiskStore(t)
	if _, err := dst.ApplyCommand(1, entries(t, 1, def(1))); err != nil {
		t.Fatal(err)
	}
	dst.mu.Lock()
	dst.latest = map[string]*Definition{} // the reader misses the cache
	dst.mu.Unlock()
	read, release := make(chan struct{}), make(chan struct{})
	dst.afterDiskRead = func() { close(read); <-release }
	done := make(chan *Definition)
	go func() {
		d, err := dst.PeekLatestDefinition("order")
		if err != nil {
			t.Error(err)
		}
		done <- d
	}()
	<-read // the reader holds version 1, read before the restore
	dst.afterDiskRead = nil
	if err := dst.Restore(bytes.NewReader(snapshot)); err != nil {
		t.Fatal(err)
	}
	close(release)
	if d := <-done; d == nil || d.Version != 1 {
		t.Fatalf("the reader read %v, want version 1 (from before the restore)", d)
	}
	if d, err := dst.LatestDefinition("order"); err != nil || d.Version != 2 {
		t.Fatalf("after the restore the latest definition is %v (%v), want version 2", d, err)
	}
}
