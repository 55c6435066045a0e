package upstream

import (
	"net"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
)

// benchRequestCtx is a browser-like GET as the listener hands it over.
func benchRequestCtx(b *testing.B) *fasthttp.RequestCtx {
	var ctx fasthttp.RequestCtx
	var req fasthttp.Request
	req.SetRequestURI("/index.html?q=1")
	req.Header.SetHost("bench.test")
	req.Header.Set("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/120.0")
	req.Header.Set("Accept", "text/html,application/xhtml+xml")
	req.Header.Set("Accept-Language", "en-US,en;q=0.5")
	req.Header.Set("Accept-Encoding", "gzip, deflate")
	req.Header.Set("Cookie", "session=0123456789abcdef")
	req.Header.Set("Connection", "keep-alive")
	ctx.Init(&req, &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 40000}, nil)
	return &ctx
}

// BenchmarkPrepareRequest is building the backend request from the
// client's: header copy, hop-by-hop removal, forwarding headers, URI.
func BenchmarkPrepareRequest(b *testing.B) {
	ctx := benchRequestCtx(b)
	p := NewProxy(nil, Settings{})
	be := &Backend{HostHeader: []byte("10.0.0.1:8080")}
	cfg := &Config{Backend: be}
	c := &call{proxy: p}
	var present headerSet
	for _, name := range [...]string{"Host", "User-Agent", "Accept", "Accept-Language", "Accept-Encoding", "Cookie", "Connection"} {
		present |= classifyHeader([]byte(name))
	}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		c.prepareRequest(ctx, be, cfg, p, present)
		c.out.Reset()
	}
}

// BenchmarkRelayResponseHeaders is copying a backend's response headers to
// the client's response, as forwardTo does.
func BenchmarkRelayResponseHeaders(b *testing.B) {
	var resp fasthttp.Response
	resp.Header.SetStatusCode(200)
	resp.Header.SetContentType("text/html; charset=utf-8")
	resp.Header.SetContentLength(4096)
	resp.Header.Set("Date", "Wed, 02 Dec 2026 15:00:00 GMT")
	resp.Header.Set("Server", "backend")
	resp.Header.Set("Cache-Control", "no-cache")
	resp.Header.Set("Etag", `"abc"`)
	var h fasthttp.ResponseHeader
	cfg := &Config{}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		relayResponseHeaders(&h, &resp, cfg, false)
		h.Reset()
	}
}

// TestScanHeadersPresent: the admission scan finds every header that
// forwarding deletes or replaces, in any case, and no other.
func TestScanHeadersPresent(t *testing.T) {
	for i, name := range headerNames {
		for _, n := range []string{string(name), strings.ToLower(string(name)), strings.ToUpper(string(name))} {
			_, present := scanHeaders([]byte("Host: h\r\n"+n+": x\r\nAccept: */*\r\n\r\n"), 0)
			if present != 1<<i {
				t.Errorf("%s: present %b, want %b", n, present, 1<<i)
			}
		}
	}
	for _, n := range []string{"X-Forwarded", "Connection2", "Keep-Alive-X", "TEX", "Tx", "Expects", "X-Real-IPs", "Content-Type"} {
		if _, present := scanHeaders([]byte(n+": x\r\n\r\n"), 0); present != 0 {
			t.Errorf("%s: present %b, want none", n, present)
		}
	}
	if status, _ := scanHeaders([]byte("Content-Length: 1\r\ntransfer-encoding: chunked\r\n\r\n"), 0); status != 400 {
		t.Errorf("Content-Length with Transfer-Encoding: status %d, want 400", status)
	}
}
