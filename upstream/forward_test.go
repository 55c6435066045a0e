package upstream

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// hopByHopRequest is a request carrying every hop-by-hop header of
// registry-v2 §6.11, a forged forwarding chain and a body.
func hopByHopRequest(path string, extra ...string) string {
	lines := []string{
		"POST " + path + " HTTP/1.1",
		"Host: app.test:8080",
		"Connection: keep-alive, X-Hop, Upgrade",
		"X-Hop: secret",
		"Keep-Alive: timeout=5",
		"Proxy-Connection: keep-alive",
		"TE: trailers",
		"Trailer: X-Trail",
		"Upgrade: h2c",
		"X-Real-IP: 6.6.6.6",
		"X-Forwarded-Host: evil.test",
		"X-Forwarded-Proto: https",
		"X-Keep: yes",
		"Content-Length: 5",
	}
	lines = append(lines, extra...)
	return strings.Join(lines, "\r\n") + "\r\n\r\nhello"
}

// echoApp returns a harness whose app.test routes to a backend that
// answers with the request it saw (decodeSeen), and a raw client
// connection to the proxy.
func echoApp(t *testing.T) (*harness, *rawConn) {
	t.Helper()
	h := newHarness(t, Settings{})
	be := echoBackend(t)
	h.route("app.test", "/", h.member(be.URL))
	return h, h.dialRaw()
}

func decodeSeen(t *testing.T, resp *rawResponse) seenRequest {
	t.Helper()
	if resp.Status != 200 {
		t.Fatalf("status %d body %q", resp.Status, resp.Body)
	}
	var s seenRequest
	if err := json.Unmarshal(resp.Body, &s); err != nil {
		t.Fatalf("backend answer %q: %v", resp.Body, err)
	}
	return s
}

func TestForwardRequestHeaders(t *testing.T) {
	for _, tc := range []struct {
		name    string
		trusted []netip.Prefix
		xff     []string // the client's X-Forwarded-For lines
		want    string   // what the backend must get, as one header line
	}{
		{"untrusted no chain", nil, nil, "127.0.0.1"},
		{"trusted no chain", []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, nil, "127.0.0.1"},
		{"untrusted chain replaced", []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, []string{"6.6.6.6"}, "127.0.0.1"},
		{"untrusted two chains replaced", nil, []string{"6.6.6.6", "7.7.7.7"}, "127.0.0.1"},
		{"trusted chain appended", []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, []string{"6.6.6.6"}, "6.6.6.6, 127.0.0.1"},
		{"trusted two lines joined", []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, []string{"6.6.6.6", "7.7.7.7, 8.8.8.8"}, "6.6.6.6, 7.7.7.7, 8.8.8.8, 127.0.0.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, Settings{TrustedProxies: tc.trusted})
			be := echoBackend(t)
			h.route("app.test", "/api", h.member(be.URL+"/app/"))
			var extra []string
			for _, v := range tc.xff {
				extra = append(extra, "X-Forwarded-For: "+v)
			}
			rc := h.dialRaw()
			s := decodeSeen(t, rc.roundTripRaw(false, hopByHopRequest("/api/x?q=1&r=a%20b", extra...)))

			if got := s.Header.Values("X-Forwarded-For"); len(got) != 1 || got[0] != tc.want {
				t.Errorf("X-Forwarded-For %q, want exactly [%q]", got, tc.want)
			}
			for name, want := range map[string]string{
				"X-Real-Ip":         "127.0.0.1",
				"X-Forwarded-Proto": "http",
				"X-Forwarded-Host":  "app.test:8080",
				"X-Keep":            "yes",
			} {
				if got := s.Header.Values(name); len(got) != 1 || got[0] != want {
					t.Errorf("%s %q, want exactly [%q]", name, got, want)
				}
			}
			for _, name := range []string{"Connection", "X-Hop", "Keep-Alive", "Proxy-Connection", "Te", "Trailer", "Upgrade"} {
				if got := s.Header.Values(name); len(got) > 0 {
					t.Errorf("hop-by-hop %s forwarded: %q", name, got)
				}
			}
			if want := strings.TrimPrefix(be.URL, "http://"); s.Host != want {
				t.Errorf("Host %q, want the backend's %q", s.Host, want)
			}
			if s.RequestURI != "/app/api/x?q=1&r=a%20b" {
				t.Errorf("request target %q, want /app/api/x?q=1&r=a%%20b", s.RequestURI)
			}
			if s.Body != "hello" || s.Method != "POST" || s.Proto != "HTTP/1.1" {
				t.Errorf("got %s %s body %q", s.Method, s.Proto, s.Body)
			}
		})
	}
}

func TestForwardChunkedRequestBody(t *testing.T) {
	_, rc := echoApp(t)
	s := decodeSeen(t, rc.roundTripRaw(false, "POST /c HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n"+
		"\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"))
	if s.Body != "hello world" {
		t.Errorf("body %q", s.Body)
	}
	if len(s.TransferEnc) != 1 || s.TransferEnc[0] != "chunked" || len(s.Header.Values("Transfer-Encoding")) != 0 {
		t.Errorf("framing to the backend: TE %q header %q", s.TransferEnc, s.Header.Values("Transfer-Encoding"))
	}
}

func TestForwardPreserveHostAndPathJoin(t *testing.T) {
	h := newHarness(t, Settings{})
	be := echoBackend(t)
	host := strings.TrimPrefix(be.URL, "http://")
	h.route("keep.test", "/", h.member(be.URL+"/", func(c *Config) { c.PreserveHost = true }))
	h.route("app.test", "/", h.member(be.URL+"/app"))
	h.route("root.test", "/", h.member(be.URL))
	c := httpClient()
	for _, tc := range []struct{ host, path, wantHost, wantURI string }{
		{"keep.test", "/x", "keep.test", "/x"},
		{"app.test", "/api/x?q=1", host, "/app/api/x?q=1"},
		{"app.test", "/", host, "/app/"},
		{"root.test", "/", host, "/"},
		{"root.test", "/a/b?c=d&e", host, "/a/b?c=d&e"},
	} {
		status, _, body := h.do(c, "GET", tc.host, tc.path, nil)
		var s seenRequest
		if err := json.Unmarshal([]byte(body), &s); status != 200 || err != nil {
			t.Fatalf("%s%s: %d %q", tc.host, tc.path, status, body)
		}
		if s.Host != tc.wantHost || s.RequestURI != tc.wantURI {
			t.Errorf("%s%s: backend got Host %q target %q, want %q %q", tc.host, tc.path, s.Host, s.RequestURI, tc.wantHost, tc.wantURI)
		}
		if got := s.Header.Get("X-Forwarded-Host"); got != tc.host {
			t.Errorf("%s%s: X-Forwarded-Host %q", tc.host, tc.path, got)
		}
	}
}

func TestForwardResponseHeaders(t *testing.T) {
	h := newHarness(t, Settings{})
	url := rawBackend(t, func(req *http.Request, conn net.Conn) bool {
		if req.URL.Path == "/chunked" {
			_, _ = io.WriteString(conn, "HTTP/1.1 201 Created\r\n"+
				"Transfer-Encoding: chunked\r\n"+
				"Connection: X-Secret\r\n"+
				"X-Secret: s\r\n"+
				"X-Backend: raw\r\n"+
				"\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
			return true
		}
		_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\n"+
			"Content-Length: 5\r\n"+
			"Connection: X-Secret, keep-alive\r\n"+
			"X-Secret: s\r\n"+
			"Keep-Alive: timeout=5\r\n"+
			"Proxy-Connection: keep-alive\r\n"+
			"TE: trailers\r\n"+
			"Trailer: X-Trail\r\n"+
			"Upgrade: foo\r\n"+
			"X-Backend: raw\r\n"+
			"X-Kept: k\r\n"+
			"\r\nhello")
		return true
	})
	h.route("app.test", "/", h.member(url, func(c *Config) {
		c.Headers = []Header{{Name: []byte("X-Backend"), Value: []byte("route")}}
	}))
	rc := h.dialRaw()
	resp := rc.roundTrip(false, "GET / HTTP/1.1", "Host: app.test")
	if resp.Status != 200 || string(resp.Body) != "hello" || resp.Proto != "HTTP/1.1" {
		t.Fatalf("got %s %d %q", resp.Proto, resp.Status, resp.Body)
	}
	for _, name := range []string{"Connection", "X-Secret", "Keep-Alive", "Proxy-Connection", "Te", "Trailer", "Upgrade", "Transfer-Encoding"} {
		if v := resp.Header.Values(name); len(v) > 0 {
			t.Errorf("hop-by-hop %s relayed: %q", name, v)
		}
	}
	if resp.Header.Get("X-Kept") != "k" || resp.Header.Get("Content-Length") != "5" {
		t.Errorf("end-to-end headers lost: %v", resp.Header)
	}
	if v := resp.Header.Values("X-Backend"); len(v) != 1 || v[0] != "route" {
		t.Errorf("route header X-Backend %q, want it to replace the backend's", v)
	}

	resp = rc.roundTrip(false, "GET /chunked HTTP/1.1", "Host: app.test")
	if resp.Status != 201 || string(resp.Body) != "hello world" {
		t.Fatalf("chunked: %d %q", resp.Status, resp.Body)
	}
	if v := resp.Header.Values("Transfer-Encoding"); len(v) != 1 || v[0] != "chunked" || resp.Header.Get("Content-Length") != "" {
		t.Errorf("chunked framing: TE %q CL %q", v, resp.Header.Get("Content-Length"))
	}
	if len(resp.Header.Values("X-Secret")) > 0 || len(resp.Header.Values("Connection")) > 0 {
		t.Errorf("Connection-named header relayed: %v", resp.Header)
	}
}

func TestForwardKeepAliveWhenBackendCloses(t *testing.T) {
	h := newHarness(t, Settings{})
	url := rawBackend(t, func(req *http.Request, conn net.Conn) bool {
		switch req.URL.Path {
		case "/http10":
			// HTTP/1.0, no length: the body ends when the connection does.
			_, _ = io.WriteString(conn, "HTTP/1.0 200 OK\r\nX-Backend: raw\r\n\r\nold school")
		default:
			_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nclose")
		}
		return false
	})
	h.route("app.test", "/", h.member(url))
	rc := h.dialRaw()
	for i := 0; i < 3; i++ {
		for _, path := range []string{"/close", "/http10"} {
			resp := rc.roundTrip(false, "GET "+path+" HTTP/1.1", "Host: app.test")
			want := map[string]string{"/close": "close", "/http10": "old school"}[path]
			if resp.Status != 200 || string(resp.Body) != want {
				t.Fatalf("%s #%d: %d %q, want 200 %q", path, i, resp.Status, resp.Body, want)
			}
			if resp.Proto != "HTTP/1.1" || resp.Header.Get("Connection") != "" {
				t.Errorf("%s #%d: %s Connection %q: want HTTP/1.1 keep-alive", path, i, resp.Proto, resp.Header.Get("Connection"))
			}
		}
	}
}

func TestForwardHead(t *testing.T) {
	h := newHarness(t, Settings{})
	a := namedBackend(t, "A")
	m := h.member(a.URL)
	h.route("app.test", "/", m)
	rc := h.dialRaw()
	for i := 0; i < 2; i++ {
		resp := rc.roundTrip(true, "HEAD / HTTP/1.1", "Host: app.test")
		if resp.Status != 200 || resp.Header.Get("X-Backend") != "A" {
			t.Fatalf("HEAD: %d %v", resp.Status, resp.Header)
		}
	}
	// The connection is still in sync after two HEADs.
	resp := rc.roundTrip(false, "GET / HTTP/1.1", "Host: app.test")
	if string(resp.Body) != "A" {
		t.Errorf("GET after HEAD: %q", resp.Body)
	}
	eventually(t, "in-flight back to 0", func() bool { return m.InFlight.Load() == 0 })
}

func TestCompression(t *testing.T) {
	h := newHarness(t, Settings{})
	page := strings.Repeat("<p>compress me</p>", 600)
	srv := namedHandler(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.Header().Set("ETag", `"v1"`)
		if r.URL.Path == "/small" {
			_, _ = io.WriteString(w, "tiny")
			return
		}
		_, _ = io.WriteString(w, page)
	})
	m := h.member(srv.URL, func(c *Config) { c.Compression = true })
	h.route("gz.test", "/", m)
	c := httpClient()
	req, _ := http.NewRequest("GET", h.url("/big"), nil)
	req.Host = "gz.test"
	req.Header.Set("Accept-Encoding", "gzip")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.Header.Get("Content-Encoding") != "gzip" || resp.Header.Get("Vary") != "Accept-Encoding" ||
		resp.Header.Get("ETag") != `W/"v1"` || resp.ContentLength != -1 {
		t.Fatalf("headers %v (length %d)", resp.Header, resp.ContentLength)
	}
	zr, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	plain, err := io.ReadAll(zr)
	if err != nil || string(plain) != page {
		t.Fatalf("gunzip: %v, %d bytes", err, len(plain))
	}
	if rep := m.Stats.Report(time.Now().UnixNano()); rep.BytesSent != uint64(len(raw)) {
		t.Errorf("bytes_sent %d, want the compressed %d", rep.BytesSent, len(raw))
	}

	req.Header.Set("Accept-Encoding", "gzip;q=0.5, br")
	resp, err = c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.Header.Get("Content-Encoding") != "br" {
		t.Errorf("br preferred: Content-Encoding %q", resp.Header.Get("Content-Encoding"))
	}

	req, _ = http.NewRequest("GET", h.url("/small"), nil)
	req.Host = "gz.test"
	req.Header.Set("Accept-Encoding", "gzip")
	resp, err = c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.Header.Get("Content-Encoding") != "" || string(b) != "tiny" {
		t.Errorf("small body compressed: %v %q", resp.Header, b)
	}
}

func TestForwardedProtoFollowsScheme(t *testing.T) {
	h := newHarness(t, Settings{Scheme: "https"})
	be := echoBackend(t)
	h.route("app.test", "/", h.member(be.URL))
	status, _, body := h.do(httpClient(), "GET", "app.test", "/", nil)
	var s seenRequest
	if err := json.Unmarshal([]byte(body), &s); status != 200 || err != nil {
		t.Fatalf("%d %q", status, body)
	}
	if got := s.Header.Values("X-Forwarded-Proto"); len(got) != 1 || got[0] != "https" {
		t.Errorf("X-Forwarded-Proto %q, want [https]", got)
	}
}

// TestConnectionLinesAllCount: headers named by any Connection line are
// hop-by-hop, in both directions, not only those of the first line.
func TestConnectionLinesAllCount(t *testing.T) {
	h, rc := echoApp(t)
	s := decodeSeen(t, rc.roundTrip(false, "GET / HTTP/1.1", "Host: app.test",
		"Connection: X-Hop-A", "X-Hop-A: 1", "connection: x-hop-b, keep-alive", "X-Hop-B: 2", "X-Keep: yes"))
	for _, name := range []string{"X-Hop-A", "X-Hop-B", "Connection"} {
		if got := s.Header.Values(name); len(got) > 0 {
			t.Errorf("request: %s forwarded: %q", name, got)
		}
	}
	if s.Header.Get("X-Keep") != "yes" {
		t.Errorf("request: X-Keep lost: %v", s.Header)
	}

	url := rawBackend(t, func(req *http.Request, conn net.Conn) bool {
		_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nConnection: X-A\r\nX-A: 1\r\nConnection: X-B\r\nX-B: 2\r\nX-Keep: yes\r\nContent-Length: 2\r\n\r\nok")
		return true
	})
	h.route("resp.test", "/", h.member(url))
	resp := rc.roundTrip(false, "GET / HTTP/1.1", "Host: resp.test")
	if resp.Status != 200 || resp.Header.Get("X-Keep") != "yes" {
		t.Fatalf("response: %d %v", resp.Status, resp.Header)
	}
	for _, name := range []string{"X-A", "X-B", "Connection"} {
		if got := resp.Header.Values(name); len(got) > 0 {
			t.Errorf("response: %s relayed: %q", name, got)
		}
	}
}

// TestForwardingHeadersAnyCase: the client's forwarding headers are
// replaced whatever their case and however often they come.
func TestForwardingHeadersAnyCase(t *testing.T) {
	_, rc := echoApp(t)
	s := decodeSeen(t, rc.roundTrip(false, "GET / HTTP/1.1", "Host: app.test",
		"x-forwarded-for: 6.6.6.6", "X-FORWARDED-FOR: 7.7.7.7", "x-real-ip: 6.6.6.6", "X-Real-IP: 7.7.7.7",
		"x-forwarded-proto: https", "X-Forwarded-Proto: https", "X-FORWARDED-HOST: evil.test", "x-forwarded-host: evil.test"))
	for name, want := range map[string]string{
		"X-Forwarded-For": "127.0.0.1", "X-Real-Ip": "127.0.0.1", "X-Forwarded-Proto": "http", "X-Forwarded-Host": "app.test",
	} {
		if got := s.Header.Values(name); len(got) != 1 || got[0] != want {
			t.Errorf("%s %q, want exactly [%q]", name, got, want)
		}
	}
}

// TestNoContentTypeInvented: a backend response without Content-Type is
// relayed without one (fasthttp would otherwise add text/plain).
func TestNoContentTypeInvented(t *testing.T) {
	h := newHarness(t, Settings{})
	url, _ := countingBackend(t, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
	h.route("app.test", "/", h.member(url))
	resp := h.dialRaw().roundTrip(false, "GET / HTTP/1.1", "Host: app.test")
	if resp.Status != 200 || string(resp.Body) != "hello" {
		t.Fatalf("%d %q", resp.Status, resp.Body)
	}
	if ct, ok := resp.Header["Content-Type"]; ok {
		t.Errorf("Content-Type %q added to a response that had none", ct)
	}
}
