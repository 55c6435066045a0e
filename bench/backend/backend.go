// Package backend is the bench suite's origin server: fasthttp with fixed
// bodies of 13 B, 4 KiB and 64 KiB, an upload sink, a health endpoint and a
// WebSocket echo.
package backend

import (
	"bytes"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/go-proxy/go-proxy/bench/ws"
	"github.com/valyala/fasthttp"
)

// Paths served by the backend.
const (
	Path13B    = "/13b"
	Path4KiB   = "/4kib"
	Path64KiB  = "/64kib"
	PathUpload = "/upload"
	PathHealth = "/health"
	PathWS     = "/ws"
)

// Bodies by path; Body13B is exactly 13 bytes.
var (
	Body13B   = []byte("Hello, World!")
	Body4KiB  = bytes.Repeat([]byte("0123456789abcdef"), 4096/16)
	Body64KiB = bytes.Repeat([]byte("0123456789abcdef"), 65536/16)
)

// BodyFor returns the fixed body served at path, or nil.
func BodyFor(path string) []byte {
	switch path {
	case Path13B:
		return Body13B
	case Path4KiB:
		return Body4KiB
	case Path64KiB:
		return Body64KiB
	}
	return nil
}

// MaxUpload is the largest request body the sink accepts.
const MaxUpload = 8 << 20

var contentType = []byte("text/plain")

// Handler serves the backend's paths.
func Handler(ctx *fasthttp.RequestCtx) {
	path := string(ctx.Path())
	switch path {
	case Path13B, Path4KiB, Path64KiB:
		ctx.Response.Header.SetContentTypeBytes(contentType)
		ctx.Response.SetBodyRaw(BodyFor(path))
	case PathUpload:
		// The sink answers with the number of bytes received, 13 B wide
		// at most for bodies below 10 TB.
		ctx.Response.Header.SetContentTypeBytes(contentType)
		ctx.Response.SetBodyString(strconv.Itoa(len(ctx.Request.Body())))
	case PathHealth:
		ctx.Response.SetBodyString("ok")
	case PathWS:
		serveWebSocket(ctx)
	default:
		ctx.SetStatusCode(fasthttp.StatusNotFound)
	}
}

func serveWebSocket(ctx *fasthttp.RequestCtx) {
	h := &ctx.Request.Header
	key := string(h.Peek("Sec-WebSocket-Key"))
	if !strings.EqualFold(string(h.Peek("Upgrade")), "websocket") || key == "" {
		ctx.SetStatusCode(fasthttp.StatusBadRequest)
		return
	}
	ctx.SetStatusCode(fasthttp.StatusSwitchingProtocols)
	ctx.Response.Header.Set("Upgrade", "websocket")
	ctx.Response.Header.Set("Connection", "Upgrade")
	ctx.Response.Header.Set("Sec-WebSocket-Accept", ws.AcceptKey(key))
	ctx.Hijack(func(c net.Conn) { _ = ws.Echo(c) })
}

// ServeLoopback serves the backend on a free loopback port and registers
// its shutdown with cleanup (a test's t.Cleanup).
func ServeLoopback(cleanup func(func())) (addr string, err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	srv := NewServer()
	go func() { _ = srv.Serve(ln) }()
	cleanup(func() { _ = srv.Shutdown() })
	return ln.Addr().String(), nil
}

// NewServer returns the backend's fasthttp server.
func NewServer() *fasthttp.Server {
	return &fasthttp.Server{
		Handler:            Handler,
		Name:               "gpbench-backend",
		MaxRequestBodySize: MaxUpload,
		ReadTimeout:        60 * time.Second,
		WriteTimeout:       60 * time.Second,
		IdleTimeout:        60 * time.Second,
		Concurrency:        64 << 10,
		NoDefaultDate:      true,
		CloseOnShutdown:    true,
	}
}
