package upstream

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-proxy/go-proxy/router"
	"github.com/valyala/fasthttp"
)

// ---------------------------------------------------------------------------
// Harness: a real fasthttp data plane on loopback with a route table that the
// tests fill directly, real backends and real clients.
// ---------------------------------------------------------------------------

type harness struct {
	t         testing.TB
	table     *router.Table[*Member]
	transport *Transport
	proxy     *Proxy
	srv       *fasthttp.Server
	loops     *LoopServer // with UPSTREAM_EVENT_LOOPS; srv is its fallback
	addr      string
	nextID    atomic.Uint64
}

func newHarness(t testing.TB, s Settings) *harness {
	t.Helper()
	h := &harness{t: t, table: router.NewTable[*Member]()}
	h.transport = NewTransport(DefaultTransportSettings)
	h.proxy = NewProxy(h.table, s)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = ln.Addr().String()
	if n := testEventLoops(); n > 0 {
		h.loops = NewLoopServer(h.proxy, DefaultServerSettings, DefaultTransportSettings, n)
		h.srv = h.loops.Fallback()
		go func() { _ = h.loops.Serve(ln) }()
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = h.loops.Shutdown(ctx)
			_ = h.srv.ShutdownWithContext(ctx)
			_ = ln.Close()
		})
		return h
	}
	h.srv = NewServer(h.proxy.Handle, DefaultServerSettings)
	go func() { _ = h.srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = h.srv.ShutdownWithContext(ctx)
	})
	return h
}

// backend returns the Backend for a URL through the harness transport.
func (h *harness) backend(url string) *Backend {
	h.t.Helper()
	be, err := h.transport.Backend(url)
	if err != nil {
		h.t.Fatal(err)
	}
	return be
}

// member returns a connected member of a fresh session forwarding to url.
func (h *harness) member(url string, mutate ...func(*Config)) *Member {
	h.t.Helper()
	return h.memberOf(NewSession(fmt.Sprint("s", h.nextID.Load()+1), "svc", true), url, mutate...)
}

func (h *harness) memberOf(s *Session, url string, mutate ...func(*Config)) *Member {
	h.t.Helper()
	cfg := &Config{Backend: h.backend(url)}
	for _, f := range mutate {
		f(cfg)
	}
	return NewMember(h.nextID.Add(1), s, cfg, nil)
}

// route publishes one pool: members sharing domain, path and priority.
func (h *harness) route(domain, path string, members ...*Member) {
	h.t.Helper()
	h.table.Update(func(tx *router.Txn[*Member]) {
		for _, m := range members {
			tx.Add(&router.Route[*Member]{ID: m.RouteID, Domains: []string{domain}, Path: path, Member: m})
		}
	})
}

// url is the proxy URL for a path; requests set Host separately.
func (h *harness) url(path string) string { return "http://" + h.addr + path }

// httpClient is a plain net/http client that never follows redirects,
// never adds Accept-Encoding and gives up after 10 s so a hang fails.
func httpClient() *http.Client {
	return &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 16},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// get sends one request with the given Host through the proxy and returns
// status, headers and body.
func (h *harness) do(c *http.Client, method, host, path string, body io.Reader) (int, http.Header, string) {
	h.t.Helper()
	req, err := http.NewRequest(method, h.url(path), body)
	if err != nil {
		h.t.Fatal(err)
	}
	req.Host = host
	resp, err := c.Do(req)
	if err != nil {
		h.t.Fatalf("%s %s%s: %v", method, host, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatalf("%s %s%s: reading body: %v", method, host, path, err)
	}
	return resp.StatusCode, resp.Header, string(b)
}

// namedBackend answers every request with its name, like the $A/$B
// fixtures of registry-v2 §7: /status/<n> answers status n.
func namedBackend(t testing.TB, name string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("X-Backend", name)
		w.Header().Set("X-Got-Host", r.Host)
		w.Header().Set("X-Got-Path", r.RequestURI)
		if code, ok := strings.CutPrefix(r.URL.Path, "/status/"); ok {
			n, _ := strconv.Atoi(code)
			w.WriteHeader(n)
		}
		_, _ = io.WriteString(w, name)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// namedHandler starts a net/http backend with the given handler.
func namedHandler(t testing.TB, fn http.HandlerFunc) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(fn)
	t.Cleanup(srv.Close)
	return srv
}

// seenRequest is what echoBackend reports about the request it received.
type seenRequest struct {
	Method        string
	Host          string
	RequestURI    string
	Proto         string
	Header        http.Header
	TransferEnc   []string
	ContentLength int64
	Body          string
}

// echoBackend answers with a JSON description of the request it got.
func echoBackend(t testing.TB) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(seenRequest{
			Method: r.Method, Host: r.Host, RequestURI: r.RequestURI, Proto: r.Proto,
			Header: r.Header, TransferEnc: r.TransferEncoding, ContentLength: r.ContentLength, Body: string(b),
		})
	}))
	t.Cleanup(srv.Close)
	return srv
}

// rawBackend is a TCP server that hands each parsed request to answer,
// which writes whatever bytes it likes; answer returns false to close the
// connection.
func rawBackend(t testing.TB, answer func(req *http.Request, conn net.Conn) bool) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					_, _ = io.Copy(io.Discard, req.Body)
					if !answer(req, c) {
						return
					}
				}
			}()
		}
	}()
	return "http://" + ln.Addr().String()
}

// rawConn is a client connection that writes requests byte for byte and
// reads responses without any normalisation beyond header key case.
type rawConn struct {
	t    testing.TB
	conn net.Conn
	br   *bufio.Reader
}

func (h *harness) dialRaw() *rawConn {
	h.t.Helper()
	c, err := net.DialTimeout("tcp", h.addr, 5*time.Second)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { _ = c.Close() })
	return &rawConn{t: h.t, conn: c, br: bufio.NewReader(c)}
}

type rawResponse struct {
	Proto  string
	Status int
	Header textproto.MIMEHeader
	Body   []byte
}

// roundTrip writes a request without a body (lines joined with CRLF, blank
// line added) and reads the response.
func (rc *rawConn) roundTrip(head bool, lines ...string) *rawResponse {
	rc.t.Helper()
	return rc.roundTripRaw(head, strings.Join(lines, "\r\n")+"\r\n\r\n")
}

// roundTripRaw writes raw bytes and reads one response.
func (rc *rawConn) roundTripRaw(head bool, raw string) *rawResponse {
	rc.t.Helper()
	_ = rc.conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(rc.conn, raw); err != nil {
		rc.t.Fatal(err)
	}
	resp, err := readRawResponse(rc.br, head)
	if err != nil {
		rc.t.Fatal(err)
	}
	return resp
}

func readRawResponse(br *bufio.Reader, head bool) (*rawResponse, error) {
	tp := textproto.NewReader(br)
	line, err := tp.ReadLine()
	if err != nil {
		return nil, fmt.Errorf("status line: %w", err)
	}
	proto, rest, _ := strings.Cut(line, " ")
	code, _, _ := strings.Cut(rest, " ")
	status, err := strconv.Atoi(code)
	if err != nil {
		return nil, fmt.Errorf("status line %q", line)
	}
	hdr, err := tp.ReadMIMEHeader()
	if err != nil {
		return nil, fmt.Errorf("headers: %w", err)
	}
	r := &rawResponse{Proto: proto, Status: status, Header: hdr}
	if head || status < 200 || status == 204 || status == 304 {
		return r, nil
	}
	switch {
	case strings.EqualFold(hdr.Get("Transfer-Encoding"), "chunked"):
		r.Body, err = io.ReadAll(httputil.NewChunkedReader(br))
		if err == nil {
			// The chunked reader stops at the last chunk; the trailer
			// section (here empty) ends with a blank line.
			_, err = tp.ReadMIMEHeader()
		}
	case hdr.Get("Content-Length") != "":
		n, _ := strconv.Atoi(hdr.Get("Content-Length"))
		r.Body = make([]byte, n)
		_, err = io.ReadFull(br, r.Body)
	default:
		r.Body, err = io.ReadAll(br)
	}
	return r, err
}

// eventually polls cond for up to 5 s.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// events records live-state changes reported by members.
type events struct {
	mu      sync.Mutex
	breaker []string
	health  []string
}

func (e *events) HealthChanged(m *Member, healthy bool, reason string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.health = append(e.health, fmt.Sprintf("%v:%s", healthy, reason))
}

func (e *events) BreakerChanged(m *Member, from, to BreakerState, failures int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.breaker = append(e.breaker, from.String()+"->"+to.String())
}

func (e *events) breakerLog() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.breaker...)
}

// ---------------------------------------------------------------------------
// Generated responses and errors (registry-v2 §6.12).
// ---------------------------------------------------------------------------

func TestNoRoute404(t *testing.T) {
	h := newHarness(t, Settings{})
	a := namedBackend(t, "A")
	h.route("known.test", "/api", h.member(a.URL))
	c := httpClient()
	for _, tc := range []struct{ host, path string }{
		{"unknown.test", "/"},       // unknown host
		{"known.test", "/other"},    // known host, no path matches
		{"known.test", "/apix"},     // not on a segment boundary
		{"a.known.test", "/api/x"},  // no wildcard route
		{"KNOWN.test.:80", "/api/"}, // normalised host does match: control
	} {
		start := time.Now()
		status, hdr, body := h.do(c, "GET", tc.host, tc.path, nil)
		if tc.path == "/api/" {
			if status != 200 || body != "A" {
				t.Errorf("%s%s: got %d %q, want 200 A", tc.host, tc.path, status, body)
			}
			continue
		}
		if status != 404 {
			t.Errorf("%s%s: status %d, want 404", tc.host, tc.path, status)
		}
		if ct := hdr.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
			t.Errorf("%s%s: Content-Type %q", tc.host, tc.path, ct)
		}
		if len(body) == 0 || len(body) >= 1024 || strings.Contains(body, "known") {
			t.Errorf("%s%s: body %q: want short text naming no host", tc.host, tc.path, body)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("%s%s: took %v", tc.host, tc.path, d)
		}
	}
}

func TestBackendConnectRefused502(t *testing.T) {
	h := newHarness(t, Settings{})
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	_ = ln.Close()
	m := h.member(dead)
	h.route("dead.test", "/", m)
	c := httpClient()
	start := time.Now()
	status, hdr, body := h.do(c, "GET", "dead.test", "/x", nil)
	if status != 502 {
		t.Fatalf("status %d, want 502", status)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("502 took %v", d)
	}
	if ct := hdr.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
	if len(body) == 0 || len(body) > 64 {
		t.Errorf("body %q: want a short text", body)
	}
	if f, _, _, _ := m.Breaker.Snapshot(); f != 1 {
		t.Errorf("breaker failures %d, want 1 (connect error is a failure)", f)
	}
	rep := m.Stats.Report(time.Now().UnixNano())
	if rep.Requests != 1 || rep.Errors != 1 || rep.StatusCodes[502] != 1 {
		t.Errorf("stats %+v: want one 502 counted as an error", rep)
	}
}

func TestBackendSilent504(t *testing.T) {
	h := newHarness(t, Settings{})
	// A backend that accepts and reads but never answers.
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held sync.WaitGroup
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop); _ = ln.Close(); held.Wait() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held.Add(1)
			go func() {
				defer held.Done()
				defer c.Close()
				go func() { _, _ = io.Copy(io.Discard, c) }()
				<-stop
			}()
		}
	}()
	m := h.member("http://"+ln.Addr().String(), func(c *Config) { c.Timeout = 300 * time.Millisecond })
	h.route("silent.test", "/", m)
	c := httpClient()
	for i := 0; i < 2; i++ {
		start := time.Now()
		status, hdr, body := h.do(c, "GET", "silent.test", "/", nil)
		d := time.Since(start)
		if status != 504 {
			t.Fatalf("status %d, want 504", status)
		}
		if d < 300*time.Millisecond || d > 1500*time.Millisecond {
			t.Errorf("504 after %v, want about the 300ms timeout", d)
		}
		if ct := hdr.Get("Content-Type"); ct != "text/plain; charset=utf-8" || len(body) == 0 || len(body) > 64 {
			t.Errorf("504 response: Content-Type %q body %q", ct, body)
		}
	}
	if f, _, _, _ := m.Breaker.Snapshot(); f != 2 {
		t.Errorf("breaker failures %d, want 2 (a response timeout is a failure)", f)
	}
}

func TestMaxBodySize413(t *testing.T) {
	h := newHarness(t, Settings{})
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprint(w, n)
	}))
	t.Cleanup(srv.Close)
	h.route("small.test", "/", h.member(srv.URL, func(c *Config) { c.MaxBodySize = 1000 }))
	c := httpClient()

	// Declared length over the limit: 413 without contacting the backend.
	status, _, body := h.do(c, "POST", "small.test", "/", strings.NewReader(strings.Repeat("x", 1001)))
	if status != 413 || hits.Load() != 0 {
		t.Errorf("declared 1001 bytes: %d %q, backend hits %d; want 413 and no backend contact", status, body, hits.Load())
	}
	// Within the limit: forwarded.
	status, _, body = h.do(c, "POST", "small.test", "/", strings.NewReader(strings.Repeat("x", 1000)))
	if status != 200 || body != "1000" {
		t.Errorf("1000 bytes: %d %q, want 200 1000", status, body)
	}
	// Chunked body growing past the limit: 413 (no response had started).
	status, _, body = h.do(c, "POST", "small.test", "/", io.MultiReader(strings.NewReader(strings.Repeat("y", 4000))))
	if status != 413 {
		t.Errorf("chunked 4000 bytes: %d %q, want 413", status, body)
	}
}

// ---------------------------------------------------------------------------
// Member selection (registry-v2 §6.3) through real requests.
// ---------------------------------------------------------------------------

func countBackends(t *testing.T, h *harness, host string, n int) map[string]int {
	t.Helper()
	c := httpClient()
	seen := map[string]int{}
	for i := 0; i < n; i++ {
		status, hdr, body := h.do(c, "GET", host, "/", nil)
		if status != 200 {
			seen[fmt.Sprintf("%d %s", status, body)]++
			continue
		}
		seen[hdr.Get("X-Backend")]++
	}
	return seen
}

func TestSelectRoundRobin(t *testing.T) {
	h := newHarness(t, Settings{})
	a, b := namedBackend(t, "A"), namedBackend(t, "B")
	h.route("rr.test", "/", h.member(a.URL), h.member(b.URL))
	got := countBackends(t, h, "rr.test", 100)
	if got["A"] != 50 || got["B"] != 50 {
		t.Errorf("round-robin over 2: %v, want 50/50", got)
	}
}

func TestSelectStandbyOnlyWithoutConnected(t *testing.T) {
	h := newHarness(t, Settings{})
	a, b := namedBackend(t, "A"), namedBackend(t, "B")
	sa := NewSession("sa", "svc", false) // in grace: standby
	sb := NewSession("sb", "svc", true)
	ma, mb := h.memberOf(sa, a.URL), h.memberOf(sb, b.URL)
	h.route("sb.test", "/", ma, mb)

	if got := countBackends(t, h, "sb.test", 20); got["B"] != 20 {
		t.Errorf("connected B present: %v, want all to B", got)
	}
	// The connected member stops being present (unhealthy): standby serves.
	mb.Health.Record(false, "down", 1, 1)
	if got := countBackends(t, h, "sb.test", 20); got["A"] != 20 {
		t.Errorf("connected B unhealthy: %v, want all to standby A", got)
	}
	mb.Health.Record(true, "up", 1, 1)
	// Both standby: spread over both.
	sb.SetConnected(false)
	if got := countBackends(t, h, "sb.test", 20); got["A"] != 10 || got["B"] != 10 {
		t.Errorf("both standby: %v, want 10/10", got)
	}
	// A reconnects: only A.
	sa.SetConnected(true)
	if got := countBackends(t, h, "sb.test", 20); got["A"] != 20 {
		t.Errorf("A connected, B standby: %v, want all to A", got)
	}
}

func TestSelectUnavailable503(t *testing.T) {
	h := newHarness(t, Settings{})
	a := namedBackend(t, "A")
	m := h.member(a.URL, func(c *Config) { c.Headers = []Header{{Name: []byte("X-Route"), Value: []byte("r")}} })
	h.route("down.test", "/", m)
	m.Health.Record(false, "probe failed", 1, 1)
	status, hdr, body := h.do(httpClient(), "GET", "down.test", "/", nil)
	if status != 503 || hdr.Get("Retry-After") != "10" || hdr.Get("X-Route") != "" || body == "" || strings.Contains(body, "draining") {
		t.Errorf("all unhealthy: %d %v %q, want 503 Retry-After 10, no route headers", status, hdr, body)
	}
}

func TestSelectDrain(t *testing.T) {
	h := newHarness(t, Settings{})
	a, b := namedBackend(t, "A"), namedBackend(t, "B")
	sa := NewSession("sa", "svc", true)
	ma, mb := h.memberOf(sa, a.URL), h.member(b.URL)
	h.route("drain.test", "/", ma, mb)
	now := time.Now()

	// A's drain is complete: A gets nothing, B everything.
	sa.SetDrain(&Drain{StartedAt: now.Add(-2 * time.Minute), EndsAt: now.Add(-time.Minute)})
	if got := countBackends(t, h, "drain.test", 20); got["B"] != 20 {
		t.Errorf("A drained: %v, want all to B", got)
	}
	// A running drain keeps a share p: tested statistically in
	// TestChooseDrainShare.

	// Only a drained member: drain response, attributed to it.
	h2 := newHarness(t, Settings{})
	sd := NewSession("sd", "svc", true)
	md := h2.memberOf(sd, a.URL)
	h2.route("drained.test", "/", md)
	sd.SetDrain(&Drain{StartedAt: now.Add(-2 * time.Minute), EndsAt: now.Add(-time.Minute)})
	status, hdr, body := h2.do(httpClient(), "GET", "drained.test", "/", nil)
	if status != 503 || body != "Service draining" || hdr.Get("Retry-After") != "60" || hdr.Get("Content-Type") != "text/plain; charset=utf-8" {
		t.Errorf("drained: %d %v %q, want 503 Service draining Retry-After 60", status, hdr, body)
	}
	if rep := md.Stats.Report(time.Now().UnixNano()); rep.StatusCodes[503] != 1 {
		t.Errorf("drain response not attributed to the drained member: %+v", rep)
	}
	// DRAIN_CANCEL: serving again.
	sd.SetDrain(nil)
	if status, _, body := h2.do(httpClient(), "GET", "drained.test", "/", nil); status != 200 || body != "A" {
		t.Errorf("after cancel: %d %q", status, body)
	}
}

func TestSelectMaintenance(t *testing.T) {
	h := newHarness(t, Settings{})
	a, b := namedBackend(t, "A"), namedBackend(t, "B")
	page := namedBackend(t, "maint")
	ma, mb := h.member(a.URL), h.member(b.URL)
	h.route("mt.test", "/", ma, mb)
	c := httpClient()

	// One member in maintenance: the other serves everything.
	ma.SetMaintenance(&Maintenance{EnteredAt: time.Now()})
	if got := countBackends(t, h, "mt.test", 10); got["B"] != 10 {
		t.Errorf("A in maintenance: %v, want all to B", got)
	}
	// Both: the built-in page of the member that entered last.
	mb.SetMaintenance(&Maintenance{EnteredAt: time.Now()})
	status, hdr, body := h.do(c, "GET", "mt.test", "/", nil)
	if status != 503 || hdr.Get("X-Maintenance-Mode") != "true" || hdr.Get("Retry-After") != "300" ||
		hdr.Get("Cache-Control") != "no-store" || hdr.Get("Content-Type") != "text/html; charset=utf-8" ||
		!strings.Contains(body, "maintenance") {
		t.Errorf("built-in page: %d %v %q", status, hdr, body)
	}
	if rep := mb.Stats.Report(time.Now().UnixNano()); rep.StatusCodes[503] != 1 {
		t.Errorf("maintenance response not attributed to the latest member: %+v", rep)
	}
	// With a page URL: proxied like a backend, path joined, Host rewritten.
	mb.SetMaintenance(&Maintenance{PageURL: page.URL + "/p", Page: h.backend(page.URL + "/p"), EnteredAt: time.Now()})
	status, hdr, body = h.do(c, "GET", "mt.test", "/x?y=1", nil)
	if status != 200 || body != "maint" || hdr.Get("X-Maintenance-Mode") != "true" || hdr.Get("X-Got-Path") != "/p/x?y=1" ||
		hdr.Get("X-Got-Host") != strings.TrimPrefix(page.URL, "http://") {
		t.Errorf("page: %d %v %q", status, hdr, body)
	}
	// The page is unreachable: built-in page.
	page.Close()
	status, hdr, _ = h.do(c, "GET", "mt.test", "/", nil)
	if status != 503 || hdr.Get("Retry-After") != "300" || hdr.Get("X-Maintenance-Mode") != "true" {
		t.Errorf("unreachable page: %d %v", status, hdr)
	}
	// WebSocket upgrades get the maintenance response, not a tunnel.
	rc := h.dialRaw()
	resp := rc.roundTrip(false, "GET / HTTP/1.1", "Host: mt.test", "Connection: Upgrade", "Upgrade: websocket",
		"Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")
	if resp.Status != 503 || resp.Header.Get("X-Maintenance-Mode") != "true" {
		t.Errorf("upgrade in maintenance: %d %v", resp.Status, resp.Header)
	}
	// Leaving maintenance: served again.
	ma.SetMaintenance(nil)
	mb.SetMaintenance(nil)
	if got := countBackends(t, h, "mt.test", 10); got["A"] != 5 || got["B"] != 5 {
		t.Errorf("after maintenance: %v", got)
	}
}

func TestSelectRateLimitFallbackAnd429(t *testing.T) {
	h := newHarness(t, Settings{})
	a, b := namedBackend(t, "A"), namedBackend(t, "B")
	ma, mb := h.member(a.URL), h.member(b.URL)
	h.route("rl.test", "/", ma, mb)
	ma.SetRateLimit(2, time.Minute)

	// A's bucket runs dry after 2: the rest go to B.
	if got := countBackends(t, h, "rl.test", 20); got["A"] != 2 || got["B"] != 18 {
		t.Errorf("A limited to 2: %v, want A 2, B 18", got)
	}
	// Both dry: 429 with Retry-After rounded up from A's (first tried) wait.
	mb.SetRateLimit(1, 5*time.Second)
	c := httpClient()
	seen429 := 0
	for i := 0; i < 4; i++ {
		status, hdr, body := h.do(c, "GET", "rl.test", "/", nil)
		if status == 200 {
			continue
		}
		seen429++
		if status != 429 || body != "Too Many Requests" || hdr.Get("Content-Type") != "text/plain; charset=utf-8" {
			t.Errorf("exhausted: %d %v %q", status, hdr, body)
		}
		ra, err := strconv.Atoi(hdr.Get("Retry-After"))
		if err != nil || ra < 1 || ra > 60 {
			t.Errorf("Retry-After %q, want 1..60", hdr.Get("Retry-After"))
		}
	}
	if seen429 != 3 {
		t.Errorf("got %d 429s of 4, want 3 (B had one token)", seen429)
	}
	repA, repB := ma.Stats.Report(time.Now().UnixNano()), mb.Stats.Report(time.Now().UnixNano())
	if repA.StatusCodes[429]+repB.StatusCodes[429] != 3 {
		t.Errorf("429s attributed: A %v B %v", repA.StatusCodes, repB.StatusCodes)
	}
}

func TestRetryOnConnectFailure(t *testing.T) {
	h := newHarness(t, Settings{})
	ln, _ := net.Listen("tcp4", "127.0.0.1:0")
	dead := "http://" + ln.Addr().String()
	_ = ln.Close()
	b := namedBackend(t, "B")
	retry := func(c *Config) { c.Retries = 1 }
	md, mb := h.member(dead, retry), h.member(b.URL, retry)
	md.Breaker.Configure(BreakerSettings{}) // threshold 0: keep it in the pool
	h.route("retry.test", "/", md, mb)
	c := httpClient()
	for i := 0; i < 6; i++ {
		if status, _, body := h.do(c, "GET", "retry.test", "/", nil); status != 200 || body != "B" {
			t.Errorf("GET %d: %d %q, want B after a retry", i, status, body)
		}
	}
	// POST is not idempotent: the dead member's turn gives 502.
	var got []int
	for i := 0; i < 4; i++ {
		status, _, _ := h.do(c, "POST", "retry.test", "/", strings.NewReader("x"))
		got = append(got, status)
	}
	n502 := 0
	for _, s := range got {
		if s == 502 {
			n502++
		}
	}
	if n502 != 2 {
		t.Errorf("POST statuses %v: want two 502s (no retry)", got)
	}
}

func TestBreakerThroughProxy(t *testing.T) {
	h := newHarness(t, Settings{})
	var fail atomic.Bool
	fail.Store(true)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fail.Load() {
			http.Error(w, "backend down", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(srv.Close)
	ev := &events{}
	m := NewMember(h.nextID.Add(1), NewSession("s", "svc", true), &Config{Backend: h.backend(srv.URL)}, ev)
	m.Breaker.Configure(BreakerSettings{Threshold: 3, Timeout: 200 * time.Millisecond, HalfOpenRequests: 1})
	h.route("cb.test", "/", m)
	c := httpClient()
	for i := 0; i < 3; i++ {
		if status, _, body := h.do(c, "GET", "cb.test", "/", nil); status != 503 || body != "backend down\n" {
			t.Fatalf("request %d: %d %q, want the backend's own 503", i, status, body)
		}
	}
	status, hdr, body := h.do(c, "GET", "cb.test", "/", nil)
	if status != 503 || hdr.Get("Retry-After") != "10" || body == "backend down\n" {
		t.Errorf("open breaker: %d %v %q, want the proxy's 503", status, hdr, body)
	}
	time.Sleep(250 * time.Millisecond)
	fail.Store(false)
	if status, _, body := h.do(c, "GET", "cb.test", "/", nil); status != 200 || body != "ok" {
		t.Errorf("half-open trial: %d %q", status, body)
	}
	if s := m.Breaker.State(time.Now().UnixNano()); s != BreakerClosed {
		t.Errorf("after a successful trial the breaker is %v", s)
	}
	want := []string{"closed->open", "open->half-open", "half-open->closed"}
	if got := ev.breakerLog(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("breaker events %v, want %v", got, want)
	}
}

func TestStatsThroughProxy(t *testing.T) {
	h := newHarness(t, Settings{})
	a := namedBackend(t, "AAAA")
	m1 := h.member(a.URL)
	m2 := h.member(a.URL)
	h.route("st.test", "/", m1, m2)
	c := httpClient()
	// m1 gets requests 1, 3, 5; m2 gets 2, 4, 6.
	h.do(c, "GET", "st.test", "/", nil)
	h.do(c, "GET", "st.test", "/", nil)
	h.do(c, "GET", "st.test", "/status/404", nil)
	h.do(c, "GET", "st.test", "/status/500", nil)
	h.do(c, "POST", "st.test", "/", strings.NewReader(strings.Repeat("p", 100)))
	h.do(c, "GET", "unknown.test", "/", nil) // counts nowhere
	now := time.Now().UnixNano()
	eventually(t, "stats settle", func() bool { return m1.Stats.Report(now).Requests == 3 })
	r1 := m1.Stats.Report(now)
	r2 := m2.Stats.Report(now)
	if r1.StatusCodes[200] != 2 || r1.StatusCodes[404] != 1 || r1.Errors != 0 {
		t.Errorf("m1 %+v", r1)
	}
	if r1.BytesSent != 12 || r1.BytesReceived != 100 {
		t.Errorf("m1 bytes sent %d received %d, want 12 and 100", r1.BytesSent, r1.BytesReceived)
	}
	if r2.Requests != 2 || r2.StatusCodes[200] != 1 || r2.StatusCodes[500] != 1 || r2.Errors != 1 || r2.BytesSent != 8 {
		t.Errorf("m2 %+v", r2)
	}
	if r1.AvgMS <= 0 || r1.P99MS <= 0 {
		t.Errorf("latency not recorded: %+v", r1)
	}
	if m1.InFlight.Load() != 0 || m1.Session.InFlight.Load() != 0 {
		t.Errorf("in flight after the requests: %d / %d", m1.InFlight.Load(), m1.Session.InFlight.Load())
	}
}

// poolOf builds a pool the way the router does, for selection tests that
// need no traffic.
func poolOf(members ...*Member) *router.Pool[*Member] {
	return &router.Pool[*Member]{Path: "/", Members: members}
}

func bareMember(id uint64, s *Session) *Member {
	return NewMember(id, s, &Config{}, nil)
}

// TestChooseDrainShare: a draining member keeps the fraction p of the
// requests that the balancer gives it; the rest are shed to a member that
// is not draining, then to a standby member, then answered with the drain
// response (§6.3 step 5, §6.5).
func TestChooseDrainShare(t *testing.T) {
	const n = 200_000
	now := time.Now()
	half := &Drain{StartedAt: now.Add(-500 * time.Second), EndsAt: now.Add(500 * time.Second)} // p = 50 %
	at := now.UnixNano()

	sa := NewSession("a", "svc", true)
	sa.SetDrain(half)
	a, b := bareMember(1, sa), bareMember(2, NewSession("b", "svc", true))
	pool := poolOf(a, b)
	counts := map[*Member]int{}
	for i := 0; i < n; i++ {
		c := choose(pool, at, 0)
		if c.outcome != outcomeForward {
			t.Fatalf("outcome %d", c.outcome)
		}
		counts[c.member]++
	}
	if share := float64(counts[a]) / n; math.Abs(share-0.25) > 0.01 {
		t.Errorf("draining member at p=50%% of a pool of 2 got %.3f of requests, want 0.25", share)
	}

	// Alone in the connected group, shedding goes to a standby member.
	sb := NewSession("b2", "svc", false)
	standby := bareMember(3, sb)
	pool = poolOf(a, standby)
	counts = map[*Member]int{}
	for i := 0; i < n; i++ {
		counts[choose(pool, at, 0).member]++
	}
	if share := float64(counts[a]) / n; math.Abs(share-0.5) > 0.01 {
		t.Errorf("with a standby member: draining member got %.3f, want 0.5", share)
	}

	// Nobody to shed to: the drain response for the shed half.
	pool = poolOf(a)
	drained := 0
	for i := 0; i < n; i++ {
		c := choose(pool, at, 0)
		if c.outcome == outcomeDrain {
			if c.member != a {
				t.Fatal("drain response attributed to another member")
			}
			drained++
		}
	}
	if share := float64(drained) / n; math.Abs(share-0.5) > 0.01 {
		t.Errorf("alone at p=50%%: %.3f drain responses, want 0.5", share)
	}
}

// TestChooseSkipsTried: a retry goes to a member not tried yet.
func TestChooseSkipsTried(t *testing.T) {
	s := NewSession("s", "svc", true)
	ms := []*Member{bareMember(1, s), bareMember(2, s), bareMember(3, s)}
	pool := poolOf(ms...)
	for i := 0; i < 30; i++ {
		c := choose(pool, t0, 0b101)
		if c.outcome != outcomeForward || c.member != ms[1] {
			t.Fatalf("tried {0,2}: got member %d", c.member.RouteID)
		}
	}
	if c := choose(pool, t0, 0b111); c.outcome != outcomeUnavailable {
		t.Errorf("all tried: outcome %d, want unavailable", c.outcome)
	}
}

// TestChooseMaintenanceKeepsStandbyOut: a connected member in maintenance
// is present, so standby members are not used and the maintenance page is
// served (§6.3 consequences).
func TestChooseMaintenanceKeepsStandbyOut(t *testing.T) {
	a := bareMember(1, NewSession("a", "svc", true))
	b := bareMember(2, NewSession("b", "svc", false))
	a.SetMaintenance(&Maintenance{EnteredAt: time.Now()})
	c := choose(poolOf(a, b), t0, 0)
	if c.outcome != outcomeMaintenance || c.member != a {
		t.Errorf("outcome %d member %d, want maintenance of the connected member", c.outcome, c.member.RouteID)
	}
}

// A request refused before it reaches the backend (413 here) takes no
// rate-limit token (§6.8: only forwarded requests take one).
func TestRefusedRequestKeepsRateLimitToken(t *testing.T) {
	h := newHarness(t, Settings{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		fmt.Fprint(w, "ok")
	}))
	t.Cleanup(srv.Close)
	m := h.member(srv.URL, func(c *Config) { c.MaxBodySize = 10 })
	m.SetRateLimit(1, time.Hour)
	h.route("rl413.test", "/", m)
	c := httpClient()
	for i := 0; i < 3; i++ {
		if status, _, _ := h.do(c, "POST", "rl413.test", "/", strings.NewReader(strings.Repeat("x", 11))); status != 413 {
			t.Fatalf("oversized POST %d: status %d, want 413", i, status)
		}
	}
	if status, _, body := h.do(c, "GET", "rl413.test", "/", nil); status != 200 || body != "ok" {
		t.Fatalf("first forwarded request: %d %q; the refused ones must not have spent the only token", status, body)
	}
	if status, _, _ := h.do(c, "GET", "rl413.test", "/", nil); status != 429 {
		t.Fatalf("second forwarded request: %d, want 429", status)
	}
}

// TestChooseEvenWhenMembersSkipped: round-robin spreads evenly over the
// eligible members even when a member between them is skipped.
func TestChooseEvenWhenMembersSkipped(t *testing.T) {
	s := NewSession("s", "svc", true)
	ms := []*Member{bareMember(1, s), bareMember(2, s), bareMember(3, s)}
	ms[1].Health.unhealthy.Store(true)
	pool := poolOf(ms...)
	counts := map[uint64]int{}
	for i := 0; i < 300; i++ {
		c := choose(pool, t0, 0)
		if c.outcome != outcomeForward {
			t.Fatalf("outcome %d", c.outcome)
		}
		counts[c.member.RouteID]++
	}
	if counts[1] != 150 || counts[3] != 150 || counts[2] != 0 {
		t.Fatalf("spread %v, want 150/0/150", counts)
	}
}
