package upstream

// Hardening of the data plane (issue 8): malformed and ambiguous requests,
// limits, timeouts, connection caps, path normalisation, panics, the
// backend allow-list and backend faults. Every test talks raw TCP or HTTP
// to a real fasthttp listener on 127.0.0.1 and ends by itself.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-proxy/go-proxy/router"
	"github.com/valyala/fasthttp"
)

// hdHarness is a data plane with explicit server and transport settings.
func hdHarness(t testing.TB, s Settings, ss ServerSettings, ts TransportSettings) *harness {
	t.Helper()
	h := &harness{t: t, table: router.NewTable[*Member]()}
	h.transport = NewTransport(ts)
	h.proxy = NewProxy(h.table, s)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.srv = NewServer(h.proxy.Handle, ss)
	go func() { _ = h.srv.Serve(ln) }()
	h.addr = ln.Addr().String()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = h.srv.ShutdownWithContext(ctx)
	})
	return h
}

// recorder is a raw TCP backend that records every byte it receives and
// answers 200 "ok" to each request head it sees. It proves what reached
// a backend, byte for byte.
type recorder struct {
	ln    net.Listener
	mu    sync.Mutex
	got   bytes.Buffer
	conns atomic.Int64
}

func newRecorder(t testing.TB) *recorder {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.conns.Add(1)
			go r.serve(c)
		}
	}()
	t.Cleanup(func() { _ = ln.Close() })
	return r
}

func (r *recorder) serve(c net.Conn) {
	defer c.Close()
	buf := make([]byte, 4096)
	var pending []byte
	for {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := c.Read(buf)
		if n > 0 {
			r.mu.Lock()
			r.got.Write(buf[:n])
			r.mu.Unlock()
			pending = append(pending, buf[:n]...)
			for {
				i := bytes.Index(pending, []byte("\r\n\r\n"))
				if i < 0 {
					break
				}
				pending = pending[i+4:]
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			}
		}
		if err != nil {
			return
		}
	}
}

func (r *recorder) received() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.got.String()
}

func (r *recorder) url() string { return "http://" + r.ln.Addr().String() }

// rawExchange writes raw bytes to addr and reads until the server closes
// the connection or 5 s pass; closed reports whether it was closed.
func rawExchange(t testing.TB, addr, raw string) (resp string, closed bool) {
	t.Helper()
	c, err := net.Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = io.WriteString(c, raw)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	var ne net.Error
	timedOut := errors.As(err, &ne) && ne.Timeout()
	return string(b), !timedOut
}

func statusOf(resp string) int {
	var code int
	if _, err := fmt.Sscanf(resp, "HTTP/1.1 %d", &code); err != nil {
		return 0
	}
	return code
}

// TestSmugglingRefused sends the request-smuggling classics as raw bytes:
// each is answered 400, the connection is closed (so no byte after the
// refused request is read as a request), and the backend receives no
// complete request — for framing faults in the headers, not one byte.
func TestSmugglingRefused(t *testing.T) {
	rec := newRecorder(t)
	h := hdHarness(t, Settings{}, DefaultServerSettings, DefaultTransportSettings)
	h.route("s.test", "/", h.member(rec.url()))
	smuggled := "GET /smuggled HTTP/1.1\r\nHost: s.test\r\n\r\n"
	headerCases := []struct{ name, raw string }{
		{"CL then TE", "POST / HTTP/1.1\r\nHost: s.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled},
		{"TE then CL", "POST / HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n" + smuggled},
		{"TE identity and CL", "POST / HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: identity\r\nContent-Length: 3\r\n\r\nabc" + smuggled},
		{"two different CL", "POST / HTTP/1.1\r\nHost: s.test\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc" + smuggled},
		{"two equal CL", "POST / HTTP/1.1\r\nHost: s.test\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc" + smuggled},
		{"CL list", "POST / HTTP/1.1\r\nHost: s.test\r\nContent-Length: 3, 3\r\n\r\nabc" + smuggled},
		{"CL plus sign", "POST / HTTP/1.1\r\nHost: s.test\r\nContent-Length: +3\r\n\r\nabc" + smuggled},
		{"two TE", "POST / HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled},
		{"TE gzip, chunked", "POST / HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n" + smuggled},
		{"TE xchunked", "POST / HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + smuggled},
		{"TE on HTTP/1.0", "POST / HTTP/1.0\r\nHost: s.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled},
		{"space before colon", "POST / HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\nabc" + smuggled},
		{"space in header name", "GET / HTTP/1.1\r\nHost: s.test\r\nTransfer Encoding: chunked\r\n\r\n" + smuggled},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: s.test\r\nX-A: b\r\n c\r\n\r\n" + smuggled},
		{"obs-fold hiding TE", "POST / HTTP/1.1\r\nHost: s.test\r\nX-A: b\r\n Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc" + smuggled},
		{"obs-fold with tab", "GET / HTTP/1.1\r\nHost: s.test\r\nX-A: b\r\n\tc\r\n\r\n" + smuggled},
		{"NUL in header", "GET / HTTP/1.1\r\nHost: s.test\r\nX-A: a\x00b\r\n\r\n" + smuggled},
	}
	for _, tc := range headerCases {
		resp, closed := rawExchange(t, h.addr, tc.raw)
		if statusOf(resp) != 400 || !closed || strings.Count(resp, "HTTP/1.1 ") != 1 {
			t.Errorf("%s: got %q (closed %v), want one 400 and the connection closed", tc.name, resp, closed)
		}
	}
	if got := rec.received(); got != "" {
		t.Fatalf("header-level smuggling attempts reached the backend: %q", got)
	}

	// Malformed chunked bodies: detected while the body streams. A fault
	// in the first chunk is found before anything is sent; a later one
	// leaves the backend a request it never sees the end of, on a
	// connection that is closed.
	bodyCases := []struct {
		name, raw   string
		nothingSent bool
	}{
		{"bad chunk size", "POST / HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n" + smuggled, true},
		{"chunk size overflow", "POST / HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff1\r\nabc\r\n0\r\n\r\n" + smuggled, true},
		{"negative chunk size", "POST / HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n" + smuggled, true},
		{"0x chunk size", "POST / HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n" + smuggled, true},
		{"chunk longer than its size", "POST / HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n" + smuggled, false},
		{"chunk without CRLF", "POST / HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n" + smuggled, false},
	}
	for _, tc := range bodyCases {
		before := len(rec.received())
		resp, closed := rawExchange(t, h.addr, tc.raw)
		if statusOf(resp) != 400 || !closed || strings.Count(resp, "HTTP/1.1 ") != 1 {
			t.Errorf("%s: got %q (closed %v), want one 400 and the connection closed", tc.name, resp, closed)
		}
		got := rec.received()[before:]
		if tc.nothingSent && got != "" {
			t.Errorf("%s: the backend received %q", tc.name, got)
		}
		if strings.Contains(got, "0\r\n\r\n") || strings.Contains(got, "smuggled") {
			t.Errorf("%s: the backend received a complete request: %q", tc.name, got)
		}
	}

	// The control: a well-formed chunked request is forwarded, re-framed.
	resp, _ := rawExchange(t, h.addr, "POST /ok HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
	if statusOf(resp) != 200 || !strings.Contains(rec.received(), "POST /ok HTTP/1.1") {
		t.Fatalf("well-formed chunked request: %q; backend got %q", resp, rec.received())
	}
	if strings.Contains(rec.received(), "smuggled") {
		t.Fatal("a smuggled request reached the backend")
	}
}

// TestHeaderLimits431: more header lines than the limit, or a request head
// larger than the read buffer, get 431 and never reach the backend; the
// limit itself is accepted.
func TestHeaderLimits431(t *testing.T) {
	rec := newRecorder(t)
	ss := DefaultServerSettings
	ss.MaxHeaderSize = 8 << 10
	h := hdHarness(t, Settings{MaxRequestHeaders: 50}, ss, DefaultTransportSettings)
	h.route("l.test", "/", h.member(rec.url()))
	lines := func(n int) string { return strings.Repeat("X-Pad: 1\r\n", n) }

	// 49 + Host = 50 header lines: at the limit.
	resp, _ := rawExchange(t, h.addr, "GET /at-limit HTTP/1.1\r\nHost: l.test\r\nConnection: close\r\n"+lines(47)+"\r\n")
	if statusOf(resp) != 200 {
		t.Fatalf("50 header lines: %q, want 200", resp)
	}
	for _, tc := range []struct{ name, raw string }{
		{"51 header lines", "GET /count HTTP/1.1\r\nHost: l.test\r\n" + lines(50) + "\r\n"},
		{"1000 header lines", "GET /count HTTP/1.1\r\nHost: l.test\r\n" + strings.Repeat("A: b\r\n", 1000) + "\r\n"},
		{"one 9 KiB header", "GET /size HTTP/1.1\r\nHost: l.test\r\nX-Big: " + strings.Repeat("x", 9<<10) + "\r\n\r\n"},
		{"9 KiB request line", "GET /" + strings.Repeat("x", 9<<10) + " HTTP/1.1\r\nHost: l.test\r\n\r\n"},
	} {
		resp, closed := rawExchange(t, h.addr, tc.raw)
		if statusOf(resp) != 431 || !closed {
			t.Errorf("%s: %.80q (closed %v), want 431 and close", tc.name, resp, closed)
		}
	}
	if got := rec.received(); strings.Contains(got, "/count") || strings.Contains(got, "/size") || strings.Contains(got, "xxxx") {
		t.Fatalf("an over-limit request reached the backend: %.200q", got)
	}
}

// TestSlowClientsBounded: a client trickling its headers (slowloris) or
// its body is cut at the header and body timeouts; neither holds a
// connection longer, and the backend never gets a complete request.
func TestSlowClientsBounded(t *testing.T) {
	var completed atomic.Int64
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.ReadAll(r.Body); err == nil {
			completed.Add(1)
		}
		_, _ = io.WriteString(w, "ok")
	}))
	defer backend.Close()
	ss := DefaultServerSettings
	ss.HeaderTimeout, ss.BodyTimeout = time.Second, time.Second
	h := hdHarness(t, Settings{}, ss, DefaultTransportSettings)
	h.route("slow.test", "/", h.member(backend.URL))

	trickle := func(head string, drip string) (status int, took time.Duration) {
		c, err := net.Dial("tcp4", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		start := time.Now()
		_, _ = io.WriteString(c, head)
		done := make(chan string, 1)
		go func() {
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			b, _ := io.ReadAll(c)
			done <- string(b)
		}()
		for i := 0; ; i++ {
			select {
			case resp := <-done:
				return statusOf(resp), time.Since(start)
			case <-time.After(200 * time.Millisecond):
				if _, err := io.WriteString(c, drip[i%len(drip):i%len(drip)+1]); err != nil {
					return statusOf(<-done), time.Since(start)
				}
			}
		}
	}

	status, took := trickle("GET / HTTP/1.1\r\nHost: slow.test\r\n", "X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
	if took > 4*time.Second || status != 408 {
		t.Fatalf("slow headers: status %d after %v, want 408 or a close within the 1 s header timeout", status, took)
	}
	status, took = trickle("POST / HTTP/1.1\r\nHost: slow.test\r\nContent-Length: 1000\r\n\r\n", "b")
	if took > 4*time.Second || (status != 0 && status != 408) {
		t.Fatalf("slow body: status %d after %v, want 408 or a close within the 1 s body timeout", status, took)
	}
	status, took = trickle("POST / HTTP/1.1\r\nHost: slow.test\r\nTransfer-Encoding: chunked\r\n\r\n", "1\r\nb\r\n")
	if took > 4*time.Second || (status != 0 && status != 408) {
		t.Fatalf("slow chunked body: status %d after %v, want 408 or a close within the 1 s body timeout", status, took)
	}
	if n := completed.Load(); n != 0 {
		t.Fatalf("the backend completed %d trickled requests", n)
	}
}

// TestConnectionCaps: beyond Concurrency connections in total, or
// MaxConnsPerIP from one address, a new connection is refused at once
// (503 and 429) while the admitted ones keep working.
func TestConnectionCaps(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }))
	defer backend.Close()
	for _, tc := range []struct {
		name   string
		mutate func(*ServerSettings)
		status int
	}{
		{"total", func(s *ServerSettings) { s.Concurrency = 2 }, 503},
		{"per ip", func(s *ServerSettings) { s.MaxConnsPerIP = 2 }, 429},
	} {
		ss := DefaultServerSettings
		tc.mutate(&ss)
		h := hdHarness(t, Settings{}, ss, DefaultTransportSettings)
		h.route("cap.test", "/", h.member(backend.URL))
		var held []*bufio.ReadWriter
		for i := 0; i < 2; i++ {
			c, err := net.Dial("tcp4", h.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			rw := bufio.NewReadWriter(bufio.NewReader(c), bufio.NewWriter(c))
			held = append(held, rw)
			keepAliveGet(t, rw, "cap.test")
		}
		resp, closed := rawExchange(t, h.addr, "GET / HTTP/1.1\r\nHost: cap.test\r\n\r\n")
		if statusOf(resp) != tc.status || !closed {
			t.Errorf("%s: third connection got %.80q (closed %v), want %d", tc.name, resp, closed, tc.status)
		}
		for _, rw := range held {
			keepAliveGet(t, rw, "cap.test")
		}
	}
}

func keepAliveGet(t *testing.T, rw *bufio.ReadWriter, host string) {
	t.Helper()
	fmt.Fprintf(rw, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", host)
	_ = rw.Flush()
	resp, err := http.ReadResponse(rw.Reader, nil)
	if err != nil {
		t.Fatalf("keep-alive request: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("keep-alive request: %d", resp.StatusCode)
	}
}

// TestMalformedHost400: a Host that is not host[:port] is refused with 400
// and never forwarded; valid spellings route.
func TestMalformedHost400(t *testing.T) {
	rec := newRecorder(t)
	h := hdHarness(t, Settings{}, DefaultServerSettings, DefaultTransportSettings)
	h.route("h.test", "/", h.member(rec.url()))
	for _, host := range []string{
		"u@h.test", "h.test:", "h.test:99999", "h.test:8x", "h.test:80:80", "h test", "h.test/x", "h.test\\x",
		"h%2etest", "[::1", "[::1]x", "[zz::1]", "<h.test>", "h.test,other.test", strings.Repeat("a", 300) + ".test", "",
	} {
		resp, closed := rawExchange(t, h.addr, "GET /host HTTP/1.1\r\nHost: "+host+"\r\n\r\n")
		if statusOf(resp) != 400 || !closed {
			t.Errorf("Host %.40q: %.60q (closed %v), want 400", host, resp, closed)
		}
	}
	if rec.received() != "" {
		t.Fatalf("a malformed Host reached the backend: %.200q", rec.received())
	}
	for _, host := range []string{"h.test", "H.TEST", "h.test.", "h.test:8080", "[::1]:80", "127.0.0.1"} {
		want := 200
		if strings.HasPrefix(host, "[") || strings.HasPrefix(host, "127") {
			want = 404
		}
		resp, _ := rawExchange(t, h.addr, "GET / HTTP/1.1\r\nHost: "+host+"\r\nConnection: close\r\n\r\n")
		if statusOf(resp) != want {
			t.Errorf("Host %q: %.60q, want %d", host, resp, want)
		}
	}
}

// TestAbsoluteFormRoutesByAuthority: a request target in absolute form is
// routed by its authority, which also replaces the Host header the backend
// sees (RFC 9112 §3.2.2); other request-target forms and schemes, and user
// info, are refused.
func TestAbsoluteFormRoutesByAuthority(t *testing.T) {
	hosts := make(chan string, 8)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hosts <- r.Host + " " + r.URL.RequestURI()
		_, _ = io.WriteString(w, "b")
	}))
	defer backend.Close()
	h := hdHarness(t, Settings{}, DefaultServerSettings, DefaultTransportSettings)
	h.route("b.test", "/", h.member(backend.URL, func(c *Config) { c.PreserveHost = true }))
	h.route("a.test", "/", h.member(deadBackend))

	resp, _ := rawExchange(t, h.addr, "GET http://B.test:8080/x?q=1 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
	if statusOf(resp) != 200 {
		t.Fatalf("absolute form: %q", resp)
	}
	if got := <-hosts; got != "b.test:8080 /x?q=1" {
		t.Fatalf("backend saw %q, want the authority as Host and the origin-form path", got)
	}
	resp, _ = rawExchange(t, h.addr, "GET https://b.test HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
	if statusOf(resp) != 200 || <-hosts != "b.test /" {
		t.Fatalf("absolute form without a path: %q", resp)
	}
	for _, raw := range []string{
		"GET ftp://b.test/x HTTP/1.1\r\nHost: b.test\r\n\r\n",
		"GET http://user:pw@b.test/x HTTP/1.1\r\nHost: b.test\r\n\r\n",
		"GET http://b.test:99999/x HTTP/1.1\r\nHost: b.test\r\n\r\n",
		"CONNECT b.test:443 HTTP/1.1\r\nHost: b.test\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: b.test\r\n\r\n",
		"GET / HTTP/2.0\r\nHost: b.test\r\n\r\n",
	} {
		resp, closed := rawExchange(t, h.addr, raw)
		if s := statusOf(resp); (s != 400 && s != 505) || !closed {
			t.Errorf("%.40q: %.60q (closed %v), want 400 or 505", raw, resp, closed)
		}
	}
	select {
	case got := <-hosts:
		t.Fatalf("a refused request target reached the backend: %s", got)
	default:
	}
}

const deadBackend = "http://127.0.0.1:1"

// TestPathNormalisationCannotCrossRoutes: /public belongs to one session,
// /admin to another with a higher priority, / to a third. No spelling of a
// path reaches a route other than the one its normalised form matches, and
// the backend receives exactly that normalised path: /admin cannot be
// bypassed towards / (//admin, /./admin, /%61dmin, …), and nothing under
// /public can climb into /admin through an encoded separator.
func TestPathNormalisationCannotCrossRoutes(t *testing.T) {
	type seen struct{ who, path string }
	got := make(chan seen, 64)
	mk := func(who string) string {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			got <- seen{who, r.URL.EscapedPath()}
			_, _ = io.WriteString(w, who)
		}))
		t.Cleanup(s.Close)
		return s.URL
	}
	h := hdHarness(t, Settings{}, DefaultServerSettings, DefaultTransportSettings)
	pub := h.memberOf(NewSession("public", "pub", true), mk("public"))
	adm := h.memberOf(NewSession("admin", "adm", true), mk("admin"))
	root := h.memberOf(NewSession("root", "root", true), mk("root"))
	h.table.Update(func(tx *router.Txn[*Member]) {
		tx.Add(&router.Route[*Member]{ID: pub.RouteID, Domains: []string{"p.test"}, Path: "/public", Priority: 10, Member: pub})
		tx.Add(&router.Route[*Member]{ID: adm.RouteID, Domains: []string{"p.test"}, Path: "/admin", Priority: 20, Member: adm})
		tx.Add(&router.Route[*Member]{ID: root.RouteID, Domains: []string{"p.test"}, Path: "/", Priority: 1, Member: root})
	})
	cases := []struct {
		target, who, path string // who "" means refused with 400
	}{
		{"/admin", "admin", "/admin"},
		{"//admin", "admin", "/admin"},
		{"///admin//x", "admin", "/admin/x"},
		{"/./admin", "admin", "/admin"},
		{"/%2e/admin", "admin", "/admin"},
		{"/%61dmin", "admin", "/admin"},
		{"/%61%64%6D%69%6E", "admin", "/admin"},
		{"/x/../admin", "admin", "/admin"},
		{"/x/%2e%2e/admin", "admin", "/admin"},
		{"/public/../admin", "admin", "/admin"},
		{"/public/%2E%2E/admin", "admin", "/admin"},
		{"/../../admin", "admin", "/admin"},
		{"/admin/./x/../y", "admin", "/admin/y"},
		{"/public/x", "public", "/public/x"},
		{"/public/x/..", "public", "/public/"},
		{"/public/a%20b%3f", "public", "/public/a%20b%3F"},
		{"/%2561dmin", "root", "/%2561dmin"}, // %25 is '%': one decoding gives /%61dmin, not /admin
		{"/adminx", "root", "/adminx"},
		{"/public/..%2fadmin", "", ""},
		{"/public/..%2Fadmin", "", ""},
		{"/public/%2e%2e%2fadmin", "", ""},
		{"/public%2f..%2fadmin", "", ""},
		{"/admin%2f", "", ""},
		{"/public/..%5cadmin", "", ""},
		{"/public\\..\\admin", "", ""},
		{"/admin%00", "", ""},
		{"/admin%0a", "", ""},
		{"/admin%", "", ""},
		{"/admin%zz", "", ""},
	}
	for _, tc := range cases {
		resp, _ := rawExchange(t, h.addr, "GET "+tc.target+" HTTP/1.1\r\nHost: p.test\r\nConnection: close\r\n\r\n")
		if tc.who == "" {
			if statusOf(resp) != 400 {
				t.Errorf("%s: %.60q, want 400", tc.target, resp)
			}
			continue
		}
		if statusOf(resp) != 200 {
			t.Errorf("%s: %.60q, want 200 from %s", tc.target, resp, tc.who)
			continue
		}
		select {
		case s := <-got:
			if s.who != tc.who || s.path != tc.path {
				t.Errorf("%s reached %s with path %q; want %s with %q", tc.target, s.who, s.path, tc.who, tc.path)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: no backend saw the request", tc.target)
		}
	}
	select {
	case s := <-got:
		t.Fatalf("a refused path reached %s as %q", s.who, s.path)
	default:
	}
}

func TestNormalizePath(t *testing.T) {
	for in, want := range map[string]string{
		"/": "/", "/a": "/a", "/a/": "/a/", "//": "/", "/.": "/", "/..": "/", "/a/.": "/a/", "/a/..": "/",
		"/a/b/../c": "/a/c", "/a/./b": "/a/b", "/a//b": "/a/b", "/%7euser": "/~user", "/%7Euser": "/~user",
		"/a%3fb": "/a%3Fb", "/.well-known/x": "/.well-known/x", "/a/...": "/a/...", "/a/..b": "/a/..b",
		"/a/%2e%2E/b": "/b", "/é": "/é",
	} {
		p := []byte(in)
		out, changed, ok := normalizePath(p)
		if !ok || string(out) != want || changed != (want != in) {
			t.Errorf("normalizePath(%q) = %q, %v, %v; want %q", in, out, changed, ok, want)
		}
	}
	for _, in := range []string{"", "a", "*", "/a%2fb", "/a%5Cb", "/a\\b", "/a%", "/a%1", "/a%g0", "/%00", "/%7f"} {
		if _, _, ok := normalizePath([]byte(in)); ok {
			t.Errorf("normalizePath(%q) accepted", in)
		}
	}
}

// TestHandlerPanicRecovered: a panic in the handler answers 500, closes
// that connection, is logged with its stack, and the server goes on.
func TestHandlerPanicRecovered(t *testing.T) {
	var logs syncBuffer
	ss := DefaultServerSettings
	ss.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	srv := NewServer(func(ctx *fasthttp.RequestCtx) {
		if string(ctx.Path()) == "/boom" {
			panic("boom from input")
		}
		ctx.SetBodyString("fine")
	}, ss)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	defer func() { _ = srv.Shutdown() }()
	for i := 0; i < 3; i++ {
		resp, closed := rawExchange(t, ln.Addr().String(), "GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
		if statusOf(resp) != 500 || !closed {
			t.Fatalf("panicking handler: %q (closed %v), want 500 and close", resp, closed)
		}
	}
	resp, _ := rawExchange(t, ln.Addr().String(), "GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if statusOf(resp) != 200 {
		t.Fatalf("after panics: %q", resp)
	}
	if s := logs.String(); !strings.Contains(s, "panic") || !strings.Contains(s, "boom from input") || !strings.Contains(s, "goroutine") {
		t.Fatalf("panic not logged with its stack: %q", s)
	}
}

// TestBodyRelayPanicRecovered: a panic while relaying a response body
// (after the handler returned, outside Recover) fails that body only.
func TestBodyRelayPanicRecovered(t *testing.T) {
	c := &call{stream: panicReader{}}
	n, err := c.Read(make([]byte, 8))
	if n != 0 || !errors.Is(err, errPanic) || !c.failed {
		t.Fatalf("Read = %d, %v (failed %v); want 0, errPanic, failed", n, err, c.failed)
	}
}

type panicReader struct{}

func (panicReader) Read([]byte) (int, error) { panic("corrupt backend framing") }

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestBackendAllowListDataPlane: with a backend allow-list, the dialer
// refuses addresses outside it (502, nothing sent), whether the backend
// URL names an IP or a hostname resolving to one; inside it, requests flow.
func TestBackendAllowListDataPlane(t *testing.T) {
	rec := newRecorder(t)
	_, port, _ := net.SplitHostPort(rec.ln.Addr().String())
	ts := DefaultTransportSettings
	ts.Allow = AllowList{netip.MustParsePrefix("10.0.0.0/8")}
	h := hdHarness(t, Settings{}, DefaultServerSettings, ts)
	h.route("ip.test", "/", h.member(rec.url()))
	h.route("name.test", "/", h.member("http://localhost:"+port))
	for _, host := range []string{"ip.test", "name.test"} {
		resp, _ := rawExchange(t, h.addr, "GET / HTTP/1.1\r\nHost: "+host+"\r\nConnection: close\r\n\r\n")
		if statusOf(resp) != 502 {
			t.Errorf("%s: %.60q, want 502", host, resp)
		}
	}
	if rec.conns.Load() != 0 || rec.received() != "" {
		t.Fatalf("the backend outside the allow-list was contacted (%d connections)", rec.conns.Load())
	}

	ts.Allow = AllowList{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	h2 := hdHarness(t, Settings{}, DefaultServerSettings, ts)
	h2.route("ip.test", "/", h2.member(rec.url()))
	h2.route("name.test", "/", h2.member("http://localhost:"+port))
	for _, host := range []string{"ip.test", "name.test"} {
		resp, _ := rawExchange(t, h2.addr, "GET / HTTP/1.1\r\nHost: "+host+"\r\nConnection: close\r\n\r\n")
		if statusOf(resp) != 200 {
			t.Errorf("%s inside the allow-list: %.60q, want 200", host, resp)
		}
	}
}

func TestAllowListResolve(t *testing.T) {
	l := AllowList{netip.MustParsePrefix("127.0.0.0/8")}
	ctx := context.Background()
	for host, ok := range map[string]bool{"127.0.0.1": true, "127.9.9.9": true, "10.0.0.1": false, "::ffff:127.0.0.1": true, "::1": false} {
		_, err := l.Resolve(ctx, host)
		if (err == nil) != ok || (!ok && !errors.Is(err, ErrAddressNotAllowed)) {
			t.Errorf("Resolve(%s): %v", host, err)
		}
	}
	if err := (AllowList{}).CheckURLHost(ctx, "10.1.1.1"); err != nil {
		t.Errorf("an empty list refused: %v", err)
	}
	// A name is allowed only if every address it resolves to is.
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", "localhost")
	if err != nil {
		t.Fatalf("resolving localhost: %v", err)
	}
	want := true
	for _, a := range addrs {
		want = want && l.Allows(a)
	}
	if err := l.CheckURLHost(ctx, "localhost"); (err == nil) != want {
		t.Fatalf("localhost resolves to %v; CheckURLHost = %v", addrs, err)
	}
}

// ---- backend faults ----

// faultBackend accepts connections and hands each to fn.
func faultBackend(t testing.TB, fn func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fn(c)
			}()
		}
	}()
	return "http://" + ln.Addr().String()
}

func readHead(c net.Conn) {
	br := bufio.NewReader(c)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		line, err := br.ReadString('\n')
		if err != nil || line == "\r\n" {
			return
		}
	}
}

func resetConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

// TestBackendFaults: a backend that dies mid-response, hangs before or
// inside its response, or resets connections gives the client a clean,
// prompt outcome — an error status, or a truncated body on a closed
// connection — and never a hang.
func TestBackendFaults(t *testing.T) {
	ts := DefaultTransportSettings
	ts.BodyIdle = 500 * time.Millisecond
	h := hdHarness(t, Settings{}, DefaultServerSettings, ts)
	release := make(chan struct{})
	defer close(release)
	routes := map[string]string{
		"killed-cl.test": faultBackend(t, func(c net.Conn) {
			readHead(c)
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"+strings.Repeat("a", 1000))
			time.Sleep(50 * time.Millisecond)
			resetConn(c)
		}),
		"killed-chunked.test": faultBackend(t, func(c net.Conn) {
			readHead(c)
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n"+strings.Repeat("a", 1024)+"\r\n400\r\naaa")
			time.Sleep(50 * time.Millisecond)
		}),
		"hang-head.test": faultBackend(t, func(c net.Conn) {
			readHead(c)
			<-release
		}),
		"hang-body.test": faultBackend(t, func(c net.Conn) {
			readHead(c)
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
			<-release
		}),
		"reset-accept.test": faultBackend(t, resetConn),
		"reset-request.test": faultBackend(t, func(c net.Conn) {
			readHead(c)
			resetConn(c)
		}),
		"garbage.test": faultBackend(t, func(c net.Conn) {
			readHead(c)
			_, _ = io.WriteString(c, "SMTP ready\r\n\r\n")
		}),
	}
	for host, url := range routes {
		h.route(host, "/", h.member(url, func(c *Config) { c.Timeout = 700 * time.Millisecond }))
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for _, tc := range []struct {
		host   string
		status int // 0: the response must fail: a connection closed before the end of the body
	}{
		{"killed-cl.test", 0},
		{"killed-chunked.test", 0},
		{"hang-head.test", 504},
		{"hang-body.test", 0},
		{"reset-accept.test", 502},
		{"reset-request.test", 502},
		{"garbage.test", 502},
	} {
		start := time.Now()
		req, _ := http.NewRequest("GET", h.url("/"), nil)
		req.Host = tc.host
		status := 0
		resp, err := client.Do(req)
		if err == nil {
			status = resp.StatusCode
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		took := time.Since(start)
		if took > 5*time.Second {
			t.Errorf("%s: took %v", tc.host, took)
		}
		if tc.status == 0 && err == nil {
			t.Errorf("%s: status %d with a complete body; want the response cut", tc.host, status)
		}
		if tc.status != 0 && (err != nil || status != tc.status) {
			t.Errorf("%s: status %d, %v; want %d", tc.host, status, err, tc.status)
		}
	}
}
