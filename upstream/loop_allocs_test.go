//go:build linux && !race

package upstream

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// TestLoopAllocs: a GET forwarded by an event loop allocates nothing, in
// the loop or (measured together, as allocations are process-wide) in the
// in-process backend and client.
func TestLoopAllocs(t *testing.T) {
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) { ctx.SetBody(benchBody) }, NoDefaultServerHeader: true, NoDefaultDate: true}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	h := loopHarness(t, Settings{})
	m := h.member("http://" + ln.Addr().String())
	m.SetRateLimit(1<<40, time.Second)
	h.route("bench.test", "/", m)

	conn, err := net.Dial("tcp4", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	request := []byte("GET / HTTP/1.1\r\nHost: bench.test\r\n\r\n")
	if _, err := conn.Write(request); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("first response: %v %v", resp, err)
	}
	// The response's size, to read the next ones whole with no parsing.
	_ = conn.Close()
	conn, err = net.Dial("tcp4", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = conn.Write(request)
	buf := make([]byte, 4096)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	size, err := conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	once := func() {
		if _, err := conn.Write(request); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(conn, buf[:size]); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 500; i++ {
		once()
	}
	n := testing.AllocsPerRun(2000, once)
	t.Logf("%.2f allocations per forwarded GET", n)
	if n > 0.01 {
		t.Errorf("a GET through the event loop allocates %.2f objects; want 0", n)
	}
	if h.loops.Handoffs() != 0 {
		t.Errorf("%d connections handed off", h.loops.Handoffs())
	}
}
