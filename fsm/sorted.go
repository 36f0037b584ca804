package fsm

import (
	"bytes"
	"cmp"
	"slices"

	"github.com/cockroachdb/pebble/v2"
)

// batchWriter is what writeSaga and the index writers write to: a
// Pebble batch, or a sortedWriter.
type batchWriter interface {
	Set(key, value []byte, _ *pebble.WriteOptions) error
	Delete(key []byte, _ *pebble.WriteOptions) error
}

var _ batchWriter = (*pebble.Batch)(nil)

// sortedWriter collects writes and writes them to a batch in key order.
// Pebble sorts a large batch when it commits it (the batch becomes a
// memtable of its own): on a replay batch, whose keys came in the order
// of the sagas' transitions, that sort was most of the commit, paid on
// the replay's critical path, and it costs little on a batch already in
// order. The keys are kept per family (a fixed key prefix, below), in the
// order written: commit writes the sagas in id order, so most families
// arrive sorted, and each is sorted on its own. Writes of one key keep
// their order.
type sortedWriter struct {
	buf  []byte
	fams [len(families) + 1][]sortedOp // families, then the rest
	n    int
}

type sortedOp struct {
	k0, k1, v0, v1 int // the key and value in buf
	n              int // order of the write
	del            bool
}

// families are the prefixes of the keys commit writes, in key order;
// every other key goes in a last family, merged in between.
var families = [...][]byte{[]byte("k/"), []byte("m/"), []byte("q/a/"), []byte("q/d/"), []byte("q/m/"),
	[]byte("q/n/"), []byte("q/r/"), []byte("q/s/"), []byte("q/v/"), []byte("s/"), []byte("x/s/")}

const (
	famK = iota
	famM
	famQA // q/a/ … q/v/ follow in families' order
	famS  = famQA + 7
	famXS = famS + 1
)

// qFamily maps the letter of a q/<letter>/ key to its family (0: none).
var qFamily = func() (t [256]int8) {
	for i, p := range families {
		if p[0] == 'q' {
			t[p[2]] = int8(i)
		}
	}
	return t
}()

// family returns the index in families of k's prefix (len(families):
// none). It runs once per key commit writes: a switch, not a search.
func family(k []byte) int {
	if len(k) < 2 || k[1] != '/' {
		return len(families)
	}
	switch k[0] {
	case 'k':
		return famK
	case 'm':
		return famM
	case 's':
		return famS
	case 'x':
		if len(k) >= 4 && k[2] == 's' && k[3] == '/' {
			return famXS
		}
	case 'q':
		if len(k) >= 4 && k[3] == '/' {
			if f := qFamily[k[2]]; f != 0 {
				return int(f)
			}
		}
	}
	return len(families)
}

func (w *sortedWriter) add(k, v []byte, del bool) {
	op := sortedOp{k0: len(w.buf), n: w.n, del: del}
	w.buf = append(w.buf, k...)
	op.k1, op.v0 = len(w.buf), len(w.buf)
	w.buf = append(w.buf, v...)
	op.v1 = len(w.buf)
	w.n++
	f := family(k)
	w.fams[f] = append(w.fams[f], op)
}

// Set implements batchWriter.
func (w *sortedWriter) Set(k, v []byte, _ *pebble.WriteOptions) error {
	w.add(k, v, false)
	return nil
}

// Delete implements batchWriter.
func (w *sortedWriter) Delete(k []byte, _ *pebble.WriteOptions) error {
	w.add(k, nil, true)
	return nil
}

// writeTo writes what w holds to b, in key order, and empties w.
func (w *sortedWriter) writeTo(b *pebble.Batch) error {
	key := func(op sortedOp) []byte { return w.buf[op.k0:op.k1] }
	for f := range w.fams {
		slices.SortFunc(w.fams[f], func(x, y sortedOp) int {
			if c := bytes.Compare(key(x), key(y)); c != 0 {
				return c
			}
			return cmp.Compare(x.n, y.n)
		})
	}
	write := func(op sortedOp) error {
		if op.del {
			return b.Delete(key(op), nil)
		}
		return b.Set(key(op), w.buf[op.v0:op.v1], nil)
	}
	// The keys of no family go between the families around them.
	rest := w.fams[len(families)]
	for f, p := range families {
		for len(rest) > 0 && bytes.Compare(key(rest[0]), p) < 0 {
			if err := write(rest[0]); err != nil {
				return err
			}
			rest = rest[1:]
		}
		for _, op := range w.fams[f] {
			if err := write(op); err != nil {
				return err
			}
		}
	}
	for _, op := range rest {
		if err := write(op); err != nil {
			return err
		}
	}
	for f := range w.fams {
		w.fams[f] = w.fams[f][:0]
	}
	w.buf, w.n = w.buf[:0], 0
	return nil
}
