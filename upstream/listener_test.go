package upstream

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestListenerKeepAlive serves through Listener: keep-alive requests one
// after another, pipelined requests, a body far larger than the socket
// buffers, a bodyless response and a closing one, all on the connection the
// listener wrapped. (The whole upstream suite passes with every harness
// server behind Listener too; this test keeps that path covered.)
func TestListenerKeepAlive(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	be := namedHandler(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/big":
			_, _ = w.Write(big)
		case "/empty":
			w.WriteHeader(http.StatusNoContent)
		default:
			_, _ = w.Write([]byte("hello " + r.URL.Path))
		}
	})
	h := newHarness(t, Settings{})
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(h.proxy.Handle, DefaultServerSettings)
	go func() { _ = srv.Serve(Listener(ln)) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.ShutdownWithContext(ctx)
	})
	h.addr = ln.Addr().String()
	h.route("l.test", "/", h.member(be.URL))

	rc := h.dialRaw()
	if _, ok := rc.conn.(*net.TCPConn); !ok {
		t.Fatalf("client side %T", rc.conn)
	}
	for i, path := range []string{"/a", "/b", "/big", "/empty", "/c", "/big", "/d"} {
		r := rc.roundTrip(false, "GET "+path+" HTTP/1.1", "Host: l.test")
		want := []byte("hello " + path)
		switch path {
		case "/big":
			want = big
		case "/empty":
			want = nil
		}
		if !bytes.Equal(r.Body, want) {
			t.Fatalf("request %d %s: status %d, %d bytes, want %d", i, path, r.Status, len(r.Body), len(want))
		}
	}
	// Two requests in one write: both answered, in order.
	_ = rc.conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := rc.conn.Write([]byte("GET /p1 HTTP/1.1\r\nHost: l.test\r\n\r\nGET /p2 HTTP/1.1\r\nHost: l.test\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/p1", "/p2"} {
		r, err := readRawResponse(rc.br, false)
		if err != nil || string(r.Body) != "hello "+path {
			t.Fatalf("pipelined %s: %v %+v", path, err, r)
		}
	}
	// A closing request gets its response and then the end of the stream.
	r := rc.roundTrip(false, "GET /last HTTP/1.1", "Host: l.test", "Connection: close")
	if string(r.Body) != "hello /last" || !strings.EqualFold(r.Header.Get("Connection"), "close") {
		t.Fatalf("closing request: %+v", r)
	}
	if n, err := rc.br.ReadByte(); err == nil {
		t.Fatalf("byte %q after a closing response", n)
	}
}

// TestListenerWriteAfterExpiredWait: when the short wait's deadline has
// passed before the write gets to run, the write still happens, whole.
func TestListenerWriteAfterExpiredWait(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	wl := Listener(ln)
	defer wl.Close()
	client, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	sc, err := wl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	cc := sc.(*clientConn)
	// An expired read deadline makes raw.Read fail before its callback,
	// as when the goroutine runs only after the short wait has passed.
	_ = cc.TCPConn.SetReadDeadline(time.Unix(1, 0))
	cc.await = func(uintptr) bool { t.Error("callback ran despite the expired deadline"); return true }
	cc.raw = expiredRaw{cc.raw}
	cc.last = true
	if n, err := cc.Write([]byte("response")); n != 8 || err != nil {
		t.Fatalf("write: %d, %v", n, err)
	}
	buf := make([]byte, 8)
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(client, buf); err != nil || string(buf) != "response" {
		t.Fatalf("client read %q, %v", buf, err)
	}
}

// expiredRaw is a RawConn whose Read fails at once, as raw.Read does when
// the read deadline has passed.
type expiredRaw struct{ syscall.RawConn }

func (expiredRaw) Read(func(uintptr) bool) error { return os.ErrDeadlineExceeded }
