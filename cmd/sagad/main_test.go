package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// testToken is the single token the tests give sagad: as long as a
// token must be (auth.MinSecretBytes).
const testToken = "tok-0123456789abcdef"

// syncBuffer is a bytes.Buffer safe for the server's goroutine and the
// test's.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// serve runs sagad in the current directory with args and returns its
// address and stop, which stops it and returns what run returned (or an
// error if it did not stop within 30s). It is also stopped at the end of
// the test; an error there fails the test.
func serve(t *testing.T, env map[string]string, stdout io.Writer, args ...string) (addr string, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, append([]string{"-listen", "127.0.0.1:0"}, args...), func(k string) string { return env[k] },
			stdout, io.Discard, func(a string) { ready <- a })
	}()
	select {
	case addr = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("sagad stopped before serving: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("sagad did not serve within 30s")
	}
	var once sync.Once
	var stopErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case stopErr = <-done:
			case <-time.After(30 * time.Second):
				stopErr = errors.New("sagad did not stop within 30s")
			}
		})
		return stopErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	return addr, stop
}

// start is serve for a test that lets sagad run to its end; it returns
// what sagad wrote to stdout.
func start(t *testing.T, env map[string]string, args ...string) (addr string, stdout *syncBuffer) {
	t.Helper()
	stdout = &syncBuffer{}
	addr, _ = serve(t, env, stdout, args...)
	return addr, stdout
}

func post(t *testing.T, addr, token, method, body string) (int, string) {
	t.Helper()
	code, b, _ := request(t, "POST", "http://"+addr+"/saga.v1.SagaService/"+method, token, body)
	return code, b
}

// request sends method to url with token ("" for none) and body (JSON
// for a POST), within 30 s, and returns the status, the body and the
// response's headers.
func request(t *testing.T, method, url, token, body string) (int, string, http.Header) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if method == "POST" {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

// TestSagadStartsOnAFreshDirectory runs sagad as `sagad` alone would, in
// an empty working directory: it makes its data directory there, writes
// a token 0600 and prints its path, serves JSON with it and refuses calls
// without it; a restart keeps the token and the sagas.
func TestSagadStartsOnAFreshDirectory(t *testing.T) {
	t.Chdir(t.TempDir())
	addr, out := start(t, nil)
	path := filepath.Join("sagad-data", tokenFileName)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("no token file: %v\n%s", err, out)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode %v, want 0600", fi.Mode().Perm())
	}
	abs, _ := filepath.Abs(path)
	if !strings.Contains(out.String(), abs) {
		t.Fatalf("the token's path %s is not printed:\n%s", abs, out)
	}
	b, _ := os.ReadFile(path)
	token := strings.TrimSpace(string(b))
	if len(token) < 32 {
		t.Fatalf("token %q is short", token)
	}
	if code, body := post(t, addr, "", "Define", `{"definition":{"name":"order","steps":[{"name":"pay"}]}}`); code != http.StatusUnauthorized {
		t.Fatalf("without the token: %d %s", code, body)
	}
	if code, body := post(t, addr, token, "Define", `{"definition":{"name":"order","steps":[{"name":"pay"}]}}`); code != 200 {
		t.Fatalf("define: %d %s", code, body)
	}
	if code, body := post(t, addr, token, "Start", `{"definition":"order","id":"o-1"}`); code != 200 || !strings.Contains(body, `"id":"o-1"`) {
		t.Fatalf("start: %d %s", code, body)
	}
	if code, body := post(t, addr, token, "Advance", `{"sagaId":"o-1","step":"pay"}`); code != 200 || !strings.Contains(body, "SAGA_STATE_COMPLETED") {
		t.Fatalf("advance: %d %s", code, body)
	}
}

func TestSagadRestartKeepsTokenAndSagas(t *testing.T) {
	t.Chdir(t.TempDir())
	addr, stop := serve(t, nil, io.Discard)
	b, _ := os.ReadFile(filepath.Join("sagad-data", tokenFileName))
	token := strings.TrimSpace(string(b))
	post(t, addr, token, "Define", `{"definition":{"name":"order","steps":[{"name":"reserve"},{"name":"pay"}]}}`)
	if code, body := post(t, addr, token, "Start", `{"definition":"order","id":"o-1"}`); code != 200 {
		t.Fatalf("start: %d %s", code, body)
	}
	reserved := `{"sagaId":"o-1","step":"reserve","output":"cmVzLTE="}`
	if code, body := post(t, addr, token, "Advance", reserved); code != 200 {
		t.Fatalf("advance: %d %s", code, body)
	}
	if err := stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	addr, _ = start(t, nil)
	if code, body := post(t, addr, token, "Status", `{"sagaId":"o-1"}`); code != 200 || !strings.Contains(body, `"currentStep":"pay"`) {
		t.Fatalf("status after a restart with the first token: %d %s", code, body)
	}
	// A caller that lost the reply re-sends its result after the restart:
	// the saga is answered as it is.
	if code, body := post(t, addr, token, "Advance", reserved); code != 200 || !strings.Contains(body, `"currentStep":"pay"`) {
		t.Fatalf("the same result re-sent after a restart: %d %s", code, body)
	}
	if code, body := post(t, addr, token, "Advance", `{"sagaId":"o-1","step":"reserve","output":"b3RoZXI="}`); code != http.StatusBadRequest || !strings.Contains(body, "failed_precondition") {
		t.Fatalf("another result for a reported step: %d %s", code, body)
	}
}

func TestSagadTokenFromEnvOrFile(t *testing.T) {
	t.Chdir(t.TempDir())
	addr, out := start(t, map[string]string{TokenEnv: "from-env-token-0123456789"}, "-data", "d1")
	if code, body := post(t, addr, "from-env-token-0123456789", "Status", `{"sagaId":"x"}`); code != http.StatusNotFound {
		t.Fatalf("with the env token: %d %s", code, body)
	}
	if _, err := os.Stat(filepath.Join("d1", tokenFileName)); !os.IsNotExist(err) {
		t.Fatalf("a token file was written though the env had one: %v\n%s", err, out)
	}
	if err := os.WriteFile("tok", []byte("from-file-token-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr, _ = start(t, map[string]string{TokenEnv: "from-env-token-0123456789"}, "-data", "d2", "-token-file", "tok")
	if code, _ := post(t, addr, "from-file-token-0123456789", "Status", `{"sagaId":"x"}`); code != http.StatusNotFound {
		t.Fatalf("with the file's token: %d", code)
	}
	if code, _ := post(t, addr, "from-env-token-0123456789", "Status", `{"sagaId":"x"}`); code != http.StatusUnauthorized {
		t.Fatalf("the env token beside -token-file: %d, want 401", code)
	}
}

func TestSagadRefusesBadStarts(t *testing.T) {
	t.Chdir(t.TempDir())
	if err := os.WriteFile("empty", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"-listen", "0.0.0.0:0"},
		{"-listen", "192.0.2.1:7080"},
		{"-listen", "127.0.0.1:0", "-token-file", "missing"},
		{"-listen", "127.0.0.1:0", "-token-file", "empty"},
		{"-listen", "127.0.0.1:0", "extra"},
	} {
		if err := refused(t, args...); !errors.Is(err, errConfig) {
			t.Errorf("sagad %q: %v, want a bad configuration", args, err)
		}
	}
	if _, err := os.Stat("sagad-data"); !os.IsNotExist(err) {
		t.Errorf("a refused start made the data directory: %v", err)
	}
}

func TestSagadServesThePolicyFile(t *testing.T) {
	t.Chdir(t.TempDir())
	if err := os.WriteFile("policy.yaml", []byte("enable_saga: true\nsaga_operations: [checkout]\ncompensation_handlers:\n  checkout:\n    payment: refund\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr, _ := start(t, map[string]string{TokenEnv: testToken}, "-policy", "policy.yaml")
	code, body := post(t, addr, testToken, "ExplainPolicy", `{"operation":"checkout"}`)
	if code != 200 || !strings.Contains(body, `"saga":true`) {
		t.Fatalf("explain: %d %s", code, body)
	}
}

// TestSagadRefusedStartWritesNothing: a start refused after the flags
// (a bad policy file, a data directory another sagad holds) leaves every
// file as it was: no data directory made, no token generated.
func TestSagadRefusedStartWritesNothing(t *testing.T) {
	t.Chdir(t.TempDir())
	if err := os.WriteFile("bad.yaml", []byte("enable_saga: [not a bool\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := run(context.Background(), []string{"-listen", "127.0.0.1:0", "-policy", "bad.yaml"},
		func(string) string { return "" }, io.Discard, io.Discard, nil); err == nil {
		t.Fatal("sagad started with a bad policy file")
	}
	if _, err := os.Stat("sagad-data"); !os.IsNotExist(err) {
		t.Fatalf("a start refused for its policy file made the data directory: %v", err)
	}

	// A first sagad holds "held" with a token from the environment; a
	// second one without it is refused and must not write a token there.
	start(t, map[string]string{TokenEnv: testToken}, "-data", "held")
	if err := run(context.Background(), []string{"-listen", "127.0.0.1:0", "-data", "held"},
		func(string) string { return "" }, io.Discard, io.Discard, nil); err == nil {
		t.Fatal("a second sagad opened a held data directory")
	}
	if _, err := os.Stat(filepath.Join("held", tokenFileName)); !os.IsNotExist(err) {
		t.Fatalf("a start refused for a locked data directory wrote a token: %v", err)
	}
}

// A policy set through SetPolicy is kept in the data directory: after a
// restart it is still in force.
func TestSagadKeepsThePolicySetThroughTheAPIAcrossARestart(t *testing.T) {
	t.Chdir(t.TempDir())
	env := map[string]string{TokenEnv: testToken}
	t.Run("set", func(t *testing.T) {
		addr, _ := start(t, env)
		yaml := `enable_saga: true\nsaga_operations: [checkout]\ncompensation_handlers:\n  checkout:\n    payment: refund\n`
		if code, body := post(t, addr, testToken, "SetPolicy", `{"yaml":"`+yaml+`"}`); code != 200 {
			t.Fatalf("set policy: %d %s", code, body)
		}
	}) // sagad stops here
	addr, _ := start(t, env)
	code, body := post(t, addr, testToken, "ExplainPolicy", `{"operation":"checkout"}`)
	if code != 200 || !strings.Contains(body, `"saga":true`) {
		t.Fatalf("explain after a restart: %d %s", code, body)
	}
}

// A saved API layer that no longer validates refuses the start, naming
// the file and saying what it holds and how to go on, and changes it not.
func TestSagadNamesASavedAPIPolicyThatNoLongerValidates(t *testing.T) {
	t.Chdir(t.TempDir())
	write(t, "data/policy-api.yaml", "enable_saga: maybe\n")
	err := refused(t, "-listen", "127.0.0.1:0", "-data", "data")
	for _, want := range []string{"data/policy-api.yaml", "saved through the admin API", "remove it"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the refusal does not say %q:\n%v", want, err)
		}
	}
	if b, _ := os.ReadFile("data/policy-api.yaml"); string(b) != "enable_saga: maybe\n" {
		t.Fatalf("the refused start changed the file: %q", b)
	}
}

// adminURLOf is the admin server's URL, as sagad printed it.
func adminURLOf(t *testing.T, out *syncBuffer) string {
	t.Helper()
	for _, l := range strings.Split(out.String(), "\n") {
		if rest, ok := strings.CutPrefix(l, "sagad: admin API and /metrics on "); ok {
			return strings.TrimSuffix(strings.Fields(rest)[0], ",")
		}
	}
	t.Fatalf("sagad did not say where the admin API is:\n%s", out.String())
	return ""
}

// getWith GETs url with token ("" for none) and returns the status and
// the body.
func getWith(t *testing.T, url, token string) (int, string) {
	t.Helper()
	code, b, _ := request(t, "GET", url, token, "")
	return code, b
}

// With -admin, sagad serves /metrics, the admin API and the web console
// beside the service, with the same tokens: a request without one is
// refused.
func TestSagadServesMetricsTheAdminAPIAndTheConsole(t *testing.T) {
	t.Chdir(t.TempDir())
	addr, out := start(t, map[string]string{TokenEnv: "tok-0123456789abcdef"}, "-admin", "127.0.0.1:0")
	post(t, addr, "tok-0123456789abcdef", "Define", `{"definition":{"name":"order","steps":[{"name":"reserve"}]}}`)
	if code, body := post(t, addr, "tok-0123456789abcdef", "Start", `{"definition":"order"}`); code != 200 {
		t.Fatalf("start: %d %s", code, body)
	}
	adminURL := adminURLOf(t, out)
	get := func(path, token string) (int, string) { t.Helper(); return getWith(t, adminURL+path, token) }
	if code, body := get("/metrics", "tok-0123456789abcdef"); code != 200 || !strings.Contains(body, "saga_sagas_started_total") {
		t.Fatalf("/metrics: %d %.300s", code, body)
	}
	if code, _ := get("/metrics", ""); code != http.StatusUnauthorized {
		t.Fatalf("/metrics without a token: %d", code)
	}
	if code, body := get("/v1/sagas?state=IN_PROGRESS", "tok-0123456789abcdef"); code != 200 || !strings.Contains(body, `"definition":"order"`) {
		t.Fatalf("/v1/sagas: %d %.300s", code, body)
	}
	if code, body := get("/ui/login", ""); code != 200 || !strings.Contains(body, "<form") {
		t.Fatalf("the console's login page: %d %.300s", code, body)
	}
}
