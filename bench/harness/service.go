package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"github.com/sagaengine/saga/compensation"
	"github.com/sagaengine/saga/engine"
	sagav1 "github.com/sagaengine/saga/gen/saga/v1"
	"github.com/sagaengine/saga/gen/saga/v1/sagav1connect"
	"github.com/sagaengine/saga/remote"
	"github.com/sagaengine/saga/service"
)

// serviceSteps is the caller-driven saga of figure 15: a start and one
// Advance per step, each a transition.
const serviceSteps = 4

// serviceRig is an engine behind the saga service, served on loopback
// as sagad serves it (HTTP/1.1 and h2c), with caller-driven steps.
type serviceRig struct {
	e        *engine.Engine
	dir      string
	srv      *http.Server
	url      string
	token    string
	handlers *handlerServer
	remote   *remote.Client
}

// handlerServer answers the remote handlers "work" and "undo" on
// loopback, with a 503 for a share failPct of the calls (retried by the
// steps' policy).
type handlerServer struct {
	srv     *http.Server
	url     string
	calls   atomic.Int64
	failPct int64
}

func newHandlerServer(failPct int) *handlerServer {
	h := &handlerServer{failPct: int64(failPct)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	h.url = "http://" + ln.Addr().String()
	h.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if n := h.calls.Add(1); h.failPct > 0 && n%100 < h.failPct {
			http.Error(w, "injected", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})}
	go func() { _ = h.srv.Serve(ln) }()
	return h
}

func newServiceRig(failPct int) *serviceRig {
	dir, _ := os.MkdirTemp("", "saga-bench-service-")
	hs := newHandlerServer(failPct)
	rc, err := remote.New(remote.Config{Endpoints: map[string]remote.EndpointConfig{
		"work": {URL: hs.url + "/work", Concurrency: 64},
		"undo": {URL: hs.url + "/undo", Concurrency: 64},
	}}, remote.Options{})
	if err != nil {
		panic(err)
	}
	reg := compensation.NewRegistry()
	if err := rc.Register(reg); err != nil {
		panic(err)
	}
	e, err := engine.Open(dir, engine.Options{Logger: quiet, Registry: reg})
	if err != nil {
		panic(err)
	}
	d := engine.Definition{Name: "driven"}
	h := engine.Definition{Name: "remote"}
	retry := engine.RetryPolicy{InitialBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond, Multiplier: 2, MaxAttempts: 20}
	for k := 0; k < serviceSteps; k++ {
		d.Steps = append(d.Steps, engine.StepDef{Name: fmt.Sprintf("s%d", k)})
		h.Steps = append(h.Steps, engine.StepDef{Name: fmt.Sprintf("s%d", k), Action: "work", Compensation: "undo", Retry: retry, CompensationRetry: retry})
	}
	for _, def := range []engine.Definition{d, h} {
		if _, err := e.Define(context.Background(), def); err != nil {
			panic(err)
		}
	}
	svc, err := service.New(e, service.Options{})
	if err != nil {
		panic(err)
	}
	mux := http.NewServeMux()
	mux.Handle(svc.Handler())
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	const token = "bench-token-0123456789abcdef"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	srv := &http.Server{Handler: service.RequireToken(token, mux), Protocols: protocols, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return &serviceRig{e: e, dir: dir, srv: srv, url: "http://" + ln.Addr().String(), token: token, handlers: hs, remote: rc}
}

func (r *serviceRig) close() {
	_ = r.srv.Close()
	_ = r.e.Close()
	r.remote.Close()
	_ = r.handlers.srv.Close()
	_ = os.RemoveAll(r.dir)
}

// bearer adds the token to every call.
type bearer struct {
	base  http.RoundTripper
	token string
}

func (b bearer) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	req.Header.Set("Authorization", "Bearer "+b.token)
	return b.base.RoundTrip(req)
}

// client returns a SagaService client speaking JSON over HTTP/1.1 (the
// curl and any-language path) or gRPC over h2c.
func (r *serviceRig) client(grpc bool, conc int) sagav1connect.SagaServiceClient {
	tr := &http.Transport{MaxIdleConns: conc + 8, MaxIdleConnsPerHost: conc + 8, IdleConnTimeout: time.Minute}
	var opts []connect.ClientOption
	if grpc {
		p := new(http.Protocols)
		p.SetUnencryptedHTTP2(true)
		tr.Protocols = p
		opts = append(opts, connect.WithGRPC())
	} else {
		opts = append(opts, connect.WithProtoJSON())
	}
	return sagav1connect.NewSagaServiceClient(&http.Client{Transport: bearer{tr, r.token}, Timeout: time.Minute}, r.url, opts...)
}

// sagaFunc runs one caller-driven saga to COMPLETED.
type sagaFunc func(ctx context.Context) error

func (r *serviceRig) viaAPI(c sagav1connect.SagaServiceClient) sagaFunc {
	return func(ctx context.Context) error {
		st, err := c.Start(ctx, connect.NewRequest(&sagav1.StartRequest{Definition: "driven"}))
		if err != nil {
			return err
		}
		id := st.Msg.Saga.Id
		for k := 0; k < serviceSteps; k++ {
			if _, err := c.Advance(ctx, connect.NewRequest(&sagav1.AdvanceRequest{SagaId: id, Step: fmt.Sprintf("s%d", k)})); err != nil {
				return err
			}
		}
		return nil
	}
}

// viaAPIRemote starts an engine-driven saga whose steps are remote
// handlers and waits for it through the API.
func (r *serviceRig) viaAPIRemote(c sagav1connect.SagaServiceClient) sagaFunc {
	return func(ctx context.Context) error {
		st, err := c.Start(ctx, connect.NewRequest(&sagav1.StartRequest{Definition: "remote"}))
		if err != nil {
			return err
		}
		w, err := c.Wait(ctx, connect.NewRequest(&sagav1.WaitRequest{SagaId: st.Msg.Saga.Id}))
		if err != nil {
			return err
		}
		if w.Msg.Saga.State != sagav1.SagaState_SAGA_STATE_COMPLETED {
			return fmt.Errorf("saga %s: %s", w.Msg.Saga.Id, w.Msg.Saga.State)
		}
		return nil
	}
}

// embeddedRemote runs the same saga on the embedded engine (Run).
func (r *serviceRig) embeddedRemote() sagaFunc {
	return func(ctx context.Context) error {
		st, err := r.e.Run(ctx, "remote", nil, engine.StartOptions{})
		if err == nil && st.State != engine.StateCompleted {
			err = fmt.Errorf("saga %s: %s", st.ID, st.State)
		}
		return err
	}
}

func (r *serviceRig) embedded() sagaFunc {
	return func(ctx context.Context) error {
		id, err := r.e.Start(ctx, "driven", nil, engine.StartOptions{})
		if err != nil {
			return err
		}
		for k := 0; k < serviceSteps; k++ {
			if _, err := r.e.Advance(ctx, id, engine.StepResult{Step: fmt.Sprintf("s%d", k)}); err != nil {
				return err
			}
		}
		return nil
	}
}

// runSagas runs f from conc goroutines for dur; it returns the count of
// sagas that succeeded, each one's latency in ms, and the failures.
func runSagas(f sagaFunc, conc int, dur time.Duration) (int, []float64, *failures) {
	var n atomic.Int64
	var mu sync.Mutex
	var lat []float64
	fails := &failures{}
	deadline := time.Now().Add(dur)
	var wg sync.WaitGroup
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []float64
			for time.Now().Before(deadline) {
				t := time.Now()
				if err := f(context.Background()); err != nil {
					fails.add(err)
					if fails.n.Load() > 1000 {
						return // the point has failed; stop hammering
					}
					continue
				}
				mine = append(mine, float64(time.Since(t).Microseconds())/1000)
				n.Add(1)
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return int(n.Load()), lat, fails
}

// figService: caller-driven sagas through the saga service against the
// same sagas on the embedded engine, in one run: sagas/s, latency, and
// what the server adds per transition.
func figService() (Figure, []Target) {
	rounds, dur := 3, 3*time.Second
	if *quick {
		rounds, dur = 1, time.Second
	}
	fig := Figure{Name: fmt.Sprintf("15. The saga service: caller-driven %d-step sagas (Start + %d Advance), embedded vs through the API", serviceSteps, serviceSteps),
		Method: fmt.Sprintf("one engine (strict) behind service.Server on loopback, served as sagad serves it; per point %s of sagas from c goroutines, "+
			"embedded (engine.Start + Advance in process), JSON (Connect protocol, HTTP/1.1) and gRPC (h2c) through the generated Go client; "+
			"then the same sagas engine-driven with each step and compensation a remote HTTP handler on loopback (package remote), embedded (Run) "+
			"and through the API (Start + Wait); the modes interleaved, median of %d rounds; share = of the embedded run of the same shape; "+
			"added per transition = (api p50 − embedded p50) / %d calls at c=1", dur, rounds, serviceSteps+1)}
	r := newServiceRig(0)
	defer r.close()
	type point struct {
		rate     []float64
		p50, p99 []float64
	}
	modes := []string{"embedded", "JSON", "gRPC", "embedded, remote handlers", "JSON, remote handlers"}
	points := map[string]*point{}
	for round := 0; round < rounds; round++ {
		for _, conc := range []int{1, 64} {
			for _, m := range modes {
				progress("service: %s c=%d, round %d/%d", m, conc, round+1, rounds)
				var f sagaFunc
				switch m {
				case "embedded":
					f = r.embedded()
				case "JSON":
					f = r.viaAPI(r.client(false, conc))
				case "gRPC":
					f = r.viaAPI(r.client(true, conc))
				case "embedded, remote handlers":
					f = r.embeddedRemote()
				case "JSON, remote handlers":
					f = r.viaAPIRemote(r.client(false, conc))
				}
				t := time.Now()
				n, lat, fails := runSagas(f, conc, dur)
				k := fmt.Sprintf("%s/%d", m, conc)
				if points[k] == nil {
					points[k] = &point{}
				}
				p := points[k]
				p.rate = append(p.rate, float64(n)/time.Since(t).Seconds())
				p.p50 = append(p.p50, percentile(lat, 0.5))
				p.p99 = append(p.p99, percentile(lat, 0.99))
				if fails.n.Load() > 0 {
					row := map[string]any{"mode": m, "concurrency": conc, "round": round + 1}
					fails.mark(row)
					fig.Rows = append(fig.Rows, row)
				}
			}
		}
	}
	var ts []Target
	for _, conc := range []int{1, 64} {
		for _, m := range modes {
			base := "embedded"
			if strings.HasSuffix(m, "remote handlers") {
				base = "embedded, remote handlers"
			}
			emb := points[fmt.Sprintf("%s/%d", base, conc)]
			p := points[fmt.Sprintf("%s/%d", m, conc)]
			row := map[string]any{"mode": m, "concurrency": conc, "sagas_per_s": round(median(p.rate)),
				"p50_ms": round2(median(p.p50)), "p99_ms": round2(median(p.p99)),
				"share_of_embedded_pct": round2(100 * median(p.rate) / max(median(emb.rate), 1e-9))}
			if conc == 1 && (m == "JSON" || m == "gRPC") {
				added := (median(p.p50) - median(emb.p50)) * 1000 / float64(serviceSteps+1)
				row["added_us_per_transition"] = round(added)
				ts = append(ts, Target{Name: fmt.Sprintf("service (%s), c=1: the server's added cost per transition", m), Want: "reported",
					Measured: round(added), Unit: "µs", Pass: true,
					Bound: "a loopback round trip, the request's decoding and the response's encoding, per call; the fsync is the engine's and is the same embedded"})
			}
			fig.Rows = append(fig.Rows, row)
		}
	}
	return fig, ts
}

// figServiceLoad: many sagas in flight at once through the API, with
// remote handlers that fail a fifth of the time (503, retried): every
// saga must reach COMPLETED, none lost, and the process's memory stays
// bounded while they run.
func figServiceLoad() (Figure, []Target) {
	n, starters := 10000, 256
	if *quick {
		n = 1000
	}
	const failPct = 20
	fig := Figure{Name: fmt.Sprintf("16. Load through the API: %d engine-driven sagas in flight at once, remote handlers failing %d%% (503, retried)", n, failPct),
		Method: fmt.Sprintf("one engine behind the service on loopback; %d sagas of 4 remote steps (each step and compensation an HTTP endpoint with a "+
			"concurrency bound of 64; %d of every 100 calls answer 503, retried by the steps' policy: 20 attempts, 1-20 ms backoff) started "+
			"through the JSON API by %d goroutines without waiting, then followed with Count until every one is terminal; RSS sampled every 100 ms", n, failPct, starters)}
	r := newServiceRig(failPct)
	defer r.close()
	c := r.client(false, starters)
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tk := time.NewTicker(100 * time.Millisecond)
		defer tk.Stop()
		for {
			if mb := rssMB(); mb > float64(peak.Load())/1024 {
				peak.Store(uint64(mb * 1024))
			}
			select {
			case <-stop:
				return
			case <-tk.C:
			}
		}
	}()
	rss0 := rssMB()
	t0 := time.Now()
	var next atomic.Int64
	fails := &failures{}
	var wg sync.WaitGroup
	for w := 0; w < starters; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				if _, err := c.Start(context.Background(), connect.NewRequest(&sagav1.StartRequest{Definition: "remote"})); err != nil {
					fails.add(err)
				}
			}
		}()
	}
	wg.Wait()
	started := time.Since(t0)
	progress("service load: %d started in %s", n, started.Round(time.Millisecond))
	counts := func() map[engine.SagaState]int {
		m, _ := r.e.Count(context.Background())
		return m
	}
	deadline := time.Now().Add(10 * time.Minute)
	var m map[engine.SagaState]int
	for {
		m = counts()
		if m[engine.StateCompleted]+m[engine.StateFailed]+m[engine.StateStuck] >= n || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	settled := time.Since(t0)
	close(stop)
	<-sampled
	peakMB := float64(peak.Load()) / 1024
	total := 0
	for _, k := range m {
		total += k
	}
	lost := n - total
	row := map[string]any{"sagas": n, "started_s": round2(started.Seconds()), "settled_s": round2(settled.Seconds()),
		"sagas_per_s": round(float64(n) / settled.Seconds()), "completed": m[engine.StateCompleted], "failed": m[engine.StateFailed],
		"stuck": m[engine.StateStuck], "in_flight_at_end": m[engine.StateInProgress] + m[engine.StateCompensating], "lost": lost,
		"handler_calls": r.handlers.calls.Load(), "rss_before_mb": round(rss0), "rss_peak_mb": round(peakMB)}
	fails.mark(row)
	fig.Rows = append(fig.Rows, row)
	ok := lost == 0 && m[engine.StateCompleted] == n && fails.n.Load() == 0
	return fig, []Target{
		{Name: fmt.Sprintf("load: %d sagas in flight through the API, handlers failing %d%%: every saga COMPLETED, none lost", n, failPct),
			Want: "all", Measured: float64(m[engine.StateCompleted]), Unit: "sagas", Pass: ok,
			Bound: fmt.Sprintf("%d handler calls (%d%% answered 503 and retried); settled in %.1f s", r.handlers.calls.Load(), failPct, settled.Seconds())},
		{Name: fmt.Sprintf("load: peak RSS with %d sagas in flight (before: %.0f MB)", n, rss0), Want: "reported", Measured: round(peakMB), Unit: "MB",
			Pass: true, Bound: "the live sagas' state (cached up to Options.LiveSagas), Pebble's memtables and cache, the HTTP connections and the waiting calls"},
	}
}
