package upstream

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// BenchmarkProxyHandleAccessLog is BenchmarkProxyHandle with the access
// log on, writing to io.Discard: the request path's added cost is
// capturing the entry and offering it to the queue. Compare with
// BenchmarkProxyHandle (the log off).
func BenchmarkProxyHandleAccessLog(b *testing.B) {
	for _, bc := range []struct {
		name   string
		format AccessLogFormat
	}{{"json", AccessLogJSON}, {"common", AccessLogCommon}} {
		b.Run(bc.name, func(b *testing.B) {
			be := benchBackend(b)
			alog := NewAccessLogWriter(io.Discard, bc.format, 0)
			h := newHarness(b, Settings{AccessLog: alog})
			h.route("bench.test", "/", h.member("http://"+be))
			var ctx fasthttp.RequestCtx
			var req fasthttp.Request
			req.SetRequestURI("http://bench.test/")
			req.Header.SetHost("bench.test")
			remote := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
			w := bufio.NewWriter(io.Discard)
			ctx.Init(&req, remote, nil)
			once := func() {
				h.proxy.Handle(&ctx)
				if ctx.Response.StatusCode() != 200 {
					b.Fatalf("status %d", ctx.Response.StatusCode())
				}
				if err := ctx.Response.Write(w); err != nil {
					b.Fatal(err)
				}
				ctx.Response.Reset()
			}
			for i := 0; i < 1000; i++ {
				once()
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				once()
			}
			b.StopTimer()
			_ = alog.Close()
			b.ReportMetric(float64(alog.Dropped())/float64(b.N), "dropped/op")
		})
	}
}

// BenchmarkProxyGETAccessLog is BenchmarkProxyGET (client -> proxy ->
// backend, parallel clients) with the JSON access log to io.Discard.
func BenchmarkProxyGETAccessLog(b *testing.B) {
	be := benchBackend(b)
	alog := NewAccessLogWriter(io.Discard, AccessLogJSON, 0)
	defer alog.Close()
	h := newHarness(b, Settings{AccessLog: alog})
	h.route("bench.test", "/", h.member("http://"+be))
	benchGET(b, h.addr)
}

// BenchmarkAccessLogEnqueue is the access log's whole cost on the request
// path: capturing the entry from the request and offering it to the
// queue, from parallel goroutines, with the writer formatting JSON to
// io.Discard behind it.
func BenchmarkAccessLogEnqueue(b *testing.B) {
	alog := NewAccessLogWriter(io.Discard, AccessLogJSON, 0)
	m := NewMember(7, NewSession("s", "svc", true), &Config{}, nil)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var ctx fasthttp.RequestCtx
		var req fasthttp.Request
		req.SetRequestURI("http://bench.test/some/path?q=1")
		req.Header.Set("User-Agent", "bench")
		ctx.Init(&req, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}, nil)
		for pb.Next() {
			var e AccessEntry
			start := time.Now()
			e.capture(&ctx, start)
			e.settle(m, 200, time.Millisecond, 13, 0, start)
			alog.Log(e)
		}
	})
	b.StopTimer()
	_ = alog.Close()
	b.ReportMetric(float64(alog.Dropped())/float64(b.N), "dropped/op")
}

// BenchmarkAccessLogFormat is the writer goroutine's formatting cost per line.
func BenchmarkAccessLogFormat(b *testing.B) {
	var ctx fasthttp.RequestCtx
	var req fasthttp.Request
	req.SetRequestURI("http://bench.test/some/path?q=1")
	req.Header.Set("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) bench")
	ctx.Init(&req, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}, nil)
	var e AccessEntry
	start := time.Now()
	e.capture(&ctx, start)
	e.settle(NewMember(7, NewSession("s", "svc", true), &Config{}, nil), 200, time.Millisecond, 13, 0, start)
	for _, f := range []struct {
		name string
		fn   func([]byte, *AccessEntry) []byte
	}{{"json", AppendJSONLog}, {"common", AppendCommonLog}} {
		b.Run(f.name, func(b *testing.B) {
			buf := make([]byte, 0, 1024)
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				buf = f.fn(buf[:0], &e)
			}
		})
	}
}
