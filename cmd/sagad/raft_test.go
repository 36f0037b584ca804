package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sagaengine/saga/engine"
)

// freeAddrs returns n distinct loopback addresses that were free a moment
// ago: all n listeners are held until every port is known, so that no
// two are the same port.
func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().String())
	}
	for _, ln := range lns {
		ln.Close()
	}
	return out
}

// call posts a JSON body to a method of the service at url and returns
// the status, the body and the response's headers.
func call(t *testing.T, url, token, method, body string) (int, string, http.Header) {
	t.Helper()
	return request(t, "POST", url+"/saga.v1.SagaService/"+method, token, body)
}

// Three sagad members form a raft group from their config files. The
// leader takes the calls that change sagas; a follower refuses them with
// unavailable and the leader's API URL in Saga-Leader, having changed
// nothing, and serves reads from its replicated state.
func TestSagadRaftGroupFollowersNameTheLeader(t *testing.T) {
	const token = "tok-raft-0123456789abcdef"
	root := t.TempDir()
	// One call: the ports of a first call are free again once it returns,
	// and a second could be given one of them.
	addrs := freeAddrs(t, 6)
	raftAddrs, apiAddrs := addrs[:3], addrs[3:]
	var peers strings.Builder
	for i := range 3 {
		fmt.Fprintf(&peers, "    - {id: n%d, raft: %q, api: \"http://%s\"}\n", i, raftAddrs[i], apiAddrs[i])
	}
	urls := make([]string, 3)
	for i := range 3 {
		cfg := filepath.Join(root, fmt.Sprintf("n%d.yaml", i))
		body := fmt.Sprintf("raft:\n  id: n%d\n  bind: %q\n  bootstrap: true\n  heartbeat: 500ms\n  election: 500ms\n  peers:\n%s",
			i, raftAddrs[i], peers.String())
		if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		addr, _ := start(t, map[string]string{TokenEnv: token}, "-listen", apiAddrs[i], "-config", cfg,
			"-data", filepath.Join(root, fmt.Sprintf("data%d", i)))
		urls[i] = "http://" + addr
	}
	def := `{"definition":{"name":"order","steps":[{"name":"reserve"},{"name":"pay"}]}}`
	leader := -1
	deadline := time.Now().Add(time.Minute)
	for leader < 0 {
		for i, u := range urls {
			if code, _, _ := call(t, u, token, "Define", def); code == 200 {
				leader = i
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no member took the definition within a minute: no leader")
		}
		time.Sleep(50 * time.Millisecond)
	}
	follower := (leader + 1) % 3
	code, body, h := call(t, urls[follower], token, "Start", `{"definition":"order","id":"o-1"}`)
	if code != http.StatusServiceUnavailable || !strings.Contains(body, `"unavailable"`) {
		t.Fatalf("a start on a follower: %d %s", code, body)
	}
	if got := h.Get("Saga-Leader"); got != urls[leader] {
		t.Fatalf("a follower names %q as the leader, want %q (its API URL)", got, urls[leader])
	}
	if code, body, _ := call(t, urls[follower], token, "Status", `{"sagaId":"o-1"}`); code != http.StatusNotFound {
		t.Fatalf("a refused start changed something: %d %s", code, body)
	}
	if code, body, _ := call(t, urls[leader], token, "Start", `{"definition":"order","id":"o-1"}`); code != 200 {
		t.Fatalf("a start on the leader: %d %s", code, body)
	}
	for {
		code, body, _ := call(t, urls[follower], token, "Status", `{"sagaId":"o-1"}`)
		if code == 200 && strings.Contains(body, `"currentStep":"reserve"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the follower never saw the saga: %d %s", code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A member whose data directory another sagad holds is refused before
// its raft node opens that directory's live raft log (and its address).
func TestSagadRaftRefusesAHeldDataDirectoryBeforeRaft(t *testing.T) {
	t.Chdir(t.TempDir())
	raft := freeAddrs(t, 1)[0]
	write(t, "n0.yaml", fmt.Sprintf("raft:\n  id: n0\n  bind: %q\n  bootstrap: true\n  peers:\n    - {id: n0, raft: %q}\n", raft, raft))
	start(t, map[string]string{TokenEnv: testToken}, "-config", "n0.yaml")
	if err := refused(t, "-listen", "127.0.0.1:0", "-config", "n0.yaml"); !errors.Is(err, engine.ErrLocked) {
		t.Fatalf("a second member on a held data directory: %v, want engine.ErrLocked", err)
	}
}

// A raft address already in use refuses the start with an error (it
// used to panic while closing the transport that was never made), and
// before the data directory is made.
func TestSagadRaftRefusesABindInUse(t *testing.T) {
	t.Chdir(t.TempDir())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	raft := ln.Addr().String()
	write(t, "n0.yaml", fmt.Sprintf("raft:\n  id: n0\n  bind: %q\n  bootstrap: true\n  peers:\n    - {id: n0, raft: %q}\n", raft, raft))
	if err := refused(t, "-listen", "127.0.0.1:0", "-config", "n0.yaml"); !strings.Contains(err.Error(), "raft") {
		t.Fatalf("a raft bind in use: %v", err)
	}
	if _, err := os.Stat("sagad-data"); !os.IsNotExist(err) {
		t.Errorf("a refused start made the data directory: %v", err)
	}
}

// What the raft node would refuse is a bad configuration, refused with
// the rest before anything listens or is written.
func TestSagadRaftTimingsTheNodeRefusesAreABadConfiguration(t *testing.T) {
	t.Chdir(t.TempDir())
	for _, timing := range []string{"heartbeat: 1ms", "heartbeat: 500ms\n  election: 100ms"} {
		write(t, "n0.yaml", "raft:\n  id: n0\n  bind: 127.0.0.1:0\n  "+timing+"\n")
		if err := refused(t, "-listen", "127.0.0.1:0", "-config", "n0.yaml"); !errors.Is(err, errConfig) {
			t.Errorf("raft %q: %v, want a bad configuration", timing, err)
		}
	}
	if _, err := os.Stat("sagad-data"); !os.IsNotExist(err) {
		t.Errorf("a refused start made the data directory: %v", err)
	}
}
