// Command cluster runs one member of a replicated saga group: the engine
// on raft (package replication) over TCP, optionally with mutual TLS, the
// admin API, and an optional workload of order sagas that runs while this
// member leads.
//
// A group of three on one machine (each line in its own terminal):
//
//	export SAGA_ADMIN_TOKEN=a-long-random-secret-token
//	P=n1=127.0.0.1:7001,n2=127.0.0.1:7002,n3=127.0.0.1:7003
//	go run ./examples/cluster -id n1 -dir data/n1 -raft 127.0.0.1:7001 -admin 127.0.0.1:7071 -bootstrap -peers $P -workload 4
//	go run ./examples/cluster -id n2 -dir data/n2 -raft 127.0.0.1:7002 -admin 127.0.0.1:7072 -workload 4
//	go run ./examples/cluster -id n3 -dir data/n3 -raft 127.0.0.1:7003 -admin 127.0.0.1:7073 -workload 4
//
// Stop the leader (its <dir>/role file says "leader") and another member
// takes over within seconds: it finishes the sagas the old leader left
// half done, compensations included, and the workload carries on there.
//
// The files it writes, for scripts and tests:
//
//	<dir>/role                  "leader <term>" or "follower <term>", rewritten on every change
//	-acks FILE                  the workload's client view, one fsynced line per event:
//	    call <id> <ok|fail> <ns>               before Run is called
//	    start <id> <ok|fail> <call> <ret>      the start was acknowledged
//	    settled <id> <STATE> <call> <ret>      Run returned the saga settled
//	    unknown <id> <call> <ret>              the outcome is unknown (leadership lost mid-call)
//	    refused <id> <call> <ret>              nothing was applied (not the leader, …)
//	-compensation-journal FILE  "<member> <saga> <step>" per compensation call, fsynced before it returns
//	-hash-file FILE             "<command index> <state hash>" written on a clean shutdown
package main

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sagaengine/saga/admin"
	"github.com/sagaengine/saga/admin/console"
	"github.com/sagaengine/saga/admin/raftcluster"
	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/engine"
	"github.com/sagaengine/saga/fsm"
	"github.com/sagaengine/saga/replication"
	"github.com/sagaengine/saga/wal"
)

func main() { os.Exit(run(os.Args[1:])) }

// options are the command line.
type options struct {
	id, dir, raftAddr, advertise, adminAddr string
	bootstrap                               bool
	peers                                   []replication.Server
	tls                                     *replication.TLSConfig
	workload                                int
	acks, journal, hashFile                 string
	heartbeat, election                     time.Duration
	snapThreshold, trailingLogs             uint64
	snapInterval                            time.Duration
	segmentSize                             int
}

func parseFlags(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("cluster", flag.ContinueOnError)
	fs.StringVar(&o.id, "id", "", "this member's id, unique in the group (required)")
	fs.StringVar(&o.dir, "dir", "", "engine directory; raft keeps its data in <dir>/raft (required)")
	fs.StringVar(&o.raftAddr, "raft", "127.0.0.1:7001", "raft TCP address to bind (host:port)")
	fs.StringVar(&o.advertise, "advertise", "", "raft address peers dial (default: the bound address)")
	fs.StringVar(&o.adminAddr, "admin", "127.0.0.1:7071", "admin API address; served only when SAGA_ADMIN_TOKEN is set")
	fs.BoolVar(&o.bootstrap, "bootstrap", false, "start a new group with -peers (ignored once the member has raft state)")
	peers := fs.String("peers", "", "the initial members with -bootstrap: id=host:port,id=host:port,…")
	cert := fs.String("tls-cert", "", "this member's certificate (mutual TLS between members)")
	key := fs.String("tls-key", "", "the certificate's private key")
	ca := fs.String("tls-ca", "", "CA that every member's certificate must chain to")
	fs.IntVar(&o.workload, "workload", 0, "while this member leads, keep N order sagas running (0: none)")
	fs.StringVar(&o.acks, "acks", "", "append what the workload saw acknowledged to this file")
	fs.StringVar(&o.journal, "compensation-journal", "", "append every compensation call to this file")
	fs.StringVar(&o.hashFile, "hash-file", "", "write the command index and the state hash here on a clean shutdown")
	fs.DurationVar(&o.heartbeat, "heartbeat", time.Second, "raft heartbeat timeout (the leader lease is half of it)")
	fs.DurationVar(&o.election, "election", time.Second, "raft election timeout")
	fs.Uint64Var(&o.snapThreshold, "snapshot-threshold", 0, "commands between raft snapshots (0: 16384)")
	fs.DurationVar(&o.snapInterval, "snapshot-interval", 0, "how often raft checks whether to snapshot (0: 2m)")
	fs.Uint64Var(&o.trailingLogs, "trailing-logs", 0, "raft log entries kept after a snapshot for lagging members (0: 10240)")
	fs.IntVar(&o.segmentSize, "log-segment", 0, "raft log segment size in bytes; compaction drops whole segments (0: 8 MiB)")
	if err := fs.Parse(args); err != nil {
		return nil, err // the flag package has said what is wrong
	}
	var probs []string
	if fs.NArg() > 0 {
		probs = append(probs, fmt.Sprintf("unexpected arguments %q", fs.Args()))
	}
	if o.id == "" || o.dir == "" {
		probs = append(probs, "-id and -dir are required")
	}
	if *peers != "" && !o.bootstrap {
		probs = append(probs, "-peers is used only with -bootstrap")
	}
	for _, p := range strings.Split(*peers, ",") {
		if p == "" {
			continue
		}
		id, addr, ok := strings.Cut(p, "=")
		if !ok || id == "" || addr == "" {
			probs = append(probs, fmt.Sprintf("-peers: %q is not id=host:port", p))
			continue
		}
		o.peers = append(o.peers, replication.Server{ID: id, Address: addr})
	}
	switch n := btoi(*cert != "") + btoi(*key != "") + btoi(*ca != ""); n {
	case 0:
	case 3:
		o.tls = &replication.TLSConfig{CertFile: *cert, KeyFile: *key, CAFile: *ca}
	default:
		probs = append(probs, "-tls-cert, -tls-key and -tls-ca go together")
	}
	if o.heartbeat <= 0 || o.election <= 0 {
		probs = append(probs, "-heartbeat and -election must be positive")
	}
	if o.workload < 0 || o.segmentSize < 0 {
		probs = append(probs, "-workload and -log-segment must not be negative")
	}
	if len(probs) > 0 {
		fmt.Fprintf(os.Stderr, "cluster: %s\nrun cluster -h for the flags\n", strings.Join(probs, "; "))
		return nil, errBadFlags
	}
	return o, nil
}

var errBadFlags = errors.New("bad flags")

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func run(args []string) int {
	o, err := parseFlags(args)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("member", o.id)
	if err := serve(o, log); err != nil {
		log.Error("cluster: stopped", "err", err)
		return 1
	}
	return 0
}

// serve runs the member until SIGTERM or SIGINT, then closes it cleanly.
func serve(o *options, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	comps, err := openJournal(o.journal)
	if err != nil {
		return err
	}
	acks, err := openJournal(o.acks)
	if err != nil {
		return err
	}
	node, err := replication.New(replication.Config{
		ID: o.id, Dir: filepath.Join(o.dir, "raft"), Bind: o.raftAddr, Advertise: o.advertise, TLS: o.tls,
		Bootstrap: o.bootstrap, Peers: o.peers,
		HeartbeatTimeout: o.heartbeat, ElectionTimeout: o.election, LeaderLeaseTimeout: o.heartbeat / 2,
		SnapshotThreshold: o.snapThreshold, SnapshotInterval: o.snapInterval, TrailingLogs: o.trailingLogs,
		WAL: wal.Options{SegmentSize: o.segmentSize}, Logger: log,
	})
	if err != nil {
		return err
	}
	obs := admin.NewObserver()
	eng, err := engine.Open(o.dir, engine.Options{
		Replicator: node, Registry: registry(o.id, comps), Logger: log, Hooks: obs.Hooks(),
	})
	if err != nil {
		_ = node.Close() // if Open has not closed it already
		return err
	}
	var srv *admin.Server
	if token := os.Getenv("SAGA_ADMIN_TOKEN"); token != "" {
		// The web console (/ui/) comes with the admin API, with the same
		// token and the member's cluster page.
		cl := raftcluster.New(node)
		var ui *console.Console
		if ui, err = console.New(eng, obs, console.Options{Token: token, Cluster: cl, Logger: log}); err == nil {
			if srv, err = admin.New(eng, obs, admin.Options{Addr: o.adminAddr, Token: token, Logger: log, Cluster: cl, Console: ui}); err == nil {
				err = srv.Start()
			} else {
				_ = ui.Close()
			}
		}
		if err != nil {
			return errors.Join(err, eng.Close())
		}
	} else {
		log.Info("cluster: SAGA_ADMIN_TOKEN is not set: no admin API")
	}

	w := &workload{eng: eng, member: o.id, acks: acks, boot: time.Now().UnixNano(), log: log}
	var wg sync.WaitGroup
	for range o.workload {
		wg.Go(func() { w.worker(ctx) })
	}
	wg.Go(func() { watchRole(ctx, eng, node, o.dir, w, o.workload > 0, log) })
	<-ctx.Done()
	log.Info("cluster: shutting down")
	wg.Wait()
	w.defining.Wait()
	var errs []error
	if srv != nil {
		errs = append(errs, srv.Close())
	}
	if o.hashFile != "" {
		errs = append(errs, writeHash(eng, o.hashFile))
	}
	errs = append(errs, eng.Close(), comps.close(), acks.close())
	return errors.Join(errs...)
}

// registry registers the order saga's actions and compensations. Every
// member registers the same names: whichever leads runs them.
func registry(member string, comps *journal) *compensation.Registry {
	reg := compensation.NewRegistry()
	for _, step := range steps {
		must(reg.RegisterAction("do_"+step, func(ctx context.Context, c compensation.Call) ([]byte, error) {
			if step == "inventory" && string(c.Input) == "fail" {
				return nil, compensation.Permanent(errors.New("out of stock"))
			}
			return []byte(step + " done"), nil
		}))
		must(reg.Register("undo_"+step, func(ctx context.Context, c compensation.Call) error {
			// Durable before success is reported: the journal is the
			// outside world the compensation changed.
			return comps.add("%s %s %s", member, c.SagaID, step)
		}))
	}
	return reg
}

var steps = []string{"order", "payment", "inventory", "shipping"}

// orderDefinition is the saga the workload runs. A step that was running
// when its leader died is run again by the next one (its action is
// idempotent), so the outcome depends on the input only.
func orderDefinition() engine.Definition {
	d := engine.Definition{Name: "order"}
	for _, s := range steps {
		d.Steps = append(d.Steps, engine.StepDef{Name: s, Action: "do_" + s, Compensation: "undo_" + s,
			OnUncertain: fsm.UncertainRetry})
	}
	return d
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}

// watchRole writes <dir>/role on every change of leadership and, with a
// workload, defines the saga when this member starts leading and lets the
// workers go.
func watchRole(ctx context.Context, eng *engine.Engine, node *replication.Node, dir string, w *workload, define bool, log *slog.Logger) {
	last := ""
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		_, _, self := eng.Leader()
		role := "follower"
		if self {
			role = "leader"
		}
		term := node.Stats()["term"]
		if cur := role + " " + term; cur != last {
			last = cur
			if err := writeFileAtomic(filepath.Join(dir, "role"), cur+"\n"); err != nil {
				log.Warn("cluster: write role file", "err", err)
			}
			log.Info("cluster: role", "role", role, "term", term)
			w.ready.Store(false)
			if self && define {
				w.defining.Go(func() { w.define(ctx) })
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// workload keeps order sagas running while this member leads.
type workload struct {
	eng    *engine.Engine
	member string
	acks   *journal
	boot   int64 // makes saga ids unique across restarts
	seq    atomic.Uint64
	ready  atomic.Bool // leading, and the definition is stored
	log    *slog.Logger

	defining sync.WaitGroup
}

// define stores the definition; only the leader can, so it gives up
// when this member stops leading.
func (w *workload) define(ctx context.Context) {
	for ctx.Err() == nil {
		if _, _, self := w.eng.Leader(); !self {
			return
		}
		_, err := w.eng.Define(ctx, orderDefinition())
		if err == nil {
			w.ready.Store(true)
			return
		}
		if errors.Is(err, engine.ErrNotLeader) {
			return
		}
		w.log.Warn("cluster: define the order saga; retrying", "err", err)
		sleep(ctx, 100*time.Millisecond)
	}
}

// worker runs one saga after another and records what it was told.
func (w *workload) worker(ctx context.Context) {
	for ctx.Err() == nil {
		if _, _, self := w.eng.Leader(); !self || !w.ready.Load() {
			sleep(ctx, 20*time.Millisecond)
			continue
		}
		n := w.seq.Add(1)
		id := fmt.Sprintf("%s-%x-%d", w.member, w.boot, n)
		kind := "ok"
		if n%3 == 0 {
			kind = "fail" // out of stock: payment and order are undone
		}
		call := time.Now().UnixNano()
		if err := w.acks.add("call %s %s %d", id, kind, call); err != nil {
			w.log.Error("cluster: acks file", "err", err)
			return
		}
		st, err := w.eng.Run(ctx, "order", []byte(kind), engine.StartOptions{ID: id})
		ret := time.Now().UnixNano()
		switch {
		case err == nil:
			err = errors.Join(w.acks.add("start %s %s %d %d", id, kind, call, ret),
				w.acks.add("settled %s %s %d %d", id, st.State, call, ret))
		case errors.Is(err, engine.ErrNotSettled): // started; it settles later
			err = w.acks.add("start %s %s %d %d", id, kind, call, ret)
		case engine.IsNotApplied(err):
			w.log.Debug("cluster: saga refused", "saga", id, "err", err)
			err = w.acks.add("refused %s %d %d", id, call, ret)
			sleep(ctx, 20*time.Millisecond)
		default: // engine.ErrOutcomeUnknown
			w.log.Info("cluster: saga outcome unknown", "saga", id, "err", err)
			err = w.acks.add("unknown %s %d %d", id, call, ret)
		}
		if err != nil {
			w.log.Error("cluster: acks file", "err", err)
			return
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// journal is an append-only file whose every line is durable (fsynced)
// when add returns. A nil journal records nothing.
type journal struct {
	mu sync.Mutex
	f  *os.File
}

func openJournal(path string) (*journal, error) {
	if path == "" {
		return nil, nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, err
	}
	return &journal{f: f}, nil
}

func (j *journal) add(format string, args ...any) error {
	if j == nil {
		return nil
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	// One write per line: O_APPEND keeps lines from several processes whole.
	if _, err := j.f.WriteString(fmt.Sprintf(format, args...) + "\n"); err != nil {
		return err
	}
	return j.f.Sync()
}

func (j *journal) close() error {
	if j == nil {
		return nil
	}
	return j.f.Close()
}

func writeHash(eng *engine.Engine, path string) error {
	h, err := eng.StateHash()
	if err != nil {
		return err
	}
	return writeFileAtomic(path, fmt.Sprintf("%d %s\n", eng.CommandIndex(), hex.EncodeToString(h)))
}

// writeFileAtomic replaces path, so a reader never sees half a file.
func writeFileAtomic(path, content string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o640); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
