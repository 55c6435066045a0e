package upstream

import (
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// A minimal RFC 6455 implementation: enough of the handshake and framing
// to prove that the proxy tunnels an upgraded connection both ways.

const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

func wsAccept(key string) string {
	sum := sha1.Sum([]byte(key + wsGUID))
	return base64.StdEncoding.EncodeToString(sum[:])
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// wsWriteFrame writes one final frame; a client masks its frames (§5.3).
func wsWriteFrame(w io.Writer, opcode byte, payload []byte, mask bool) error {
	hdr := []byte{0x80 | opcode}
	maskBit := byte(0)
	if mask {
		maskBit = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		hdr = append(hdr, maskBit|byte(n))
	case n <= 0xffff:
		hdr = append(hdr, maskBit|126, byte(n>>8), byte(n))
	default:
		hdr = append(hdr, maskBit|127)
		hdr = binary.BigEndian.AppendUint64(hdr, uint64(n))
	}
	body := payload
	if mask {
		key := [4]byte{0x12, 0x34, 0x56, 0x78}
		hdr = append(hdr, key[:]...)
		body = make([]byte, len(payload))
		for i := range payload {
			body[i] = payload[i] ^ key[i%4]
		}
	}
	_, err := w.Write(append(hdr, body...))
	return err
}

// wsReadFrame reads one final frame and unmasks it.
func wsReadFrame(r io.Reader) (opcode byte, payload []byte, masked bool, err error) {
	var h [2]byte
	if _, err = io.ReadFull(r, h[:]); err != nil {
		return 0, nil, false, err
	}
	if h[0]&0x80 == 0 {
		return 0, nil, false, errors.New("fragmented frame")
	}
	opcode, masked = h[0]&0x0f, h[1]&0x80 != 0
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err = io.ReadFull(r, b[:]); err != nil {
			return
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err = io.ReadFull(r, b[:]); err != nil {
			return
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	var key [4]byte
	if masked {
		if _, err = io.ReadFull(r, key[:]); err != nil {
			return
		}
	}
	payload = make([]byte, n)
	if _, err = io.ReadFull(r, payload); err != nil {
		return
	}
	if masked {
		for i := range payload {
			payload[i] ^= key[i%4]
		}
	}
	return opcode, payload, masked, nil
}

// wsEchoBackend accepts WebSocket upgrades and echoes every data frame
// until a close frame or EOF. Anything else gets 403.
func wsEchoBackend(t *testing.T) string {
	t.Helper()
	srv := namedHandler(t, func(w http.ResponseWriter, r *http.Request) {
		if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") || !headerHasToken(r.Header, "Connection", "upgrade") {
			http.Error(w, "upgrade required", http.StatusForbidden)
			return
		}
		conn, brw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Accept: " + wsAccept(r.Header.Get("Sec-WebSocket-Key")) + "\r\n\r\n")
		if brw.Flush() != nil {
			return
		}
		for {
			op, payload, masked, err := wsReadFrame(brw.Reader)
			if err != nil || !masked {
				return
			}
			if op == 0x8 { // close: answer it and stop
				_ = wsWriteFrame(conn, 0x8, payload, false)
				return
			}
			if wsWriteFrame(conn, op, payload, false) != nil {
				return
			}
		}
	})
	return srv.URL
}

const wsKey = "dGhlIHNhbXBsZSBub25jZQ=="

func wsHandshake(host string) string {
	return "GET /chat HTTP/1.1\r\nHost: " + host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + wsKey + "\r\nSec-WebSocket-Version: 13\r\n\r\n"
}

func TestWebSocketTunnel(t *testing.T) {
	h := newHarness(t, Settings{})
	m := h.member(wsEchoBackend(t), func(c *Config) {
		c.WebSocket = true
		c.Timeout = 300 * time.Millisecond // bounds the handshake only
		c.Headers = []Header{{Name: []byte("X-Route"), Value: []byte("ws")}}
	})
	h.route("ws.test", "/", m)

	rc := h.dialRaw()
	resp := rc.roundTripRaw(false, wsHandshake("ws.test"))
	if resp.Status != 101 {
		t.Fatalf("handshake: %d %v %q", resp.Status, resp.Header, resp.Body)
	}
	if !strings.EqualFold(resp.Header.Get("Upgrade"), "websocket") || !headerHasToken(http.Header(resp.Header), "Connection", "upgrade") {
		t.Errorf("101 lacks the upgrade headers: %v", resp.Header)
	}
	if got := resp.Header.Get("Sec-WebSocket-Accept"); got != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Errorf("Sec-WebSocket-Accept %q", got)
	}
	if resp.Header.Get("X-Route") != "ws" {
		t.Errorf("route headers missing on the 101: %v", resp.Header)
	}
	eventually(t, "tunnel counted in flight", func() bool { return m.InFlight.Load() == 1 && m.Session.InFlight.Load() == 1 })

	_ = rc.conn.SetDeadline(time.Now().Add(10 * time.Second))
	// Outlive the route timeout: it must not cut an established tunnel.
	time.Sleep(500 * time.Millisecond)
	for _, msg := range []string{"hello through the proxy", strings.Repeat("big", 20000)} {
		if err := wsWriteFrame(rc.conn, 0x1, []byte(msg), true); err != nil {
			t.Fatal(err)
		}
		op, payload, masked, err := wsReadFrame(rc.br)
		if err != nil {
			t.Fatalf("reading echo: %v", err)
		}
		if op != 0x1 || masked || string(payload) != msg {
			t.Fatalf("echo: op %d masked %v payload %d bytes", op, masked, len(payload))
		}
	}
	if err := wsWriteFrame(rc.conn, 0x8, []byte{0x03, 0xe8}, true); err != nil {
		t.Fatal(err)
	}
	if op, _, _, err := wsReadFrame(rc.br); err != nil || op != 0x8 {
		t.Fatalf("close: op %d err %v", op, err)
	}
	// The backend closed after the close frame: the proxy closes the
	// client side too and settles the counters.
	if _, err := rc.br.ReadByte(); err == nil {
		t.Error("client connection still open after the backend closed")
	}
	eventually(t, "tunnel settled", func() bool { return m.InFlight.Load() == 0 && m.Session.InFlight.Load() == 0 })
	eventually(t, "websocket bytes counted", func() bool {
		r := m.Stats.Report(time.Now().UnixNano())
		return r.BytesSent > 60000 && r.BytesReceived > 60000
	})
	r := m.Stats.Report(time.Now().UnixNano())
	if r.Requests != 1 || r.StatusCodes[101] != 1 {
		t.Errorf("stats %+v: want one 101", r)
	}
}

func TestWebSocketNotAllowed(t *testing.T) {
	h := newHarness(t, Settings{})
	m := h.member(wsEchoBackend(t), func(c *Config) {
		c.Headers = []Header{{Name: []byte("X-Route"), Value: []byte("ws")}}
	})
	h.route("ws.test", "/", m)
	rc := h.dialRaw()
	resp := rc.roundTripRaw(false, wsHandshake("ws.test"))
	if resp.Status != 400 || string(resp.Body) != "WebSocket not allowed" || resp.Header.Get("X-Route") != "" {
		t.Fatalf("got %d %v %q, want 400 WebSocket not allowed", resp.Status, resp.Header, resp.Body)
	}
	if rep := m.Stats.Report(time.Now().UnixNano()); rep.StatusCodes[400] != 1 {
		t.Errorf("400 not counted for the member: %+v", rep)
	}
	// Nothing was forwarded, so it is no breaker outcome (§6.7 counts
	// forwarded requests): a success here would reset the failure count.
	if f, s, _, _ := m.Breaker.Snapshot(); f != 0 || s != 0 {
		t.Errorf("breaker failures %d successes %d after a refused upgrade, want 0 0", f, s)
	}
	// The connection stays usable for plain HTTP: another Upgrade protocol
	// is dropped and the request proxied; the backend refuses with 403.
	resp = rc.roundTrip(false, "GET / HTTP/1.1", "Host: ws.test", "Connection: Upgrade", "Upgrade: h2c")
	if resp.Status != 403 {
		t.Errorf("non-websocket upgrade: %d %q, want the backend's 403 as plain HTTP", resp.Status, resp.Body)
	}
}

func TestRefusedUpgradeDoesNotCloseHalfOpenBreaker(t *testing.T) {
	h := newHarness(t, Settings{})
	var calls atomic.Int64
	srv := namedHandler(t, func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		http.Error(w, "down", http.StatusServiceUnavailable)
	})
	m := h.member(srv.URL)
	m.Breaker.Configure(BreakerSettings{Threshold: 1, Timeout: 300 * time.Millisecond, HalfOpenRequests: 1})
	h.route("ws.test", "/", m)
	rc := h.dialRaw()
	if resp := rc.roundTrip(false, "GET / HTTP/1.1", "Host: ws.test"); resp.Status != 503 {
		t.Fatalf("first request %d", resp.Status)
	}
	if st := m.Breaker.State(time.Now().UnixNano()); st != BreakerOpen {
		t.Fatalf("breaker %v after a 503, want open", st)
	}
	time.Sleep(350 * time.Millisecond)
	// The half-open trial slot goes to a request that is refused before
	// any backend contact: the breaker has learnt nothing and must stay
	// half-open, with the slot given back.
	if resp := rc.roundTripRaw(false, wsHandshake("ws.test")); resp.Status != 400 {
		t.Fatalf("upgrade %d", resp.Status)
	}
	if st := m.Breaker.State(time.Now().UnixNano()); st != BreakerHalfOpen {
		t.Errorf("breaker %v after a refused upgrade, want half-open", st)
	}
	// The next request is the real trial; it fails and re-opens.
	if resp := rc.roundTrip(false, "GET / HTTP/1.1", "Host: ws.test"); resp.Status != 503 || calls.Load() != 2 {
		t.Errorf("trial: %d, backend calls %d", resp.Status, calls.Load())
	}
	if st := m.Breaker.State(time.Now().UnixNano()); st != BreakerOpen {
		t.Errorf("breaker %v after a failed trial, want open", st)
	}
}

func TestWebSocketBackendRefuses(t *testing.T) {
	h := newHarness(t, Settings{})
	// A plain backend answers the upgrade with 403 and a body.
	m := h.member(namedHandler(t, func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no websockets here", http.StatusForbidden)
	}).URL, func(c *Config) { c.WebSocket = true })
	h.route("ws.test", "/", m)
	rc := h.dialRaw()
	resp := rc.roundTripRaw(false, wsHandshake("ws.test"))
	if resp.Status != 403 || string(resp.Body) != "no websockets here\n" {
		t.Fatalf("got %d %q, want the backend's 403", resp.Status, resp.Body)
	}
	eventually(t, "settled", func() bool { return m.InFlight.Load() == 0 })
}

func TestWebSocketSilentBackend504(t *testing.T) {
	h := newHarness(t, Settings{})
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(io.Discard, c); _ = c.Close() }()
		}
	}()
	m := h.member("ws://"+ln.Addr().String(), func(c *Config) { c.WebSocket = true; c.Timeout = 300 * time.Millisecond })
	h.route("ws.test", "/", m)
	rc := h.dialRaw()
	start := time.Now()
	resp := rc.roundTripRaw(false, wsHandshake("ws.test"))
	if d := time.Since(start); resp.Status != 504 || d > 1500*time.Millisecond {
		t.Errorf("silent backend: %d after %v, want 504 after about 300ms", resp.Status, d)
	}
}

// TestWebSocketClientCloses: a frame pipelined right behind the handshake
// reaches the backend, and when the client goes away the tunnel ends and
// the in-flight counts settle.
func TestWebSocketClientCloses(t *testing.T) {
	h := newHarness(t, Settings{})
	m := h.member(wsEchoBackend(t), func(c *Config) { c.WebSocket = true })
	h.route("ws.test", "/", m)
	for i := 0; i < 3; i++ {
		rc := h.dialRaw()
		var frame strings.Builder
		_ = wsWriteFrame(&frame, 0x2, []byte("pipelined"), true)
		resp := rc.roundTripRaw(false, wsHandshake("ws.test")+frame.String())
		if resp.Status != 101 {
			t.Fatalf("handshake %d", resp.Status)
		}
		op, payload, _, err := wsReadFrame(rc.br)
		if err != nil || op != 0x2 || string(payload) != "pipelined" {
			t.Fatalf("echo of the pipelined frame: op %d %q %v", op, payload, err)
		}
		_ = rc.conn.Close()
	}
	eventually(t, "tunnels closed", func() bool { return m.InFlight.Load() == 0 && m.Session.InFlight.Load() == 0 })
	if r := m.Stats.Report(time.Now().UnixNano()); r.StatusCodes[101] != 3 {
		t.Errorf("stats %+v", r)
	}
}

// TestWebSocketHandshakeAnyCase: an upgrade with lower-case header names
// and values is recognised (the admission scan's header set gates the
// lookups), and Upgrade without Connection is no upgrade.
func TestWebSocketHandshakeAnyCase(t *testing.T) {
	h := newHarness(t, Settings{})
	m := h.member(wsEchoBackend(t), func(c *Config) { c.WebSocket = true })
	h.route("ws.test", "/", m)
	rc := h.dialRaw()
	resp := rc.roundTripRaw(false, "GET /chat HTTP/1.1\r\nhost: ws.test\r\nupgrade: WebSocket\r\nconnection: keep-alive, upgrade\r\n"+
		"sec-websocket-key: "+wsKey+"\r\nsec-websocket-version: 13\r\n\r\n")
	if resp.Status != 101 {
		t.Fatalf("lower-case handshake: %d %v %q", resp.Status, resp.Header, resp.Body)
	}
	rc = h.dialRaw()
	resp = rc.roundTripRaw(false, "GET /chat HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Key: "+wsKey+"\r\nSec-WebSocket-Version: 13\r\n\r\n")
	if resp.Status == 101 {
		t.Fatalf("Upgrade without Connection was tunnelled")
	}
}
