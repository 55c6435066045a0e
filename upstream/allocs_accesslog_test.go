//go:build !race

package upstream

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// TestProxyHandleAllocsAccessLog is TestProxyHandleAllocs with the access
// log on, in both formats: capturing the entry, queueing it and the writer
// goroutine formatting and writing it (measured too: AllocsPerRun counts
// every goroutine's allocations) must add nothing.
func TestProxyHandleAllocsAccessLog(t *testing.T) {
	for _, format := range []AccessLogFormat{AccessLogJSON, AccessLogCommon} {
		srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) { ctx.SetBody(benchBody) }, NoDefaultServerHeader: true, NoDefaultDate: true}
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = srv.Serve(ln) }()
		alog := NewAccessLogWriter(io.Discard, format, 0)
		h := newHarness(t, Settings{AccessLog: alog})
		m := h.member("http://" + ln.Addr().String())
		m.SetRateLimit(1<<40, time.Second)
		h.route("bench.test", "/", m)
		var ctx fasthttp.RequestCtx
		var req fasthttp.Request
		req.SetRequestURI("http://bench.test/some/path?q=1")
		req.Header.Set("X-Forwarded-For", "1.2.3.4")
		req.Header.Set("User-Agent", "allocs-test")
		ctx.Init(&req, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}, nil)
		w := bufio.NewWriter(io.Discard)
		once := func() {
			h.proxy.Handle(&ctx)
			if ctx.Response.StatusCode() != 200 {
				t.Fatalf("status %d", ctx.Response.StatusCode())
			}
			if err := ctx.Response.Write(w); err != nil {
				t.Fatal(err)
			}
			ctx.Response.Reset()
		}
		for i := 0; i < 500; i++ {
			once()
		}
		n := testing.AllocsPerRun(2000, once)
		_ = alog.Close()
		_ = srv.Shutdown()
		t.Logf("format %d: %.0f allocations per forwarded GET, %d lines, %d dropped", format, n, alog.Lines(), alog.Dropped())
		if n > 0 {
			t.Errorf("format %d: a forwarded GET with the access log allocates %.0f objects per request; want 0", format, n)
		}
		if alog.Lines() == 0 {
			t.Errorf("format %d: nothing logged", format)
		}
	}
}

// TestProxyHandleAllocsGenerated: a 404 and a 429, logged, allocate nothing.
func TestProxyHandleAllocsGenerated(t *testing.T) {
	alog := NewAccessLogWriter(io.Discard, AccessLogJSON, 0)
	defer alog.Close()
	h := newHarness(t, Settings{AccessLog: alog})
	m := h.member("http://127.0.0.1:1")
	m.SetRateLimit(1, time.Hour)
	h.route("limited.test", "/", m)
	var ctx fasthttp.RequestCtx
	var req fasthttp.Request
	ctx.Init(&req, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}, nil)
	for _, tc := range []struct {
		url  string
		want int
	}{{"http://nothing.test/x", 404}, {"http://limited.test/", 429}} {
		ctx.Request.SetRequestURI(tc.url)
		if tc.want == 429 {
			h.proxy.Handle(&ctx) // takes the one token (and fails to connect)
			ctx.Response.Reset()
		}
		once := func() {
			h.proxy.Handle(&ctx)
			if ctx.Response.StatusCode() != tc.want {
				t.Fatalf("status %d, want %d", ctx.Response.StatusCode(), tc.want)
			}
			ctx.Response.Reset()
		}
		for i := 0; i < 100; i++ {
			once()
		}
		if n := testing.AllocsPerRun(1000, once); n > 0 {
			t.Errorf("%s: %.0f allocations per request; want 0", tc.url, n)
		}
	}
}
