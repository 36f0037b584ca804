package fsm

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"

	"github.com/cockroachdb/pebble/v2"
)

// Errors of snapshots and restores.
var (
	// ErrBadSnapshot: a snapshot stream is truncated, malformed or fails
	// its checksum. Restore changed nothing.
	ErrBadSnapshot = errors.New("fsm: bad snapshot")
	// ErrRestoreIncomplete: a Restore was cut short; the state is partial
	// and must be restored from a snapshot again.
	ErrRestoreIncomplete = errors.New("fsm: an earlier snapshot restore did not finish; restore again")
)

// Snapshot stream format, version 1:
//
//	"SAGASNAP" | version byte (1) | uint64 BE applied index | uint64 BE source index
//	{ uvarint len(key) | key | uvarint len(value) | value }*   (keys in order, never empty)
//	uvarint 0 | uint64 BE number of pairs | uint32 BE CRC32C of every byte before it
const snapshotMagic = "SAGASNAP"

const (
	snapshotVersion = 1
	// maxSnapshotItem bounds one key or value read back from a stream.
	maxSnapshotItem = 1 << 30
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// StoreSnapshot is a consistent, point-in-time view of the store, to be
// written out with WriteTo while applying continues. Release it when done.
type StoreSnapshot struct {
	snap    *pebble.Snapshot
	applied uint64
	source  uint64
}

// Snapshot flushes the store (so that its files alone cover everything
// applied: a replicated log may then be compacted up to SourceIndex) and
// returns a point-in-time view of it. Call it between applies.
func (s *Store) Snapshot() (*StoreSnapshot, error) {
	if s.restoring.Load() {
		return nil, ErrRestoreIncomplete
	}
	if err := s.Flush(); err != nil {
		return nil, err
	}
	return &StoreSnapshot{snap: s.db.NewSnapshot(), applied: s.applied.Load(), source: s.source.Load()}, nil
}

// AppliedIndex and SourceIndex are the store's indexes at the snapshot.
func (ss *StoreSnapshot) AppliedIndex() uint64 { return ss.applied }

// SourceIndex is the replicated-log index the snapshot covers.
func (ss *StoreSnapshot) SourceIndex() uint64 { return ss.source }

// WriteTo writes the snapshot as a checksummed stream (see Restore).
func (ss *StoreSnapshot) WriteTo(w io.Writer) (int64, error) {
	cw := &countWriter{w: bufio.NewWriterSize(w, 256<<10), crc: crc32.New(crcTable)}
	cw.write([]byte(snapshotMagic))
	cw.write([]byte{snapshotVersion})
	cw.write(binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, ss.applied), ss.source))
	it, err := ss.snap.NewIter(nil)
	if err != nil {
		return cw.n, fmt.Errorf("fsm: snapshot iterator: %w", err)
	}
	var pairs uint64
	var scratch []byte
	for it.First(); it.Valid() && cw.err == nil; it.Next() {
		k := it.Key()
		v, err := it.ValueAndErr()
		if err != nil {
			it.Close()
			return cw.n, fmt.Errorf("fsm: snapshot read: %w", err)
		}
		scratch = binary.AppendUvarint(scratch[:0], uint64(len(k)))
		scratch = append(scratch, k...)
		scratch = binary.AppendUvarint(scratch, uint64(len(v)))
		cw.write(scratch)
		cw.write(v)
		pairs++
	}
	if err := it.Close(); err != nil && cw.err == nil {
		return cw.n, fmt.Errorf("fsm: snapshot iterator: %w", err)
	}
	cw.write(binary.BigEndian.AppendUint64([]byte{0}, pairs))
	cw.write(binary.BigEndian.AppendUint32(nil, cw.crc.Sum32()))
	if cw.err == nil {
		cw.err = cw.w.(*bufio.Writer).Flush()
	}
	return cw.n, cw.err
}

// Release frees the snapshot.
func (ss *StoreSnapshot) Release() { _ = ss.snap.Close() }

type countWriter struct {
	w   io.Writer
	crc hash.Hash32
	n   int64
	err error
}

func (c *countWriter) write(p []byte) {
	if c.err != nil {
		return
	}
	c.crc.Write(p)
	n, err := c.w.Write(p)
	c.n += int64(n)
	c.err = err
}

// snapshotReader parses a snapshot stream, checksumming as it goes.
type snapshotReader struct {
	applied, source uint64
	r               *bufio.Reader
	crc             hash.Hash32
	pairs           uint64
	buf             []byte
}

func (sr *snapshotReader) readFull(n int) ([]byte, error) {
	if cap(sr.buf) < n {
		sr.buf = make([]byte, n)
	}
	b := sr.buf[:n]
	if _, err := io.ReadFull(sr.r, b); err != nil {
		return nil, fmt.Errorf("%w: truncated: %v", ErrBadSnapshot, err)
	}
	sr.crc.Write(b)
	return b, nil
}

func (sr *snapshotReader) uvarint() (uint64, error) {
	var tmp [binary.MaxVarintLen64]byte
	for i := range tmp {
		c, err := sr.r.ReadByte()
		if err != nil {
			return 0, fmt.Errorf("%w: truncated: %v", ErrBadSnapshot, err)
		}
		tmp[i] = c
		if c < 0x80 {
			sr.crc.Write(tmp[:i+1])
			v, n := binary.Uvarint(tmp[:i+1])
			if n <= 0 {
				return 0, fmt.Errorf("%w: bad length", ErrBadSnapshot)
			}
			return v, nil
		}
	}
	return 0, fmt.Errorf("%w: bad length", ErrBadSnapshot)
}

func newSnapshotReader(r io.Reader) (*snapshotReader, error) {
	sr := &snapshotReader{r: bufio.NewReaderSize(r, 256<<10), crc: crc32.New(crcTable)}
	head, err := sr.readFull(len(snapshotMagic) + 1 + 16)
	if err != nil {
		return nil, err
	}
	if string(head[:len(snapshotMagic)]) != snapshotMagic {
		return nil, fmt.Errorf("%w: not a saga snapshot (bad magic)", ErrBadSnapshot)
	}
	if v := head[len(snapshotMagic)]; v != snapshotVersion {
		return nil, fmt.Errorf("%w: version %d, this build reads %d", ErrBadSnapshot, v, snapshotVersion)
	}
	sr.applied = binary.BigEndian.Uint64(head[len(snapshotMagic)+1:])
	sr.source = binary.BigEndian.Uint64(head[len(snapshotMagic)+9:])
	return sr, nil
}

// ReadSnapshotHeader returns the applied and source indexes a snapshot
// stream covers, reading only its header (the rest is verified by
// Restore).
func ReadSnapshotHeader(r io.Reader) (applied, source uint64, err error) {
	sr, err := newSnapshotReader(r)
	if err != nil {
		return 0, 0, err
	}
	return sr.applied, sr.source, nil
}

// next returns the next pair (valid until the following call), or
// done=true after verifying the trailer.
func (sr *snapshotReader) next() (k, v []byte, done bool, err error) {
	kl, err := sr.uvarint()
	if err != nil {
		return nil, nil, false, err
	}
	if kl == 0 {
		tr, err := sr.readFull(8)
		if err != nil {
			return nil, nil, false, err
		}
		if n := binary.BigEndian.Uint64(tr); n != sr.pairs {
			return nil, nil, false, fmt.Errorf("%w: trailer counts %d pairs, stream has %d", ErrBadSnapshot, n, sr.pairs)
		}
		want := sr.crc.Sum32()
		var sum [4]byte
		if _, err := io.ReadFull(sr.r, sum[:]); err != nil {
			return nil, nil, false, fmt.Errorf("%w: truncated checksum: %v", ErrBadSnapshot, err)
		}
		if got := binary.BigEndian.Uint32(sum[:]); got != want {
			return nil, nil, false, fmt.Errorf("%w: checksum %08x, computed %08x", ErrBadSnapshot, got, want)
		}
		if _, err := sr.r.ReadByte(); err != io.EOF {
			return nil, nil, false, fmt.Errorf("%w: data after the trailer", ErrBadSnapshot)
		}
		return nil, nil, true, nil
	}
	if kl > maxSnapshotItem {
		return nil, nil, false, fmt.Errorf("%w: key of %d bytes", ErrBadSnapshot, kl)
	}
	kb, err := sr.readFull(int(kl))
	if err != nil {
		return nil, nil, false, err
	}
	k = append([]byte(nil), kb...)
	vl, err := sr.uvarint()
	if err != nil {
		return nil, nil, false, err
	}
	if vl > maxSnapshotItem {
		return nil, nil, false, fmt.Errorf("%w: value of %d bytes", ErrBadSnapshot, vl)
	}
	if v, err = sr.readFull(int(vl)); err != nil {
		return nil, nil, false, err
	}
	sr.pairs++
	return k, v, false, nil
}

// Restore replaces the whole state with the snapshot read from r. The
// stream is first copied to a temporary file next to the store and
// verified end to end (structure, pair count, checksum): a bad stream
// returns ErrBadSnapshot and changes nothing. The state is then replaced
// in chunks, under a marker (see RestoreIncomplete) that a crash in the
// middle leaves behind, and flushed. Reads running meanwhile may see a
// partial state. Not safe concurrently with applies.
func (s *Store) Restore(r io.Reader) error {
	tmp, err := os.CreateTemp(s.tmpDir, ".saga-restore-*")
	if err != nil {
		return fmt.Errorf("fsm: restore: temporary file: %w", err)
	}
	defer func() {
		tmp.Close()
		os.Remove(tmp.Name())
	}()
	if _, err := io.Copy(tmp, r); err != nil {
		return fmt.Errorf("fsm: restore: read snapshot: %w", err)
	}
	pass := func(fn func(k, v []byte) error) error {
		if _, err := tmp.Seek(0, io.SeekStart); err != nil {
			return fmt.Errorf("fsm: restore: %w", err)
		}
		sr, err := newSnapshotReader(tmp)
		if err != nil {
			return err
		}
		for {
			k, v, done, err := sr.next()
			if err != nil || done {
				return err
			}
			if err := fn(k, v); err != nil {
				return err
			}
		}
	}
	if err := pass(func(k, v []byte) error { return nil }); err != nil {
		return err
	}
	// The first batch wipes everything and sets the marker; the last one
	// removes it. Pebble's durable state is a prefix of committed batches,
	// so the marker survives any crash before the restore is complete.
	s.restoring.Store(true)
	b := s.db.NewBatch()
	if err := b.DeleteRange([]byte{0}, []byte{0xff, 0xff, 0xff, 0xff}, nil); err != nil {
		return err
	}
	if err := b.Set(keyRestoring, nil, nil); err != nil {
		return err
	}
	s.mu.Lock()
	s.live = map[string]*Saga{}
	s.latest = map[string]*Definition{}
	s.cacheGen++
	s.mu.Unlock()
	commit := func() error {
		if err := b.Commit(pebble.NoSync); err != nil {
			return fmt.Errorf("fsm: restore: commit: %w", err)
		}
		b.Close()
		b = s.db.NewBatch()
		return nil
	}
	err = pass(func(k, v []byte) error {
		if string(k) == string(keyRestoring) {
			return nil
		}
		if err := b.Set(k, v, nil); err != nil {
			return err
		}
		if b.Len() >= 4<<20 {
			return commit()
		}
		return nil
	})
	if err == nil {
		err = b.Delete(keyRestoring, nil)
	}
	if err == nil {
		err = commit()
	}
	b.Close()
	if err == nil {
		err = s.Flush()
	}
	if err != nil {
		return fmt.Errorf("fsm: restore (the state is partial until restored again): %w", err)
	}
	// Readers may have cached the old state while the restore ran.
	s.mu.Lock()
	s.live = map[string]*Saga{}
	s.latest = map[string]*Definition{}
	s.cacheGen++
	s.mu.Unlock()
	if err := s.loadMeta(); err != nil {
		return err
	}
	// A snapshot of a store older than the query indexes lacks them.
	return s.ensureQueryIndex(false)
}

// Hash returns a SHA-256 of every key and value of the store, in order:
// replicas that applied the same commands have equal hashes.
func (s *Store) Hash() ([]byte, error) {
	it, err := s.db.NewIter(nil)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	var lens [2 * binary.MaxVarintLen64]byte
	for it.First(); it.Valid(); it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			it.Close()
			return nil, err
		}
		n := binary.PutUvarint(lens[:], uint64(len(it.Key())))
		n += binary.PutUvarint(lens[n:], uint64(len(v)))
		h.Write(lens[:n])
		h.Write(it.Key())
		h.Write(v)
	}
	if err := it.Close(); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}
