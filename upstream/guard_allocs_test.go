//go:build !race

package upstream

import (
	"bufio"
	"bytes"
	"testing"

	"github.com/go-proxy/go-proxy/router"
	"github.com/valyala/fasthttp"
)

// TestAdmitAllocs: admission — the header scan, the Host check and the
// path normalisation, which rewrites the path in place — allocates
// nothing per request.
func TestAdmitAllocs(t *testing.T) {
	p := NewProxy(router.NewTable[*Member](), Settings{})
	raw := []byte("GET //x/./%61dmin/../y%3f?q=1 HTTP/1.1\r\nHost: App.Test:8080\r\nUser-Agent: t\r\nAccept: */*\r\n" +
		"Cookie: a=b\r\nX-Forwarded-For: 1.2.3.4\r\nContent-Length: 0\r\n\r\n")
	var ctx fasthttp.RequestCtx
	rd := bytes.NewReader(raw)
	br := bufio.NewReader(rd)
	once := func() {
		ctx.Request.Reset()
		rd.Reset(raw)
		br.Reset(rd)
		if err := ctx.Request.Read(br); err != nil {
			t.Fatal(err)
		}
		path, _, ok := p.admit(&ctx)
		if !ok || string(path) != "/x/y%3F" {
			t.Fatalf("admit: %q %v", path, ok)
		}
	}
	for i := 0; i < 100; i++ {
		once()
	}
	if n := testing.AllocsPerRun(1000, once); n > 0 {
		t.Errorf("admitting a request allocates %.0f objects; want 0", n)
	}
}
