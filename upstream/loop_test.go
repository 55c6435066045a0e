//go:build linux

package upstream

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"
)

// testEventLoops is the number of event loops the test harness serves
// with (UPSTREAM_EVENT_LOOPS; make test runs the package both ways), 0
// for the goroutine-per-connection server.
func testEventLoops() int {
	n, _ := strconv.Atoi(os.Getenv("UPSTREAM_EVENT_LOOPS"))
	return n
}

// loopHarness is a harness served by event loops whatever the environment.
func loopHarness(t *testing.T, s Settings) *harness {
	t.Setenv("UPSTREAM_EVENT_LOOPS", "2")
	return newHarness(t, s)
}

func TestLoopServesSimpleRequests(t *testing.T) {
	h := loopHarness(t, Settings{})
	be := namedBackend(t, "a")
	h.route("loop.test", "/", h.member(be.URL))
	c := httpClient()
	for i := 0; i < 5; i++ {
		status, _, body := h.do(c, "GET", "loop.test", "/x", nil)
		if status != 200 || body != "a" {
			t.Fatalf("GET: %d %q", status, body)
		}
	}
	if n := h.loops.Handoffs(); n != 0 {
		t.Fatalf("%d connections handed off, want 0", n)
	}
}

// TestLoopWaitHoldingP: the loops wait holding their P only when the
// rest of the proxy keeps a P per CPU besides them, and serve the same
// either way, whether a request comes while the loop is busy (the short
// wait that keeps the P) or after it went idle (the scheduler's wait).
func TestLoopWaitHoldingP(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	for _, tc := range []struct {
		procs int
		hold  bool
	}{{runtime.NumCPU() + 2, true}, {runtime.NumCPU() + 1, false}} {
		runtime.GOMAXPROCS(tc.procs)
		h := loopHarness(t, Settings{})
		be := namedBackend(t, "a")
		h.route("loop.test", "/", h.member(be.URL))
		c := httpClient()
		for i := 0; i < 20; i++ {
			if i%5 == 4 {
				time.Sleep(3 * loopBusyWaitMillis * time.Millisecond)
			}
			status, _, body := h.do(c, "GET", "loop.test", "/x", nil)
			if status != 200 || body != "a" {
				t.Fatalf("GOMAXPROCS %d, request %d: %d %q", tc.procs, i, status, body)
			}
		}
		if hold := loopsHoldP(h.loops); hold != tc.hold {
			t.Fatalf("GOMAXPROCS %d, 2 loops: holdP %v, want %v", tc.procs, hold, tc.hold)
		}
	}
}

// TestLoopHoldFollowsGOMAXPROCS: when GOMAXPROCS falls below what the
// loops' held waits need while they run, they stop holding their Ps, and
// requests go on being served (testing.AllocsPerRun sets GOMAXPROCS to 1:
// a loop then held the only P and a request waited seconds for it).
func TestLoopHoldFollowsGOMAXPROCS(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(runtime.NumCPU() + 2))
	h := loopHarness(t, Settings{})
	be := namedBackend(t, "a")
	h.route("loop.test", "/", h.member(be.URL))
	c := httpClient()
	get := func(phase string, i int) {
		t.Helper()
		status, _, body := h.do(c, "GET", "loop.test", "/x", nil)
		if status != 200 || body != "a" {
			t.Fatalf("%s, request %d: %d %q", phase, i, status, body)
		}
	}
	for i := 0; i < 50; i++ {
		get("GOMAXPROCS CPUs+2", i)
	}
	if !loopsHoldP(h.loops) {
		t.Fatal("GOMAXPROCS CPUs+2, 2 loops: the loops do not hold their Ps")
	}
	runtime.GOMAXPROCS(1)
	start := time.Now()
	for i := 0; i < 500; i++ {
		get("GOMAXPROCS 1", i)
	}
	if loopsHoldP(h.loops) {
		t.Errorf("GOMAXPROCS 1: the loops still hold their Ps after %v", time.Since(start))
	}
}

// loopsHoldP reports whether any of s's loops may wait holding its P.
func loopsHoldP(s *LoopServer) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.loops {
		if l.holdP.Load() {
			return true
		}
	}
	return false
}

// loopServer is a loop server with its own settings on a harness's proxy
// (for timeouts the harness's defaults do not exercise).
func loopServer(t *testing.T, h *harness, s ServerSettings) (*LoopServer, string) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewLoopServer(h.proxy, s, DefaultTransportSettings, 2)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		_ = srv.Fallback().ShutdownWithContext(ctx)
		_ = ln.Close()
		<-served
	})
	return srv, ln.Addr().String()
}

func TestLoopPipelinedRequests(t *testing.T) {
	h := loopHarness(t, Settings{})
	be := echoBackend(t)
	h.route("loop.test", "/", h.member(be.URL))
	rc := h.dialRaw()
	_ = rc.conn.SetDeadline(time.Now().Add(10 * time.Second))
	// Three requests in one write: answered in order on one connection.
	_, err := io.WriteString(rc.conn, "GET /1 HTTP/1.1\r\nHost: loop.test\r\n\r\n"+
		"GET /2 HTTP/1.1\r\nHost: loop.test\r\n\r\nGET /3 HTTP/1.1\r\nHost: loop.test\r\n\r\n")
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		resp, err := readRawResponse(rc.br, false)
		if err != nil {
			t.Fatal(err)
		}
		var seen seenRequest
		if err := json.Unmarshal(resp.Body, &seen); err != nil || seen.RequestURI != "/"+strconv.Itoa(i) {
			t.Fatalf("response %d: %v %q", i, err, resp.Body)
		}
	}
	if n := h.loops.Handoffs(); n != 0 {
		t.Errorf("%d handoffs", n)
	}
}

// TestLoopLargeBodySlowClient: a body larger than the relay buffer reaches
// a client that reads slowly, whole, and the backend is read only as fast
// as the client takes it.
func TestLoopLargeBodySlowClient(t *testing.T) {
	h := loopHarness(t, Settings{})
	body := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	srv := namedHandler(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/chunked" {
			w.(http.Flusher).Flush() // no Content-Length: chunked
		}
		_, _ = w.Write(body)
	})
	m := h.member(srv.URL)
	h.route("big.test", "/", m)
	for _, path := range []string{"/fixed", "/chunked"} {
		rc := h.dialRaw()
		_ = rc.conn.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.WriteString(rc.conn, "GET "+path+" HTTP/1.1\r\nHost: big.test\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond) // the socket buffers fill; the relay must wait
		resp, err := readRawResponse(rc.br, false)
		if err != nil {
			t.Fatal(err)
		}
		if resp.Status != 200 || !bytes.Equal(resp.Body, body) {
			t.Fatalf("%s: %d, %d bytes, want 200 and the %d-byte body", path, resp.Status, len(resp.Body), len(body))
		}
		// The connection stays usable.
		again := rc.roundTrip(false, "GET /fixed HTTP/1.1", "Host: big.test")
		if len(again.Body) != len(body) {
			t.Fatalf("%s: next response %d bytes", path, len(again.Body))
		}
	}
	if n := h.loops.Handoffs(); n != 0 {
		t.Errorf("%d handoffs", n)
	}
	eventually(t, "in-flight back to 0", func() bool { return m.InFlight.Load() == 0 })
	if rep := m.Stats.Report(time.Now().UnixNano()); rep.Requests != 4 {
		t.Errorf("%d requests counted, want 4", rep.Requests)
	}
}

// TestLoopHandsOff: requests the loops do not serve (a body, an upgrade,
// HTTP/1.0) are served by the fallback on the same connection.
func TestLoopHandsOff(t *testing.T) {
	h := loopHarness(t, Settings{})
	be := echoBackend(t)
	h.route("loop.test", "/", h.member(be.URL))
	rc := h.dialRaw()
	resp := rc.roundTripRaw(false, "POST /up HTTP/1.1\r\nHost: loop.test\r\nContent-Length: 5\r\n\r\nhello")
	var seen seenRequest
	if err := json.Unmarshal(resp.Body, &seen); err != nil || seen.Body != "hello" || seen.Method != "POST" {
		t.Fatalf("POST: %d %v %q", resp.Status, err, resp.Body)
	}
	if n := h.loops.Handoffs(); n != 1 {
		t.Fatalf("%d handoffs, want 1", n)
	}
	resp = rc.roundTrip(false, "GET /after HTTP/1.1", "Host: loop.test")
	if err := json.Unmarshal(resp.Body, &seen); err != nil || seen.RequestURI != "/after" {
		t.Fatalf("GET after the handoff: %d %q", resp.Status, resp.Body)
	}
	old := h.dialRaw()
	resp = old.roundTrip(false, "GET /old HTTP/1.0", "Host: loop.test")
	if resp.Status != 200 || h.loops.Handoffs() != 2 {
		t.Fatalf("HTTP/1.0: %d, %d handoffs", resp.Status, h.loops.Handoffs())
	}
}

func TestLoopTimeouts(t *testing.T) {
	h := newHarness(t, Settings{})
	s := DefaultServerSettings
	s.IdleTimeout, s.HeaderTimeout = 300*time.Millisecond, 300*time.Millisecond
	srv, addr := loopServer(t, h, s)
	closedWithin := func(what string, c net.Conn, d time.Duration) {
		t.Helper()
		_ = c.SetReadDeadline(time.Now().Add(d))
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Errorf("%s: read %v, want the proxy to close the connection (EOF)", what, err)
		}
	}
	idle, err := net.Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	partial, err := net.Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer partial.Close()
	// A header trickling in, a byte at a time, is cut at the header bound.
	go func() {
		for _, b := range []byte("GET / HTTP/1.1\r\nHost: x\r\n") {
			if _, err := partial.Write([]byte{b}); err != nil {
				return
			}
			time.Sleep(30 * time.Millisecond)
		}
	}()
	// Keep-alive connections wait for their next request within the idle
	// timeout (not the write timeout), after a proxied response and after
	// one the proxy made itself (404: no route).
	h.route("loop.test", "/", h.member(namedBackend(t, "a").URL))
	keptAlive := func(host string, status int) net.Conn {
		c, err := net.Dial("tcp4", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: "+host+"\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		if resp, err := readRawResponse(bufio.NewReader(c), false); err != nil || resp.Status != status {
			t.Fatalf("%s: %v %+v", host, err, resp)
		}
		return c
	}
	proxied, generated := keptAlive("loop.test", 200), keptAlive("nowhere.test", 404)
	closedWithin("idle", idle, 2*time.Second)
	closedWithin("partial header", partial, 2*time.Second)
	closedWithin("idle after a proxied response", proxied, 2*time.Second)
	closedWithin("idle after a response of the proxy's own", generated, 2*time.Second)
	eventually(t, "connections released", func() bool { return srv.Conns() == 0 })
}

// TestLoopShutdown: a request in progress finishes; a keep-alive
// connection with nothing to serve is closed; a request that arrives as
// the loop stops, on a keep-alive connection, as the first one of a new
// connection or on one still in the listen queue, is served with
// Connection: close instead of being reset; and Serve returns.
func TestLoopShutdown(t *testing.T) {
	h := newHarness(t, Settings{})
	slow := namedHandler(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(300 * time.Millisecond)
		}
		_, _ = io.WriteString(w, "done")
	})
	h.route("slow.test", "/", h.member(slow.URL))
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srv := NewLoopServer(h.proxy, DefaultServerSettings, DefaultTransportSettings, 2)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		return c, bufio.NewReader(c)
	}
	get := func(c net.Conn, path string) {
		t.Helper()
		if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: slow.test\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
	}
	answered := func(what string, br *bufio.Reader, wantClose bool) {
		t.Helper()
		resp, err := readRawResponse(br, false)
		if err != nil || resp.Status != 200 || string(resp.Body) != "done" || (resp.Header.Get("Connection") == "close") != wantClose {
			t.Fatalf("%s: %v %+v", what, err, resp)
		}
	}
	idle, idleR := dial()
	pending, pendingR := dial()
	for _, c := range []struct {
		c  net.Conn
		br *bufio.Reader
	}{{idle, idleR}, {pending, pendingR}} {
		get(c.c, "/")
		answered("first request", c.br, false)
	}
	fresh, freshR := dial()
	busy, busyR := dial()
	get(busy, "/slow")
	eventually(t, "connections accepted", func() bool { return srv.Conns() == 4 })
	time.Sleep(50 * time.Millisecond)

	// Hold the loops so that the shutdown is in their queue before the
	// pending request arrives: they find both when they run again.
	for _, l := range srv.loops {
		l.post(func() { time.Sleep(500 * time.Millisecond) })
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	shutdown := make(chan error, 1)
	go func() { shutdown <- srv.Shutdown(ctx) }()
	time.Sleep(30 * time.Millisecond)
	get(pending, "/")
	queued, queuedR := dial() // in the listen queue, not accepted yet
	get(queued, "/")

	answered("in-flight request", busyR, true)
	answered("request arriving as the loop stops", pendingR, true)
	answered("request on a connection queued as the loop stops", queuedR, true)
	_ = idle.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := idle.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("idle keep-alive connection: %v, want EOF", err)
	}
	get(fresh, "/")
	answered("first request of a connection accepted before the shutdown", freshR, true)
	if err := <-shutdown; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Serve did not return")
	}
}

// TestLoopRetriesClosedKeepAlive: a backend that closes keep-alive
// connections costs the client nothing. One that closes each connection
// after its response, unannounced, is seen by the idle pool; one that
// takes a second request on a connection and closes it without an answer
// is met by the request itself, which is sent again on a new connection.
func TestLoopRetriesClosedKeepAlive(t *testing.T) {
	h := loopHarness(t, Settings{})
	closer := rawBackend(t, func(req *http.Request, conn net.Conn) bool {
		_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		return false
	})
	var mu sync.Mutex
	served := map[net.Conn]int{}
	dropper := rawBackend(t, func(req *http.Request, conn net.Conn) bool {
		mu.Lock()
		served[conn]++
		n := served[conn]
		mu.Unlock()
		if n > 1 {
			return false // read, then closed with no answer
		}
		_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		return true
	})
	h.route("closer.test", "/", h.member(closer))
	h.route("dropper.test", "/", h.member(dropper))
	rc := h.dialRaw()
	for i := 0; i < 5; i++ {
		time.Sleep(20 * time.Millisecond) // the close reaches the pooled connection
		for _, host := range []string{"closer.test", "dropper.test"} {
			resp := rc.roundTrip(false, "GET / HTTP/1.1", "Host: "+host)
			if resp.Status != 200 || string(resp.Body) != "ok" {
				t.Fatalf("%s #%d: %d %q", host, i, resp.Status, resp.Body)
			}
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(served) < 5 {
		t.Errorf("the dropping backend saw %d connections; the requests it dropped were not sent again on new ones", len(served))
	}
}

// TestLoopSkipsInterimResponses: a backend's 1xx responses are not
// relayed; the final response after them is, whole, whether it comes in
// the same read as the interim one or after it.
func TestLoopSkipsInterimResponses(t *testing.T) {
	h := loopHarness(t, Settings{})
	const early = "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
	const final = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
	together := rawBackend(t, func(req *http.Request, conn net.Conn) bool {
		_, _ = io.WriteString(conn, early+final)
		return true
	})
	apart := rawBackend(t, func(req *http.Request, conn net.Conn) bool {
		_, _ = io.WriteString(conn, early+final[:20])
		time.Sleep(30 * time.Millisecond)
		_, _ = io.WriteString(conn, final[20:])
		return true
	})
	h.route("together.test", "/", h.member(together))
	h.route("apart.test", "/", h.member(apart))
	rc := h.dialRaw()
	for i := 0; i < 3; i++ {
		for _, host := range []string{"together.test", "apart.test"} {
			resp := rc.roundTrip(false, "GET / HTTP/1.1", "Host: "+host)
			if resp.Status != 200 || string(resp.Body) != "hello" {
				t.Fatalf("%s #%d: %d %q", host, i, resp.Status, resp.Body)
			}
		}
	}
	if n := h.loops.Handoffs(); n != 0 {
		t.Errorf("%d handoffs", n)
	}
}

// TestLoopBodyWithoutIdleBound: with no body-idle bound in the transport,
// a body that pauses is relayed whole (no deadline is set, rather than one
// that has already passed).
func TestLoopBodyWithoutIdleBound(t *testing.T) {
	h := loopHarness(t, Settings{})
	s := DefaultTransportSettings
	s.BodyIdle = 0
	h.transport = NewTransport(s)
	slow := namedHandler(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "first ")
		w.(http.Flusher).Flush()
		time.Sleep(700 * time.Millisecond) // longer than the deadline sweep
		_, _ = io.WriteString(w, "second")
	})
	h.route("slow.test", "/", h.member(slow.URL))
	resp := h.dialRaw().roundTrip(false, "GET / HTTP/1.1", "Host: slow.test")
	if resp.Status != 200 || string(resp.Body) != "first second" {
		t.Fatalf("%d %q", resp.Status, resp.Body)
	}
}

func TestChunkScanner(t *testing.T) {
	body := "5\r\nhello\r\n1;ext=1\r\n \r\n0\r\nTrailer: x\r\n\r\n"
	for split := 0; split <= len(body); split++ {
		var f bodyFrame
		f.kind = frameChunked
		took, done, err := f.scan([]byte(body[:split]))
		if err != nil || took != split || (done && split != len(body)) {
			t.Fatalf("split %d: first part took %d done %v err %v", split, took, done, err)
		}
		if split == len(body) {
			continue
		}
		rest := body[split:] + "NEXT"
		took, done, err = f.scan([]byte(rest))
		if err != nil || !done || took != len(rest)-4 {
			t.Fatalf("split %d: rest took %d of %d, done %v, err %v", split, took, len(rest), done, err)
		}
	}
	for _, bad := range []string{"x\r\n", "5\r\nhelloXX", "12345678901234567\r\n"} {
		f := bodyFrame{kind: frameChunked}
		if _, _, err := f.scan([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestFrameChunk(t *testing.T) {
	for _, n := range []int{1, 15, 16, 4095, 64 << 10} {
		buf := make([]byte, chunkPrefix+n+2)
		for i := range n {
			buf[chunkPrefix+i] = 'a'
		}
		start := frameChunk(buf, chunkPrefix, n)
		want := appendChunk(nil, bytes.Repeat([]byte("a"), n))
		if !bytes.Equal(buf[start:], want) {
			t.Fatalf("%d: %q…, want %q…", n, buf[start:start+8], want[:8])
		}
		r := httputil.NewChunkedReader(bytes.NewReader(append(want, lastChunk...)))
		if got, err := io.ReadAll(r); err != nil || len(got) != n {
			t.Fatalf("%d: decoded %d bytes, %v", n, len(got), err)
		}
	}
}

func TestHeaderEnd(t *testing.T) {
	for _, c := range []struct {
		in   string
		end  int
		bare bool
	}{
		{"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest", 27, false},
		{"GET / HTTP/1.1\r\nHost: a\r\n", -1, false},
		{"GET / HTTP/1.1\nHost: a\n\nrest", 24, true},
		{"GET / HTTP/1.1\r\nHost: a\n\r\n", 26, true},
	} {
		end, bare := headerEnd([]byte(c.in))
		if end != c.end || bare != c.bare {
			t.Errorf("%q: %d %v, want %d %v", c.in, end, bare, c.end, c.bare)
		}
	}
}

// boomLog panics on the access-log entry of /boom.
type boomLog struct{}

func (boomLog) Log(e AccessEntry) {
	if string(e.URI()) == "/boom" {
		panic("boom")
	}
}

// TestLoopPanicEndsOnlyItsConnection: a panic while a loop serves a
// request closes that connection; the loop goes on serving the others.
func TestLoopPanicEndsOnlyItsConnection(t *testing.T) {
	h := loopHarness(t, Settings{AccessLog: boomLog{}})
	be := namedBackend(t, "a")
	h.route("loop.test", "/", h.member(be.URL))
	other := h.dialRaw()
	if resp := other.roundTrip(false, "GET /ok HTTP/1.1", "Host: loop.test"); resp.Status != 200 {
		t.Fatalf("before: %d", resp.Status)
	}
	rc := h.dialRaw()
	_ = rc.conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(rc.conn, "GET /boom HTTP/1.1\r\nHost: loop.test\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(rc.br); err != nil {
		t.Fatalf("the panicking request's connection: %v, want it closed", err)
	}
	for i := 0; i < 3; i++ {
		if resp := other.roundTrip(false, "GET /ok HTTP/1.1", "Host: loop.test"); resp.Status != 200 || string(resp.Body) != "a" {
			t.Fatalf("after: %d %q", resp.Status, resp.Body)
		}
	}
}
