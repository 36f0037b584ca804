package admin

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// A client without the token that announces a large body and trickles it
// is answered 401 at once, and the server closes the connection instead of
// waiting for the body.
func TestUnauthenticatedRequestIsAnsweredWithoutReadingItsBody(t *testing.T) {
	e, obs, _ := fixture(t)
	srv, err := New(e, obs, Options{Addr: "127.0.0.1:0", Token: token, Logger: quiet})
	must(t, err)
	must(t, srv.Start())
	defer srv.Close()
	conn, err := net.Dial("tcp", srv.Addr())
	must(t, err)
	defer conn.Close()
	must(t, conn.SetDeadline(time.Now().Add(20*time.Second))) // fails, never hangs
	_, err = io.WriteString(conn, "POST /v1/sagas/x/retry HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n{")
	must(t, err)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer before the body arrived: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("status %d, want 401", resp.StatusCode)
	}
	// The server hangs up rather than wait for the other 99999 bytes.
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("after the 401 the connection stays open (read: %v)", err)
	}
}

func TestServerBoundsEveryRequest(t *testing.T) {
	e, obs, _ := fixture(t)
	srv, err := New(e, obs, Options{Token: token, Logger: quiet})
	must(t, err)
	if srv.srv.ReadTimeout <= 0 || srv.srv.WriteTimeout <= 0 || srv.srv.IdleTimeout <= 0 || srv.srv.MaxHeaderBytes <= 0 {
		t.Fatalf("unbounded server: %+v", srv.srv)
	}
}

func TestWrongMethodWithTokenIs405(t *testing.T) {
	_, _, h := fixture(t)
	rec := call(h, "DELETE", "/v1/status", "Bearer "+token, "")
	if rec.Code != http.StatusMethodNotAllowed || !strings.Contains(rec.Header().Get("Allow"), "GET") {
		t.Fatalf("DELETE /v1/status: %d (Allow %q) %s, want 405", rec.Code, rec.Header().Get("Allow"), rec.Body)
	}
	if rec := call(h, "GET", "/v1/nowhere", "Bearer "+token, ""); rec.Code != http.StatusNotFound {
		t.Fatalf("GET /v1/nowhere: %d, want 404", rec.Code)
	}
	if rec := call(h, "DELETE", "/v1/status", "", ""); rec.Code != http.StatusUnauthorized {
		t.Fatalf("DELETE /v1/status without a token: %d, want 401", rec.Code)
	}
}
