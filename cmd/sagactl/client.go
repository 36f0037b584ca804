package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/sagaengine/saga/engine"
)

// client talks to the admin API.
type client struct {
	base  string
	token string
	http  *http.Client
}

func (g *globals) client() (*client, error) {
	token := strings.TrimSpace(os.Getenv("SAGACTL_TOKEN"))
	if g.tokenFile != "" {
		b, err := os.ReadFile(g.tokenFile)
		if err != nil {
			return nil, fail(exitUsage, fmt.Errorf("token file: %w", err), "")
		}
		token = strings.TrimSpace(string(b))
	}
	if token == "" {
		return nil, fail(exitUsage, errors.New("no admin API token"), "pass --token-file FILE or set SAGACTL_TOKEN")
	}
	c := &client{base: strings.TrimRight(g.addr, "/"), token: token, http: &http.Client{Timeout: 30 * time.Second}}
	if path, ok := strings.CutPrefix(g.addr, "unix:"); ok {
		c.base = "http://unix"
		c.http.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}}
	} else if !strings.HasPrefix(g.addr, "http://") && !strings.HasPrefix(g.addr, "https://") {
		c.base = "http://" + c.base
	}
	return c, nil
}

// do sends a request and decodes a JSON reply into out.
func (c *client) do(ctx context.Context, method, path string, body []byte, out any) error {
	resp, err := c.send(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fail(exitUnavailable, fmt.Errorf("the reply to %s %s is not the admin API's: %w", method, path, err),
			"is --addr the admin API of a running engine?")
	}
	return nil
}

func (c *client) send(ctx context.Context, method, path string, body []byte) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, bytes.NewReader(body))
	if err != nil {
		return nil, fail(exitUsage, err, "")
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fail(exitUnavailable, err, "is the engine running, and is --addr right?")
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	var e struct {
		Error string `json:"error"`
		Hint  string `json:"hint"`
	}
	data, _ := io.ReadAll(resp.Body)
	if json.Unmarshal(data, &e) != nil || e.Error == "" {
		e.Error = strings.TrimSpace(string(data))
	}
	code := exitFailed
	if resp.StatusCode == http.StatusUnauthorized {
		code = exitUnavailable
	}
	return nil, fail(code, fmt.Errorf("%s (HTTP %d)", e.Error, resp.StatusCode), e.Hint)
}

func query(kv ...string) string {
	v := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] != "" {
			v.Set(kv[i], kv[i+1])
		}
	}
	if len(v) == 0 {
		return ""
	}
	return "?" + v.Encode()
}

// fetch reads a reply from the running engine's admin API (GET path) when
// --addr is set, or builds it offline from the stopped engine in --dir; an
// offline failure carries hint.
func fetch[T any](g *globals, ctx context.Context, path string, build func(*engine.Engine) (*T, error), hint string) (*T, error) {
	if g.online() {
		c, err := g.client()
		if err != nil {
			return nil, err
		}
		rep := new(T)
		if err := c.do(ctx, "GET", path, nil, rep); err != nil {
			return nil, err
		}
		return rep, nil
	}
	e, err := g.openOffline()
	if err != nil {
		return nil, err
	}
	defer e.Close()
	rep, err := build(e)
	if err != nil {
		return nil, fail(exitFailed, err, hint)
	}
	return rep, nil
}
