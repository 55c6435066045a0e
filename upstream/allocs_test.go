//go:build !race

// Allocation counts are checked without the race detector, whose sync.Pool
// drops items at random; `make test` runs these in a separate pass.

package upstream

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// TestProxyHandleAllocs guards the request path's allocations: a
// forwarded GET costs exactly what fasthttp v1.74's streamed-response
// client allocates per response in transport.RoundTrip (the
// clientStreamBody and its three closures, 4 objects); our own code must
// add nothing.
func TestProxyHandleAllocs(t *testing.T) {
	h := newHarness(t, Settings{})
	allocsRoute(t, h)
	var ctx fasthttp.RequestCtx
	var req fasthttp.Request
	req.SetRequestURI("http://bench.test/")
	req.Header.Set("X-Forwarded-For", "1.2.3.4")
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
	t.Logf("%.0f allocations per forwarded GET", n)
	if n > 0 {
		t.Errorf("a forwarded GET allocates %.0f objects per request; want 0", n)
	}
}

// allocsRoute routes bench.test on h to an in-process fasthttp backend
// answering benchBody, with a rate limit no request reaches.
func allocsRoute(t *testing.T, h *harness) {
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) { ctx.SetBody(benchBody) }, NoDefaultServerHeader: true, NoDefaultDate: true}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	m := h.member("http://" + ln.Addr().String())
	m.SetRateLimit(1<<40, time.Second)
	h.route("bench.test", "/", m)
}

// TestSockConnAllocs: a sockConn's deadlines, Read and Write allocate
// nothing.
func TestSockConnAllocs(t *testing.T) {
	server, client := sockPair(t)
	go func() { _, _ = io.Copy(client, client) }() // the peer echoes
	buf := make([]byte, 64)
	allocs := testing.AllocsPerRun(200, func() {
		_ = server.SetReadDeadline(time.Now().Add(time.Minute))
		_ = server.SetWriteDeadline(time.Now().Add(time.Minute))
		if _, err := server.Write(buf); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(server, buf); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per exchange, want 0", allocs)
	}
}

// TestSockConnReadFromAllocs: a streamed body copied to the connection
// (bufio.Writer hands it to ReadFrom) allocates nothing.
func TestSockConnReadFromAllocs(t *testing.T) {
	server, client := sockPair(t)
	go func() { _, _ = io.Copy(io.Discard, client) }()
	body := &io.LimitedReader{R: zeros{}}
	rf := server.(io.ReaderFrom)
	allocs := testing.AllocsPerRun(50, func() {
		body.N = 64 << 10
		if n, err := rf.ReadFrom(body); err != nil || n != 64<<10 {
			t.Fatal(n, err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per copied body, want 0", allocs)
	}
}
