package registry

// Conformance cases 51–100 of registry-v2 §7: headers, options, health,
// rate limits, breakers, staging, matching, maintenance, drain, statistics,
// probes and events, each against the real registry and data plane on
// loopback. Helpers here are prefixed dp so that they stay clear of the
// helpers of the other conformance files.

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha1" //nolint:gosec // RFC 6455 handshake
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// ---- helpers ----

// dpObject decodes the JSON object after prefix.
func dpObject(t testing.TB, line, prefix string) map[string]any {
	t.Helper()
	if !strings.HasPrefix(line, prefix) {
		t.Fatalf("got %s\nwant prefix %s", trunc(line), prefix)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(strings.TrimPrefix(line, prefix)), &m); err != nil || m == nil {
		t.Fatalf("payload of %s is not a JSON object: %v", trunc(line), err)
	}
	return m
}

// dpArray decodes the JSON array after prefix.
func dpArray(t testing.TB, line, prefix string) []any {
	t.Helper()
	if !strings.HasPrefix(line, prefix) {
		t.Fatalf("got %s\nwant prefix %s", trunc(line), prefix)
	}
	var a []any
	if err := json.Unmarshal([]byte(strings.TrimPrefix(line, prefix)), &a); err != nil || a == nil {
		t.Fatalf("payload of %s is not a JSON array: %v", trunc(line), err)
	}
	return a
}

// dpWant requires m[key] to equal want (JSON numbers compare as float64).
func dpWant(t testing.TB, m map[string]any, key string, want any) {
	t.Helper()
	got, ok := m[key]
	if !ok {
		t.Fatalf("member %q missing in %v", key, m)
	}
	if n, isInt := want.(int); isInt {
		want = float64(n)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) || fmt.Sprintf("%T", got) != fmt.Sprintf("%T", want) {
		t.Fatalf("%s = %#v, want %#v (in %v)", key, got, want, m)
	}
}

func dpMap(t testing.TB, m map[string]any, key string) map[string]any {
	t.Helper()
	v, ok := m[key].(map[string]any)
	if !ok {
		t.Fatalf("member %q is not an object in %v", key, m)
	}
	return v
}

func dpStrings(t testing.TB, v any) []string {
	t.Helper()
	a, ok := v.([]any)
	if !ok {
		t.Fatalf("%#v is not an array", v)
	}
	out := make([]string, 0, len(a))
	for _, x := range a {
		s, ok := x.(string)
		if !ok {
			t.Fatalf("%#v is not an array of strings", v)
		}
		out = append(out, s)
	}
	return out
}

func dpKeys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func dpTime(t testing.TB, v any) time.Time {
	t.Helper()
	s, _ := v.(string)
	ts, err := time.Parse(time.RFC3339, s)
	if err != nil || !strings.HasSuffix(s, "Z") || strings.Contains(s, ".") {
		t.Fatalf("%#v is not an RFC 3339 UTC timestamp with whole seconds", v)
	}
	return ts
}

// dpHeader requires a response header value.
func dpHeader(t testing.TB, r httpResult, name, want string) {
	t.Helper()
	if got := r.header.Get(name); got != want {
		t.Fatalf("%s: %q, want %q (status %d, body %q)", name, got, want, r.status, trunc(r.body))
	}
}

// dpGetWant requires a status and, when body is not empty, a body.
func dpGetWant(t testing.TB, e *env, host, path string, status int, body string) httpResult {
	t.Helper()
	r := e.get(host, path)
	if r.err != nil || r.status != status || (body != "" && r.body != body) {
		t.Fatalf("GET %s%s: %d %q %v; want %d %q", host, path, r.status, trunc(r.body), r.err, status, body)
	}
	return r
}

// dpMaintenancePage requires the built-in maintenance page (§6.4).
func dpMaintenancePage(t testing.TB, r httpResult) {
	t.Helper()
	if r.err != nil || r.status != 503 {
		t.Fatalf("want the built-in maintenance page, got %d %q %v", r.status, trunc(r.body), r.err)
	}
	dpHeader(t, r, "X-Maintenance-Mode", "true")
	dpHeader(t, r, "Retry-After", "300")
	dpHeader(t, r, "Cache-Control", "no-store")
	dpHeader(t, r, "Content-Type", "text/html; charset=utf-8")
}

// dpTwoLine sends a MAINT_ENTER or MAINT_EXIT line and requires ACK and then
// the final line. It returns when the ACK and the final line arrived,
// measured from the send.
func dpTwoLine(t testing.TB, c *client, line, final string, within time.Duration) (ackAfter, finalAfter time.Duration) {
	t.Helper()
	start := time.Now()
	c.send(line)
	ack, err := c.recvWithin(within)
	if err != nil || ack != "ACK" {
		t.Fatalf("%s: first line %q (%v), want ACK", line, ack, err)
	}
	ackAfter = time.Since(start)
	got, err := c.recvWithin(within - ackAfter)
	if err != nil || got != final {
		t.Fatalf("%s: final line %q (%v) after %v, want %q within %v", line, got, err, time.Since(start), final, within)
	}
	return ackAfter, time.Since(start)
}

// dpEvent reads the next line, which must be an event of the given type.
func dpEvent(t testing.TB, c *client, kind string, within time.Duration) map[string]any {
	t.Helper()
	line, err := c.recvWithin(within)
	if err != nil {
		t.Fatalf("no %s event within %v: %v", kind, within, err)
	}
	return dpObject(t, line, "EVENT|"+kind+"|")
}

func dpSleepUntil(at time.Time) {
	if d := time.Until(at); d > 0 {
		time.Sleep(d)
	}
}

// dpRequest is e.request with the full response, for the protocol version.
func dpRequest(t testing.TB, e *env, method, host, path string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+e.httpAddr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s%s: %v", method, host, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s%s: body: %v", method, host, path, err)
	}
	return resp, string(b)
}

// ---- WebSocket ($WS) ----

const dpWSGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

func dpWSAccept(key string) string {
	sum := sha1.Sum([]byte(key + dpWSGUID)) //nolint:gosec // RFC 6455
	return base64.StdEncoding.EncodeToString(sum[:])
}

// dpWriteFrame writes one final frame; clients mask, servers do not.
func dpWriteFrame(w io.Writer, opcode byte, payload []byte, mask bool) error {
	b := []byte{0x80 | opcode}
	var m byte
	if mask {
		m = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		b = append(b, m|byte(n))
	case n < 1<<16:
		b = append(b, m|126, byte(n>>8), byte(n))
	default:
		b = append(b, m|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	if mask {
		key := [4]byte{0x37, 0xfa, 0x21, 0x3d}
		b = append(b, key[:]...)
		for i, c := range payload {
			b = append(b, c^key[i%4])
		}
	} else {
		b = append(b, payload...)
	}
	_, err := w.Write(b)
	return err
}

// dpReadFrame reads one frame and unmasks it.
func dpReadFrame(r *bufio.Reader) (opcode byte, payload []byte, err error) {
	var h [2]byte
	if _, err = io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	opcode = h[0] & 0x0f
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var x [2]byte
		if _, err = io.ReadFull(r, x[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(x[:]))
	case 127:
		var x [8]byte
		if _, err = io.ReadFull(r, x[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(x[:])
	}
	if n > 1<<20 {
		return 0, nil, errors.New("frame too large")
	}
	var key [4]byte
	masked := h[1]&0x80 != 0
	if masked {
		if _, err = io.ReadFull(r, key[:]); err != nil {
			return 0, nil, err
		}
	}
	payload = make([]byte, n)
	if _, err = io.ReadFull(r, payload); err != nil {
		return 0, nil, err
	}
	if masked {
		for i := range payload {
			payload[i] ^= key[i%4]
		}
	}
	return opcode, payload, nil
}

// dpNewWSBackend starts $WS: a WebSocket echo server implementing the
// RFC 6455 handshake on a hijacked net/http connection.
func dpNewWSBackend(t testing.TB) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := r.Header.Get("Sec-WebSocket-Key")
		if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") || key == "" {
			http.Error(w, "websocket only", http.StatusBadRequest)
			return
		}
		hj, ok := w.(http.Hijacker)
		if !ok {
			http.Error(w, "no hijack", http.StatusInternalServerError)
			return
		}
		conn, brw, err := hj.Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n", dpWSAccept(key))
		if brw.Flush() != nil {
			return
		}
		for {
			op, payload, err := dpReadFrame(brw.Reader)
			if err != nil {
				return
			}
			switch op {
			case 0x8: // close
				_ = dpWriteFrame(conn, 0x8, payload, false)
				return
			case 0x9: // ping
				op = 0xA
			}
			if dpWriteFrame(conn, op, payload, false) != nil {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

const dpWSKey = "dGhlIHNhbXBsZSBub25jZQ=="

// dpWSHandshake sends an upgrade request for host through the proxy.
func dpWSHandshake(t testing.TB, e *env, host string) (net.Conn, *bufio.Reader, *http.Response, string) {
	t.Helper()
	conn, err := net.Dial("tcp", e.httpAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n", host, dpWSKey)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("upgrade response: %v", err)
	}
	var body string
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
	}
	return conn, br, resp, body
}

// ---- cases ----

func TestCase51_HeadersAllCoversLaterRoutes(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	c := e.reg("i51", "svc")
	c.expect("HEADERS_SET|"+c.sid+"|ALL|X-Svc|a", "HEADERS_OK")
	c.add("h.test", "/", a.URL)
	c.apply()
	dpHeader(t, dpGetWant(t, e, "h.test", "/", 200, "A"), "X-Svc", "a")
	c.add("h.test", "/v2", a.URL)
	c.apply()
	dpHeader(t, dpGetWant(t, e, "h.test", "/v2", 200, "A"), "X-Svc", "a")
	dpHeader(t, dpGetWant(t, e, "h.test", "/status/404", 404, "A"), "X-Svc", "a")
	r := dpGetWant(t, e, "nohost.test", "/", 404, "")
	if _, ok := r.header["X-Svc"]; ok {
		t.Fatalf("404 for an unknown host carries X-Svc: %v", r.header)
	}
}

func TestCase52_HeadersTargetsAndValidation(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	c := e.reg("i52", "svc")
	r1 := c.add("hr.test", "/", a.URL)
	r2 := c.add("hr.test", "/b", a.URL)
	c.expect("HEADERS_SET|"+c.sid+"|ALL|X-Svc|a", "HEADERS_OK")
	c.apply()
	dpHeader(t, dpGetWant(t, e, "hr.test", "/", 200, "A"), "X-Svc", "a")

	c.expect("HEADERS_SET|"+c.sid+"|"+r1+","+r2+"|X-R|1", "HEADERS_OK")
	c.expect("HEADERS_SET|"+c.sid+"|r999999|X|1", "ERROR|route not found")
	c.expect("HEADERS_SET|"+c.sid+"|ALL|Bad Name|1", "ERROR|invalid header name")
	c.expect("HEADERS_SET|"+c.sid+"|ALL|Content-Length|1", "ERROR|header not allowed: Content-Length")
	c.expect("HEADERS_REMOVE|"+c.sid+"|ALL|X-Svc", "HEADERS_OK")
	c.apply()
	for _, p := range []string{"/", "/b"} {
		r := dpGetWant(t, e, "hr.test", p, 200, "A")
		dpHeader(t, r, "X-R", "1")
		if _, ok := r.header["X-Svc"]; ok {
			t.Fatalf("GET %s still carries X-Svc", p)
		}
	}
}

func TestCase53_ClientLibraryOptions(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c := e.reg("i53", "svc")
	for _, kv := range []string{"compression|true", "websocket|true", "http2|false", "http3|false", "preserve_host|true", "timeout|30s"} {
		c.expect("OPTIONS_SET|"+c.sid+"|ALL|"+kv, "OPTIONS_OK")
	}
	c.apply()
}

func TestCase54_OptionsValidation(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c := e.reg("i54", "svc")
	p := "OPTIONS_SET|" + c.sid + "|ALL|"
	c.expect(p+"timeout|30", "OPTIONS_OK")
	c.expect(p+"timeout|soon", "ERROR|invalid duration")
	c.expect(p+"retries|many", "ERROR|invalid option value: retries")
	c.expect(p+"websocket|maybe", "ERROR|invalid option value: websocket")
	c.expect(p+"|x", "ERROR|invalid option key")
	c.expect(p+"foo|bar", "OPTIONS_OK")
	c.apply()
	info := dpObject(t, c.do("SESSION_INFO|"+c.sid), "SESSION_OK|")
	all := dpMap(t, dpMap(t, info, "options"), "ALL")
	dpWant(t, all, "foo", "bar")
	dpWant(t, all, "timeout", "30")
}

func TestCase55_OptionsRemove(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c := e.reg("i55", "svc")
	c.expect("OPTIONS_SET|"+c.sid+"|ALL|foo|bar", "OPTIONS_OK")
	c.apply()
	info := dpObject(t, c.do("SESSION_INFO|"+c.sid), "SESSION_OK|")
	dpWant(t, dpMap(t, dpMap(t, info, "options"), "ALL"), "foo", "bar")

	c.expect("OPTIONS_REMOVE|"+c.sid+"|ALL|foo", "OPTIONS_OK")
	c.apply()
	info = dpObject(t, c.do("SESSION_INFO|"+c.sid), "SESSION_OK|")
	if all, ok := dpMap(t, info, "options")["ALL"].(map[string]any); ok {
		if _, has := all["foo"]; has {
			t.Fatalf("foo still in options: %v", info["options"])
		}
	}
	c.expect("OPTIONS_REMOVE|"+c.sid+"|r999999|foo", "ERROR|route not found")
}

func TestCase56_TimeoutOption(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	c := e.reg("i56", "svc")
	c.add("t.test", "/", a.URL)
	c.expect("OPTIONS_SET|"+c.sid+"|ALL|timeout|1s", "OPTIONS_OK")
	c.apply()
	start := time.Now()
	r := e.get("t.test", "/?s=3")
	took := time.Since(start)
	if r.err != nil || r.status != 504 {
		t.Fatalf("GET t.test/?s=3: %d %q %v, want 504", r.status, trunc(r.body), r.err)
	}
	if took < 900*time.Millisecond || took > 2*time.Second {
		t.Fatalf("504 after %v, want about 1 s", took)
	}
}

func TestCase57_WebSocketOption(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	ws := dpNewWSBackend(t)
	c := e.reg("i57", "svc")
	c.add("ws.test", "/", ws)
	c.apply()
	conn, _, resp, body := dpWSHandshake(t, e, "ws.test")
	if resp.StatusCode != 400 || body != "WebSocket not allowed" {
		t.Fatalf("upgrade without websocket=true: %d %q, want 400 %q", resp.StatusCode, body, "WebSocket not allowed")
	}
	_ = conn.Close()

	c.expect("OPTIONS_SET|"+c.sid+"|ALL|websocket|true", "OPTIONS_OK")
	c.apply()
	conn, br, resp, _ := dpWSHandshake(t, e, "ws.test")
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade with websocket=true: %d, want 101", resp.StatusCode)
	}
	if got := resp.Header.Get("Sec-WebSocket-Accept"); got != dpWSAccept(dpWSKey) {
		t.Fatalf("Sec-WebSocket-Accept %q, want %q", got, dpWSAccept(dpWSKey))
	}
	if err := dpWriteFrame(conn, 0x1, []byte("hello over the proxy"), true); err != nil {
		t.Fatal(err)
	}
	op, payload, err := dpReadFrame(br)
	if err != nil || op != 0x1 || string(payload) != "hello over the proxy" {
		t.Fatalf("echo: op %d %q %v", op, payload, err)
	}
}

func TestCase58_Compression(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	c := e.reg("i58", "svc")
	c.add("z.test", "/", a.URL)
	c.expect("OPTIONS_SET|"+c.sid+"|ALL|compression|true", "OPTIONS_OK")
	c.apply()
	r := e.get("z.test", "/big", "Accept-Encoding", "gzip")
	if r.err != nil || r.status != 200 {
		t.Fatalf("GET z.test/big: %d %v", r.status, r.err)
	}
	dpHeader(t, r, "Content-Encoding", "gzip")
	if !strings.Contains(strings.Join(r.header.Values("Vary"), ","), "Accept-Encoding") {
		t.Fatalf("Vary %q lacks Accept-Encoding", r.header.Values("Vary"))
	}
	zr, err := gzip.NewReader(strings.NewReader(r.body))
	if err != nil {
		t.Fatalf("gzip: %v", err)
	}
	plain, err := io.ReadAll(zr)
	if err != nil || len(plain) != 10000 || string(plain) != strings.Repeat("x", 10000) {
		t.Fatalf("decompressed %d bytes, %v; want the 10,000 bytes", len(plain), err)
	}
	r = e.get("z.test", "/big")
	if r.err != nil || r.status != 200 || len(r.body) != 10000 {
		t.Fatalf("GET z.test/big without Accept-Encoding: %d, %d bytes, %v", r.status, len(r.body), r.err)
	}
	if ce := r.header.Get("Content-Encoding"); ce != "" {
		t.Fatalf("Content-Encoding %q without Accept-Encoding", ce)
	}
}

func TestCase59_PreserveHost(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	c := e.reg("i59", "svc")
	c.add("c.test", "/", a.URL)
	c.expect("OPTIONS_SET|"+c.sid+"|ALL|preserve_host|true", "OPTIONS_OK")
	c.apply()
	dpHeader(t, dpGetWant(t, e, "c.test", "/", 200, "A"), "X-Got-Host", "c.test")
	c.expect("OPTIONS_SET|"+c.sid+"|ALL|preserve_host|false", "OPTIONS_OK")
	c.apply()
	dpHeader(t, dpGetWant(t, e, "c.test", "/", 200, "A"), "X-Got-Host", strings.TrimPrefix(a.URL, "http://"))
}

func TestCase60_MaxBodySize(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	c := e.reg("i60", "svc")
	rid := c.add("mb.test", "/", a.URL)
	c.expect("OPTIONS_SET|"+c.sid+"|ALL|max_body_size|1024", "OPTIONS_OK")
	c.apply()
	before := a.requests.Load()
	r := e.request("POST", "mb.test", "/", strings.NewReader(strings.Repeat("b", 2048)))
	if r.err != nil || r.status != 413 {
		t.Fatalf("POST of 2048 bytes: %d %q %v, want 413", r.status, trunc(r.body), r.err)
	}
	if n := a.requests.Load(); n != before {
		t.Fatalf("the backend logged %d request(s) for the refused body", n-before)
	}
	// The refused request was never forwarded, so it is no breaker
	// outcome (§6.7) and no success to count (§4.16).
	st := dpObject(t, c.do("CIRCUIT_BREAKER_STATUS|"+c.sid+"|"+rid), "CIRCUIT_STATUS_OK|")
	dpWant(t, st, "successes", 0)
	dpWant(t, st, "failures", 0)
	r = e.request("POST", "mb.test", "/", strings.NewReader(strings.Repeat("b", 512)))
	if r.err != nil || r.status != 200 || r.body != "A" {
		t.Fatalf("POST of 512 bytes: %d %q %v, want 200 A", r.status, trunc(r.body), r.err)
	}
}

func TestCase61_RetriesOnConnectFailure(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	p1 := e.reg("p1", "web")
	p1.add("rt.test", "/", deadURL)
	p1.expect("OPTIONS_SET|"+p1.sid+"|ALL|retries|1", "OPTIONS_OK")
	p1.apply()
	p2 := e.reg("p2", "web")
	p2.add("rt.test", "/", a.URL)
	p2.expect("OPTIONS_SET|"+p2.sid+"|ALL|retries|1", "OPTIONS_OK")
	p2.apply()
	for i := 0; i < 4; i++ {
		dpGetWant(t, e, "rt.test", "/", 200, "A")
	}
	for i := 0; ; i++ {
		if i == 2 {
			t.Fatal("no POST was routed to $DEAD in two attempts")
		}
		r := e.request("POST", "rt.test", "/", strings.NewReader("x"))
		if r.err != nil {
			t.Fatal(r.err)
		}
		if r.status == 200 && r.body == "A" {
			continue // routed to $A
		}
		if r.status != 502 {
			t.Fatalf("POST routed to $DEAD: %d %q, want 502", r.status, trunc(r.body))
		}
		break
	}
}

func TestCase62_HTTP2OptionHasNoEffect(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	c := e.reg("i62", "svc")
	c.add("h2.test", "/", a.URL)
	c.expect("OPTIONS_SET|"+c.sid+"|ALL|http2|true", "OPTIONS_OK")
	c.apply()
	info := dpObject(t, c.do("SESSION_INFO|"+c.sid), "SESSION_OK|")
	dpWant(t, dpMap(t, dpMap(t, info, "options"), "ALL"), "http2", "true")
	resp, body := dpRequest(t, e, "GET", "h2.test", "/")
	if resp.StatusCode != 200 || body != "A" || resp.ProtoMajor != 1 || resp.ProtoMinor != 1 {
		t.Fatalf("GET h2.test/: %d %q over %s, want 200 A over HTTP/1.1", resp.StatusCode, body, resp.Proto)
	}
}

func TestCase63_HealthSetValidation(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	c := e.reg("i63", "svc")
	rid := c.add("hv.test", "/", a.URL)
	p := "HEALTH_SET|" + c.sid + "|"
	c.expect(p+"r999999|/health|30s|5s", "ERROR|route not found")
	c.expect(p+rid+"|/health|30|5", "HEALTH_OK")
	c.expect(p+rid+"|/health|later|5s", "ERROR|invalid duration")
	c.expect(p+rid+"|/health|30s|5s|0", "ERROR|invalid threshold")
	c.expect(p+rid+"|health|30s|5s", "ERROR|path must start with /")
}

func TestCase64_ActiveHealthCheck(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	f := newBackend(t, "F")
	c := e.reg("i64", "svc")
	rid := c.add("hc.test", "/", f.URL)
	c.expect("HEALTH_SET|"+c.sid+"|"+rid+"|/health|1s|1s", "HEALTH_OK")
	c.expect("SUBSCRIBE|"+c.sid+"|backend_health_changed", "SUBSCRIBE_OK")
	c.apply()
	eventually(t, 3*time.Second, "the first probe", func() bool { return f.probes.Load() > 0 })

	f.status.Store(503)
	switched := time.Now()
	ev := dpEvent(t, c, "backend_health_changed", 4*time.Second)
	dpWant(t, ev, "route_id", rid)
	dpWant(t, ev, "healthy", false)
	dpWant(t, ev, "backend", f.URL)
	if r, _ := ev["reason"].(string); r == "" {
		t.Fatalf("backend_health_changed without a reason: %v", ev)
	}
	dpTime(t, ev["at"])
	dpSleepUntil(switched.Add(3 * time.Second))
	before := f.requests.Load()
	r := e.get("hc.test", "/")
	if r.err != nil || r.status != 503 {
		t.Fatalf("GET with the route unhealthy: %d %q %v, want 503", r.status, trunc(r.body), r.err)
	}
	dpHeader(t, r, "Retry-After", "10")
	if n := f.requests.Load(); n != before {
		t.Fatalf("$F received %d proxied request(s) while unhealthy", n-before)
	}

	f.status.Store(0)
	switched = time.Now()
	ev = dpEvent(t, c, "backend_health_changed", 3*time.Second)
	dpWant(t, ev, "route_id", rid)
	dpWant(t, ev, "healthy", true)
	dpSleepUntil(switched.Add(2 * time.Second))
	dpGetWant(t, e, "hc.test", "/", 200, "F")

	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range f.paths {
		if p != "/health" && p != "/" {
			t.Fatalf("$F received %q; probes must ask for exactly /health", p)
		}
	}
}

func TestCase65_RateLimit(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	c := e.reg("i65", "svc")
	rid := c.add("rl.test", "/", a.URL)
	c.expect("RATELIMIT_SET|"+c.sid+"|"+rid+"|2|10s", "RATELIMIT_OK")
	c.apply()
	var wg sync.WaitGroup
	results := make([]httpResult, 3)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = e.get("rl.test", "/")
		}()
	}
	wg.Wait()
	var ok, limited int
	for _, r := range results {
		switch {
		case r.err == nil && r.status == 200 && r.body == "A":
			ok++
		case r.err == nil && r.status == 429:
			limited++
			if r.body != "Too Many Requests" {
				t.Fatalf("429 body %q", r.body)
			}
			if n, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || n < 1 {
				t.Fatalf("429 Retry-After %q, want an integer ≥ 1", r.header.Get("Retry-After"))
			}
		default:
			t.Fatalf("GET rl.test/: %d %q %v", r.status, trunc(r.body), r.err)
		}
	}
	if ok != 2 || limited != 1 {
		t.Fatalf("%d × 200 and %d × 429, want 2 and 1", ok, limited)
	}
	c.expect("RATELIMIT_SET|"+c.sid+"|"+rid+"|many|10s", "ERROR|invalid requests")
	c.expect("RATELIMIT_SET|"+c.sid+"|"+rid+"|2|often", "ERROR|invalid duration")
	c.expect("RATELIMIT_SET|"+c.sid+"|r999999|2|10s", "ERROR|route not found")
}

// TestCase66_68_BreakerOpenRecoverReset covers case 66 and case 68, which
// continues it.
func TestCase66_68_BreakerOpenRecoverReset(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	f := newBackend(t, "F")
	c := e.reg("i66", "svc")
	rid := c.add("cb.test", "/", f.URL)
	c.expect("CIRCUIT_BREAKER_SET|"+c.sid+"|"+rid+"|2|2s|1", "CIRCUIT_OK")
	c.apply()

	// Case 66.
	f.status.Store(503)
	for i := 0; i < 2; i++ {
		dpGetWant(t, e, "cb.test", "/", 503, "F")
	}
	before := f.requests.Load()
	r := dpGetWant(t, e, "cb.test", "/", 503, "")
	if r.body == "F" || f.requests.Load() != before {
		t.Fatal("the third GET reached $F although the breaker should be open")
	}
	now := time.Now()
	st := dpObject(t, c.do("CIRCUIT_BREAKER_STATUS|"+c.sid+"|"+rid), "CIRCUIT_STATUS_OK|")
	dpWant(t, st, "state", "open")
	dpWant(t, st, "failures", 2)
	if next := dpTime(t, st["next_attempt"]); next.Sub(now) < time.Second || next.Sub(now) > 3*time.Second {
		t.Fatalf("next_attempt %v, want about now+2 s (%v)", next, now)
	}
	f.status.Store(0)
	time.Sleep(2200 * time.Millisecond)
	dpGetWant(t, e, "cb.test", "/", 200, "F")
	st = dpObject(t, c.do("CIRCUIT_BREAKER_STATUS|"+c.sid+"|"+rid), "CIRCUIT_STATUS_OK|")
	dpWant(t, st, "state", "closed")

	// Case 68.
	staged := c.add("cb2.test", "/", f.URL)
	f.status.Store(503)
	for i := 0; i < 2; i++ {
		dpGetWant(t, e, "cb.test", "/", 503, "F")
	}
	st = dpObject(t, c.do("CIRCUIT_BREAKER_STATUS|"+c.sid+"|"+rid), "CIRCUIT_STATUS_OK|")
	dpWant(t, st, "state", "open")
	c.expect("CIRCUIT_BREAKER_RESET|"+c.sid+"|"+rid, "CIRCUIT_OK")
	st = dpObject(t, c.do("CIRCUIT_BREAKER_STATUS|"+c.sid+"|"+rid), "CIRCUIT_STATUS_OK|")
	dpWant(t, st, "state", "closed")
	dpWant(t, st, "failures", 0)
	c.expect("CIRCUIT_BREAKER_RESET|"+c.sid+"|r999999", "ERROR|route not found")
	c.expect("CIRCUIT_BREAKER_RESET|"+c.sid+"|"+staged, "ERROR|circuit breaker not found")
}

func TestCase67_BreakerStatusDefaultsAndValidation(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	c := e.reg("i67", "svc")
	rid := c.add("cs.test", "/", a.URL)
	c.apply()
	staged := c.add("cs2.test", "/", a.URL)
	st := dpObject(t, c.do("CIRCUIT_BREAKER_STATUS|"+c.sid+"|"+rid), "CIRCUIT_STATUS_OK|")
	dpWant(t, st, "state", "closed")
	dpWant(t, st, "threshold", 5)
	dpWant(t, st, "timeout_seconds", 30)
	dpWant(t, st, "half_open_requests", 1)
	dpWant(t, st, "healthy", true)
	dpWant(t, st, "in_maintenance", false)
	dpWant(t, st, "draining", false)
	dpWant(t, st, "last_failure", "0001-01-01T00:00:00Z")
	dpWant(t, st, "next_attempt", "0001-01-01T00:00:00Z")
	for _, k := range []string{"failures", "successes"} {
		if _, ok := st[k].(float64); !ok {
			t.Fatalf("member %q missing or not a number: %v", k, st)
		}
	}
	c.expect("CIRCUIT_BREAKER_STATUS|"+c.sid+"|r999999", "ERROR|route not found")
	c.expect("CIRCUIT_BREAKER_STATUS|"+c.sid+"|"+staged, "ERROR|backend status unavailable")
	p := "CIRCUIT_BREAKER_SET|" + c.sid + "|" + rid + "|"
	c.expect(p+"x|2s|1", "ERROR|invalid threshold")
	c.expect(p+"2|x|1", "ERROR|invalid duration")
	c.expect(p+"2|2s|0", "ERROR|invalid half_open_requests")
}

func TestCase69_ConfigDiff(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	c := e.reg("i69", "svc")
	rid := c.add("df.test", "/", a.URL)
	c.expect("HEADERS_SET|"+c.sid+"|ALL|X|1", "HEADERS_OK")
	line := c.do("CONFIG_DIFF|" + c.sid)
	d := dpObject(t, line, "DIFF_OK|")
	dpWant(t, d, "headers", 1)
	want := `"routes":{"added":1,"added_ids":["` + rid + `"],"removed":0,"removed_ids":[],"updated":0,"updated_ids":[]}`
	if !strings.Contains(line, want) {
		t.Fatalf("%s\nlacks %s", line, want)
	}
}

func TestCase70_ConfigRollback(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	c := e.reg("i70", "svc")
	active := c.add("rb.test", "/", a.URL)
	c.apply()
	c.add("rb2.test", "/", a.URL)
	c.expect("CONFIG_ROLLBACK|"+c.sid, "OK")
	list := dpArray(t, c.do("ROUTE_LIST|"+c.sid), "ROUTE_LIST_OK|")
	if len(list) != 1 {
		t.Fatalf("ROUTE_LIST after rollback: %v, want only %s", list, active)
	}
	entry := list[0].(map[string]any)
	dpWant(t, entry, "route_id", active)
	dpWant(t, entry, "status", "active")
	dpGetWant(t, e, "rb.test", "/", 200, "A")
}

// TestCase71_72_ConflictThenPriority covers case 71 and case 72, which
// continues it.
func TestCase71_72_ConflictThenPriority(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	b := newBackend(t, "B")
	ia := e.reg("ia", "billing")
	ia.add("c2.test", "/api", a.URL, 10)
	ia.apply()

	// Case 71.
	ib := e.reg("ib", "shop")
	ib.expectPrefix("ROUTE_ADD|"+ib.sid+"|k.test|/|"+b.URL+"|10", "ROUTE_OK|")
	ridB := strings.TrimPrefix(ib.expectPrefix("ROUTE_ADD|"+ib.sid+"|c2.test|/api|"+b.URL+"|10", "ROUTE_OK|"), "ROUTE_OK|")
	conflict := "ERROR|route " + ridB + ": conflict with service billing on c2.test/api"
	ib.expect("CONFIG_VALIDATE|"+ib.sid, conflict)
	ib.expect("CONFIG_APPLY|"+ib.sid, conflict)
	dpGetWant(t, e, "c2.test", "/api", 200, "A")
	dpGetWant(t, e, "k.test", "/", 404, "")
	list := dpArray(t, ib.do("ROUTE_LIST|"+ib.sid), "ROUTE_LIST_OK|")
	if len(list) != 2 {
		t.Fatalf("ROUTE_LIST: %v, want two staged routes", list)
	}
	for _, x := range list {
		dpWant(t, x.(map[string]any), "status", "staged")
	}

	// Case 72.
	ib.expect("ROUTE_UPDATE|"+ib.sid+"|"+ridB+"|priority|20", "ROUTE_OK")
	ib.apply()
	dpGetWant(t, e, "c2.test", "/api", 200, "B")
	ib.expect("CLIENT_SHUTDOWN|"+ib.sid, "SHUTDOWN_OK")
	dpGetWant(t, e, "c2.test", "/api", 200, "A")
}

func TestCase73_PoolSpreadsRequests(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	b := newBackend(t, "B")
	p1 := e.reg("p1", "web")
	p1.add("pool.test", "/", a.URL)
	p2 := e.reg("p2", "web")
	p2.add("pool.test", "/", b.URL)
	p1.apply()
	p2.apply()
	counts := map[string]int{}
	for i := 0; i < 20; i++ {
		r := dpGetWant(t, e, "pool.test", "/", 200, "")
		counts[r.body]++
	}
	if counts["A"] < 5 || counts["B"] < 5 || counts["A"]+counts["B"] != 20 {
		t.Fatalf("answers %v, want each of A and B at least 5 times", counts)
	}
}

func TestCase74_LastApply(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c := e.reg("i74", "svc")
	line := c.do("SESSION_INFO|" + c.sid)
	if !strings.Contains(line, `"last_apply":null`) {
		t.Fatalf("%s\nlacks \"last_apply\":null", line)
	}
	c.expect("CONFIG_VALIDATE|"+c.sid, "OK")
	c.expect("CONFIG_APPLY|"+c.sid, "OK")
	info := dpObject(t, c.do("SESSION_INFO|"+c.sid), "SESSION_OK|")
	dpTime(t, info["last_apply"])
}

func TestCase75_ConfigApplyPartial(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	c := e.reg("i75", "svc")
	rid := c.add("pa.test", "/", a.URL)
	c.expect("HEADERS_SET|"+c.sid+"|ALL|X-P|1", "HEADERS_OK")
	c.expect("CONFIG_APPLY_PARTIAL|"+c.sid+"|routes", "OK")
	list := dpArray(t, c.do("ROUTE_LIST|"+c.sid), "ROUTE_LIST_OK|")
	if len(list) != 1 {
		t.Fatalf("ROUTE_LIST: %v", list)
	}
	dpWant(t, list[0].(map[string]any), "route_id", rid)
	dpWant(t, list[0].(map[string]any), "status", "active")
	dpWant(t, dpObject(t, c.do("CONFIG_DIFF|"+c.sid), "DIFF_OK|"), "headers", 1)
	c.expect("CONFIG_APPLY_PARTIAL|"+c.sid+"|bogus", "ERROR|unknown scope: bogus")
	c.expect("CONFIG_APPLY_PARTIAL|"+c.sid, "ERROR|invalid format")
}

func TestCase76_HostMatching(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	b := newBackend(t, "B")
	c := e.reg("i76", "svc")
	c.add("*.m.test", "/", b.URL)
	c.add("a.m.test", "/", a.URL)
	c.add("api.m.test", "/v1", a.URL)
	c.apply()
	for _, tc := range []struct {
		host, path string
		status     int
		body       string
	}{
		{"a.m.test", "/", 200, "A"},
		{"b.m.test", "/", 200, "B"},
		{"A.M.TEST:8080", "/", 200, "A"},
		{"x.y.m.test", "/", 404, ""},
		{"m.test", "/", 404, ""},
		{"api.m.test", "/v1/x", 200, "A"},
		{"api.m.test", "/other", 200, "B"},
	} {
		dpGetWant(t, e, tc.host, tc.path, tc.status, tc.body)
	}
}

func TestCase77_PriorityBeforePathLength(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	b := newBackend(t, "B")
	c := e.reg("i77", "svc")
	c.add("pr.test", "/", a.URL, 20)
	c.add("pr.test", "/api", b.URL, 10)
	c.apply()
	dpGetWant(t, e, "pr.test", "/api/x", 200, "A")
}

func TestCase78_PathMatching(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	b := newBackend(t, "B")
	cc := newBackend(t, "C")
	c := e.reg("i78", "svc")
	c.add("sb2.test", "/", a.URL)
	c.add("sb2.test", "/api", b.URL)
	c.add("ts.test", "/static/", cc.URL)
	c.apply()
	for _, tc := range []struct {
		host, path string
		status     int
		body       string
	}{
		{"sb2.test", "/api", 200, "B"},
		{"sb2.test", "/api/", 200, "B"},
		{"sb2.test", "/api/x", 200, "B"},
		{"sb2.test", "/api?q=1", 200, "B"},
		{"sb2.test", "/apix", 200, "A"},
		{"ts.test", "/static/a", 200, "C"},
		{"ts.test", "/static", 404, ""},
	} {
		dpGetWant(t, e, tc.host, tc.path, tc.status, tc.body)
	}
}

func TestCase79_UnknownHost(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	r := dpGetWant(t, e, "nohost.test", "/", 404, "")
	dpHeader(t, r, "Content-Type", "text/plain; charset=utf-8")
	if len(r.body) >= 1024 {
		t.Fatalf("404 body is %d bytes, want under 1 KiB", len(r.body))
	}
}

func TestCase80_BackendPathPrefix(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	c := e.reg("i80", "svc")
	c.add("ps.test", "/api", a.URL+"/app")
	c.apply()
	dpHeader(t, dpGetWant(t, e, "ps.test", "/api/x?q=1", 200, "A"), "X-Got-Path", "/app/api/x?q=1")
}

func TestCase81_MaintenanceBuiltinPage(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	c := e.reg("i81", "svc")
	c.add("mn.test", "/", a.URL)
	c.apply()
	dpTwoLine(t, c, "MAINT_ENTER|"+c.sid+"|ALL|", "MAINT_OK|ALL", time.Second)
	dpMaintenancePage(t, e.get("mn.test", "/"))
}

func TestCase82_MaintenancePageURL(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	m := newBackend(t, "maint")
	c := e.reg("i82", "svc")
	rid := c.add("mn.test", "/", a.URL)
	c.apply()
	dpTwoLine(t, c, "MAINT_ENTER|"+c.sid+"|ALL|"+m.URL, "MAINT_OK|ALL", 20*time.Second)
	r := dpGetWant(t, e, "mn.test", "/", 200, "maint")
	dpHeader(t, r, "X-Maintenance-Mode", "true")
	st := dpObject(t, c.do("MAINT_STATUS|"+c.sid), "MAINT_STATUS_OK|")
	if got := dpKeys(st); strings.Join(got, ",") != "all,entered_at,in_maintenance,maintenance_backend,routes" {
		t.Fatalf("MAINT_STATUS members %v", got)
	}
	dpWant(t, st, "all", true)
	dpTime(t, st["entered_at"])
	if got := dpStrings(t, st["in_maintenance"]); len(got) != 1 || got[0] != rid {
		t.Fatalf("in_maintenance %v, want [%s]", got, rid)
	}
	dpWant(t, st, "maintenance_backend", m.URL)
	route := dpMap(t, dpMap(t, st, "routes"), rid)
	dpWant(t, route, "page_url", m.URL)
	dpTime(t, route["entered_at"])
}

func TestCase83_MaintenancePageUnreachable(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	c := e.reg("i83", "svc")
	rid := c.add("mu.test", "/", a.URL)
	c.apply()
	start := time.Now()
	c.send("MAINT_ENTER|" + c.sid + "|ALL|" + deadURL)
	if got := c.recv(); got != "ACK" {
		t.Fatalf("first line %q, want ACK", got)
	}
	dpMaintenancePage(t, e.get("mu.test", "/"))
	got, err := c.recvWithin(25 * time.Second)
	took := time.Since(start)
	if err != nil || got != "ERROR|timeout waiting for maintenance page to become reachable" {
		t.Fatalf("final line %q (%v) after %v", got, err, took)
	}
	if took < 19*time.Second || took > 21*time.Second {
		t.Fatalf("final line after %v, want 19–21 s", took)
	}
	dpMaintenancePage(t, e.get("mu.test", "/"))
	st := dpObject(t, c.do("MAINT_STATUS|"+c.sid), "MAINT_STATUS_OK|")
	if got := dpStrings(t, st["in_maintenance"]); len(got) != 1 || got[0] != rid {
		t.Fatalf("in_maintenance %v, want [%s]", got, rid)
	}
	dpWant(t, st, "maintenance_backend", "")
}

func TestCase84_MaintenanceExit(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	c := e.reg("i84", "svc")
	c.add("mx.test", "/", a.URL)
	c.apply()
	dpTwoLine(t, c, "MAINT_ENTER|"+c.sid+"|ALL|", "MAINT_OK|ALL", time.Second)
	dpMaintenancePage(t, e.get("mx.test", "/"))
	dpTwoLine(t, c, "MAINT_EXIT|"+c.sid+"|ALL", "MAINT_OK|ALL", 8*time.Second)
	r := dpGetWant(t, e, "mx.test", "/", 200, "A")
	if v := r.header.Get("X-Maintenance-Mode"); v != "" {
		t.Fatalf("X-Maintenance-Mode %q after exit", v)
	}
	line := c.do("MAINT_STATUS|" + c.sid)
	st := dpObject(t, line, "MAINT_STATUS_OK|")
	if !strings.Contains(line, `"in_maintenance":[]`) {
		t.Fatalf("%s\nlacks \"in_maintenance\":[]", line)
	}
	dpWant(t, st, "all", false)
}

func TestCase85_MaintenanceExitBackendUnreachable(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c := e.reg("i85", "svc")
	c.add("md.test", "/", deadURL)
	c.apply()
	dpTwoLine(t, c, "MAINT_ENTER|"+c.sid+"|ALL|", "MAINT_OK|ALL", time.Second)
	c.send("MAINT_EXIT|" + c.sid + "|ALL")
	if got := c.recv(); got != "ACK" {
		t.Fatalf("first line %q, want ACK", got)
	}
	acked := time.Now()
	got, err := c.recvWithin(12 * time.Second)
	took := time.Since(acked)
	if err != nil || got != "ERROR|timeout waiting for backend to become reachable" {
		t.Fatalf("final line %q (%v) after %v", got, err, took)
	}
	if took < 7*time.Second || took > 9*time.Second {
		t.Fatalf("final line %v after the ACK, want 8 s ± 1 s", took)
	}
	line := c.do("MAINT_STATUS|" + c.sid)
	dpObject(t, line, "MAINT_STATUS_OK|")
	if !strings.Contains(line, `"in_maintenance":[]`) {
		t.Fatalf("%s\nlacks \"in_maintenance\":[]", line)
	}
}

func TestCase86_MaintenanceAllCoversLaterRoutes(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	c := e.reg("i86", "svc")
	dpTwoLine(t, c, "MAINT_ENTER|"+c.sid+"|ALL|", "MAINT_OK|ALL", time.Second)
	rid := c.add("ml.test", "/new", a.URL)
	c.apply()
	dpMaintenancePage(t, e.get("ml.test", "/new"))
	st := dpObject(t, c.do("MAINT_STATUS|"+c.sid), "MAINT_STATUS_OK|")
	if got := dpStrings(t, st["in_maintenance"]); len(got) != 1 || got[0] != rid {
		t.Fatalf("in_maintenance %v, want [%s]", got, rid)
	}
}

func TestCase87_MaintenancePathAndDomainTargets(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	c := e.reg("i87", "svc")
	c.add("mt.test", "/admin", a.URL)
	c.add("mt.test", "/", a.URL)
	c.add("mt2.test", "/", a.URL)
	c.apply()
	dpTwoLine(t, c, "MAINT_ENTER|"+c.sid+"|/admin|", "MAINT_OK|/admin", time.Second)
	dpMaintenancePage(t, e.get("mt.test", "/admin/x"))
	dpGetWant(t, e, "mt.test", "/", 200, "A")
	dpTwoLine(t, c, "MAINT_ENTER|"+c.sid+"|MT2.test|", "MAINT_OK|MT2.test", time.Second)
	dpMaintenancePage(t, e.get("mt2.test", "/"))
	c.expect("MAINT_ENTER|"+c.sid+"|/nothing|", "ERROR|route not found")
	c.noLine(2 * time.Second)
}

func TestCase88_MaintenanceAndDrainArePerSession(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	na := e.reg("na", "s1")
	na.add("na.test", "/", a.URL)
	na.apply()
	nb := e.reg("nb", "s2")
	ridB := nb.add("nb.test", "/", a.URL)
	nb.apply()
	dpTwoLine(t, na, "MAINT_ENTER|"+na.sid+"|ALL|", "MAINT_OK|ALL", time.Second)
	na.expectPrefix("DRAIN_START|"+na.sid+"|1", "DRAIN_OK|")
	time.Sleep(2 * time.Second)
	for i := 0; i < 20; i++ {
		r := dpGetWant(t, e, "nb.test", "/", 200, "A")
		if v := r.header.Get("X-Maintenance-Mode"); v != "" {
			t.Fatalf("GET nb.test/ carries X-Maintenance-Mode %q", v)
		}
	}
	st := dpObject(t, nb.do("CIRCUIT_BREAKER_STATUS|"+nb.sid+"|"+ridB), "CIRCUIT_STATUS_OK|")
	dpWant(t, st, "in_maintenance", false)
	dpWant(t, st, "draining", false)
}

func TestCase89_MaintenanceValidationIsOneLine(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	c := e.reg("i89", "svc")
	c.add("mv.test", "/", a.URL)
	c.apply()
	for _, tc := range [][2]string{
		{"MAINT_ENTER|" + c.sid + "|ALL", "ERROR|invalid format"},
		{"MAINT_ENTER|" + c.sid + "|r999999|", "ERROR|route not found"},
		{"MAINT_ENTER|" + c.sid + "|ALL|notaurl", "ERROR|invalid maintenance page url"},
		{"MAINT_EXIT|" + c.sid, "ERROR|invalid format"},
	} {
		c.expect(tc[0], tc[1])
		c.noLine(2 * time.Second)
	}
}

func TestCase90_MaintenanceRepliesBeforeNextRequest(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c := e.reg("i90", "svc")
	c.sendRaw("MAINT_ENTER|" + c.sid + "|ALL|\nPING|" + c.sid + "\n")
	for _, want := range []string{"ACK", "MAINT_OK|ALL", "PONG"} {
		if got := c.recv(); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
}

func TestCase91_DrainStartDurations(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c := e.reg("i91", "svc")
	for _, d := range []string{"30", "30s"} {
		now := time.Now()
		line := c.expectPrefix("DRAIN_START|"+c.sid+"|"+d, "DRAIN_OK|")
		end, err := time.Parse(time.RFC3339, strings.TrimPrefix(line, "DRAIN_OK|"))
		if err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		if diff := end.Sub(now.Add(30 * time.Second)); diff < -2*time.Second || diff > 2*time.Second {
			t.Fatalf("DRAIN_START %s ends %v, want within 2 s of %v", d, end, now.Add(30*time.Second))
		}
		c.expect("DRAIN_CANCEL|"+c.sid, "DRAIN_OK")
	}
	c.expect("DRAIN_START|"+c.sid+"|soon", "ERROR|invalid duration")
}

// TestCase92_94_DrainShedCompleteCancel covers case 92 and case 94, which
// continues it.
func TestCase92_94_DrainShedCompleteCancel(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	c := e.reg("i92", "svc")
	c.add("d.test", "/", a.URL)
	c.apply()
	c.expect("SUBSCRIBE|"+c.sid+"|drain_completed", "SUBSCRIBE_OK")
	long := make(chan httpResult, 1)
	go func() { long <- e.get("d.test", "/?s=12") }()
	eventually(t, 3*time.Second, "the 12 s request to reach $A", func() bool { return a.requests.Load() >= 1 })

	start := time.Now()
	c.expectPrefix("DRAIN_START|"+c.sid+"|10", "DRAIN_OK|")
	st := dpObject(t, c.do("DRAIN_STATUS|"+c.sid), "DRAIN_STATUS_OK|")
	if p, _ := st["traffic_percent"].(float64); p < 95 {
		t.Fatalf("traffic_percent %v at once, want ≥ 95", st["traffic_percent"])
	}

	// 200 GETs spread over seconds 4–6.
	var shed, served int
	for i := 0; i < 200; i++ {
		dpSleepUntil(start.Add(4*time.Second + time.Duration(i)*10*time.Millisecond))
		r := e.get("d.test", "/")
		switch {
		case r.err == nil && r.status == 200 && r.body == "A":
			served++
		case r.err == nil && r.status == 503:
			shed++
			if r.body != "Service draining" || r.header.Get("Retry-After") != "60" {
				t.Fatalf("shed response: %q, Retry-After %q", r.body, r.header.Get("Retry-After"))
			}
		default:
			t.Fatalf("GET d.test/ during the drain: %d %q %v", r.status, trunc(r.body), r.err)
		}
	}
	if shed < 60 || shed > 140 {
		t.Fatalf("%d of 200 GETs shed during seconds 4–6, want 30–70 %%", shed)
	}

	ev := dpEvent(t, c, "drain_completed", time.Until(start.Add(11500*time.Millisecond)))
	if at := time.Since(start); at < 9*time.Second {
		t.Fatalf("drain_completed after %v, want near 10 s", at)
	}
	dpWant(t, ev, "session_id", c.sid)
	dpWant(t, ev, "duration_seconds", 10)
	dpTime(t, ev["started_at"])
	dpTime(t, ev["at"])

	dpSleepUntil(start.Add(11 * time.Second))
	st = dpObject(t, c.do("DRAIN_STATUS|"+c.sid), "DRAIN_STATUS_OK|")
	dpWant(t, st, "active", false)
	dpWant(t, st, "completed", true)
	dpWant(t, st, "traffic_percent", 0)
	dpWant(t, st, "remaining_seconds", 0)
	if n, _ := st["in_flight"].(float64); n < 1 {
		t.Fatalf("in_flight %v, want ≥ 1 (the 12 s request)", st["in_flight"])
	}
	for i := 0; i < 10; i++ {
		r := e.get("d.test", "/")
		if r.err != nil || r.status != 503 || r.body != "Service draining" {
			t.Fatalf("GET after the drain completed: %d %q %v, want 503 Service draining", r.status, trunc(r.body), r.err)
		}
	}
	select {
	case r := <-long:
		if r.err != nil || r.status != 200 || r.body != "A" {
			t.Fatalf("the 12 s GET: %d %q %v, want 200 A", r.status, trunc(r.body), r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the 12 s GET did not complete")
	}

	// Case 94.
	c.expect("DRAIN_CANCEL|"+c.sid, "DRAIN_OK")
	dpGetWant(t, e, "d.test", "/", 200, "A")
	c.expect("DRAIN_CANCEL|"+c.sid, "ERROR|no drain in progress")
	c.expect("DRAIN_STATUS|"+c.sid, "ERROR|no drain in progress")
}

func TestCase93_DrainShedsToPoolMember(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	b := newBackend(t, "B")
	d1 := e.reg("d1", "web")
	d1.add("dp.test", "/", a.URL)
	d1.apply()
	d2 := e.reg("d2", "web")
	d2.add("dp.test", "/", b.URL)
	d2.apply()
	start := time.Now()
	d1.expectPrefix("DRAIN_START|"+d1.sid+"|4", "DRAIN_OK|")
	n := 0
	for time.Since(start) < 6*time.Second {
		sent := time.Since(start)
		r := e.get("dp.test", "/")
		if r.err != nil || r.status != 200 {
			t.Fatalf("GET dp.test/ at %v: %d %q %v, want 200", sent, r.status, trunc(r.body), r.err)
		}
		if sent >= 4250*time.Millisecond && r.body != "B" {
			t.Fatalf("GET dp.test/ at %v answered %q, want B once the drain completed", sent, r.body)
		}
		n++
		time.Sleep(20 * time.Millisecond)
	}
	if n < 50 {
		t.Fatalf("only %d GETs in 6 s", n)
	}
}

func TestCase95_Stats(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	c := e.reg("i95", "svc")
	rid := c.add("st.test", "/", a.URL)
	c.apply()
	dpGetWant(t, e, "st.test", "/", 200, "A")
	dpGetWant(t, e, "st.test", "/", 200, "A")
	dpGetWant(t, e, "st.test", "/status/404", 404, "A")
	// The statistics are settled when the response body has been written,
	// which may trail the client's read by a moment.
	var line string
	eventually(t, 2*time.Second, "three requests in STATS_GET", func() bool {
		line = c.do("STATS_GET|" + c.sid)
		return strings.Contains(line, `"requests":3`)
	})
	arr := dpArray(t, line, "STATS_OK|")
	if len(arr) != 1 {
		t.Fatalf("STATS_GET: %d elements, want 1", len(arr))
	}
	s := arr[0].(map[string]any)
	dpWant(t, s, "route_id", rid)
	dpWant(t, s, "requests", 3)
	dpWant(t, s, "errors", 0)
	if !strings.Contains(line, `"status_codes":{"200":2,"404":1}`) {
		t.Fatalf("%s\nlacks \"status_codes\":{\"200\":2,\"404\":1}", line)
	}
	if n, _ := s["bytes_sent"].(float64); n <= 0 {
		t.Fatalf("bytes_sent %v, want > 0", s["bytes_sent"])
	}
	for _, k := range []string{"avg_latency_ms", "p95_latency_ms", "p99_latency_ms"} {
		if v, ok := s[k].(float64); !ok || v < 0 {
			t.Fatalf("%s = %#v, want a number ≥ 0", k, s[k])
		}
	}
	one := dpArray(t, c.do("STATS_GET|"+c.sid+"|"+rid), "STATS_OK|")
	if len(one) != 1 {
		t.Fatalf("STATS_GET with a rid: %d elements, want 1", len(one))
	}
	dpWant(t, one[0].(map[string]any), "route_id", rid)
	c.expect("STATS_GET|"+c.sid+"|r999999", "ERROR|route not found")
}

func TestCase96_BackendTest(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "tls")
	}))
	t.Cleanup(tlsSrv.Close)
	c := e.reg("i96", "svc")

	ok := dpObject(t, c.do("BACKEND_TEST|"+c.sid+"|"+a.URL), "BACKEND_OK|")
	if got := strings.Join(dpKeys(ok), ","); got != "reachable,response_time_ms,status_code,tls_valid" {
		t.Fatalf("BACKEND_OK members %s", got)
	}
	dpWant(t, ok, "reachable", true)
	dpWant(t, ok, "status_code", 200)
	dpWant(t, ok, "tls_valid", false)
	if n, isNum := ok["response_time_ms"].(float64); !isNum || n < 0 || n != float64(int64(n)) {
		t.Fatalf("response_time_ms %#v, want an integer", ok["response_time_ms"])
	}

	fail := dpObject(t, c.do("BACKEND_TEST|"+c.sid+"|"+deadURL), "BACKEND_FAIL|")
	dpWant(t, fail, "reachable", false)
	dpWant(t, fail, "status_code", 0)
	if s, _ := fail["error"].(string); s == "" {
		t.Fatalf("BACKEND_FAIL without an error text: %v", fail)
	}

	c.expectPrefix("BACKEND_TEST|"+c.sid+"|::bad", "BACKEND_FAIL|")
	c.noLine(2 * time.Second)
	c.expect("PING|"+c.sid, "PONG")

	line := c.do("BACKEND_TEST|" + c.sid + "|" + tlsSrv.URL)
	if !strings.HasPrefix(line, "BACKEND_OK|") && !strings.HasPrefix(line, "BACKEND_FAIL|") {
		t.Fatalf("BACKEND_TEST of a self-signed server: %s", line)
	}
	res := dpObject(t, line, line[:strings.IndexByte(line, '|')+1])
	dpWant(t, res, "tls_valid", false)
}

func TestCase97_BackendTestBlocksOnlyItsConnection(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	b := newBackend(t, "B")
	c1 := e.reg("i97a", "svc")
	c2 := e.reg("i97b", "svc2")
	c2.add("q.test", "/", b.URL)
	c2.apply()

	start := time.Now()
	c1.sendRaw("BACKEND_TEST|" + c1.sid + "|" + a.URL + "/?s=4\nPING|" + c1.sid + "\n")
	time.Sleep(200 * time.Millisecond) // the probe is under way
	pingAt := time.Now()
	c2.expect("PING|"+c2.sid, "PONG")
	if d := time.Since(pingAt); d > 100*time.Millisecond {
		t.Fatalf("connection 2 got PONG after %v, want within 100 ms", d)
	}
	getAt := time.Now()
	dpGetWant(t, e, "q.test", "/", 200, "B")
	if d := time.Since(getAt); d > time.Second {
		t.Fatalf("the GET took %v while a BACKEND_TEST was running", d)
	}

	line, err := c1.recvWithin(8 * time.Second)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("connection 1: no BACKEND_OK: %v", err)
	}
	res := dpObject(t, line, "BACKEND_OK|")
	dpWant(t, res, "status_code", 200)
	if took < 3500*time.Millisecond || took > 5500*time.Millisecond {
		t.Fatalf("BACKEND_OK after %v, want about 4 s", took)
	}
	if got := c1.recv(); got != "PONG" {
		t.Fatalf("connection 1: %q after BACKEND_OK, want PONG", got)
	}
}

func TestCase98_EventsOnlyForSubscribers(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	c := e.reg("i98a", "svc")
	c.expect("SUBSCRIBE|"+c.sid+"|config_applied", "SUBSCRIBE_OK")
	rid := c.add("ev.test", "/", a.URL)
	c.apply()
	ev := dpEvent(t, c, "config_applied", 2*time.Second)
	if got := dpStrings(t, ev["added"]); len(got) != 1 || got[0] != rid {
		t.Fatalf("added %v, want [%s]", got, rid)
	}
	dpWant(t, ev, "session_id", c.sid)
	dpWant(t, ev, "routes_active", 1)
	for _, k := range []string{"updated", "removed"} {
		if got := dpStrings(t, ev[k]); len(got) != 0 {
			t.Fatalf("%s %v, want []", k, got)
		}
	}
	dpTime(t, ev["at"])

	o := e.reg("i98b", "svc")
	o.add("ev2.test", "/", a.URL)
	o.apply()
	o.expect("PING|"+o.sid, "PONG")
	o.noLine(2 * time.Second)
}

func TestCase99_SubscribeValidation(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c := e.reg("i99", "svc")
	c.expect("SUBSCRIBE|"+c.sid+"|bogus", "ERROR|unknown event type")
	c.expect("SUBSCRIBE|"+c.sid+"|*", "SUBSCRIBE_OK")
	c.expect("UNSUBSCRIBE|"+c.sid+"|config_applied", "UNSUBSCRIBE_OK")
	c.expect("UNSUBSCRIBE|"+c.sid+"|bogus", "ERROR|unknown event type")
	c.expect("SUBSCRIBE|"+c.sid, "ERROR|invalid format")
	line := c.do("SESSION_INFO|" + c.sid)
	dpObject(t, line, "SESSION_OK|")
	if !strings.Contains(line, `"subscriptions":["*"]`) {
		t.Fatalf("%s\nlacks \"subscriptions\":[\"*\"]", line)
	}
}

func TestCase100_SessionInfoMembers(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c := e.reg("i100", "svc")
	c.expect("OPTIONS_SET|"+c.sid+"|ALL|compression|true", "OPTIONS_OK")
	c.apply()
	line := c.do("SESSION_INFO|" + c.sid)
	info := dpObject(t, line, "SESSION_OK|")
	want := []string{
		"connected", "connected_at", "headers", "instance_name", "last_activity", "last_apply", "maintenance_port",
		"metadata", "options", "routes_active", "routes_pending_removal", "routes_staged", "service_name",
		"session_id", "subscriptions", "uptime_seconds",
	}
	if got := dpKeys(info); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("SESSION_INFO members\n got %v\nwant %v", got, want)
	}
	dpWant(t, info, "connected", true)
	dpWant(t, info, "session_id", c.sid)
	dpWant(t, info, "service_name", "svc")
	dpWant(t, info, "instance_name", "i100")
	dpWant(t, info, "maintenance_port", 0)
	if info["metadata"] != nil {
		t.Fatalf("metadata %v, want null for {}", info["metadata"])
	}
	for _, k := range []string{"connected_at", "last_activity", "last_apply"} {
		dpTime(t, info[k])
	}
	if !strings.Contains(line, `"options":{"ALL":{"compression":"true"}}`) {
		t.Fatalf("%s\nlacks \"options\":{\"ALL\":{\"compression\":\"true\"}}", line)
	}
	if _, ok := info["subscriptions"].([]any); !ok {
		t.Fatalf("subscriptions %#v, want an array", info["subscriptions"])
	}
	if !bytes.Contains([]byte(line), []byte(`"headers":{}`)) {
		t.Fatalf("%s\nlacks \"headers\":{}", line)
	}
}
