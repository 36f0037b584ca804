package admin

import (
	"bufio"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/engine"

	"github.com/sagaengine/saga/internal/testctx"
)

func listeningServer(t *testing.T, addr string) (*engine.Engine, *Server) {
	reg := compensation.NewRegistry()
	must(t, reg.Register("undo", func(context.Context, compensation.Call) error { return nil }))
	obs := NewObserver()
	e, err := engine.Open(t.TempDir(), engine.Options{Registry: reg, Logger: quiet, Hooks: obs.Hooks()})
	must(t, err)
	t.Cleanup(func() { e.Close() })
	srv, err := New(e, obs, Options{Addr: addr, Token: token, Logger: quiet})
	must(t, err)
	return e, srv
}

// Server.Close ends watch streams promptly.
func TestCloseEndsWatchStreams(t *testing.T) {
	_, srv := listeningServer(t, "127.0.0.1:0")
	must(t, srv.Start())
	req, _ := http.NewRequestWithContext(testctx.New(t), "GET", "http://"+srv.Addr()+"/v1/watch", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	must(t, err)
	defer resp.Body.Close()
	t0 := time.Now()
	err = srv.Close()
	if d := time.Since(t0); err != nil || d > 4*time.Second {
		t.Errorf("Close took %v: %v", d, err)
	}
	done := make(chan struct{})
	go func() { bufio.NewReader(resp.Body).ReadString('\n'); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Errorf("watch stream still open 2s after Server.Close (Close err: %v)", err)
	}
}

// Start removes a stale socket at its path, never another file.
func TestUnixSocketNeverRemovesAFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "important.db")
	must(t, os.WriteFile(p, []byte("precious"), 0o600))
	_, srv := listeningServer(t, "unix:"+p)
	err := srv.Start()
	if err == nil {
		defer srv.Close()
	}
	if b, _ := os.ReadFile(p); string(b) != "precious" {
		t.Errorf("admin.Start removed the regular file %s (start err %v)", p, err)
	}
}

// The unix socket is its owner's alone (0600), set on the socket: the
// process's umask, shared with the engine's files, is never changed.
func TestUnixSocketIsTheOwnersAloneAndTheUmaskStays(t *testing.T) {
	p := filepath.Join(t.TempDir(), "admin.sock")
	before := syscall.Umask(0o022)
	syscall.Umask(before)
	_, srv := listeningServer(t, "unix:"+p)
	must(t, srv.Start())
	defer srv.Close()
	fi, err := os.Stat(p)
	must(t, err)
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("the socket's mode is %v, want a socket of 0600", fi.Mode())
	}
	if now := syscall.Umask(before); now != before {
		t.Errorf("the umask is %#o after Start, was %#o", now, before)
	}
}
