package backend

import (
	"bytes"
	"net"
	"testing"
	"time"

	"github.com/go-proxy/go-proxy/bench/ws"
	"github.com/valyala/fasthttp"
)

func TestBackend(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer()
	go func() { _ = srv.Serve(ln) }()
	defer func() { _ = srv.Shutdown() }()
	addr := ln.Addr().String()
	if len(Body13B) != 13 || len(Body4KiB) != 4096 || len(Body64KiB) != 65536 {
		t.Fatal("body sizes")
	}
	c := &fasthttp.HostClient{Addr: addr}
	for _, p := range []string{Path13B, Path4KiB, Path64KiB} {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		req.SetRequestURI("http://x.test" + p)
		if err := c.DoTimeout(req, resp, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode() != 200 || !bytes.Equal(resp.Body(), BodyFor(p)) {
			t.Fatalf("%s: %d, %d bytes", p, resp.StatusCode(), len(resp.Body()))
		}
	}
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	req.SetRequestURI("http://x.test" + PathUpload)
	req.Header.SetMethod("POST")
	req.SetBody(make([]byte, 1<<20))
	if err := c.DoTimeout(req, resp, 5*time.Second); err != nil || string(resp.Body()) != "1048576" {
		t.Fatalf("upload: %v %q", err, resp.Body())
	}

	wc, err := ws.Dial(addr, "x.test", PathWS, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = wc.SetDeadline(time.Now().Add(5 * time.Second))
	for i := 0; i < 3; i++ {
		if err := wc.WriteMessage(ws.OpBinary, Body13B); err != nil {
			t.Fatal(err)
		}
		if op, p, err := wc.ReadMessage(); err != nil || op != ws.OpBinary || !bytes.Equal(p, Body13B) {
			t.Fatalf("ws echo: %d %q %v", op, p, err)
		}
	}
	_ = wc.Close()
}
