package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestServeEventLoops: with -event-loops the plaintext listener is served
// by the loops, requests they do not serve still work (through the
// fasthttp server), and a request in progress at shutdown finishes.
func TestServeEventLoops(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(500 * time.Millisecond)
		}
		b, _ := io.ReadAll(r.Body)
		_, _ = io.WriteString(w, r.Method+" "+r.URL.Path+" "+string(b))
	}))
	defer backend.Close()
	p := startProxy(t, "-event-loops", "2")
	if strings.Contains(p.logs.String(), "event loops are off") {
		t.Fatal("event loops not used")
	}
	registerRoute(t, p.ls.Registry.String(), "web", "app.test", backend.URL)
	do := func(method, path, body string) (int, string) {
		req, _ := http.NewRequest(method, "http://"+p.ls.HTTP.String()+path, strings.NewReader(body))
		req.Host = "app.test"
		r := send(t, plainClient, req)
		return r.status, r.body
	}
	for i := 0; i < 3; i++ {
		if code, body := do("GET", "/a", ""); code != 200 || body != "GET /a " {
			t.Fatalf("GET: %d %q", code, body)
		}
	}
	if code, body := do("POST", "/b", "payload"); code != 200 || body != "POST /b payload" {
		t.Fatalf("POST: %d %q", code, body)
	}
	resp, err := http.Get("http://" + p.ls.Admin.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"goproxy_event_loops 2\n", "goproxy_event_loop_handoffs_total 1\n", "goproxy_event_loop_connections "} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	slow := make(chan string, 1)
	go func() { _, body := do("GET", "/slow", ""); slow <- body }()
	time.Sleep(200 * time.Millisecond)
	p.stop()
	select {
	case body := <-slow:
		if body != "GET /slow " {
			t.Fatalf("request in progress at shutdown: %q", body)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("request in progress at shutdown did not finish")
	}
}
