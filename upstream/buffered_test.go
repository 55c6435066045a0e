package upstream

import (
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"
)

// countingBackend answers every request with answer's bytes and counts the
// connections it accepted.
func countingBackend(t *testing.T, answer string) (url string, conns func() int) {
	var mu sync.Mutex
	seen := map[net.Conn]bool{}
	url = rawBackend(t, func(req *http.Request, conn net.Conn) bool {
		mu.Lock()
		seen[conn] = true
		mu.Unlock()
		_, _ = io.WriteString(conn, answer)
		return true
	})
	return url, func() int { mu.Lock(); defer mu.Unlock(); return len(seen) }
}

// TestBufferedBodyKeepsBackendConnection: a small body that comes with the
// headers is answered from the copy, the call is settled by the time the
// client has the response, and the backend connection is reused.
func TestBufferedBodyKeepsBackendConnection(t *testing.T) {
	h := newHarness(t, Settings{})
	url, conns := countingBackend(t, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Backend: raw\r\n\r\nhello")
	m := h.member(url)
	h.route("app.test", "/", m)
	rc := h.dialRaw()
	for i := 0; i < 5; i++ {
		resp := rc.roundTrip(false, "GET / HTTP/1.1", "Host: app.test")
		if resp.Status != 200 || string(resp.Body) != "hello" || resp.Header.Get("X-Backend") != "raw" ||
			resp.Header.Get("Content-Length") != "5" {
			t.Fatalf("#%d: %d %v %q", i, resp.Status, resp.Header, resp.Body)
		}
		if n := m.InFlight.Load(); n != 0 {
			t.Fatalf("#%d: %d in flight after the response", i, n)
		}
	}
	if n := conns(); n != 1 {
		t.Errorf("%d backend connections for 5 requests, want 1 (kept alive)", n)
	}
	if rep := m.Stats.Report(time.Now().UnixNano()); rep.Requests != 5 || rep.BytesSent != 25 {
		t.Errorf("stats %+v: want 5 requests, 25 bytes sent", rep)
	}
	// HEAD gets the length and no body.
	resp := rc.roundTrip(true, "HEAD / HTTP/1.1", "Host: app.test")
	if resp.Status != 200 || len(resp.Body) != 0 || resp.Header.Get("Content-Length") != "5" {
		t.Errorf("HEAD: %d %v %q", resp.Status, resp.Header, resp.Body)
	}
}

// TestBytesAfterResponseCloseBackendConnection: a backend that sends more
// than its Content-Length with its response must not have the rest read
// as the next request's response; its connection is closed instead of
// reused. (Bytes that are still in the socket when a streamed body ends
// are not seen: transport.go, checkTail.)
func TestBytesAfterResponseCloseBackendConnection(t *testing.T) {
	h := newHarness(t, Settings{})
	forged := "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"
	for _, tc := range []struct{ name, answer, body string }{
		{"body", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" + forged, "hello"},
		{"empty", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" + forged, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url, conns := countingBackend(t, tc.answer)
			h.route(tc.name+".test", "/", h.member(url))
			rc := h.dialRaw()
			for i := 0; i < 3; i++ {
				resp := rc.roundTrip(false, "GET / HTTP/1.1", "Host: "+tc.name+".test")
				if resp.Status != 200 || string(resp.Body) != tc.body {
					t.Fatalf("#%d: %d, %d bytes %.20q, want the backend's own response", i, resp.Status, len(resp.Body), resp.Body)
				}
			}
			if n := conns(); n != 3 {
				t.Errorf("%d backend connections for 3 requests, want 3 (none reused after trailing bytes)", n)
			}
		})
	}
}
