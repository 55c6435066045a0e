package upstream

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"strings"
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
