package main

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Tests of issue 7: /metrics after real traffic, the access log, the
// admin API with its token, and the dashboard in a real headless browser.
// Every test runs the whole proxy as `go-proxy serve` does, on loopback
// listeners with port 0, registers services over the registry protocol
// and sends real HTTP.

// obsProxy is a proxy started in-process.
type obsProxy struct {
	t     testing.TB
	ls    listeners
	token string
	stop  func()
}

func startObs(t testing.TB, args ...string) *obsProxy {
	t.Helper()
	base := []string{"-http-addr", "127.0.0.1:0", "-registry-addr", "127.0.0.1:0", "-admin-addr", "127.0.0.1:0", "-session-grace", "1m"}
	cfg, err := parseConfig(append(base, args...), env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan listeners, 1)
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), ready) }()
	p := &obsProxy{t: t, token: cfg.AdminToken}
	select {
	case p.ls = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("serve: %v", err)
	case <-time.After(15 * time.Second):
		cancel()
		t.Fatal("serve did not start")
	}
	var once sync.Once
	p.stop = func() {
		once.Do(func() {
			obsClient.CloseIdleConnections() // the server's shutdown waits for open connections
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("serve returned %v", err)
				}
			case <-time.After(15 * time.Second):
				t.Error("serve did not stop")
			}
		})
	}
	t.Cleanup(p.stop)
	return p
}

var obsClient = &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 32}}

// request sends one request with Host through the data plane.
func (p *obsProxy) request(method, host, path string, body io.Reader) (int, string) {
	p.t.Helper()
	req, err := http.NewRequest(method, "http://"+p.ls.HTTP.String()+path, body)
	if err != nil {
		p.t.Fatal(err)
	}
	req.Host = host
	resp, err := obsClient.Do(req)
	if err != nil {
		p.t.Fatalf("%s %s%s: %v", method, host, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// admin GETs an admin path; auth is "" (none), "bearer" or "query".
func (p *obsProxy) admin(method, path, auth string) (int, http.Header, string) {
	p.t.Helper()
	u := "http://" + p.ls.Admin.String() + path
	if auth == "query" {
		sep := "?"
		if strings.Contains(path, "?") {
			sep = "&"
		}
		u += sep + "token=" + p.token
	}
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		p.t.Fatal(err)
	}
	if auth == "bearer" {
		req.Header.Set("Authorization", "Bearer "+p.token)
	}
	resp, err := obsClient.Do(req)
	if err != nil {
		p.t.Fatalf("admin %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

func (p *obsProxy) auth() string {
	if p.token != "" {
		return "bearer"
	}
	return ""
}

func (p *obsProxy) scrape() string {
	p.t.Helper()
	code, _, body := p.admin("GET", "/metrics", p.auth())
	if code != 200 {
		p.t.Fatalf("/metrics: %d %s", code, body)
	}
	return body
}

func (p *obsProxy) apiJSON(path string, v any) {
	p.t.Helper()
	code, h, body := p.admin("GET", path, p.auth())
	if code != 200 || !strings.HasPrefix(h.Get("Content-Type"), "application/json") {
		p.t.Fatalf("%s: %d %s %s", path, code, h.Get("Content-Type"), body)
	}
	if err := json.Unmarshal([]byte(body), v); err != nil {
		p.t.Fatalf("%s: %v\n%s", path, err, body)
	}
}

// obsConn is a registry connection bound to one session.
type obsConn struct {
	t   testing.TB
	c   net.Conn
	rd  *bufio.Reader
	sid string
}

func (p *obsProxy) register(service, instance string) *obsConn {
	p.t.Helper()
	c, err := net.Dial("tcp", p.ls.Registry.String())
	if err != nil {
		p.t.Fatal(err)
	}
	p.t.Cleanup(func() { _ = c.Close() })
	oc := &obsConn{t: p.t, c: c, rd: bufio.NewReader(c)}
	ack := oc.say(fmt.Sprintf(`REGISTER|%s|%s|0|{"team":"obs"}`, service, instance))
	if !strings.HasPrefix(ack, "ACK|") {
		p.t.Fatalf("REGISTER: %s", ack)
	}
	oc.sid = strings.TrimPrefix(ack, "ACK|")
	return oc
}

func (c *obsConn) say(line string) string { c.t.Helper(); return c.sayN(line, 1)[0] }

func (c *obsConn) sayN(line string, n int) []string {
	c.t.Helper()
	_ = c.c.SetDeadline(time.Now().Add(15 * time.Second))
	fmt.Fprintf(c.c, "%s\n", line)
	out := make([]string, 0, n)
	for len(out) < n {
		l, err := c.rd.ReadString('\n')
		if err != nil {
			c.t.Fatalf("%s: %v", line, err)
		}
		if strings.HasPrefix(l, "EVENT|") {
			continue
		}
		out = append(out, strings.TrimSpace(l))
	}
	return out
}

// route adds a route and returns its id.
func (c *obsConn) route(domain, path, backend string) string {
	c.t.Helper()
	got := c.say("ROUTE_ADD|" + c.sid + "|" + domain + "|" + path + "|" + backend + "|10")
	if !strings.HasPrefix(got, "ROUTE_OK|") {
		c.t.Fatalf("ROUTE_ADD %s: %s", domain, got)
	}
	return strings.TrimPrefix(got, "ROUTE_OK|")
}

func (c *obsConn) expect(line, want string) {
	c.t.Helper()
	if got := c.say(line); got != want {
		c.t.Fatalf("%s: got %q, want %q", line, got, want)
	}
}

// obsBackend answers "hello"; /status/N answers status N; /slow?ms=N
// waits first; request bodies are read.
func obsBackend(t testing.TB) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if ms, _ := strconv.Atoi(r.URL.Query().Get("ms")); ms > 0 {
			time.Sleep(time.Duration(ms) * time.Millisecond)
		}
		if code, ok := strings.CutPrefix(r.URL.Path, "/status/"); ok {
			n, _ := strconv.Atoi(code)
			w.WriteHeader(n)
		}
		_, _ = io.WriteString(w, "hello")
	}))
	t.Cleanup(s.Close)
	return s
}

// deadAddr is a loopback address nothing listens on.
func deadAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// metric returns the value of one exact series in an exposition.
func metric(text, series string) (float64, bool) {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f, err == nil
		}
	}
	return 0, false
}

func wantMetric(t testing.TB, text, series string, want float64) {
	t.Helper()
	got, ok := metric(text, series)
	if !ok {
		t.Errorf("series %s missing", series)
		return
	}
	if got != want {
		t.Errorf("%s = %v, want %v", series, got, want)
	}
}

func obsEventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestMetricsFamiliesAfterTraffic asserts every metric family on /metrics
// after real registrations and requests, and that the series of a removed
// route disappear.
func TestMetricsFamiliesAfterTraffic(t *testing.T) {
	logPath := filepath.Join(t.TempDir(), "access.log")
	p := startObs(t, "-access-log", logPath)
	be := obsBackend(t)
	dead := "http://" + deadAddr(t)

	shop := p.register("shop", "i1")
	rShop := shop.route("shop.test", "/", be.URL)
	rLimited := shop.route("limited.test", "/", be.URL)
	shop.expect("RATELIMIT_SET|"+shop.sid+"|"+rLimited+"|1|3600", "RATELIMIT_OK")
	rBroken := shop.route("broken.test", "/", dead)
	shop.expect("CIRCUIT_BREAKER_SET|"+shop.sid+"|"+rBroken+"|1|3600|1", "CIRCUIT_OK")
	rSick := shop.route("sick.test", "/", dead)
	shop.expect("HEALTH_SET|"+shop.sid+"|"+rSick+"|/health|1s|1s|1|1", "HEALTH_OK")
	rMaint := shop.route("maint.test", "/", be.URL)
	shop.expect("CONFIG_APPLY", "OK")
	if got := shop.sayN("MAINT_ENTER|"+shop.sid+"|"+rMaint+"|", 2); got[1] != "MAINT_OK|"+rMaint {
		t.Fatalf("MAINT_ENTER: %v", got)
	}

	batch := p.register("batch", "i1")
	rDrain := batch.route("drain.test", "/", be.URL)
	batch.expect("CONFIG_APPLY", "OK")
	if got := batch.say("DRAIN_START|" + batch.sid + "|200ms"); !strings.HasPrefix(got, "DRAIN_OK|") {
		t.Fatalf("DRAIN_START: %s", got)
	}

	ghost := p.register("ghost", "i1")
	rGhost := ghost.route("ghost.test", "/", be.URL)
	ghost.expect("CONFIG_APPLY", "OK")
	_ = ghost.c.Close() // the session enters grace

	// An apply that fails: another service on shop's domain, path and priority.
	rival := p.register("rival", "i1")
	rival.route("shop.test", "/", be.URL)
	if got := rival.say("CONFIG_APPLY"); !strings.HasPrefix(got, "ERROR|") {
		t.Fatalf("conflicting apply: %s", got)
	}
	// Command errors.
	if got := shop.say("BOGUS_COMMAND|x"); !strings.HasPrefix(got, "ERROR|") {
		t.Fatal(got)
	}
	if got := shop.say("ROUTE_REMOVE|" + shop.sid + "|r999"); !strings.HasPrefix(got, "ERROR|") {
		t.Fatal(got)
	}

	// Traffic.
	for i := 0; i < 10; i++ {
		if code, body := p.request("GET", "shop.test", "/", nil); code != 200 || body != "hello" {
			t.Fatalf("shop: %d %q", code, body)
		}
	}
	for i := 0; i < 3; i++ {
		p.request("GET", "shop.test", "/status/404", nil)
	}
	for i := 0; i < 2; i++ {
		p.request("GET", "shop.test", "/status/500", nil)
	}
	p.request("GET", "shop.test", "/status/302", nil)
	if code, _ := p.request("POST", "shop.test", "/upload", strings.NewReader(strings.Repeat("x", 100))); code != 200 {
		t.Fatalf("POST: %d", code)
	}
	if code, _ := p.request("GET", "limited.test", "/", nil); code != 200 {
		t.Fatalf("limited first: %d", code)
	}
	if code, _ := p.request("GET", "limited.test", "/", nil); code != 429 {
		t.Fatalf("limited second: %d", code)
	}
	if code, _ := p.request("GET", "broken.test", "/", nil); code != 502 {
		t.Fatalf("broken: %d", code)
	}
	if code, _ := p.request("GET", "maint.test", "/", nil); code != 503 {
		t.Fatalf("maintenance: %d", code)
	}
	if code, _ := p.request("GET", "nothing.test", "/", nil); code != 404 {
		t.Fatalf("unmatched: %d", code)
	}
	time.Sleep(300 * time.Millisecond) // the drain has ended: drain.test is drained
	if code, _ := p.request("GET", "drain.test", "/", nil); code != 503 {
		t.Fatalf("drained: %d", code)
	}
	slow := make(chan int, 1)
	go func() { code, _ := p.request("GET", "shop.test", "/slow?ms=1500", nil); slow <- code }()

	shopL := `route_id="` + rShop + `",service="shop"`
	var m string
	obsEventually(t, "the slow request in flight", func() bool {
		m = p.scrape()
		v, _ := metric(m, "goproxy_route_in_flight{"+shopL+"}")
		return v == 1
	})
	obsEventually(t, "the sick route unhealthy", func() bool {
		v, ok := metric(p.scrape(), `goproxy_member_healthy{route_id="`+rSick+`",service="shop"}`)
		return ok && v == 0
	})
	if code := <-slow; code != 200 {
		t.Fatalf("slow: %d", code)
	}
	obsEventually(t, "the slow request settled", func() bool {
		m = p.scrape()
		v, _ := metric(m, "goproxy_route_request_duration_seconds_count{"+shopL+"}")
		return v == 18
	})

	// Requests by status class, errors, bytes.
	wantMetric(t, m, "goproxy_route_requests_total{"+shopL+`,status_class="2xx"}`, 12)
	wantMetric(t, m, "goproxy_route_requests_total{"+shopL+`,status_class="3xx"}`, 1)
	wantMetric(t, m, "goproxy_route_requests_total{"+shopL+`,status_class="4xx"}`, 3)
	wantMetric(t, m, "goproxy_route_requests_total{"+shopL+`,status_class="5xx"}`, 2)
	wantMetric(t, m, "goproxy_route_requests_total{"+shopL+`,status_class="1xx"}`, 0)
	wantMetric(t, m, "goproxy_route_errors_total{"+shopL+"}", 2)
	wantMetric(t, m, "goproxy_route_received_bytes_total{"+shopL+"}", 100)
	wantMetric(t, m, "goproxy_route_sent_bytes_total{"+shopL+"}", 18*5)
	wantMetric(t, m, "goproxy_route_in_flight{"+shopL+"}", 0)
	// The latency histogram: the 1.5 s request is above 1 s and within 2.5 s.
	le := func(b string) float64 {
		v, ok := metric(m, "goproxy_route_request_duration_seconds_bucket{"+shopL+`,le="`+b+`"}`)
		if !ok {
			t.Fatalf("bucket %s missing", b)
		}
		return v
	}
	if le("1") != 17 || le("2.5") != 18 || le("+Inf") != 18 {
		t.Errorf("buckets le=1: %v, le=2.5: %v, +Inf: %v; want 17, 18, 18", le("1"), le("2.5"), le("+Inf"))
	}
	if sum, _ := metric(m, "goproxy_route_request_duration_seconds_sum{"+shopL+"}"); sum < 1.5 || sum > 5 {
		t.Errorf("latency sum %v", sum)
	}
	// Members: health, breaker, maintenance, drain, rate limit, standby.
	wantMetric(t, m, "goproxy_member_healthy{"+shopL+"}", 1)
	wantMetric(t, m, `goproxy_member_healthy{route_id="`+rSick+`",service="shop"}`, 0)
	wantMetric(t, m, `goproxy_member_breaker_state{route_id="`+rBroken+`",service="shop",state="open"}`, 1)
	wantMetric(t, m, `goproxy_member_breaker_state{route_id="`+rBroken+`",service="shop",state="closed"}`, 0)
	wantMetric(t, m, "goproxy_member_breaker_state{"+shopL+`,state="closed"}`, 1)
	wantMetric(t, m, `goproxy_member_breaker_failures{route_id="`+rBroken+`",service="shop"}`, 1)
	wantMetric(t, m, `goproxy_member_maintenance{route_id="`+rMaint+`",service="shop"}`, 1)
	wantMetric(t, m, "goproxy_member_maintenance{"+shopL+"}", 0)
	wantMetric(t, m, `goproxy_member_rate_limited_total{route_id="`+rLimited+`",service="shop"}`, 1)
	wantMetric(t, m, `goproxy_member_drained_total{route_id="`+rDrain+`",service="batch"}`, 1)
	wantMetric(t, m, `goproxy_member_draining{route_id="`+rDrain+`",service="batch"}`, 1)
	wantMetric(t, m, `goproxy_member_connected{route_id="`+rGhost+`",service="ghost"}`, 0)
	wantMetric(t, m, "goproxy_member_connected{"+shopL+"}", 1)
	wantMetric(t, m, "goproxy_unmatched_requests_total", 1)
	wantMetric(t, m, "goproxy_routes", 7)
	// Registry.
	wantMetric(t, m, `goproxy_registry_sessions{state="connected"}`, 3)
	wantMetric(t, m, `goproxy_registry_sessions{state="grace"}`, 1)
	wantMetric(t, m, `goproxy_registry_applies_total{result="ok"}`, 3)
	wantMetric(t, m, `goproxy_registry_applies_total{result="error"}`, 1)
	wantMetric(t, m, `goproxy_registry_command_errors_total{command="CONFIG_APPLY"}`, 1)
	wantMetric(t, m, `goproxy_registry_command_errors_total{command="ROUTE_REMOVE"}`, 1)
	wantMetric(t, m, `goproxy_registry_command_errors_total{command="unknown"}`, 1)
	// Access log, Go runtime and process.
	if v, _ := metric(m, "goproxy_access_log_lines_total"); v < 20 {
		t.Errorf("access log lines %v", v)
	}
	wantMetric(t, m, "goproxy_access_log_dropped_total", 0)
	for _, series := range []string{"go_goroutines", "go_memstats_alloc_bytes", "process_cpu_seconds_total", "process_resident_memory_bytes"} {
		if _, ok := metric(m, series); !ok {
			t.Errorf("runtime series %s missing", series)
		}
	}
	// Labels are route ids and services only: no request path anywhere.
	for _, path := range []string{"/slow", "/upload", "/status/", "nothing.test"} {
		if strings.Contains(m, path) {
			t.Errorf("a request path or host (%s) leaked into /metrics", path)
		}
	}
	// Removing a route removes its series.
	if !strings.Contains(m, `route_id="`+rLimited+`"`) {
		t.Fatal("no series of the limited route before removal")
	}
	shop.expect("ROUTE_REMOVE|"+shop.sid+"|"+rLimited, "ROUTE_OK")
	shop.expect("CONFIG_APPLY", "OK")
	m = p.scrape()
	if strings.Contains(m, `route_id="`+rLimited+`"`) {
		t.Errorf("series of removed route %s still exposed", rLimited)
	}
	wantMetric(t, m, "goproxy_routes", 6)
	wantMetric(t, m, "goproxy_route_requests_total{"+shopL+`,status_class="2xx"}`, 12)
	wantMetric(t, m, `goproxy_registry_applies_total{result="ok"}`, 4)
}

// TestAdminAPIAndToken checks the token on every admin path except the
// probes, read-only enforcement, and the JSON API's live state.
func TestAdminAPIAndToken(t *testing.T) {
	p := startObs(t, "-admin-token", "s3cr3t-token")
	be := obsBackend(t)

	for _, path := range []string{"/healthz", "/readyz"} {
		if code, _, _ := p.admin("GET", path, ""); code != 200 {
			t.Errorf("%s without token: %d", path, code)
		}
	}
	for _, path := range []string{"/", "/metrics", "/api/routes", "/api/sessions", "/api/backends", "/api/stats", "/app.js", "/debug/pprof/", "/debug/pprof/heap"} {
		code, h, body := p.admin("GET", path, "")
		if code != 401 || !strings.HasPrefix(h.Get("WWW-Authenticate"), "Bearer") || !strings.Contains(body, "unauthorized") {
			t.Errorf("%s without token: %d %q", path, code, body)
		}
		saved := p.token
		p.token = "wrong"
		if code, _, _ := p.admin("GET", path, "bearer"); code != 401 {
			t.Errorf("%s with a wrong token: %d", path, code)
		}
		p.token = saved
		if code, _, _ := p.admin("GET", path, "bearer"); code != 200 {
			t.Errorf("%s with Bearer token: %d", path, code)
		}
		if code, _, _ := p.admin("GET", path, "query"); code != 200 {
			t.Errorf("%s with ?token=: %d", path, code)
		}
	}
	for _, method := range []string{"POST", "PUT", "DELETE", "PATCH"} {
		if code, h, _ := p.admin(method, "/api/routes", "bearer"); code != 405 || h.Get("Allow") != "GET, HEAD" {
			t.Errorf("%s /api/routes: %d", method, code)
		}
	}
	if code, _, _ := p.admin("GET", "/api/nothing", "bearer"); code != 404 {
		t.Errorf("/api/nothing: %d", code)
	}
	// ?token= hands the token back as a cookie for the dashboard's own
	// requests (its script and API polls).
	_, h, _ := p.admin("GET", "/", "query")
	cookie := h.Get("Set-Cookie")
	if !strings.HasPrefix(cookie, "goproxy_admin_token=s3cr3t-token;") || !strings.Contains(cookie, "HttpOnly") || !strings.Contains(cookie, "SameSite=Strict") {
		t.Errorf("Set-Cookie %q", cookie)
	}
	for _, c := range []struct {
		value string
		want  int
	}{{"s3cr3t-token", 200}, {"forged", 401}} {
		req, _ := http.NewRequest("GET", "http://"+p.ls.Admin.String()+"/api/stats", nil)
		req.AddCookie(&http.Cookie{Name: "goproxy_admin_token", Value: c.value})
		resp, err := obsClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("cookie %q: %d, want %d", c.value, resp.StatusCode, c.want)
		}
	}

	shop := p.register("shop", "i1")
	r1 := shop.route("shop.test,www.shop.test", "/", be.URL)
	shop.expect("HEALTH_SET|"+shop.sid+"|"+r1+"|/health|1s|1s|2|1", "HEALTH_OK")
	r2 := shop.route("shop.test", "/admin", be.URL)
	shop.expect("RATELIMIT_SET|"+shop.sid+"|"+r2+"|50|60", "RATELIMIT_OK")
	shop.expect("CONFIG_APPLY", "OK")
	if got := shop.sayN("MAINT_ENTER|"+shop.sid+"|"+r2+"|", 2); got[1] != "MAINT_OK|"+r2 {
		t.Fatalf("MAINT_ENTER: %v", got)
	}
	batch := p.register("batch", "w7")
	r3 := batch.route("batch.test", "/", be.URL)
	batch.expect("CONFIG_APPLY", "OK")
	if got := batch.say("DRAIN_START|" + batch.sid + "|3600"); !strings.HasPrefix(got, "DRAIN_OK|") {
		t.Fatal(got)
	}
	gone := p.register("gone", "i1")
	gone.route("gone.test", "/", be.URL)
	gone.expect("CONFIG_APPLY", "OK")
	_ = gone.c.Close()
	for i := 0; i < 4; i++ {
		p.request("GET", "www.shop.test", "/", nil)
	}
	p.request("GET", "shop.test", "/status/503", nil)

	var routes struct {
		Routes []struct {
			RouteID string   `json:"route_id"`
			Service string   `json:"service"`
			Domains []string `json:"domains"`
			Path    string   `json:"path"`
			Backend string   `json:"backend"`
			Healthy bool     `json:"healthy"`
			Health  *string  `json:"health_check"`
			Breaker struct{ State string }
			Maint   *struct{ PageURL string }         `json:"maintenance"`
			Drain   *struct{ TrafficPercent float64 } `json:"drain"`
			Limit   *struct{ Requests int64 }         `json:"rate_limit"`
			Stats   struct {
				Requests uint64
				Errors   uint64
				Status   map[string]uint64
				Latency  struct{ Count uint64 }
			}
		}
	}
	obsEventually(t, "the routes' stats", func() bool {
		p.apiJSON("/api/routes", &routes)
		return len(routes.Routes) == 4 && routes.Routes[0].Stats.Requests == 5
	})
	r := routes.Routes[0]
	if r.RouteID != r1 || r.Service != "shop" || strings.Join(r.Domains, ",") != "shop.test,www.shop.test" || r.Path != "/" ||
		r.Backend != be.URL || !r.Healthy || r.Health == nil || *r.Health != "/health" || r.Breaker.State != "closed" ||
		r.Stats.Errors != 1 || r.Stats.Status["2xx"] != 4 || r.Stats.Status["5xx"] != 1 || r.Stats.Latency.Count != 5 {
		t.Errorf("route %+v", r)
	}
	if r := routes.Routes[1]; r.RouteID != r2 || r.Maint == nil || r.Limit == nil || r.Limit.Requests != 50 {
		t.Errorf("maintenance route %+v", r)
	}
	if r := routes.Routes[2]; r.RouteID != r3 || r.Drain == nil || r.Drain.TrafficPercent > 100 || r.Service != "batch" {
		t.Errorf("draining route %+v", r)
	}

	var backends struct {
		Backends []struct {
			RouteID     string `json:"route_id"`
			Backend     string `json:"backend"`
			Connected   bool   `json:"connected"`
			Healthy     bool   `json:"healthy"`
			Breaker     struct{ State string }
			Maintenance *struct {
				PageURL   string    `json:"page_url"`
				EnteredAt time.Time `json:"entered_at"`
			}
			Drain *struct {
				EndsAt time.Time `json:"ends_at"`
			}
		}
	}
	p.apiJSON("/api/backends", &backends)
	if len(backends.Backends) != 4 {
		t.Fatalf("backends: %+v", backends)
	}
	for _, b := range backends.Backends {
		switch b.RouteID {
		case r1:
			if !b.Connected || !b.Healthy || b.Breaker.State != "closed" || b.Maintenance != nil || b.Drain != nil {
				t.Errorf("backend %+v", b)
			}
		case r2:
			if b.Maintenance == nil || b.Maintenance.EnteredAt.IsZero() {
				t.Errorf("maintenance backend %+v", b)
			}
		case r3:
			if b.Drain == nil || time.Until(b.Drain.EndsAt) < 50*time.Minute {
				t.Errorf("draining backend %+v", b)
			}
		default:
			if b.Connected {
				t.Errorf("the closed session's backend is connected: %+v", b)
			}
		}
	}

	var sessions struct {
		Connected int `json:"connected"`
		Grace     int `json:"grace"`
		Sessions  []struct {
			ID          string          `json:"id"`
			Service     string          `json:"service"`
			Instance    string          `json:"instance"`
			Connected   bool            `json:"connected"`
			Routes      []string        `json:"routes"`
			Maintenance []string        `json:"maintenance"`
			GraceEndsAt *time.Time      `json:"grace_ends_at"`
			Drain       *struct{}       `json:"drain"`
			Metadata    json.RawMessage `json:"metadata"`
		}
	}
	obsEventually(t, "the closed session in grace", func() bool {
		p.apiJSON("/api/sessions", &sessions)
		return sessions.Grace == 1
	})
	if sessions.Connected != 2 || len(sessions.Sessions) != 3 {
		t.Fatalf("sessions %+v", sessions)
	}
	s := sessions.Sessions // sorted by service: batch, gone, shop
	if s[0].Service != "batch" || s[0].Instance != "w7" || s[0].ID != batch.sid || s[0].Drain == nil || !s[0].Connected {
		t.Errorf("batch session %+v", s[0])
	}
	if s[1].Service != "gone" || s[1].Connected || s[1].GraceEndsAt == nil || time.Until(*s[1].GraceEndsAt) < 30*time.Second {
		t.Errorf("session in grace %+v", s[1])
	}
	if s[2].Service != "shop" || strings.Join(s[2].Routes, ",") != r1+","+r2 || strings.Join(s[2].Maintenance, ",") != r2 ||
		string(s[2].Metadata) != `{"team":"obs"}` {
		t.Errorf("shop session %+v", s[2])
	}

	var stats struct {
		Requests  uint64  `json:"requests"`
		Unmatched uint64  `json:"unmatched"`
		TimeMS    float64 `json:"time_ms"`
		Latency   struct {
			Count uint64 `json:"count"`
		} `json:"latency"`
		Routes []struct {
			RouteID  string `json:"route_id"`
			Requests uint64 `json:"requests"`
		} `json:"routes"`
	}
	p.apiJSON("/api/stats", &stats)
	if stats.Requests != 5 || stats.Latency.Count != 5 || stats.TimeMS <= 0 || len(stats.Routes) != 4 || stats.Routes[0].Requests != 5 {
		t.Errorf("stats %+v", stats)
	}
	// Unauthorized attempts are counted.
	if v, _ := metric(p.scrape(), "goproxy_admin_unauthorized_total"); v < 14 {
		t.Errorf("goproxy_admin_unauthorized_total %v", v)
	}
	// The dashboard is served.
	code, h, body := p.admin("GET", "/", "bearer")
	if code != 200 || !strings.Contains(body, `<script src="app.js"`) || !strings.Contains(h.Get("Content-Security-Policy"), "default-src 'none'") {
		t.Errorf("dashboard: %d %q", code, body)
	}
}

var clfRe = regexp.MustCompile(`^127\.0\.0\.1 - - \[\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} \+0000\] "(GET|POST) (/\S*) HTTP/1\.1" (\d{3}) (\d+|-)$`)

// TestAccessLogEndToEnd: concurrent requests through `serve` with the
// access log on, in both formats; every request is one well-formed line,
// written by the time serve returns.
func TestAccessLogEndToEnd(t *testing.T) {
	for _, format := range []string{"json", "common"} {
		t.Run(format, func(t *testing.T) {
			logPath := filepath.Join(t.TempDir(), "access.log")
			p := startObs(t, "-access-log", logPath, "-access-log-format", format)
			be := obsBackend(t)
			shop := p.register("shop", "i1")
			routeID := shop.route("shop.test", "/", be.URL)
			shop.expect("CONFIG_APPLY", "OK")
			const workers, per = 8, 40
			var wg sync.WaitGroup
			for w := 0; w < workers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < per; i++ {
						if code, _ := p.request("GET", "shop.test", fmt.Sprintf("/item/%d?w=%d", i, w), nil); code != 200 {
							t.Errorf("status %d", code)
							return
						}
					}
				}()
			}
			wg.Wait()
			p.request("GET", "unknown.test", "/x", nil)
			p.stop() // flushes the log
			data, err := os.ReadFile(logPath)
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
			if len(lines) != workers*per+1 {
				t.Fatalf("%d lines, want %d", len(lines), workers*per+1)
			}
			ok := 0
			for _, l := range lines {
				if format == "common" {
					m := clfRe.FindStringSubmatch(l)
					if m == nil {
						t.Fatalf("malformed CLF line %q", l)
					}
					if m[3] == "200" && strings.HasPrefix(m[2], "/item/") && m[4] == "5" {
						ok++
					}
					continue
				}
				var e struct {
					Time      time.Time `json:"time"`
					Method    string    `json:"method"`
					Host      string    `json:"host"`
					URI       string    `json:"uri"`
					Status    int       `json:"status"`
					BytesSent int64     `json:"bytes_sent"`
					RouteID   string    `json:"route_id"`
					Service   string    `json:"service"`
				}
				if err := json.Unmarshal([]byte(l), &e); err != nil {
					t.Fatalf("malformed JSON line %q: %v", l, err)
				}
				if e.Status == 200 && e.Host == "shop.test" && e.RouteID == routeID && e.Service == "shop" && e.BytesSent == 5 &&
					strings.HasPrefix(e.URI, "/item/") && time.Since(e.Time) < time.Minute {
					ok++
				}
			}
			if ok != workers*per {
				t.Fatalf("%d good lines of %d", ok, workers*per)
			}
		})
	}
}

func TestAccessLogReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "access.log")
	f, err := openReopenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.Write([]byte("one\n"))
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	_, _ = f.Write([]byte("two\n")) // still the moved file
	if err := f.Reopen(); err != nil {
		t.Fatal(err)
	}
	_, _ = f.Write([]byte("three\n"))
	_ = f.Close()
	old, _ := os.ReadFile(path + ".1")
	cur, _ := os.ReadFile(path)
	if string(old) != "one\ntwo\n" || string(cur) != "three\n" {
		t.Fatalf("rotated %q, current %q", old, cur)
	}
}

func TestConfigObservabilityFlags(t *testing.T) {
	c, err := parseConfig(nil, env(map[string]string{
		"PROXY_ACCESS_LOG": "stdout", "PROXY_ACCESS_LOG_FORMAT": "common", "PROXY_ADMIN_TOKEN": "t0k", "PROXY_ACCESS_LOG_BUFFER": "64",
	}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.AccessLog != "stdout" || c.AccessLogFormat != "common" || c.AdminToken != "t0k" || c.AccessLogBuffer != 64 {
		t.Fatalf("%+v", c)
	}
	c, err = parseConfig([]string{"-access-log", "/tmp/x.log", "-admin-token", "flag"}, env(map[string]string{"PROXY_ADMIN_TOKEN": "env"}), io.Discard)
	if err != nil || c.AdminToken != "flag" || c.AccessLog != "/tmp/x.log" || c.AccessLogFormat != "json" {
		t.Fatalf("%+v %v", c, err)
	}
	if _, err := parseConfig([]string{"-access-log-format", "xml"}, env(nil), io.Discard); err == nil {
		t.Fatal("-access-log-format xml accepted")
	}
	var help strings.Builder
	if code := run([]string{"-h"}, env(nil), io.Discard, &help); code != 0 {
		t.Fatalf("-h: %d", code)
	}
	for _, s := range []string{"-access-log ", "-access-log-format", "-access-log-buffer", "-admin-token",
		"PROXY_ACCESS_LOG ", "PROXY_ACCESS_LOG_FORMAT", "PROXY_ACCESS_LOG_BUFFER", "PROXY_ADMIN_TOKEN"} {
		if !strings.Contains(help.String(), strings.TrimSpace(s)) {
			t.Errorf("-h does not document %s", s)
		}
	}
}

// The live proxy's CPU profile (what default.pgo is made from) and the
// profiler's index, counted under one bounded label.
func TestAdminProfile(t *testing.T) {
	p := startObs(t)
	code, _, body := p.admin("GET", "/debug/pprof/profile?seconds=1", "")
	if code != 200 || len(body) < 2 || body[0] != 0x1f || body[1] != 0x8b {
		t.Fatalf("profile: %d, %d bytes", code, len(body))
	}
	zr, err := gzip.NewReader(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if raw, err := io.ReadAll(zr); err != nil || len(raw) == 0 {
		t.Fatalf("profile does not decompress: %v", err)
	}
	if code, _, body := p.admin("GET", "/debug/pprof/", ""); code != 200 || !strings.Contains(body, "goroutine") {
		t.Fatalf("index: %d", code)
	}
	if code, _, body := p.admin("GET", "/debug/pprof/goroutine?debug=1", ""); code != 200 || !strings.Contains(body, "goroutine profile") {
		t.Fatalf("goroutines: %d %.80q", code, body)
	}
	_, _, metrics := p.admin("GET", "/metrics", "")
	if !strings.Contains(metrics, `goproxy_admin_requests_total{path="/debug/pprof/"} 3`) {
		t.Fatalf("pprof requests not counted under one label:\n%s", metrics)
	}
}
