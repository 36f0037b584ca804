package main

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// --addr names something that answers 200 but is not the admin API (a web
// page, a proxy's login form): that is failing to reach the API (exit 4),
// not a usage error to be answered with --help.
func TestAReplyThatIsNotTheAPIsIsUnavailableNotUsage(t *testing.T) {
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		_, _ = w.Write([]byte("<html><body>Welcome</body></html>\n"))
	}))
	defer hs.Close()
	t.Setenv("SAGACTL_TOKEN", "0123456789abcdef-token")
	for _, cmd := range [][]string{{"status"}, {"list"}, {"show", "x"}, {"policy", "get"}, {"cluster", "status"}, {"retry", "x"}} {
		c, out, se := runCLI(append([]string{"--addr", hs.URL}, cmd...)...)
		if c != exitUnavailable || strings.Contains(se, "--help") {
			t.Errorf("sagactl %v against a web page: exit %d, want %d\n%s%s", cmd, c, exitUnavailable, out, se)
		}
	}
}

type brokenPipe struct{}

func (brokenPipe) Write([]byte) (int, error) { return 0, errors.New("write |1: broken pipe") }

// An error a command meets while it runs (here: its output cannot be
// written) is a failure (exit 1), not a usage error.
func TestAnErrorWhileRunningIsNoUsageError(t *testing.T) {
	dir := seedDir(t)
	for _, cmd := range [][]string{{"export"}, {"status", "-o", "json"}, {"wal", "dump"}} {
		var se strings.Builder
		if c := run(append([]string{"--dir", dir}, cmd...), brokenPipe{}, &se); c != exitFailed || strings.Contains(se.String(), "--help") {
			t.Errorf("sagactl %v into a broken pipe: exit %d, want %d\n%s", cmd, c, exitFailed, se.String())
		}
	}
}
