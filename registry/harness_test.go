package registry

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-proxy/go-proxy/health"
	"github.com/go-proxy/go-proxy/router"
	"github.com/go-proxy/go-proxy/upstream"
	"github.com/valyala/fasthttp"
)

// env is a complete proxy on loopback: the real registry server, the
// real fasthttp data plane and the real health checker.
type env struct {
	t        testing.TB
	registry *Registry
	table    *router.Table[*upstream.Member]
	httpAddr string
	regAddr  string
	srv      *fasthttp.Server
	cfg      Config
	closed   bool
}

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startEnv starts a proxy; mutate adjusts the registry settings.
func startEnv(t testing.TB, mutate ...func(*Config)) *env {
	t.Helper()
	cfg := Config{Addr: "127.0.0.1:0", Logger: quietLogger()}
	for _, m := range mutate {
		m(&cfg)
	}
	return startEnvWith(t, cfg, "")
}

func startEnvWith(t testing.TB, cfg Config, httpAddr string) *env {
	t.Helper()
	table := router.NewTable[*upstream.Member]()
	transport := upstream.NewTransport(upstream.DefaultTransportSettings)
	proxy := upstream.NewProxy(table, upstream.Settings{})
	checker := health.NewChecker(health.Settings{Logger: cfg.Logger})
	reg, err := New(cfg, table, transport, checker)
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Restore(); err != nil {
		t.Fatal(err)
	}
	if httpAddr == "" {
		httpAddr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", httpAddr)
	if err != nil {
		t.Fatal(err)
	}
	srv := upstream.NewServer(proxy.Handle, upstream.DefaultServerSettings)
	go func() { _ = srv.Serve(ln) }()
	if err := reg.Start(); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, registry: reg, table: table, httpAddr: ln.Addr().String(), regAddr: reg.Addr().String(), srv: srv, cfg: reg.cfg}
	t.Cleanup(func() {
		e.stop()
		checker.Stop()
	})
	return e
}

// stop shuts the proxy down as SIGTERM would.
func (e *env) stop() {
	if e.closed {
		return
	}
	e.closed = true
	e.registry.BeginShutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = e.srv.ShutdownWithContext(ctx)
	e.registry.Close()
}

// client is a raw registry connection.
type client struct {
	t    testing.TB
	conn net.Conn
	rd   *bufio.Reader
	sid  string
}

func (e *env) dial() *client {
	e.t.Helper()
	c, err := net.Dial("tcp", e.regAddr)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = c.Close() })
	return &client{t: e.t, conn: c, rd: bufio.NewReaderSize(c, 1<<17)}
}

func (c *client) send(line string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, line+"\n"); err != nil {
		c.t.Fatalf("send %q: %v", trunc(line), err)
	}
}

func (c *client) sendRaw(b string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, b); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// recv reads one line within d; ok is false on timeout or EOF.
func (c *client) recvWithin(d time.Duration) (string, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(d))
	line, err := c.rd.ReadString('\n')
	if err != nil {
		return line, err
	}
	return strings.TrimSuffix(line, "\n"), nil
}

func (c *client) recv() string {
	c.t.Helper()
	line, err := c.recvWithin(10 * time.Second)
	if err != nil {
		c.t.Fatalf("no reply line: %v (partial %q)", err, trunc(line))
	}
	return line
}

// do sends a line and returns the reply.
func (c *client) do(line string) string {
	c.t.Helper()
	c.send(line)
	return c.recv()
}

// expect sends a line and requires the exact reply.
func (c *client) expect(line, want string) {
	c.t.Helper()
	if got := c.do(line); got != want {
		c.t.Fatalf("%s\n got: %s\nwant: %s", trunc(line), trunc(got), want)
	}
}

// expectPrefix sends a line and requires the reply to start with prefix.
func (c *client) expectPrefix(line, prefix string) string {
	c.t.Helper()
	got := c.do(line)
	if !strings.HasPrefix(got, prefix) {
		c.t.Fatalf("%s\n got: %s\nwant prefix: %s", trunc(line), trunc(got), prefix)
	}
	return got
}

// noLine requires that nothing arrives within d.
func (c *client) noLine(d time.Duration) {
	c.t.Helper()
	if line, err := c.recvWithin(d); err == nil || line != "" {
		c.t.Fatalf("unexpected line %q (err %v)", trunc(line), err)
	}
}

// expectEOF requires the server to close the connection without a line.
func (c *client) expectEOF(d time.Duration) {
	c.t.Helper()
	line, err := c.recvWithin(d)
	if err != io.EOF || line != "" {
		c.t.Fatalf("want EOF without a line, got %q, %v", trunc(line), err)
	}
}

func trunc(s string) string {
	if len(s) > 200 {
		return s[:200] + "…"
	}
	return s
}

// reg opens a connection and registers instance of service.
func (e *env) reg(instance, service string) *client {
	e.t.Helper()
	c := e.dial()
	got := c.do("REGISTER|" + service + "|" + instance + "|0|{}")
	if !strings.HasPrefix(got, "ACK|") {
		e.t.Fatalf("REGISTER: %s", got)
	}
	c.sid = strings.TrimPrefix(got, "ACK|")
	return c
}

// add stages a route and returns its rid.
func (c *client) add(domains, path, backend string, prio ...int) string {
	c.t.Helper()
	p := 10
	if len(prio) > 0 {
		p = prio[0]
	}
	got := c.do(fmt.Sprintf("ROUTE_ADD|%s|%s|%s|%s|%d", c.sid, domains, path, backend, p))
	if !strings.HasPrefix(got, "ROUTE_OK|") {
		c.t.Fatalf("ROUTE_ADD: %s", got)
	}
	return strings.TrimPrefix(got, "ROUTE_OK|")
}

func (c *client) apply() { c.t.Helper(); c.expect("CONFIG_APPLY|"+c.sid, "OK") }

// backend is a test backend ($A, $B, …) as the fixtures of §7 describe.
type backend struct {
	URL      string
	name     string
	status   atomic.Int32 // 0: normal; otherwise every path answers it
	requests atomic.Int64
	probes   atomic.Int64 // requests to /health
	mu       sync.Mutex
	paths    []string
	srv      *httptest.Server
}

func newBackend(t testing.TB, name string) *backend {
	t.Helper()
	b := &backend{name: name}
	b.srv = httptest.NewServer(http.HandlerFunc(b.serve))
	b.URL = b.srv.URL
	t.Cleanup(b.srv.Close)
	return b
}

func (b *backend) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/health" {
		b.probes.Add(1)
	} else {
		b.requests.Add(1)
	}
	b.mu.Lock()
	b.paths = append(b.paths, r.URL.RequestURI())
	b.mu.Unlock()
	w.Header().Set("X-Got-Host", r.Host)
	w.Header().Set("X-Got-Path", r.URL.RequestURI())
	if s := r.URL.Query().Get("s"); s != "" {
		n, _ := strconv.Atoi(s)
		select {
		case <-time.After(time.Duration(n) * time.Second):
		case <-r.Context().Done():
			return
		}
	}
	_, _ = io.Copy(io.Discard, r.Body)
	if st := b.status.Load(); st != 0 {
		w.WriteHeader(int(st))
		_, _ = io.WriteString(w, b.name)
		return
	}
	if strings.HasPrefix(r.URL.Path, "/status/") {
		n, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/status/"))
		w.WriteHeader(n)
		_, _ = io.WriteString(w, b.name)
		return
	}
	if r.URL.Path == "/big" {
		w.Header().Set("Content-Type", "text/html")
		_, _ = io.WriteString(w, strings.Repeat("x", 10000))
		return
	}
	_, _ = io.WriteString(w, b.name)
}

const deadURL = "http://127.0.0.1:1"

// httpResult is one data-plane response.
type httpResult struct {
	status int
	header http.Header
	body   string
	err    error
}

var httpClient = &http.Client{
	Timeout:   30 * time.Second,
	Transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true},
}

// get sends a GET with the given Host through the proxy.
func (e *env) get(host, path string, hdr ...string) httpResult {
	return e.request("GET", host, path, nil, hdr...)
}

func (e *env) request(method, host, path string, body io.Reader, hdr ...string) httpResult {
	req, err := http.NewRequest(method, "http://"+e.httpAddr+path, body)
	if err != nil {
		return httpResult{err: err}
	}
	req.Host = host
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return httpResult{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return httpResult{status: resp.StatusCode, header: resp.Header, body: string(b), err: err}
}

// mustGet requires a status and body.
func (e *env) mustGet(host, path string, status int, body string) httpResult {
	e.t.Helper()
	r := e.get(host, path)
	if r.err != nil || r.status != status || (body != "" && r.body != body) {
		e.t.Fatalf("GET %s%s: %d %q %v; want %d %q", host, path, r.status, trunc(r.body), r.err, status, body)
	}
	return r
}

// eventually retries cond until it holds or d passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
