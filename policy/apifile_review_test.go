package policy

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// When the rename of the API file succeeded but the directory's sync
// failed, the file already holds the new text: the next start reads it.
// The policy in force must agree with the file (it is the new one), and
// the error must say that the change is in force but not known to be
// durable, not that nothing changed.
func TestADirSyncFailureAfterTheRenameLeavesThePolicyAndItsFileAgreeing(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy-api.yaml")
	m, err := New(Options{APIFile: path, LookupEnv: noEnv, Logger: quiet})
	must(t, err)
	defer m.Close()
	must(t, m.SetText("request", []byte("enable_saga: false\n")))
	v := m.Snapshot().Version

	boom := errors.New("injected: fsync of the directory failed")
	old := syncDir
	syncDir = func(*os.File) error { return boom }
	defer func() { syncDir = old }()
	err = m.SetText("request", []byte(apiDoc))
	if err == nil || IsInvalid(err) || !errors.Is(err, ErrNotDurable) || !errors.Is(err, boom) {
		t.Fatalf("SetText with a failing directory sync: %v, want ErrNotDurable wrapping the sync error", err)
	}
	syncDir = old

	got, _ := os.ReadFile(path)
	inForce := m.Explain("ingest", UserContext{}).Saga
	if string(got) != apiDoc || !inForce || m.Snapshot().Version != v+1 {
		t.Fatalf("the file holds %q, ingest is a saga in force: %v (version %d → %d): they disagree",
			got, inForce, v, m.Snapshot().Version)
	}
	m2, err := New(Options{APIFile: path, LookupEnv: noEnv, Logger: quiet})
	must(t, err)
	defer m2.Close()
	if m2.Explain("ingest", UserContext{}).Saga != inForce {
		t.Fatal("a restart reads another policy than the one that was in force")
	}
}
