// Package python_test runs the Python client of examples/python against a
// real sagad process.
package python_test

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"
)

// python3 returns the interpreter, or fails the test loudly: the client
// is part of the product, and CI has python3. SAGA_SKIP_PYTHON=1 skips
// (for a machine without it, by explicit choice).
func python3(t *testing.T) string {
	t.Helper()
	if os.Getenv("SAGA_SKIP_PYTHON") == "1" {
		t.Skip("SAGA_SKIP_PYTHON=1: the Python client is not tested")
	}
	p, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("python3 is missing: the Python client's end-to-end test cannot run. " +
			"Install python3 (Debian: apt-get install -y python3), or set SAGA_SKIP_PYTHON=1 to skip it knowingly")
	}
	return p
}

// sagad builds cmd/sagad into a temporary directory and returns its path.
func sagad(t *testing.T, ctx context.Context) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "sagad")
	if runtime.GOOS == "windows" {
		bin += ".exe"
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/sagaengine/saga/cmd/sagad")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build sagad: %v\n%s", err, out)
	}
	return bin
}

// server is a running sagad process.
type server struct {
	cmd   *exec.Cmd
	url   string
	token string
}

var serving = regexp.MustCompile(`serving saga\.v1\.SagaService on (http://\S+)`)

// startSagad starts bin in dir with a token and waits, with ctx's
// deadline, for it to print its address. It is killed at the end of the
// test.
func startSagad(t *testing.T, ctx context.Context, bin, dir, token string, args ...string) *server {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"-listen", "127.0.0.1:0", "-data", filepath.Join(dir, "data")}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "SAGAD_TOKEN="+token)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if m := serving.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
		}
	}()
	select {
	case u := <-addr:
		return &server{cmd: cmd, url: u, token: token}
	case <-ctx.Done():
		t.Fatalf("sagad did not print its address: %v", ctx.Err())
		return nil
	}
}

// runPython runs a script of this directory against s and returns its
// output, failing the test if it fails.
func runPython(t *testing.T, ctx context.Context, py string, s *server, script string, env ...string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, py, script)
	cmd.Env = append(os.Environ(), append(env, "SAGAD_URL="+s.url, "SAGAD_TOKEN="+s.token, "PYTHONDONTWRITEBYTECODE=1")...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("python3 %s: %v\n%s", script, err, out)
	}
	return string(out)
}

// The seed's four calls, from Python with only the standard library:
// a journey that completes, one that fails and settles FAILED, a re-sent
// start answered from its key, and bad input refused with typed codes.
func TestPythonClientRunsTheSeedsFourCallsAgainstSagad(t *testing.T) {
	py := python3(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s := startSagad(t, ctx, sagad(t, ctx), t.TempDir(), "python-test-token-0123456789")
	out := runPython(t, ctx, py, s, "check_client.py")
	if !strings.Contains(out, "all checks passed") {
		t.Fatalf("the checks did not finish:\n%s", out)
	}
	t.Log(out)
}
