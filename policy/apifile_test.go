package policy

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

const apiDoc = `enable_saga: true
saga_operations: [ingest]
compensation_handlers:
  ingest:
    upload: delete_upload
`

// A policy set as text with Options.APIFile is written before it is in
// force and is read back by the next Manager: an operator's change
// through the API survives a restart.
func TestTheAPILayerSurvivesARestartInItsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy-api.yaml")
	m, err := New(Options{APIFile: path, LookupEnv: noEnv, Logger: quiet})
	must(t, err)
	if m.Explain("ingest", UserContext{}).Saga {
		t.Fatal("ingest is a saga before any policy")
	}
	must(t, m.SetText("request", []byte(apiDoc)))
	if d := m.Explain("ingest", UserContext{}); !d.Saga {
		t.Fatalf("after SetText: %+v", d)
	}
	if got, err := os.ReadFile(path); err != nil || string(got) != apiDoc {
		t.Fatalf("the API file holds %q, %v", got, err)
	}
	_ = m.Close()
	m2, err := New(Options{APIFile: path, LookupEnv: noEnv, Logger: quiet})
	must(t, err)
	defer m2.Close()
	if d := m2.Explain("ingest", UserContext{}); !d.Saga {
		t.Fatalf("after a restart the API layer is gone: %+v", d)
	}
	if desc := m2.Snapshot().Describe(); desc.EnableSagaFrom != SourceAPI {
		t.Fatalf("enable_saga from %q, want %q", desc.EnableSagaFrom, SourceAPI)
	}
}

// A refused change, invalid or not kept, leaves the policy in force and
// the file as they were; Set of a value is refused when the layer is
// kept as text.
func TestARefusedAPIChangeLeavesThePolicyAndItsFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy-api.yaml")
	m, err := New(Options{APIFile: path, LookupEnv: noEnv, Logger: quiet})
	must(t, err)
	defer m.Close()
	must(t, m.SetText("request", []byte(apiDoc)))
	v := m.Snapshot().Version

	err = m.SetText("request", []byte("enable_saga: maybe\n"))
	if err == nil || !IsInvalid(err) {
		t.Fatalf("an invalid policy: %v, want a validation error", err)
	}
	if err := m.Set(&Policy{EnableSaga: Bool(false)}); !errors.Is(err, ErrAPIFile) {
		t.Fatalf("Set with an API file: %v, want ErrAPIFile", err)
	}
	// The file cannot be written: its directory is gone.
	m.opts.APIFile = filepath.Join(dir, "gone", "policy-api.yaml")
	err = m.SetText("request", []byte("enable_saga: false\n"))
	if err == nil || IsInvalid(err) {
		t.Fatalf("a policy that cannot be kept: %v, want an I/O error", err)
	}
	if got := m.Snapshot().Version; got != v || !m.Explain("ingest", UserContext{}).Saga {
		t.Fatalf("a refused change took effect: version %d → %d", v, got)
	}
	if got, _ := os.ReadFile(path); string(got) != apiDoc {
		t.Fatalf("a refused change wrote the file: %q", got)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("files left behind: %v", entries)
	}
}

// A Manager does not start on an API file it cannot read.
func TestACorruptAPIFileRefusesToStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy-api.yaml")
	must(t, os.WriteFile(path, []byte("enable_saga: [\n"), 0o600))
	if _, err := New(Options{APIFile: path, LookupEnv: noEnv, Logger: quiet}); err == nil || !IsInvalid(err) {
		t.Fatalf("a corrupt API file: %v, want a validation error", err)
	}
}

// ClearAPI removes the API layer and its file, durably: the file and
// environment layers alone are in force, after a restart too. If what is
// left does not validate, nothing changes; a directory sync that fails
// after the removal leaves the change in force with ErrNotDurable.
func TestClearAPIRemovesTheLayerAndItsFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy-api.yaml")
	m, err := New(Options{APIFile: path, LookupEnv: noEnv, Logger: quiet})
	must(t, err)
	must(t, m.SetText("request", []byte(apiDoc)))
	must(t, m.ClearAPI())
	if m.Explain("ingest", UserContext{}).Saga {
		t.Fatal("ingest is still a saga after ClearAPI")
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("the API file is still there: %v", err)
	}
	v := m.Snapshot().Version
	must(t, m.ClearAPI()) // nothing to remove: nothing changes
	if got := m.Snapshot().Version; got != v {
		t.Fatalf("a ClearAPI without a layer made version %d from %d", got, v)
	}
	_ = m.Close()
	m2, err := New(Options{APIFile: path, LookupEnv: noEnv, Logger: quiet})
	must(t, err)
	if m2.Explain("ingest", UserContext{}).Saga {
		t.Fatal("after a restart the cleared API layer is back")
	}
	_ = m2.Close()

	// A file layer that needs the API layer's milestones: clearing it is
	// refused, and the API file stays.
	file := filepath.Join(dir, "policy.yaml")
	must(t, os.WriteFile(file, []byte("enable_saga: true\nsaga_operations: [ingest]\n"), 0o600))
	must(t, os.WriteFile(path, []byte("compensation_handlers:\n  ingest:\n    upload: delete_upload\n"), 0o600))
	m3, err := New(Options{File: file, NoWatch: true, APIFile: path, LookupEnv: noEnv, Logger: quiet})
	must(t, err)
	defer m3.Close()
	v = m3.Snapshot().Version
	if err := m3.ClearAPI(); !IsInvalid(err) {
		t.Fatalf("clearing a layer the file needs: %v, want a validation error", err)
	}
	if _, err := os.Stat(path); err != nil || m3.Snapshot().Version != v || !m3.Explain("ingest", UserContext{}).Saga {
		t.Fatalf("a refused ClearAPI changed something: %v, version %d → %d", err, v, m3.Snapshot().Version)
	}

	// The removal's directory sync fails: in force, not known durable.
	must(t, os.WriteFile(file, []byte("enable_saga: false\n"), 0o600))
	must(t, m3.Reload())
	failing := errors.New("injected dir sync failure")
	old := syncDir
	syncDir = func(*os.File) error { return failing }
	defer func() { syncDir = old }()
	if err := m3.ClearAPI(); !errors.Is(err, ErrNotDurable) || !errors.Is(err, failing) {
		t.Fatalf("a failed directory sync: %v, want ErrNotDurable", err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) || m3.Explain("ingest", UserContext{}).Saga {
		t.Fatalf("after a not-durable clear the layer is still in force or its file there: %v", err)
	}
}
