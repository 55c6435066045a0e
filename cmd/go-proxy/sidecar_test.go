package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// relay is a TCP forwarder between the sidecar and a registry that the
// test can cut and re-point, recording each connection's client lines.
type relay struct {
	t      testing.TB
	ln     net.Listener
	mu     sync.Mutex
	target string
	conns  []net.Conn
	logs   []*syncBuffer // client → registry bytes, one per connection
}

func newRelay(t testing.TB, target string) *relay {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{t: t, ln: ln, target: target}
	t.Cleanup(func() { _ = ln.Close(); r.cut() })
	go r.accept()
	return r
}

func (r *relay) accept() {
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		up, err := net.Dial("tcp", r.target)
		if err != nil {
			r.mu.Unlock()
			_ = c.Close()
			continue
		}
		log := &syncBuffer{}
		r.conns = append(r.conns, c, up)
		r.logs = append(r.logs, log)
		r.mu.Unlock()
		// The log comes first: once the proxy has seen a line (and the
		// sidecar its reply), the test must see it too.
		go func() { _, _ = io.Copy(io.MultiWriter(log, up), c); _ = up.Close() }()
		go func() { _, _ = io.Copy(c, up); _ = c.Close() }()
	}
}

// cut drops every open connection, as a network failure would.
func (r *relay) cut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.conns {
		_ = c.Close()
	}
	r.conns = nil
}

func (r *relay) point(target string) {
	r.mu.Lock()
	r.target = target
	r.mu.Unlock()
}

// connLines returns the lines the sidecar sent on connection i.
func (r *relay) connLines(i int) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if i >= len(r.logs) {
		return nil
	}
	return strings.Split(strings.TrimSpace(r.logs[i].String()), "\n")
}

func (r *relay) connCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.logs)
}

func sidecarEnv(relayAddr, backendPort string, extra map[string]string) func(string) string {
	host, port, _ := net.SplitHostPort(relayAddr)
	m := map[string]string{
		"REGISTRY_HOST": host, "REGISTRY_PORT": port, "SERVICE_NAME": "shop", "INSTANCE_NAME": "shop-1",
		"DOMAINS": "shop.test,www.shop.test", "ROUTE_PATH": "/", "PORT": backendPort, "BACKEND_HOST": "127.0.0.1",
		"HEALTH_PATH": "/health", "HEALTH_INTERVAL": "1s", "PRIORITY": "5",
		"OPTIONS": "preserve_host=true, timeout=30s", "PING_INTERVAL": "200ms",
	}
	for k, v := range extra {
		m[k] = v
	}
	return env(m)
}

// startSidecar runs a sidecar until the returned stop is called.
func startSidecar(t testing.TB, getenv func(string) string) (logs *syncBuffer, stop func()) {
	t.Helper()
	cfg, err := parseSidecarEnv(getenv)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MinBackoff, cfg.MaxBackoff, cfg.ReplyTimeout = 50*time.Millisecond, 200*time.Millisecond, 5*time.Second
	logs = &syncBuffer{}
	log, _ := newLogger("debug", logs)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); newSidecar(cfg, log).run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				t.Error("sidecar did not stop")
			}
		})
	}
	t.Cleanup(stop)
	return logs, stop
}

type probedBackend struct {
	*httptest.Server
	probes atomic.Int64
	port   string
}

func newProbedBackend(t testing.TB) *probedBackend {
	b := &probedBackend{}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			b.probes.Add(1)
		}
		w.Header().Set("X-Got-Host", r.Host)
		_, _ = io.WriteString(w, "shop")
	}))
	t.Cleanup(b.Close)
	_, b.port, _ = net.SplitHostPort(b.Listener.Addr().String())
	return b
}

// TestSidecarLifecycle runs `go-proxy sidecar` against the real registry:
// it registers with its token, route, health check and options; it pings;
// after a dropped connection it resumes with RECONNECT; against a proxy
// that lost its state it registers again and replays; on shutdown it sends
// CLIENT_SHUTDOWN and the route leaves at once.
func TestSidecarLifecycle(t *testing.T) {
	backend := newProbedBackend(t)
	p1 := startProxy(t, "-registry-token", "s3cret", "-session-grace", "60s")
	rl := newRelay(t, p1.ls.Registry.String())
	logs, stop := startSidecar(t, sidecarEnv(rl.ln.Addr().String(), backend.port, map[string]string{"REGISTRY_TOKEN": "s3cret"}))

	served := func(p *running) bool {
		r := doHTTP(t, "GET", p.ls.HTTP.String(), "www.shop.test", "/")
		return r.status == 200 && r.body == "shop"
	}
	eventually(t, 10*time.Second, "route registered", func() bool { return served(p1) })
	if r := doHTTP(t, "GET", p1.ls.HTTP.String(), "www.shop.test", "/"); r.header.Get("X-Got-Host") != "www.shop.test" {
		t.Fatalf("OPTIONS preserve_host not applied: %v", r.header)
	}
	eventually(t, 10*time.Second, "health checks", func() bool { return backend.probes.Load() > 0 })
	eventually(t, 5*time.Second, "pings", func() bool {
		return strings.Contains(strings.Join(rl.connLines(0), "\n"), "\nPING|")
	})
	first := rl.connLines(0)
	if !strings.HasPrefix(first[0], "REGISTER|shop|shop-1|0|") || !strings.Contains(first[0], `"auth_token":"s3cret"`) {
		t.Fatalf("REGISTER line: %q", first[0])
	}
	sid := ""
	for _, want := range []string{"ROUTE_ADD|", "HEALTH_SET|", "OPTIONS_SET|", "CONFIG_APPLY|"} {
		found := false
		for _, l := range first {
			if strings.HasPrefix(l, want) {
				found = true
				if want == "ROUTE_ADD|" {
					sid = strings.Split(l, "|")[1]
					if !strings.HasSuffix(l, "|shop.test,www.shop.test|/|http://127.0.0.1:"+backend.port+"|5") {
						t.Errorf("ROUTE_ADD line: %q", l)
					}
				}
			}
		}
		if !found {
			t.Errorf("no %s line in %q", want, first)
		}
	}
	if !strings.Contains(strings.Join(first, "\n"), "OPTIONS_SET|"+sid+"|ALL|timeout|30s") {
		t.Errorf("OPTIONS_SET lines: %q", first)
	}

	// A dropped connection: the sidecar resumes its session, nothing replayed.
	rl.cut()
	eventually(t, 10*time.Second, "reconnect", func() bool { return rl.connCount() >= 2 && len(rl.connLines(1)) > 0 && rl.connLines(1)[0] != "" })
	if got := rl.connLines(1)[0]; got != "RECONNECT|"+sid {
		t.Fatalf("first line after a drop: %q, want RECONNECT|%s", got, sid)
	}
	eventually(t, 5*time.Second, "session resumed", func() bool { return strings.Contains(logs.String(), "session resumed") })
	for _, l := range rl.connLines(1) {
		if strings.HasPrefix(l, "REGISTER|") || strings.HasPrefix(l, "ROUTE_ADD|") {
			t.Fatalf("replayed after a successful RECONNECT: %q", rl.connLines(1))
		}
	}
	if !served(p1) {
		t.Fatal("route lost across the reconnect")
	}

	// A proxy without the session (restarted without state): REREGISTER,
	// then REGISTER and replay on the same connection.
	p2 := startProxy(t, "-registry-token", "s3cret")
	rl.point(p2.ls.Registry.String())
	rl.cut()
	eventually(t, 10*time.Second, "registered on the new proxy", func() bool { return served(p2) })
	n := rl.connCount() - 1
	lines := rl.connLines(n)
	if len(lines) < 3 || lines[0] != "RECONNECT|"+sid || !strings.HasPrefix(lines[1], "REGISTER|shop|shop-1|") {
		t.Fatalf("lines after REREGISTER: %q", lines)
	}

	// SIGTERM: CLIENT_SHUTDOWN, the route leaves at once (no grace period).
	stop()
	if !strings.Contains(strings.Join(rl.connLines(n), "\n"), "CLIENT_SHUTDOWN|") {
		t.Fatalf("no CLIENT_SHUTDOWN: %q", rl.connLines(n))
	}
	if r := doHTTP(t, "GET", p2.ls.HTTP.String(), "www.shop.test", "/"); r.status != 404 {
		t.Fatalf("route still served after the sidecar shut down: %d", r.status)
	}
	if !strings.Contains(logs.String(), "session shut down") {
		t.Fatalf("sidecar log: %s", logs)
	}
}

// TestSidecarBackoffUntilRegistryUp: a sidecar started before the proxy
// keeps retrying with backoff and registers once the registry listens; a
// wrong token never registers.
func TestSidecarBackoffUntilRegistryUp(t *testing.T) {
	backend := newProbedBackend(t)
	// A relay whose target refuses connections until the proxy exists.
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := dead.Addr().String()
	dead.Close()
	rl := newRelay(t, deadAddr)
	logs, _ := startSidecar(t, sidecarEnv(rl.ln.Addr().String(), backend.port, map[string]string{"REGISTRY_TOKEN": "right"}))
	wrongLogs, _ := startSidecar(t, sidecarEnv(rl.ln.Addr().String(), backend.port, map[string]string{"REGISTRY_TOKEN": "wrong", "INSTANCE_NAME": "shop-2", "DOMAINS": "evil.test"}))
	time.Sleep(300 * time.Millisecond)
	if !strings.Contains(logs.String(), "reconnecting") {
		t.Fatalf("no retry logged: %s", logs)
	}
	p := startProxy(t, "-registry-token", "right")
	rl.point(p.ls.Registry.String())
	eventually(t, 10*time.Second, "registered after the registry came up", func() bool {
		return doHTTP(t, "GET", p.ls.HTTP.String(), "shop.test", "/").status == 200
	})
	eventually(t, 5*time.Second, "unauthorized logged", func() bool { return strings.Contains(wrongLogs.String(), "ERROR|unauthorized") })
	if r := doHTTP(t, "GET", p.ls.HTTP.String(), "evil.test", "/"); r.status != 404 {
		t.Fatalf("wrong token registered: %d", r.status)
	}
}

func TestSidecarConfig(t *testing.T) {
	var stderr bytes.Buffer
	if code := run([]string{"sidecar"}, env(nil), io.Discard, &stderr); code != 2 {
		t.Fatalf("exit code %d without configuration", code)
	}
	for _, k := range []string{"SERVICE_NAME", "DOMAINS", "PORT"} {
		if !strings.Contains(stderr.String(), k+": required") {
			t.Errorf("missing %s not reported: %s", k, stderr.String())
		}
	}
	stderr.Reset()
	if code := run([]string{"sidecar", "-h"}, env(nil), io.Discard, &stderr); code != 0 || !strings.Contains(stderr.String(), "REGISTRY_TOKEN") {
		t.Fatalf("sidecar -h: %d %s", code, stderr.String())
	}
	c, err := parseSidecarEnv(env(map[string]string{"SERVICE_NAME": "svc", "DOMAINS": "a.test", "PORT": "3000"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.RegistryAddr != "go-proxy:81" || c.Path != "/" || c.Priority != 10 || c.PingInterval != 30*time.Second ||
		!strings.HasPrefix(c.Backend, "http://") || !strings.HasSuffix(c.Backend, ":3000") || c.Instance == "" {
		t.Fatalf("defaults: %+v", c)
	}
	if _, err := parseSidecarEnv(env(map[string]string{"SERVICE_NAME": "s|x", "DOMAINS": "a.test", "PORT": "1", "OPTIONS": "novalue"})); err == nil ||
		!strings.Contains(err.Error(), "SERVICE_NAME") || !strings.Contains(err.Error(), "OPTIONS") {
		t.Fatalf("bad values: %v", err)
	}
	// Detection prefers the web-net range; loopback is never chosen.
	if h := detectBackendHost(netip.MustParsePrefix("10.2.2.0/24")); h == "" || h == "127.0.0.1" {
		t.Fatalf("detected backend host %q", h)
	}
}

// TestSidecarBinarySIGTERM runs the built `go-proxy sidecar` as a process:
// it registers from its environment, and SIGTERM makes it send
// CLIENT_SHUTDOWN and exit 0, so the route leaves at once.
func TestSidecarBinarySIGTERM(t *testing.T) {
	bin := buildBinary(t)
	backend := newProbedBackend(t)
	p := startProxy(t, "-registry-token", "tok", "-session-grace", "60s")
	host, port, _ := net.SplitHostPort(p.ls.Registry.String())
	cmd := exec.Command(bin, "sidecar")
	cmd.Env = append(os.Environ(), "REGISTRY_HOST="+host, "REGISTRY_PORT="+port, "REGISTRY_TOKEN=tok",
		"SERVICE_NAME=shop", "DOMAINS=bin.shop.test", "PORT="+backend.port, "BACKEND_HOST=127.0.0.1")
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	eventually(t, 10*time.Second, "route registered by the sidecar process", func() bool {
		return doHTTP(t, "GET", p.ls.HTTP.String(), "bin.shop.test", "/").status == 200
	})
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("sidecar exit: %v\n%s", err, out)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("sidecar did not exit on SIGTERM:\n%s", out)
	}
	if r := doHTTP(t, "GET", p.ls.HTTP.String(), "bin.shop.test", "/"); r.status != 404 {
		t.Fatalf("route still served after SIGTERM (grace instead of CLIENT_SHUTDOWN): %d\n%s", r.status, out)
	}
	if !strings.Contains(out.String(), "session shut down") {
		t.Fatalf("sidecar log:\n%s", out)
	}
}

// The registry answers CLIENT_SHUTDOWN and closes at once, so the reply and
// the end of the connection can both be waiting when the sidecar looks:
// the reply must win every time, not at random.
func TestSidecarReplyBeforeClose(t *testing.T) {
	backend := newProbedBackend(t)
	p := startProxy(t, "-session-grace", "60s")
	for i := range 20 {
		cfg, err := parseSidecarEnv(sidecarEnv(p.ls.Registry.String(), backend.port, map[string]string{"HEALTH_PATH": ""}))
		if err != nil {
			t.Fatal(err)
		}
		s := newSidecar(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err := s.connect(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := s.register(); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(s.conn, "CLIENT_SHUTDOWN|"+s.sid+"\n"); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, "reply and close both read", func() bool { return len(s.in) == 2 })
		if reply, err := s.reply("CLIENT_SHUTDOWN"); reply != "SHUTDOWN_OK" || err != nil {
			t.Fatalf("round %d: reply %q, %v", i, reply, err)
		}
		if _, err := s.reply("-"); err == nil || s.lost == nil {
			t.Fatalf("round %d: the close after the reply was lost", i)
		}
		s.closeConn()
	}
}
