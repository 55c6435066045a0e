package upstream

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

var benchBody = []byte("Hello, World!") // 13 bytes

// benchBackend is a fasthttp server on loopback answering 13 bytes.
func benchBackend(b *testing.B) string {
	b.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &fasthttp.Server{
		Handler: func(ctx *fasthttp.RequestCtx) {
			ctx.SetContentType("text/plain")
			ctx.SetBody(benchBody)
		},
		NoDefaultServerHeader: true,
		NoDefaultDate:         true,
	}
	go func() { _ = srv.Serve(ln) }()
	b.Cleanup(func() { _ = srv.Shutdown() })
	return ln.Addr().String()
}

// benchGET drives addr with a fasthttp client from parallel goroutines.
func benchGET(b *testing.B, addr string) {
	client := &fasthttp.HostClient{Addr: addr, MaxConns: 1024, ReadBufferSize: 4096, WriteBufferSize: 4096}
	warm := func() {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		defer fasthttp.ReleaseRequest(req)
		defer fasthttp.ReleaseResponse(resp)
		req.SetRequestURI("http://bench.test/")
		for i := 0; i < 1000; i++ {
			if err := client.Do(req, resp); err != nil || resp.StatusCode() != 200 {
				b.Fatalf("warm-up: %v %d", err, resp.StatusCode())
			}
		}
	}
	warm()
	b.ReportAllocs()
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		defer fasthttp.ReleaseRequest(req)
		defer fasthttp.ReleaseResponse(resp)
		req.SetRequestURI("http://bench.test/")
		for pb.Next() {
			if err := client.Do(req, resp); err != nil {
				b.Error(err)
				return
			}
			if resp.StatusCode() != 200 || len(resp.Body()) != len(benchBody) {
				b.Errorf("got %d %q", resp.StatusCode(), resp.Body())
				return
			}
		}
	})
}

// BenchmarkDirectGET is the baseline: the client straight to the backend.
func BenchmarkDirectGET(b *testing.B) {
	benchGET(b, benchBackend(b))
}

// BenchmarkProxyGET: client -> proxy -> backend, one member, defaults.
func BenchmarkProxyGET(b *testing.B) {
	be := benchBackend(b)
	h := newHarness(b, Settings{})
	h.route("bench.test", "/", h.member("http://"+be))
	benchGET(b, h.addr)
}

// BenchmarkProxyGETAllFeatures: a pool of 2 members with health checks
// reporting healthy, breakers on, a rate limit that never runs out and
// statistics, which are always on.
func BenchmarkProxyGETAllFeatures(b *testing.B) {
	be := benchBackend(b)
	h := newHarness(b, Settings{})
	ms := []*Member{h.member("http://" + be), h.member("http://" + be)}
	for _, m := range ms {
		m.Health.Record(true, "ok", 2, 1)
		m.Breaker.Configure(BreakerSettings{Threshold: 5, Timeout: 30 * time.Second, HalfOpenRequests: 1})
		m.SetRateLimit(1<<40, time.Second)
	}
	h.route("bench.test", "/", ms...)
	benchGET(b, h.addr)
	b.StopTimer()
	for _, m := range ms {
		if r := m.Stats.Report(time.Now().UnixNano()); r.Requests < uint64(b.N)/4 || r.Errors != 0 {
			b.Errorf("member stats %+v after %d requests", r, b.N)
		}
	}
}

// BenchmarkProxyHandle calls Proxy.Handle directly, with no client-facing
// server and no client, so allocs/op is exactly what the request path
// allocates: the forwarded GET, its relayed 13-byte body and the settled
// statistics.
func BenchmarkProxyHandle(b *testing.B) {
	be := benchBackend(b)
	h := newHarness(b, Settings{})
	h.route("bench.test", "/", h.member("http://"+be))
	var ctx fasthttp.RequestCtx
	var req fasthttp.Request
	req.SetRequestURI("http://bench.test/")
	req.Header.SetHost("bench.test")
	remote := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
	w := bufio.NewWriter(io.Discard)
	ctx.Init(&req, remote, nil) // once: Init allocates its fake conn
	once := func() {
		h.proxy.Handle(&ctx)
		if ctx.Response.StatusCode() != 200 {
			b.Fatalf("status %d", ctx.Response.StatusCode())
		}
		// Writing the response drains the relayed body stream and
		// settles the call, as the server does.
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
}

// BenchmarkSelect is member selection alone on a pool of 4.
func BenchmarkSelect(b *testing.B) {
	s := NewSession("s", "svc", true)
	ms := make([]*Member, 4)
	for i := range ms {
		ms[i] = bareMember(uint64(i+1), s)
		ms[i].Health.Record(true, "ok", 2, 1)
	}
	pool := poolOf(ms...)
	now := time.Now().UnixNano()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c := choose(pool, now, 0)
		if c.outcome != outcomeForward {
			b.Fatal(c.outcome)
		}
		c.member.Breaker.Done(c.trial, true, now)
	}
}

func TestSelectAllocatesNothing(t *testing.T) {
	s := NewSession("s", "svc", true)
	ms := make([]*Member, 4)
	for i := range ms {
		ms[i] = bareMember(uint64(i+1), s)
		ms[i].SetRateLimit(1<<40, time.Second)
	}
	pool := poolOf(ms...)
	now := time.Now().UnixNano()
	if n := testing.AllocsPerRun(1000, func() { _ = choose(pool, now, 0) }); n != 0 {
		t.Errorf("choose allocates %.1f per call", n)
	}
}
