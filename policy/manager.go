package policy

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/sagaengine/saga/compensation"
)

// Options configures a Manager. The zero value works: no file (unless
// SAGA_POLICY_FILE names one), the process environment, no handler check.
type Options struct {
	// File is the policy file; default $SAGA_POLICY_FILE; "" for none.
	File string
	// NoWatch turns off hot reload of File (fsnotify). Default: watched.
	NoWatch bool
	// LookupEnv reads the environment layer; default os.LookupEnv. Pass
	// func(string) (string, bool) { return "", false } to ignore it.
	LookupEnv func(string) (string, bool)
	// Registry, if set, must hold every compensation handler a policy
	// names; a policy naming another is rejected.
	Registry *compensation.Registry
	// Logger receives reload results and fallbacks. Default slog.Default().
	Logger *slog.Logger
	// APIFile, if set, keeps the API layer across restarts: SetText
	// writes the policy text it was given there (atomically, synced)
	// before the change is in force, and New reads it back. "" keeps the
	// API layer in memory only, as Set does.
	APIFile string
	// OnChange is called after every attempted change (file reload, Set
	// or SetText) with the version in force and the error, if any: a
	// rejection, or one wrapping ErrNotDurable, which says the change IS
	// in force (only not known to be durable). It may run on the
	// watcher's goroutine: it must not call Close.
	OnChange func(version uint64, err error)
}

// Stats are counters since New.
type Stats struct {
	Changes   uint64 // changes that took effect
	Rejected  uint64 // changes rejected (the previous policy stayed)
	Fallbacks uint64 // calls that should have been sagas but ran without (engine unavailable)
}

// Manager holds the layered policy and the snapshot in force. It is safe
// for concurrent use.
type Manager struct {
	opts Options

	mu      sync.Mutex // serializes changes
	file    *Policy
	env     *Policy
	api     *Policy
	version uint64
	snap    atomic.Pointer[Snapshot]

	watcher  *fsnotify.Watcher
	done     chan struct{}
	reloadMu sync.Mutex // orders reloads: parse and apply as one
	lastFile [32]byte   // hash of the file content in force; reloadMu

	changes, rejected, fallbacks atomic.Uint64
}

// New loads the file and environment layers. An invalid file or
// environment is an error: a process should not start on a policy it
// cannot read.
func New(opts Options) (*Manager, error) {
	if opts.LookupEnv == nil {
		opts.LookupEnv = os.LookupEnv
	}
	if opts.File == "" {
		opts.File, _ = opts.LookupEnv(EnvFile)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	m := &Manager{opts: opts, done: make(chan struct{})}
	env, err := FromEnv(opts.LookupEnv)
	if err != nil {
		return nil, err
	}
	m.env = env
	if opts.File != "" {
		data, err := os.ReadFile(opts.File)
		if err != nil {
			return nil, fmt.Errorf("policy: read %s: %w", opts.File, err)
		}
		f, err := Parse(opts.File, data)
		if err != nil {
			return nil, err
		}
		m.file, m.lastFile = f, sha256.Sum256(data)
	}
	if opts.APIFile != "" {
		data, err := os.ReadFile(opts.APIFile)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			return nil, fmt.Errorf("policy: read the API layer %s: %w", opts.APIFile, err)
		default:
			if m.api, err = Parse(opts.APIFile, data); err != nil {
				return nil, err
			}
		}
	}
	if err := m.apply(); err != nil {
		return nil, err
	}
	if opts.File != "" && !opts.NoWatch {
		if err := m.watch(); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *Manager) layers() []layer {
	return []layer{
		{source: SourceDefault, p: &Policy{EnableSaga: Bool(false), SagaOperations: []string{}}},
		{source: SourceFile, detail: m.opts.File, p: m.file},
		{source: SourceEnv, p: m.env},
		{source: SourceAPI, p: m.api},
	}
}

// apply validates every layer and the result, then swaps the snapshot.
// m.mu held (or not yet shared).
func (m *Manager) apply() error { return m.applyThen(nil) }

// applyThen is apply with keep run after the validation and before the
// swap: an error from it leaves the snapshot as it was.
func (m *Manager) applyThen(keep func() error) error {
	var errs []error
	for _, l := range m.layers()[1:] {
		if l.p != nil {
			if err := l.p.Validate(l.source, m.opts.Registry); err != nil {
				errs = append(errs, err)
			}
		}
	}
	s := merge(m.version+1, m.layers())
	// An operation that can be switched on must have milestones.
	var missing []string
	for _, op := range s.switchable() {
		if s.ops[op] == nil || len(s.ops[op].Milestones) == 0 {
			missing = append(missing, fmt.Sprintf("operation %q is enabled but has no milestones in any source", op))
		}
	}
	if len(missing) > 0 {
		errs = append(errs, &ValidationError{Source: "merged policy", Problems: missing})
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	var kept error
	if keep != nil {
		if kept = keep(); kept != nil && !errors.Is(kept, ErrNotDurable) {
			return kept
		}
	}
	// ErrNotDurable: the file holds the new text already (the rename was
	// done), so the next start reads it: it is in force now too, and the
	// error says it may not survive a crash.
	m.version++
	m.snap.Store(s)
	return kept
}

// switchable lists every operation that some override or the base policy
// lists, when sagas can be on for it.
func (s *Snapshot) switchable() []string {
	set := map[string]bool{}
	if s.enabled {
		for op := range s.operations {
			set[op] = true
		}
	}
	for _, o := range []map[string]Override{s.users, s.tenants} {
		for _, ov := range o {
			if ov.EnableSaga != nil && !*ov.EnableSaga {
				continue
			}
			for _, op := range ov.SagaOperations {
				set[op] = true
			}
			if ov.EnableSaga != nil && *ov.EnableSaga && ov.SagaOperations == nil {
				for op := range s.operations {
					set[op] = true
				}
			}
		}
	}
	return sortedKeys(set)
}

// change runs f under the lock and applies the result, restoring the
// previous layers if the result is invalid or keep fails.
func (m *Manager) change(f func(), keep func() error) error {
	m.mu.Lock()
	file, env, api := m.file, m.env, m.api
	f()
	err := m.applyThen(keep)
	inForce := err == nil || errors.Is(err, ErrNotDurable)
	if !inForce {
		m.file, m.env, m.api = file, env, api
	}
	version := m.version
	m.mu.Unlock()
	if err != nil && inForce {
		m.changes.Add(1)
		m.opts.Logger.Warn("policy: change in force, but it may not survive a crash", "version", version, "err", err)
	} else if err != nil {
		m.rejected.Add(1)
		m.opts.Logger.Error("policy: change rejected; the previous policy stays in force", "version", version, "err", err)
	} else {
		m.changes.Add(1)
		m.opts.Logger.Info("policy: change in force", "version", version)
	}
	if m.opts.OnChange != nil {
		m.opts.OnChange(version, err)
	}
	return err
}

// Set replaces the API layer (the highest) with p; nil removes it. An
// invalid policy is rejected whole and changes nothing.
//
// With Options.APIFile, Set refuses (ErrAPIFile): the layer is kept as
// text, so use SetText.
func (m *Manager) Set(p *Policy) error {
	if m.opts.APIFile != "" {
		return fmt.Errorf("%w (%s)", ErrAPIFile, m.opts.APIFile)
	}
	p = p.clone() // the caller may reuse its maps and slices
	return m.change(func() { m.api = p }, nil)
}

// ErrAPIFile: Set of a Policy value on a Manager that keeps its API
// layer in Options.APIFile, which holds text.
var ErrAPIFile = errors.New("policy: the API layer is kept in a file: set it with SetText")

// ErrNotDurable: SetText replaced Options.APIFile but could not sync its
// directory. The new policy is in force (the file holds it, and the next
// start reads it), but a crash may bring the previous one back: set it
// again to make it durable.
var ErrNotDurable = errors.New("policy: the change is in force, but its file may not survive a crash")

// syncDir syncs a directory; a test replaces it.
var syncDir = func(d *os.File) error { return d.Sync() }

// SetText parses a policy document (the policy file's format; name labels
// its errors) and makes it the API layer, as Set does. With
// Options.APIFile the text is written there, synced, before the change is
// in force: a policy set this way survives a restart, and one that could
// not be written is not in force. An invalid policy, or one that could not
// be kept, changes nothing. The one exception: when the file was replaced
// but its directory could not be synced, the new policy is in force (the
// file holds it) and the error wraps ErrNotDurable.
func (m *Manager) SetText(name string, data []byte) error {
	p, err := Parse(name, data)
	if err != nil {
		return err
	}
	var keep func() error
	if m.opts.APIFile != "" {
		keep = func() error { return writeSynced(m.opts.APIFile, data) }
	}
	return m.change(func() { m.api = p }, keep)
}

// ClearAPI removes the API layer: the policy file and the environment
// alone are in force again. With Options.APIFile the file is removed, and
// its directory synced, before the change is in force. If what is left
// does not validate (a file layer that relied on the API layer), nothing
// changes. A directory sync that fails after the removal leaves the change
// in force with ErrNotDurable. Without an API layer it changes nothing.
func (m *Manager) ClearAPI() error {
	m.mu.Lock()
	had := m.api != nil
	m.mu.Unlock()
	var kept bool
	if m.opts.APIFile != "" {
		_, err := os.Stat(m.opts.APIFile)
		kept = err == nil
	}
	if !had && !kept {
		return nil
	}
	var keep func() error
	if m.opts.APIFile != "" {
		keep = func() error { return removeSynced(m.opts.APIFile) }
	}
	return m.change(func() { m.api = nil }, keep)
}

// removeSynced removes path, if it exists, and syncs its directory.
func removeSynced(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("policy: remove the API layer %s: %w", path, err)
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("%w: remove the API layer %s: %w", ErrNotDurable, path, err)
	}
	defer d.Close()
	if err := syncDir(d); err != nil {
		return fmt.Errorf("%w: remove the API layer %s: sync its directory: %w", ErrNotDurable, path, err)
	}
	return nil
}

// IsInvalid reports whether a Set, SetText or Reload error says the
// policy is invalid (a *ValidationError), rather than that it could not be
// read or kept.
func IsInvalid(err error) bool {
	var ve *ValidationError
	return errors.As(err, &ve)
}

// writeSynced replaces path with data atomically and durably: a
// temporary file in the same directory, synced, renamed over path, and
// the directory synced. A crash leaves the old content or the new.
func writeSynced(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("policy: keep the API layer: %w", err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o600)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("policy: keep the API layer in %s: %w", path, err)
	}
	// From here on path holds the new text: a failure says so.
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("%w: keep the API layer in %s: %w", ErrNotDurable, path, err)
	}
	defer d.Close()
	if err := syncDir(d); err != nil {
		return fmt.Errorf("%w: keep the API layer in %s: sync %s: %w", ErrNotDurable, path, dir, err)
	}
	return nil
}

// Reload re-reads the policy file. It is called by the watcher; call it
// yourself with NoWatch.
func (m *Manager) Reload() error {
	if m.opts.File == "" {
		return nil
	}
	m.reloadMu.Lock()
	defer m.reloadMu.Unlock()
	data, err := os.ReadFile(m.opts.File)
	var f *Policy
	if err == nil {
		if sha256.Sum256(data) == m.lastFile {
			return nil // unchanged (an event for another file, a touch)
		}
		f, err = Parse(m.opts.File, data)
	} else {
		err = fmt.Errorf("policy: read %s: %w", m.opts.File, err)
	}
	if err != nil {
		m.mu.Lock()
		version := m.version
		m.mu.Unlock()
		m.rejected.Add(1)
		m.opts.Logger.Error("policy: file change rejected; the previous policy stays in force", "file", m.opts.File, "version", version, "err", err)
		if m.opts.OnChange != nil {
			m.opts.OnChange(version, err)
		}
		return err
	}
	if err := m.change(func() { m.file = f }, nil); err != nil {
		return err
	}
	m.lastFile = sha256.Sum256(data)
	return nil
}

// Snapshot returns the policy in force. It never blocks.
func (m *Manager) Snapshot() *Snapshot { return m.snap.Load() }

// Explain says whether an operation runs as a saga for a user, and which
// source decided.
func (m *Manager) Explain(operation string, uc UserContext) Decision {
	return m.Snapshot().Explain(operation, uc)
}

// Stats returns counters since New.
func (m *Manager) Stats() Stats {
	return Stats{Changes: m.changes.Load(), Rejected: m.rejected.Load(), Fallbacks: m.fallbacks.Load()}
}

// debounce is how long the watched directory must be quiet before a
// reload: a writer that truncates and then writes is read once, whole.
const debounce = 100 * time.Millisecond

// watch reloads the file whenever it may have changed. The directory is
// watched and any event in it triggers a check of the file's content, so
// editors that rename a new file over the old one, and Kubernetes
// ConfigMap volumes that swap a symlink, are both seen.
func (m *Manager) watch() error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("policy: watch %s: %w", m.opts.File, err)
	}
	if err := w.Add(filepath.Dir(m.opts.File)); err != nil {
		w.Close()
		return fmt.Errorf("policy: watch %s: %w", m.opts.File, err)
	}
	m.watcher = w
	go func() {
		defer close(m.done)
		var timer *time.Timer
		var fire <-chan time.Time
		for {
			select {
			case _, ok := <-w.Events:
				if !ok {
					if timer != nil {
						timer.Stop()
					}
					return
				}
				if timer == nil {
					timer = time.NewTimer(debounce)
				} else {
					timer.Reset(debounce)
				}
				fire = timer.C
			case <-fire:
				fire = nil
				if _, err := os.Stat(m.opts.File); err == nil {
					_ = m.Reload() // rejections are counted, logged and reported by Reload
				}
			case err, ok := <-w.Errors:
				if !ok {
					return
				}
				m.opts.Logger.Warn("policy: file watcher error", "err", err)
			}
		}
	}()
	return nil
}

// Close stops watching the file.
func (m *Manager) Close() error {
	if m.watcher == nil {
		return nil
	}
	err := m.watcher.Close()
	<-m.done
	return err
}
