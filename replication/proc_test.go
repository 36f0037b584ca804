package replication_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/sagaengine/saga/admin"
	"github.com/sagaengine/saga/replication/internal/testcerts"
)

// The multi-process failover test: three members of examples/cluster run
// as real processes on loopback ports, with mutual TLS between them, and
// the leader runs a workload of order sagas (a third of them fail at
// "inventory" and are compensated: payment, then order). Again and again
// the test SIGKILLs whichever member leads, waits until a new leader
// acknowledges a saga started after the kill, and restarts the killed
// member on its directories. Then it stops the workload, lets the group
// settle and checks, against what the workload saw acknowledged (its
// acks files) and what the compensations did (their shared journal):
//
//	(a) every acknowledged start is on every member, COMPLETED (ok input)
//	    or FAILED (fail input); a refused start is on none; every saga a
//	    member holds was started by the workload; nothing is left running;
//	(b) every FAILED saga's compensations ran payment, then order
//	    (duplicates allowed: compensations are at least once), and no
//	    compensation ran for a step that never completed or a saga that
//	    did not fail;
//	(c) after a clean shutdown the three members applied the same commands
//	    to the same state (command index and state hash);
//	(d) the client-observed history is linearizable (porcupine, see
//	    sagaModel).
//
// SAGA_CLUSTER_KILLS sets the number of kills (default 3), SAGA_CLUSTER_SEED
// the seed of the random pauses. The members are built with the race
// detector when the test is. `make cluster-torture` runs 30 kills.

const (
	procToken   = "proc-test-admin-token-0123456789"
	procWorkers = 6
)

func TestClusterProcessesSurviveLeaderKills(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test: skipped in -short mode")
	}
	kills := 3
	if s := os.Getenv("SAGA_CLUSTER_KILLS"); s != "" {
		var err error
		if kills, err = strconv.Atoi(s); err != nil || kills < 0 {
			t.Fatalf("SAGA_CLUSTER_KILLS=%q: want a number", s)
		}
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("SAGA_CLUSTER_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("cluster test: %d kills, seed %d (rerun with SAGA_CLUSTER_SEED=%d)", kills, seed, seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	c := newProcCluster(t, rng)
	defer func() {
		if t.Failed() {
			c.dumpLogs()
			fmt.Printf("CLUSTER TEST FAILED: rerun with SAGA_CLUSTER_SEED=%d SAGA_CLUSTER_KILLS=%d; data kept in %s\n", seed, kills, c.root)
		}
	}()
	began := time.Now()

	for _, m := range c.members {
		c.start(m, true)
	}
	c.waitStart(0, "the first leader")
	for k := range kills {
		time.Sleep(time.Duration(200+rng.IntN(600)) * time.Millisecond)
		l := c.leader()
		killed := time.Now().UnixNano()
		c.kill(l)
		c.waitStart(killed, fmt.Sprintf("a new leader after kill %d of %s", k+1, l.id))
		// Sometimes the group moves on for a while without it: it may
		// then have to install a snapshot.
		if rng.IntN(2) == 0 {
			time.Sleep(time.Duration(rng.IntN(1000)) * time.Millisecond)
		}
		c.start(l, true)
	}
	t.Logf("%d kills in %v", kills, time.Since(began).Round(time.Millisecond))

	// Stop the workload (a clean shutdown records every outcome in
	// flight), restart without it, and let the new leader finish every
	// saga.
	c.stopAll()
	for _, m := range c.members {
		c.start(m, false)
	}
	final := c.settle()
	l := c.leader()
	reads := c.readAll(l)
	c.stopAll()

	acks := c.readAcks()
	c.checkSagas(acks, final)
	c.checkJournal(acks, final)
	c.checkHashes()
	c.checkLinearizable(acks, reads, seed)
	c.checkLogs()
	if c.failed > 0 {
		t.Errorf("%d failed checks", c.failed)
	}
	t.Logf("total %v", time.Since(began).Round(time.Millisecond))
}

// procMember is one member process.
type procMember struct {
	id, dir, raft, admin string
	cmd                  *exec.Cmd
	done                 chan struct{} // closed when the process has exited
	state                *os.ProcessState
}

func (m *procMember) running() bool {
	if m.cmd == nil {
		return false
	}
	select {
	case <-m.done:
		return false
	default:
		return true
	}
}

type procCluster struct {
	t       *testing.T
	bin     string
	root    string
	tlsArgs map[string][]string
	peers   string
	members []*procMember
	http    *http.Client
	// acksRead is how far waitStart has read each acks file, and
	// lastStart the latest call time of an acknowledged start in them.
	acksRead  map[string]int
	lastStart int64
	failed    int // checks failed, reported by errorf
}

// errorf reports a failed check; after the first 20 it only counts.
func (c *procCluster) errorf(format string, args ...any) {
	c.t.Helper()
	c.failed++
	switch {
	case c.failed <= 20:
		c.t.Errorf(format, args...)
	case c.failed == 21:
		c.t.Errorf("(further failed checks are counted, not shown)")
	}
}

func newProcCluster(t *testing.T, rng *rand.Rand) *procCluster {
	t.Helper()
	root, err := os.MkdirTemp("", "saga-cluster-")
	must(t, err)
	c := &procCluster{t: t, root: root, tlsArgs: map[string][]string{}, acksRead: map[string]int{}, http: &http.Client{Timeout: 15 * time.Second}}
	t.Cleanup(func() {
		for _, m := range c.members {
			if m.running() {
				_ = m.cmd.Process.Signal(syscall.SIGKILL)
				<-m.done
			}
		}
		if !t.Failed() {
			os.RemoveAll(root)
		}
	})
	c.bin = buildCluster(t, root)
	certDir := filepath.Join(root, "certs")
	must(t, os.Mkdir(certDir, 0o750))
	ids := []string{"n1", "n2", "n3"}
	ca, certs, err := testcerts.Generate(certDir, ids...)
	must(t, err)
	ports := freePorts(t, rng, 2*len(ids))
	var peers []string
	for i, id := range ids {
		m := &procMember{id: id, dir: filepath.Join(root, id), raft: ports[2*i], admin: ports[2*i+1]}
		c.members = append(c.members, m)
		c.tlsArgs[id] = []string{"-tls-cert", certs[id][0], "-tls-key", certs[id][1], "-tls-ca", ca}
		peers = append(peers, id+"="+m.raft)
	}
	c.peers = strings.Join(peers, ",")
	return c
}

// buildCluster builds examples/cluster once for the test.
func buildCluster(t *testing.T, dir string) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command builds the members: %v", err)
	}
	bin := filepath.Join(dir, "cluster")
	args := []string{"build", "-o", bin}
	if raceEnabled() {
		// The members run under the race detector when the test does
		// (and share its compiled packages).
		args = append(args, "-race")
	}
	start := time.Now()
	out, err := exec.Command(goBin, append(args, "github.com/sagaengine/saga/examples/cluster")...).CombinedOutput()
	if err != nil {
		t.Fatalf("go build examples/cluster: %v\n%s", err, out)
	}
	t.Logf("built examples/cluster in %v", time.Since(start).Round(time.Millisecond))
	return bin
}

func raceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// freePorts returns n loopback addresses whose ports are free now. They
// are taken below the kernel's ephemeral range when it leaves room, so
// that no outgoing connection takes one while its member is down.
func freePorts(t *testing.T, rng *rand.Rand, n int) []string {
	t.Helper()
	lo := 0
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		fmt.Sscan(string(b), &lo)
	}
	var lns []net.Listener
	var addrs []string
	for tries := 0; len(lns) < n; tries++ {
		addr := "127.0.0.1:0"
		if lo > 12000 && tries < 1000 {
			addr = fmt.Sprintf("127.0.0.1:%d", 10000+rng.IntN(lo-10000))
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		lns = append(lns, ln)
		addrs = append(addrs, ln.Addr().String())
	}
	for _, ln := range lns {
		ln.Close()
	}
	return addrs
}

func (c *procCluster) file(name string) string { return filepath.Join(c.root, name) }

// start starts (or restarts) a member on its directories and waits until
// it has joined (its role file appears).
func (c *procCluster) start(m *procMember, workload bool) {
	c.t.Helper()
	os.Remove(filepath.Join(m.dir, "role")) // left by its previous life
	args := []string{"-id", m.id, "-dir", m.dir, "-raft", m.raft, "-admin", m.admin,
		"-acks", c.file("acks-" + m.id), "-compensation-journal", c.file("journal"), "-hash-file", c.file("hash-" + m.id),
		// Fast failover, and snapshots with log compaction often enough
		// that a restarted member may have to install one.
		"-heartbeat", "100ms", "-election", "100ms",
		"-snapshot-threshold", "256", "-snapshot-interval", "200ms", "-trailing-logs", "32", "-log-segment", "16384",
	}
	args = append(args, c.tlsArgs[m.id]...)
	if m.id == "n1" {
		args = append(args, "-bootstrap", "-peers", c.peers) // ignored once it has raft state
	}
	if workload {
		args = append(args, "-workload", strconv.Itoa(procWorkers))
	}
	for attempt := 1; ; attempt++ {
		if c.launch(m, args) {
			return
		}
		// Its port was taken while it was down (by another process on
		// this machine): wait for it to be released.
		if attempt == 20 {
			c.t.Fatalf("member %s: its ports stayed taken", m.id)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// launch runs the member's process and waits until it has joined (its
// role file appears). It returns false if the process exited because an
// address was in use, and fails the test if it exited for another reason.
func (c *procCluster) launch(m *procMember, args []string) bool {
	c.t.Helper()
	name := c.file(m.id + ".log")
	logf, err := os.OpenFile(name, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	must(c.t, err)
	fmt.Fprintf(logf, "=== %s start %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(args, " "))
	from, err := logf.Seek(0, io.SeekCurrent)
	must(c.t, err)
	cmd := exec.Command(c.bin, args...)
	cmd.Env = append(os.Environ(), "SAGA_ADMIN_TOKEN="+procToken)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		c.t.Fatalf("start %s: %v", m.id, err)
	}
	done := make(chan struct{})
	m.cmd, m.done, m.state = cmd, done, nil
	go func() {
		_ = cmd.Wait()
		m.state = cmd.ProcessState
		logf.Close()
		close(done)
	}()
	joined := false
	c.waitFor(30*time.Second, m.id+" to join", func() bool {
		if !m.running() {
			return true
		}
		_, err := os.Stat(filepath.Join(m.dir, "role"))
		joined = err == nil
		return joined
	})
	if joined {
		return true
	}
	b, _ := os.ReadFile(name)
	out := string(b[min(int(from), len(b)):])
	if strings.Contains(out, "address already in use") {
		c.t.Logf("member %s: address in use; trying again", m.id)
		return false
	}
	c.t.Fatalf("member %s exited at start (%v):\n%s", m.id, m.state, out)
	return false
}

// kill SIGKILLs a member.
func (c *procCluster) kill(m *procMember) {
	c.t.Logf("SIGKILL %s", m.id)
	_ = m.cmd.Process.Signal(syscall.SIGKILL)
	<-m.done
}

// stopAll sends SIGTERM to every member at once and expects each to shut
// down cleanly (exit 0), writing its hash file.
func (c *procCluster) stopAll() {
	c.t.Helper()
	for _, m := range c.members {
		os.Remove(c.file("hash-" + m.id))
		_ = m.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, m := range c.members {
		select {
		case <-m.done:
		case <-time.After(60 * time.Second):
			_ = m.cmd.Process.Signal(syscall.SIGKILL)
			<-m.done
			c.t.Fatalf("member %s did not shut down within 60s of SIGTERM", m.id)
		}
		if !m.state.Success() {
			c.t.Fatalf("member %s: unclean shutdown: %v", m.id, m.state)
		}
	}
}

func (c *procCluster) waitFor(limit time.Duration, what string, ok func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(limit)
	for !ok() {
		if time.Now().After(deadline) {
			c.t.Fatalf("waited %v for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// leader waits for a running member whose role file says it leads, in a
// term no running member has gone past.
func (c *procCluster) leader() *procMember {
	c.t.Helper()
	var l *procMember
	c.waitFor(60*time.Second, "a leader", func() bool {
		l = nil
		best, maxTerm := -1, -1
		for _, m := range c.members {
			if !m.running() {
				continue
			}
			b, err := os.ReadFile(filepath.Join(m.dir, "role"))
			if err != nil {
				continue
			}
			var role string
			var term int
			if _, err := fmt.Sscanf(string(b), "%s %d", &role, &term); err != nil {
				continue
			}
			maxTerm = max(maxTerm, term)
			if role == "leader" && term > best {
				l, best = m, term
			}
		}
		return l != nil && best == maxTerm
	})
	return l
}

// waitStart waits until some member's workload has a start acknowledged
// that it invoked after the time after (unix ns).
func (c *procCluster) waitStart(after int64, who string) {
	c.t.Helper()
	c.waitFor(60*time.Second, "an acknowledged start by "+who, func() bool {
		for _, m := range c.members {
			// Read only what was appended since the last look.
			name := c.file("acks-" + m.id)
			b, _ := os.ReadFile(name)
			b = b[min(c.acksRead[name], len(b)):]
			n := strings.LastIndexByte(string(b), '\n') + 1
			c.acksRead[name] += n
			for _, line := range strings.Split(string(b[:n]), "\n") {
				var id, kind string
				var call, ret int64
				if k, _ := fmt.Sscanf(line, "start %s %s %d %d", &id, &kind, &call, &ret); k == 4 {
					c.lastStart = max(c.lastStart, call)
				}
			}
		}
		return c.lastStart > after
	})
}

// get fetches an admin API path from a member, retrying while the member
// or the machine is slow; it returns the HTTP status.
func (c *procCluster) get(m *procMember, path string, out any) int {
	c.t.Helper()
	var last error
	for range 40 {
		req, _ := http.NewRequest(http.MethodGet, "http://"+m.admin+path, nil)
		req.Header.Set("Authorization", "Bearer "+procToken)
		resp, err := c.http.Do(req)
		if err == nil {
			body, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			switch {
			case rerr != nil:
				err = rerr
			case resp.StatusCode == http.StatusOK:
				must(c.t, json.Unmarshal(body, out))
				return resp.StatusCode
			case resp.StatusCode == http.StatusNotFound:
				return resp.StatusCode
			default:
				err = fmt.Errorf("%s: %s", resp.Status, body)
			}
		}
		last = err
		time.Sleep(250 * time.Millisecond)
	}
	c.t.Fatalf("admin API of %s, GET %s: %v", m.id, path, last)
	return 0
}

// list returns every saga a member holds.
func (c *procCluster) list(m *procMember, state string) map[string]admin.SagaJSON {
	c.t.Helper()
	out := map[string]admin.SagaJSON{}
	after := ""
	for {
		q := url.Values{"limit": {"10000"}, "after": {after}}
		if state != "" {
			q.Set("state", state)
		}
		var page admin.ListReply
		if code := c.get(m, "/v1/sagas?"+q.Encode(), &page); code != http.StatusOK {
			c.t.Fatalf("list sagas on %s: HTTP %d", m.id, code)
		}
		for _, s := range page.Sagas {
			out[s.ID] = s
		}
		if page.Next == "" {
			return out
		}
		after = page.Next
	}
}

// settle waits until every member holds the same sagas, none of them
// IN_PROGRESS, COMPENSATING or STUCK, and returns them.
func (c *procCluster) settle() map[string]admin.SagaJSON {
	c.t.Helper()
	var lists []map[string]admin.SagaJSON
	var why string
	deadline := time.Now().Add(120 * time.Second)
	for {
		why = ""
		for _, m := range c.members {
			for _, st := range []string{"IN_PROGRESS", "COMPENSATING", "STUCK"} {
				if n := len(c.list(m, st)); n > 0 && why == "" {
					why = fmt.Sprintf("%s has %d sagas %s", m.id, n, st)
				}
			}
		}
		if why == "" {
			lists = lists[:0]
			for _, m := range c.members {
				lists = append(lists, c.list(m, ""))
			}
			for i := 1; i < len(lists) && why == ""; i++ {
				if len(lists[i]) != len(lists[0]) {
					why = fmt.Sprintf("%s holds %d sagas, %s %d", c.members[i].id, len(lists[i]), c.members[0].id, len(lists[0]))
				}
				for id, s := range lists[0] {
					if o, ok := lists[i][id]; why == "" && (!ok || o.State != s.State) {
						why = fmt.Sprintf("saga %s: %s on %s, %q on %s", id, s.State, c.members[0].id, o.State, c.members[i].id)
					}
				}
			}
		}
		if why == "" {
			return lists[0]
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("the group did not settle within 120s: %s", why)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// procRead is one read of every saga from a member: the sagas it held,
// read between call and ret (unix ns).
type procRead struct {
	call, ret int64
	sagas     map[string]admin.SagaJSON
}

func (c *procCluster) readAll(m *procMember) procRead {
	r := procRead{call: time.Now().UnixNano()}
	r.sagas = c.list(m, "")
	r.ret = time.Now().UnixNano()
	return r
}

// procSaga is what the workload saw of one saga.
type procSaga struct {
	member, kind string // kind: ok or fail (the input)
	call         int64
	outcome      string // start, unknown, refused; "" if the process died first
	ret          int64
	settled      string // the state Run returned, if it did
	settledRet   int64
}

// readAcks parses every member's acks file.
func (c *procCluster) readAcks() map[string]*procSaga {
	c.t.Helper()
	sagas := map[string]*procSaga{}
	for _, m := range c.members {
		name := c.file("acks-" + m.id)
		b, err := os.ReadFile(name)
		must(c.t, err)
		sc := bufio.NewScanner(strings.NewReader(string(b)))
		for sc.Scan() {
			line := sc.Text()
			f := strings.Fields(line)
			bad := func() { c.t.Fatalf("%s: bad line %q", name, line) }
			if len(f) < 3 {
				bad()
			}
			id := f[1]
			s := sagas[id]
			if f[0] != "call" && (s == nil || s.member != m.id) {
				c.t.Fatalf("%s: %q: no call of saga %s before it", name, line, id)
			}
			num := func(i int) int64 {
				if i >= len(f) {
					bad()
				}
				v, err := strconv.ParseInt(f[i], 10, 64)
				if err != nil {
					bad()
				}
				return v
			}
			switch f[0] {
			case "call":
				if s != nil {
					c.t.Fatalf("%s: saga %s called twice", name, id)
				}
				sagas[id] = &procSaga{member: m.id, kind: f[2], call: num(3)}
			case "start":
				s.outcome, s.ret = "start", num(4)
			case "unknown", "refused":
				s.outcome, s.ret = f[0], num(3)
			case "settled":
				s.settled, s.settledRet = f[2], num(4)
			default:
				bad()
			}
		}
	}
	return sagas
}

// checkSagas is check (a).
func (c *procCluster) checkSagas(acks map[string]*procSaga, final map[string]admin.SagaJSON) {
	c.t.Helper()
	want := map[string]string{"ok": "COMPLETED", "fail": "FAILED"}
	counts := map[string]int{}
	for id, s := range acks {
		counts[s.outcome]++
		st, ok := final[id]
		switch {
		case s.outcome == "refused" && ok:
			c.errorf("saga %s: its start was refused (nothing applied), but the members hold it %s", id, st.State)
		case s.outcome == "start" && !ok:
			c.errorf("saga %s: its start was acknowledged, but the members do not hold it (lost write)", id)
		case ok && st.State != want[s.kind]:
			c.errorf("saga %s (input %s, %s): %s, want %s", id, s.kind, s.outcome, st.State, want[s.kind])
		}
		if s.settled != "" && s.settled != st.State {
			c.errorf("saga %s: Run returned it %s, the members hold it %q", id, s.settled, st.State)
		}
	}
	for id := range final {
		if acks[id] == nil {
			c.errorf("saga %s is held by the members but the workload never called it", id)
		}
	}
	c.t.Logf("%d sagas called: %d started, %d unknown, %d refused, %d cut by a kill; %d held by the members",
		len(acks), counts["start"], counts["unknown"], counts["refused"], counts[""], len(final))
	if counts["start"] == 0 {
		c.t.Fatal("no start was acknowledged: the test exercised nothing")
	}
}

// checkJournal is check (b).
func (c *procCluster) checkJournal(acks map[string]*procSaga, final map[string]admin.SagaJSON) {
	c.t.Helper()
	b, err := os.ReadFile(c.file("journal"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		c.t.Fatal(err)
	}
	undone := map[string][]string{} // saga → steps compensated, in journal order
	lines := 0
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 {
			c.t.Fatalf("journal: bad line %q", line)
		}
		undone[f[1]] = append(undone[f[1]], f[2])
		lines++
	}
	failed, dups := 0, 0
	for id, st := range final {
		u := undone[id]
		if st.State != "FAILED" {
			if len(u) > 0 {
				c.errorf("saga %s is %s but compensations ran: %v", id, st.State, u)
			}
			continue
		}
		failed++
		want := []string{"payment", "order"}
		if !slices.Equal(st.Compensated, want) || !slices.Equal(st.Completed, []string{"order", "payment"}) {
			c.errorf("FAILED saga %s: completed %v, compensated %v; want [order payment], %v", id, st.Completed, st.Compensated, want)
		}
		// At least once, in reverse order: after collapsing the repeats a
		// failover causes, exactly payment then order. Steps that never
		// completed (inventory, shipping) are never compensated.
		if got := slices.Compact(slices.Clone(u)); !slices.Equal(got, want) {
			c.errorf("FAILED saga %s: compensations ran %v, want %v (repeats allowed)", id, u, want)
		}
		dups += len(u) - len(slices.Compact(slices.Clone(u)))
		delete(undone, id)
	}
	for id, u := range undone {
		if _, ok := final[id]; !ok {
			c.errorf("compensations %v ran for saga %s, which no member holds (persist before side effect broken)", u, id)
		}
	}
	c.t.Logf("%d FAILED sagas, %d compensations journaled, %d of them repeats", failed, lines, dups)
	if failed == 0 {
		c.errorf("no saga failed: compensation was not exercised")
	}
}

// checkHashes is check (c).
func (c *procCluster) checkHashes() {
	c.t.Helper()
	var first string
	for _, m := range c.members {
		b, err := os.ReadFile(c.file("hash-" + m.id))
		must(c.t, err)
		h := strings.TrimSpace(string(b))
		if first == "" {
			first = h
			c.t.Logf("state of every member: command index and hash %s", h)
		} else if h != first {
			c.errorf("member %s: command index and state hash %s, but %s has %s", m.id, h, c.members[0].id, first)
		}
	}
}

// sagaInput and sagaState are the operations and the state of sagaModel.
type sagaInput struct {
	id   string
	op   string // "start" or "read"
	kind string // start: ok or fail
}

type sagaState struct {
	kind  string // the input it was started with
	state string // "" while the saga does not exist
}

// sagaModel is a sequential specification of one saga, as the workload
// and the final reads observe it (histories are partitioned by saga id).
//
// Operations:
//   - start(kind) → "start" (acknowledged), "refused" (nothing applied),
//     or unknown (leadership lost mid-call, or the process was killed
//     before the answer): an unknown start is an operation that never
//     returns (Return = +inf), so the checker may linearize it anywhere
//     after its call, including after every read, where it changes nothing
//     observed.
//   - read → the saga's state, or "" if it does not exist: the state Run
//     returned (call = Run's call), and the final read from the leader.
//
// Rules: a saga exists only after a start that was not refused; a read
// after an acknowledged start sees it; its state only moves forward
// (IN_PROGRESS → COMPLETED, or IN_PROGRESS → COMPENSATING → FAILED; the
// engine's steps between reads are internal transitions, hence "reachable
// from" rather than "equal to"); and it ends COMPLETED for an ok input,
// FAILED for a fail input.
var sagaModel = porcupine.Model{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		by := map[string][]porcupine.Operation{}
		var ids []string
		for _, op := range h {
			id := op.Input.(sagaInput).id
			if by[id] == nil {
				ids = append(ids, id)
			}
			by[id] = append(by[id], op)
		}
		out := make([][]porcupine.Operation, 0, len(ids))
		for _, id := range ids {
			out = append(out, by[id])
		}
		return out
	},
	Init: func() any { return sagaState{} },
	Step: func(state, input, output any) (bool, any) {
		s, in := state.(sagaState), input.(sagaInput)
		if in.op == "start" {
			if output == "refused" {
				return true, s
			}
			// Acknowledged, or unknown and linearized here: it took effect.
			return s.state == "", sagaState{kind: in.kind, state: "IN_PROGRESS"}
		}
		got := output.(string)
		if got == "" || s.state == "" {
			return got == s.state, s
		}
		final := map[string]string{"ok": "COMPLETED", "fail": "FAILED"}[s.kind]
		reachable := got == s.state ||
			s.state == "IN_PROGRESS" && (got == "COMPENSATING" || got == "COMPLETED" || got == "FAILED") ||
			s.state == "COMPENSATING" && got == "FAILED"
		terminalOK := got != "COMPLETED" && got != "FAILED" || got == final
		return reachable && terminalOK, sagaState{kind: s.kind, state: got}
	},
	DescribeOperation: func(input, output any) string {
		in := input.(sagaInput)
		if in.op == "start" {
			return fmt.Sprintf("start(%s, %s) → %v", in.id, in.kind, output)
		}
		return fmt.Sprintf("read(%s) → %q", in.id, output)
	},
}

// checkLinearizable is check (d).
func (c *procCluster) checkLinearizable(acks map[string]*procSaga, final procRead, seed uint64) {
	c.t.Helper()
	clients := map[string]int{}
	for i, m := range c.members {
		clients[m.id] = i
	}
	readClient := len(c.members)
	var h []porcupine.Operation
	for id, s := range acks {
		op := porcupine.Operation{ClientId: clients[s.member], Input: sagaInput{id: id, op: "start", kind: s.kind},
			Call: s.call, Output: s.outcome, Return: s.ret}
		if s.outcome == "" || s.outcome == "unknown" {
			op.Output, op.Return = "unknown", math.MaxInt64
		}
		h = append(h, op)
		if s.settled != "" {
			h = append(h, porcupine.Operation{ClientId: clients[s.member], Input: sagaInput{id: id, op: "read"},
				Call: s.call, Output: s.settled, Return: s.settledRet})
		}
		// The final read, from the leader of a group at rest: a read of
		// its own state (a follower's may be stale, so only the leader's
		// reads go into the history).
		h = append(h, porcupine.Operation{ClientId: readClient, Input: sagaInput{id: id, op: "read"},
			Call: final.call, Output: final.sagas[id].State, Return: final.ret})
	}
	res, info := porcupine.CheckOperationsVerbose(sagaModel, h, time.Minute)
	switch res {
	case porcupine.Ok:
		c.t.Logf("linearizable: %d operations on %d sagas", len(h), len(acks))
	case porcupine.Illegal:
		out := filepath.Join(os.TempDir(), fmt.Sprintf("saga-cluster-%d.html", seed))
		if err := porcupine.VisualizePath(sagaModel, info, out); err != nil {
			c.t.Logf("visualize: %v", err)
		}
		c.t.Errorf("the history is not linearizable; see %s", out)
	default:
		c.t.Errorf("porcupine could not decide within a minute (%v)", res)
	}
}

// checkLogs fails the test if a member built with the race detector
// reported a race (a member that was killed could not say so by its exit
// status).
func (c *procCluster) checkLogs() {
	c.t.Helper()
	for _, m := range c.members {
		b, err := os.ReadFile(c.file(m.id + ".log"))
		must(c.t, err)
		if i := strings.Index(string(b), "WARNING: DATA RACE"); i >= 0 {
			c.t.Errorf("member %s reported a data race:\n%s", m.id, b[i:min(len(b), i+4000)])
		}
	}
}

// dumpLogs prints the end of each member's log.
func (c *procCluster) dumpLogs() {
	for _, m := range c.members {
		b, _ := os.ReadFile(c.file(m.id + ".log"))
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		c.t.Logf("--- last lines of %s.log:\n%s", m.id, strings.Join(lines[max(0, len(lines)-40):], "\n"))
	}
}

// TestSagaModelRejectsAnomalies checks the checker: sagaModel accepts
// what a correct group may show and rejects what it must not.
func TestSagaModelRejectsAnomalies(t *testing.T) {
	start := func(kind, out string, call, ret int64) porcupine.Operation {
		return porcupine.Operation{Input: sagaInput{id: "s", op: "start", kind: kind}, Call: call, Output: out, Return: ret}
	}
	read := func(out string, call, ret int64) porcupine.Operation {
		return porcupine.Operation{ClientId: 1, Input: sagaInput{id: "s", op: "read"}, Call: call, Output: out, Return: ret}
	}
	const never = math.MaxInt64
	for _, tc := range []struct {
		name string
		ok   bool
		h    []porcupine.Operation
	}{
		{"acknowledged then settled", true, []porcupine.Operation{start("ok", "start", 0, 10), read("COMPLETED", 0, 20), read("COMPLETED", 30, 40)}},
		{"failed through compensating", true, []porcupine.Operation{start("fail", "start", 0, 10), read("COMPENSATING", 11, 12), read("FAILED", 13, 14)}},
		{"read concurrent with the start", true, []porcupine.Operation{start("ok", "start", 0, 10), read("", 5, 8), read("IN_PROGRESS", 20, 30)}},
		{"unknown start that took effect", true, []porcupine.Operation{start("ok", "unknown", 0, never), read("COMPLETED", 20, 30)}},
		{"unknown start that did not", true, []porcupine.Operation{start("ok", "unknown", 0, never), read("", 20, 30)}},
		{"refused and absent", true, []porcupine.Operation{start("ok", "refused", 0, 10), read("", 20, 30)}},
		{"lost write", false, []porcupine.Operation{start("ok", "start", 0, 10), read("", 20, 30)}},
		{"refused but applied", false, []porcupine.Operation{start("ok", "refused", 0, 10), read("COMPLETED", 20, 30)}},
		{"state went back", false, []porcupine.Operation{start("ok", "start", 0, 10), read("COMPLETED", 20, 30), read("IN_PROGRESS", 40, 50)}},
		{"ok input failed", false, []porcupine.Operation{start("ok", "start", 0, 10), read("FAILED", 20, 30)}},
		{"fail input completed", false, []porcupine.Operation{start("fail", "start", 0, 10), read("COMPLETED", 20, 30)}},
		{"completed then compensating", false, []porcupine.Operation{start("ok", "start", 0, 10), read("COMPLETED", 20, 30), read("COMPENSATING", 40, 50)}},
		{"exists before its start", false, []porcupine.Operation{read("IN_PROGRESS", 0, 5), start("ok", "start", 10, 20)}},
	} {
		if got := porcupine.CheckOperations(sagaModel, tc.h); got != tc.ok {
			t.Errorf("%s: linearizable %v, want %v", tc.name, got, tc.ok)
		}
	}
}
