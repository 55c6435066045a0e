package target

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ChurnConfig is registry churn during a run: new sessions register, stage
// routes, apply, and shut down, at a fixed rate.
type ChurnConfig struct {
	Rate   float64 // sessions per second
	Routes int     // routes each churn session stages and applies
}

// GoProxy is a go-proxy build.
type GoProxy struct {
	Label  string // row label, such as "go-proxy" or "go-proxy@v1"
	Binary string
	Churn  *ChurnConfig // nil: a quiet registry
	// Env is added to the proxy's environment (KEY=VALUE), for runs of
	// one build under different runtime settings, such as GOMAXPROCS=1.
	Env []string
}

// Name implements Target.
func (g *GoProxy) Name() string {
	if g.Churn != nil {
		return g.Label + "+churn"
	}
	return g.Label
}

// Kind implements Target.
func (g *GoProxy) Kind() string { return KindGoProxy }

// WithChurn returns the same build with registry churn during runs.
func (g *GoProxy) WithChurn(c ChurnConfig) *GoProxy {
	return &GoProxy{Label: g.Label, Binary: g.Binary, Churn: &c, Env: g.Env}
}

// routesPerSession is the registry's default limit.
const routesPerSession = 1000

// sessionsPerIP stays below the registry's default of 64 connections per
// source address.
const sessionsPerIP = 48

var instanceSeq atomic.Uint64

// Start implements Target: it starts the binary on loopback ports and
// registers the table, one session per 1,000 routes. The ports were free
// when FreePort looked, but another process (an outgoing connection's
// ephemeral port, on a busy machine) can take one before the proxy binds
// it; such a start is retried on fresh ports. So is any other start that
// fails before serving (once, gnet's listener setup failed with "bad file
// descriptor" on a loaded machine): the bench measures serving, and a
// failure that repeats three times is still reported.
func (g *GoProxy) Start(ctx context.Context, s Setup) (*Instance, error) {
	for attempt := 1; ; attempt++ {
		inst, err := g.start(ctx, s)
		if err == nil || attempt == 3 || ctx.Err() != nil {
			return inst, err
		}
	}
}

func (g *GoProxy) start(ctx context.Context, s Setup) (*Instance, error) {
	var addrs [3]string
	for i := range addrs {
		a, err := FreePort()
		if err != nil {
			return nil, err
		}
		addrs[i] = a
	}
	httpAddr, regAddr, adminAddr := addrs[0], addrs[1], addrs[2]
	seq := instanceSeq.Add(1)
	// The proxy runs with its defaults: PROXY_* variables of the caller's
	// environment (access log, state file, …) are not passed on.
	env := g.Env
	if s.Callgrind {
		// One processor, as valgrind runs one thread at a time; no
		// asynchronous preemption signals, which valgrind handles slowly.
		env = append([]string{"GOMAXPROCS=1", "GODEBUG=asyncpreemptoff=1"}, env...)
	}
	p, counter, err := startTargetProc(s, g.Binary, []string{"serve", "-http-addr", httpAddr, "-registry-addr", regAddr, "-admin-addr", adminAddr},
		s.Dir, fmt.Sprintf("go-proxy-%d.log", seq), func(kv string) bool { return strings.HasPrefix(kv, "PROXY_") }, env)
	if err != nil {
		return nil, err
	}
	var sessions []*RegConn
	cleanup := func() error {
		err := p.stop(10 * time.Second)
		for _, rc := range sessions {
			_ = rc.Close()
		}
		return err
	}
	fail := func(err error) (*Instance, error) {
		_ = cleanup()
		return nil, fmt.Errorf("%s: %w", g.Name(), err)
	}
	if err := waitListening(ctx, p, regAddr, startLimit(s, 15*time.Second)); err != nil {
		return fail(err)
	}
	if err := waitListening(ctx, p, httpAddr, startLimit(s, 5*time.Second)); err != nil {
		return fail(err)
	}
	backendURL := "http://" + s.Backend
	for i := 0; i*routesPerSession < len(s.Domains); i++ {
		domains := s.Domains[i*routesPerSession : min(len(s.Domains), (i+1)*routesPerSession)]
		rc, err := DialRegistry(regAddr, "127.0.0."+strconv.Itoa(2+i/sessionsPerIP), 5*time.Second)
		if err != nil {
			return fail(err)
		}
		sessions = append(sessions, rc)
		if err := registerTable(rc, i, domains, backendURL, s); err != nil {
			return fail(err)
		}
	}
	if err := Probe(ctx, httpAddr, firstDomain(s), s.ProbePath, startLimit(s, 10*time.Second)); err != nil {
		return fail(err)
	}
	// Registry connections are closed after two idle minutes; keep them
	// busy so that long runs do not put the sessions in grace.
	keepStop := make(chan struct{})
	var keepWG sync.WaitGroup
	keepWG.Add(1)
	go func() {
		defer keepWG.Done()
		t := time.NewTicker(30 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-keepStop:
				return
			case <-t.C:
				for _, rc := range sessions {
					_, _ = rc.Cmd("PING|" + rc.SID)
				}
			}
		}
	}()
	in := &Instance{Addr: httpAddr, PID: p.pid(), Admin: adminAddr, Counter: counter}
	in.stop = func() error {
		close(keepStop)
		keepWG.Wait()
		return cleanup()
	}
	if s.Features || g.Churn != nil {
		in.Background = func(ctx context.Context) func() []Activity {
			bctx, cancel := context.WithCancel(ctx)
			var wg sync.WaitGroup
			var logs []*activityLog
			if s.Features && len(sessions) > 0 {
				l := &activityLog{a: Activity{Name: "stats-poll"}}
				logs = append(logs, l)
				wg.Add(1)
				go func() { defer wg.Done(); pollStats(bctx, sessions[0], adminAddr, l) }()
			}
			if g.Churn != nil {
				l := &activityLog{a: Activity{Name: "registry-churn"}}
				logs = append(logs, l)
				wg.Add(1)
				go func() { defer wg.Done(); churn(bctx, regAddr, backendURL, *g.Churn, seq, l) }()
			}
			return func() []Activity {
				cancel()
				wg.Wait()
				out := make([]Activity, len(logs))
				for i, l := range logs {
					out[i] = l.get()
				}
				return out
			}
		}
	}
	return in, nil
}

// registerTable registers one session's share of the table and applies it.
func registerTable(rc *RegConn, i int, domains []string, backendURL string, s Setup) error {
	if err := rc.Register("bench", "table-"+strconv.Itoa(i)); err != nil {
		return err
	}
	rids, err := rc.AddRoutes(domains, backendURL)
	if err != nil {
		return err
	}
	if s.Features {
		for _, rid := range rids {
			if _, err := rc.Expect("HEALTH_SET|"+rc.SID+"|"+rid+"|/health|1s|1s", "HEALTH_OK"); err != nil {
				return err
			}
			if _, err := rc.Expect("CIRCUIT_BREAKER_SET|"+rc.SID+"|"+rid+"|5|30s|1", "CIRCUIT_OK"); err != nil {
				return err
			}
			if _, err := rc.Expect("RATELIMIT_SET|"+rc.SID+"|"+rid+"|1000000000|1s", "RATELIMIT_OK"); err != nil {
				return err
			}
		}
	}
	if s.WebSocket {
		if _, err := rc.Expect("OPTIONS_SET|"+rc.SID+"|ALL|websocket|true", "OPTIONS_OK"); err != nil {
			return err
		}
	}
	_, err = rc.Expect("CONFIG_APPLY|"+rc.SID, "OK")
	return err
}

// pollStats reads the statistics once a second, as a monitoring system
// would: STATS_GET on the registry and /metrics on the admin server.
func pollStats(ctx context.Context, rc *RegConn, adminAddr string, l *activityLog) {
	client := &http.Client{Timeout: 5 * time.Second}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		if _, err := rc.Expect("STATS_GET|"+rc.SID, "STATS_OK|"); err != nil {
			l.fail(err)
		} else {
			l.ok()
		}
		resp, err := client.Get("http://" + adminAddr + "/metrics")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("/metrics: status %d", resp.StatusCode)
			}
		}
		if err != nil {
			l.fail(err)
		} else {
			l.ok()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// churn runs registry sessions at cfg.Rate: each registers, stages
// cfg.Routes routes on domains of its own, applies, and shuts down.
func churn(ctx context.Context, regAddr, backendURL string, cfg ChurnConfig, seq uint64, l *activityLog) {
	if cfg.Rate <= 0 {
		return
	}
	if cfg.Routes <= 0 {
		cfg.Routes = 1
	}
	t := time.NewTicker(time.Duration(float64(time.Second) / cfg.Rate))
	defer t.Stop()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := churnOnce(regAddr, backendURL, cfg.Routes, fmt.Sprintf("c%d-%d", seq, n)); err != nil {
			if ctx.Err() != nil {
				return
			}
			l.fail(err)
			continue
		}
		l.ok()
	}
}

func churnOnce(regAddr, backendURL string, routes int, name string) error {
	rc, err := DialRegistry(regAddr, "127.0.0.1", 5*time.Second)
	if err != nil {
		return err
	}
	defer rc.Close()
	if err := rc.Register("churn", name); err != nil {
		return err
	}
	domains := make([]string, routes)
	for i := range domains {
		domains[i] = name + "-" + strconv.Itoa(i) + ".churn.test"
	}
	if _, err := rc.AddRoutes(domains, backendURL); err != nil {
		return err
	}
	if _, err := rc.Expect("CONFIG_APPLY|"+rc.SID, "OK"); err != nil {
		return err
	}
	if _, err := rc.Expect("CLIENT_SHUTDOWN|"+rc.SID, "SHUTDOWN_OK"); err != nil {
		return err
	}
	return nil
}
