package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sagaengine/saga/archive"
	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/internal/testctx"
)

// archivedDir runs two sagas to their end, archives both with the
// Writer, and returns the engine's (closed) data directory and the
// archive file.
func archivedDir(t *testing.T) (dataDir, file string) {
	t.Helper()
	ctx := testctx.New(t)
	dataDir = t.TempDir()
	e, err := engine.Open(dataDir, engine.Options{Registry: registry(true), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	for _, d := range []engine.Definition{
		{Name: "order", Steps: []engine.StepDef{{Name: "pay", Action: "ok", Compensation: "undo"}, {Name: "ship", Action: "ok"}}},
		{Name: "failing", Steps: []engine.StepDef{{Name: "pay", Action: "ok", Compensation: "undo"}, {Name: "ship", Action: "boom"}}},
	} {
		if _, err := e.Define(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	archiveDir := filepath.Join(t.TempDir(), "archive")
	w, err := archive.Open(archiveDir, archive.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for _, s := range []struct{ def, id string }{{"order", "order-1"}, {"failing", "failed-1"}} {
		st, err := e.Run(ctx, s.def, nil, engine.StartOptions{ID: s.id})
		if err != nil {
			t.Fatal(err)
		}
		h, err := e.History(ctx, s.id)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Write(ctx, archive.NewRecord(st, h)); err != nil {
			t.Fatal(err)
		}
	}
	files, err := archive.Files(archiveDir)
	if err != nil || len(files) != 1 {
		t.Fatalf("archive files %v, %v", files, err)
	}
	return dataDir, files[0]
}

func TestArchiveShowListsTheSagasOfAFile(t *testing.T) {
	_, file := archivedDir(t)
	c, out, se := runCLI("archive", "show", file)
	if c != exitOK {
		t.Fatalf("exit %d: %s", c, se)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ID") || !strings.Contains(lines[1], "order-1") ||
		!strings.Contains(lines[1], "COMPLETED") || !strings.Contains(lines[2], "failing@v1") || !strings.Contains(lines[2], "FAILED") {
		t.Fatalf("table:\n%s", out)
	}
	c, out, _ = runCLI("archive", "show", filepath.Dir(file), "-o", "json")
	var rep struct{ Sagas []archive.Saga }
	if err := json.Unmarshal([]byte(out), &rep); c != exitOK || err != nil || len(rep.Sagas) != 2 {
		t.Fatalf("json of the directory: exit %d, %v:\n%s", c, err, out)
	}
}

// An archived saga prints as `show` prints it in the engine it left.
func TestArchiveShowPrintsASagaAsShowDoes(t *testing.T) {
	dataDir, file := archivedDir(t)
	for _, id := range []string{"order-1", "failed-1"} {
		c, live, se := runCLI("--dir", dataDir, "show", id)
		if c != exitOK {
			t.Fatalf("show %s: exit %d: %s", id, c, se)
		}
		c, archived, se := runCLI("archive", "show", file, id)
		if c != exitOK || archived != live {
			t.Fatalf("archive show %s: exit %d %s\n%s\nwant what show prints:\n%s", id, c, se, archived, live)
		}
	}
	c, out, _ := runCLI("-o", "json", "archive", "show", file, "failed-1")
	var rec archive.Record
	if err := json.Unmarshal([]byte(out), &rec); c != exitOK || err != nil || rec.V != 1 || rec.Saga.ID != "failed-1" || len(rec.History) == 0 {
		t.Fatalf("json: exit %d, %v:\n%s", c, err, out)
	}
}

// Bad input fails with a clear error and a non-zero exit code, prints
// nothing on stdout and changes nothing on disk.
func TestArchiveShowRefusesBadInput(t *testing.T) {
	_, file := archivedDir(t)
	whole, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	torn := filepath.Join(dir, "torn"+archive.Suffix)
	os.WriteFile(torn, whole[:len(whole)-5], 0o644)
	text := filepath.Join(dir, "notes.txt")
	os.WriteFile(text, []byte("not an archive\n"), 0o644)
	corrupt := filepath.Join(dir, "corrupt"+archive.Suffix)
	bad := bytes.Clone(whole)
	bad[len(bad)/3] ^= 0xff
	os.WriteFile(corrupt, bad, 0o644)
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"missing file", []string{filepath.Join(dir, "missing")}, exitUsage, "no such file"},
		{"not an archive", []string{text}, exitFailed, "not an archive file"},
		{"corrupt", []string{corrupt}, exitFailed, "archive: corrupt"},
		{"torn tail", []string{torn}, exitFailed, "--tolerate-torn-tail"},
		{"unknown id", []string{file, "nope"}, exitFailed, "saga not found: nope"},
		{"one too many", []string{file, "order-1", "x"}, exitUsage, "accepts between 1 and 2 arg(s)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := snapshot(t, dir, file)
			c, out, se := runCLI(append([]string{"archive", "show"}, tc.args...)...)
			if c != tc.code || !strings.Contains(se, tc.want) || out != "" {
				t.Fatalf("exit %d (want %d), stderr %q (want %q), stdout %q", c, tc.code, se, tc.want, out)
			}
			if after := snapshot(t, dir, file); after != before {
				t.Fatalf("archive show changed the files:\n%s\nto\n%s", before, after)
			}
		})
	}
	// Tolerant, the torn file shows the sagas before its torn batch.
	if c, out, se := runCLI("archive", "show", "--tolerate-torn-tail", torn); c != exitOK || !strings.Contains(out, "order-1") ||
		strings.Contains(out, "failed-1") {
		t.Fatalf("tolerant: exit %d %s\n%s", c, se, out)
	}
}

// snapshot is the names, sizes and contents of the files in dirs.
func snapshot(t *testing.T, paths ...string) string {
	t.Helper()
	var b strings.Builder
	for _, p := range paths {
		filepath.WalkDir(p, func(path string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				data, _ := os.ReadFile(path)
				b.WriteString(path + " " + string(data) + "\n")
			}
			return nil
		})
	}
	return b.String()
}

// The JSON of `archive show FILE` is written one saga at a time (an
// archive of months is not held in memory), byte for byte what printJSON
// writes for the whole list.
func TestArchiveShowStreamsTheJSONPrintJSONWouldWrite(t *testing.T) {
	_, file := archivedDir(t)
	var all []archive.Saga
	for rec, err := range archive.Read(testctx.New(t), file, archive.ReadOptions{}) {
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, rec.Saga)
	}
	for n := 0; n <= len(all); n++ {
		var want, got bytes.Buffer
		g := &globals{out: &want}
		if err := g.printJSON(map[string]any{"sagas": append([]archive.Saga{}, all[:n]...)}); err != nil {
			t.Fatal(err)
		}
		err := printSagasJSON(&got, func(f func(archive.Saga) error) error {
			for _, s := range all[:n] {
				if err := f(s); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil || got.String() != want.String() {
			t.Fatalf("%d sagas: %v\n got:\n%s\nwant:\n%s", n, err, got.String(), want.String())
		}
	}
}
