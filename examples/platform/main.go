// Command platform runs the eight platform operations of the seed plan
// ("capability by design, optional by policy") on local files, with saga
// guarantees switched per operation by a policy file.
//
// Each milestone does real, small work under a data directory (upload a
// file, parse it to JSON, write embeddings as a vector file, register it in
// an index…), and each compensation handler really undoes it, idempotently.
// Inject a failure with -fail-at to watch the compensation put the data
// directory back as it was.
//
//	go run ./examples/platform -policy examples/platform/policies/critical.yaml \
//	    -op data_ingest_pipeline -fail-at embed
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/policy"
)

func main() {
	policyFile := flag.String("policy", "examples/platform/policies/critical.yaml", "policy file (YAML)")
	op := flag.String("op", "all", "operation to run, or all")
	failAt := flag.String("fail-at", "", "milestone at which to inject a failure")
	dataDir := flag.String("data", "", "platform data directory (default: a temporary one)")
	engineDir := flag.String("engine", "", "saga engine directory (default: a temporary one)")
	user := flag.String("user", "user_123", "user id of the caller")
	flag.Parse()
	if err := run(os.Stdout, config{policy: *policyFile, op: *op, failAt: *failAt,
		data: *dataDir, engine: *engineDir, user: *user}); err != nil {
		fmt.Fprintln(os.Stderr, "platform:", err)
		os.Exit(1)
	}
}

type config struct {
	policy, op, failAt, data, engine, user string
	runID                                  string // default: time-based
}

// platform is the data directory the milestones work on.
type platform struct {
	root string
	log  io.Writer // where compensations say what they undid; nil for silence
}

// effect is what one milestone leaves on disk: a file it writes, or a line
// it adds to an index file. Both are located from (operation, milestone,
// run id) alone, so a compensation can undo an uncertain milestone whose
// output was never recorded.
type effect struct {
	path  string
	index bool // a line in an index file instead of a file of its own
}

func (p *platform) effect(op, ms, run string) effect {
	switch op + "/" + ms {
	case "data_ingest_pipeline/ingest":
		return effect{path: filepath.Join(p.root, "storage", run, "upload.txt")}
	case "data_ingest_pipeline/parse":
		return effect{path: filepath.Join(p.root, "parsed", run+".json")}
	case "data_ingest_pipeline/embed":
		return effect{path: filepath.Join(p.root, "embeddings", run+".vec")}
	case "data_ingest_pipeline/expose":
		return effect{path: filepath.Join(p.root, "semantic_layer", "index.txt"), index: true}
	}
	if strings.HasPrefix(ms, "store_") || ms == "publish_sop" {
		return effect{path: filepath.Join(p.root, op, "index.txt"), index: true}
	}
	return effect{path: filepath.Join(p.root, op, run, ms+".json")}
}

// init creates the platform's shared layout (top-level directories and
// index files) once. Milestones add files and per-run directories to it;
// compensations remove exactly those and never touch the shared layout.
func (p *platform) init() error {
	for _, dir := range []string{"storage", "parsed", "embeddings", "semantic_layer"} {
		if err := os.MkdirAll(filepath.Join(p.root, dir), 0o750); err != nil {
			return err
		}
	}
	indexes := []string{filepath.Join(p.root, "semantic_layer", "index.txt")}
	for _, op := range operations {
		if err := os.MkdirAll(filepath.Join(p.root, op.name), 0o750); err != nil {
			return err
		}
		indexes = append(indexes, filepath.Join(p.root, op.name, "index.txt"))
	}
	for _, ix := range indexes {
		f, err := os.OpenFile(ix, os.O_CREATE|os.O_WRONLY, 0o640)
		if err != nil {
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	return nil
}

// do performs a milestone: real work on real files. A milestone that
// fails cleans up after itself (a saga never compensates a failed step).
func (p *platform) do(op, ms, run string, input []byte) (out []byte, err error) {
	defer func() {
		if err != nil {
			if uerr := p.undo(op, ms, run); uerr != nil {
				err = fmt.Errorf("%w (and cleaning up failed: %v)", err, uerr)
			}
		}
	}()
	ef := p.effect(op, ms, run)
	if err := os.MkdirAll(filepath.Dir(ef.path), 0o750); err != nil {
		return nil, err
	}
	if ef.index {
		old, err := os.ReadFile(ef.path)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		entry := fmt.Sprintf("%s\t%s\t%s\n", run, ms, time.Now().UTC().Format(time.RFC3339))
		if len(old) > 0 && old[len(old)-1] != '\n' {
			entry = "\n" + entry // a hand-edited index without a final newline
		}
		f, err := os.OpenFile(ef.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if _, err := f.WriteString(entry); err != nil {
			return nil, err
		}
		return []byte(ef.path), f.Sync()
	}
	var content []byte
	switch op + "/" + ms {
	case "data_ingest_pipeline/ingest":
		content = input
	case "data_ingest_pipeline/parse":
		up, err := os.ReadFile(p.effect(op, "ingest", run).path)
		if err != nil {
			return nil, fmt.Errorf("parse: %w", err)
		}
		lines := strings.Split(strings.TrimSpace(string(up)), "\n")
		content, _ = json.MarshalIndent(map[string]any{"run": run, "lines": lines}, "", "  ")
	case "data_ingest_pipeline/embed":
		parsed, err := os.ReadFile(p.effect(op, "parse", run).path)
		if err != nil {
			return nil, fmt.Errorf("embed: %w", err)
		}
		var doc struct{ Lines []string }
		if err := json.Unmarshal(parsed, &doc); err != nil {
			return nil, fmt.Errorf("embed: %w", err)
		}
		var buf bytes.Buffer
		for _, l := range doc.Lines {
			buf.WriteString(embedding(l))
			buf.WriteByte('\n')
		}
		content = buf.Bytes()
	default:
		sum := sha256.Sum256(append([]byte(op+"/"+ms+"/"+run+"/"), input...))
		content, _ = json.MarshalIndent(map[string]any{
			"operation": op, "milestone": ms, "run": run, "digest": fmt.Sprintf("%x", sum[:8]),
		}, "", "  ")
	}
	if err := writeAtomic(ef.path, content); err != nil {
		return nil, err
	}
	return []byte(ef.path), nil
}

// writeAtomic writes a temp file and renames it into place: a crash
// leaves the old content or the new, never half of it.
func writeAtomic(path string, content []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, content, 0o640); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}

// embedding is a deterministic 4-dimensional "embedding" of a line.
func embedding(s string) string {
	sum := sha256.Sum256([]byte(s))
	parts := make([]string, 4)
	for i := range parts {
		v := float64(binary.BigEndian.Uint32(sum[i*4:])) / math.MaxUint32
		parts[i] = fmt.Sprintf("%.6f", v)
	}
	return strings.Join(parts, " ")
}

// undo reverts a milestone. It is idempotent and succeeds when there is
// nothing to undo (the milestone never ran, or was undone already). It
// removes only what the milestone added: its file, its index line, and
// its run's own directory once empty — never the shared layout.
func (p *platform) undo(op, ms, run string) error {
	ef := p.effect(op, ms, run)
	if ef.index {
		data, err := os.ReadFile(ef.path)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		var kept strings.Builder
		for _, line := range strings.SplitAfter(string(data), "\n") {
			if !strings.HasPrefix(line, run+"\t"+ms+"\t") {
				kept.WriteString(line)
			}
		}
		if kept.Len() == len(data) {
			return nil
		}
		return writeAtomic(ef.path, []byte(kept.String()))
	}
	_ = os.Remove(ef.path + ".tmp")
	if err := os.Remove(ef.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if dir := filepath.Dir(ef.path); filepath.Base(dir) == run {
		_ = os.Remove(dir) // fails while other milestones' files remain: fine
	}
	return nil
}

// registry registers every handler of every operation. A handler name
// shared by two operations (clear_analysis_cache) undoes the milestone the
// call names.
func (p *platform) registry() (*compensation.Registry, error) {
	reg := compensation.NewRegistry()
	seen := map[string]bool{}
	for _, op := range operations {
		for _, ms := range op.milestones {
			if seen[ms.handler] {
				continue
			}
			seen[ms.handler] = true
			handler := ms.handler
			if err := reg.Register(handler, func(ctx context.Context, c compensation.Call) error {
				if err := p.undo(c.Definition, c.Step, string(c.Input)); err != nil {
					return err
				}
				note := ""
				if c.Uncertain {
					note = " (uncertain: undone from the run id alone)"
				}
				if p.log != nil {
					fmt.Fprintf(p.log, "    ↶ %-30s compensated by %s%s\n", c.Step, handler, note)
				}
				return nil
			}); err != nil {
				return nil, err
			}
		}
	}
	return reg, nil
}

// workflow is the operation's code: it marks each milestone on the saga
// handle, which is a no-op when the policy is off.
func (p *platform) workflow(op operation, run string, input []byte, failAt string, log io.Writer) func(ctx context.Context, s policy.Saga) error {
	return func(ctx context.Context, s policy.Saga) error {
		for _, ms := range op.milestones {
			err := s.Step(ctx, ms.name, func(ctx context.Context) ([]byte, error) {
				if ms.name == failAt {
					return nil, fmt.Errorf("injected failure at %s", ms.name)
				}
				out, err := p.do(op.name, ms.name, run, input)
				if err == nil {
					fmt.Fprintf(log, "    ✓ %-30s %s\n", ms.name, strings.TrimPrefix(string(out), p.root+"/"))
				}
				return out, err
			})
			if err != nil {
				return err
			}
		}
		return nil
	}
}

const sampleDoc = `Quarterly report
Revenue grew 12% year over year.
Churn fell to 2.1%.
Next steps: expand the pilot to two regions.
`

func run(out io.Writer, cfg config) error {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, d := range []*string{&cfg.data, &cfg.engine} {
		if *d == "" {
			tmp, err := os.MkdirTemp("", "saga-platform-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(tmp)
			*d = tmp
		}
	}
	root, err := filepath.Abs(cfg.data)
	if err != nil {
		return err
	}
	p := &platform{root: root, log: out}
	if err := p.init(); err != nil {
		return err
	}
	reg, err := p.registry()
	if err != nil {
		return err
	}
	pm, err := policy.New(policy.Options{File: cfg.policy, NoWatch: true, Registry: reg, Logger: quiet})
	if err != nil {
		return err
	}
	defer pm.Close()
	eng, err := engine.Open(cfg.engine, engine.Options{Registry: reg, Logger: quiet})
	if err != nil {
		return err
	}
	defer eng.Close()
	x := policy.NewExecutor(pm, eng)

	var ops []operation
	if cfg.op == "all" {
		ops = operations
	} else if op, ok := findOperation(cfg.op); ok {
		ops = []operation{op}
	} else {
		return fmt.Errorf("unknown operation %q", cfg.op)
	}
	if cfg.failAt != "" {
		var names []string
		found := false
		for _, op := range ops {
			for _, ms := range op.milestones {
				found = found || ms.name == cfg.failAt
				names = append(names, ms.name)
			}
		}
		if !found {
			return fmt.Errorf("-fail-at %q: no such milestone; the milestones are %s", cfg.failAt, strings.Join(names, ", "))
		}
	}
	uc := policy.UserContext{UserID: cfg.user}
	fmt.Fprintf(out, "policy %s; data in %s\n", cfg.policy, root)
	var failures int
	for _, op := range ops {
		run := cfg.runID
		if run == "" {
			run = fmt.Sprintf("run-%x", uint32(time.Now().UnixNano()))
		}
		before, err := snapshot(root)
		if err != nil {
			return err
		}
		d := pm.Explain(op.name, uc)
		mode := "without saga"
		if d.Saga {
			mode = "as a saga"
		}
		fmt.Fprintf(out, "\n%s (%s)\n", op.name, mode)
		res, werr := x.ExecuteWithSaga(context.Background(), op.name, uc, []byte(run),
			p.workflow(op, run, []byte(sampleDoc), cfg.failAt, out))
		after, err := snapshot(root)
		if err != nil {
			return err
		}
		switch {
		case werr == nil:
			fmt.Fprintf(out, "  completed%s\n", sagaNote(res))
		case res.Saga:
			failures++
			fmt.Fprintf(out, "  failed: %v\n  saga %s is %s: completed milestones compensated in reverse order; data dir %s\n",
				werr, res.SagaID, res.State, sameOrNot(before, after))
		default:
			failures++
			fmt.Fprintf(out, "  failed: %v\n  no saga: nothing compensated; %d file(s) left behind\n", werr, diffCount(before, after))
		}
	}
	if failures > 0 && cfg.failAt == "" {
		return fmt.Errorf("%d operation(s) failed", failures)
	}
	return nil
}

func sagaNote(res policy.Result) string {
	switch {
	case res.Saga:
		return " (saga " + res.SagaID + ")"
	case res.Fallback:
		return " (engine unavailable: ran without saga)"
	}
	return ""
}

func sameOrNot(before, after map[string]string) string {
	if diffCount(before, after) == 0 {
		return "exactly as before"
	}
	return fmt.Sprintf("DIFFERS in %d place(s)", diffCount(before, after))
}

// snapshot maps every file and directory under root to its content.
func snapshot(root string) (map[string]string, error) {
	out := map[string]string{}
	err := filepath.Walk(root, func(path string, info os.FileInfo, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if info.IsDir() {
			out[rel+"/"] = ""
			return nil
		}
		b, err := os.ReadFile(path)
		out[rel] = string(b)
		return err
	})
	return out, err
}

func diffCount(a, b map[string]string) int {
	keys := map[string]bool{}
	for k := range a {
		keys[k] = true
	}
	for k := range b {
		keys[k] = true
	}
	n := 0
	for k := range keys {
		av, aok := a[k]
		bv, bok := b[k]
		if aok != bok || av != bv {
			n++
		}
	}
	return n
}

// sortedPaths is used by tests to print differences.
func sortedPaths(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
