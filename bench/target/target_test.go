package target

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/go-proxy/go-proxy/bench/backend"
	"github.com/go-proxy/go-proxy/bench/ws"
	"github.com/valyala/fasthttp"
)

func startBackend(t *testing.T) string {
	t.Helper()
	addr, err := backend.ServeLoopback(t.Cleanup)
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

func status(t *testing.T, addr, host, path string) int {
	t.Helper()
	c := &fasthttp.HostClient{Addr: addr}
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	req.SetRequestURI("http://" + host + path)
	if err := c.DoTimeout(req, resp, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode()
}

// TestReferenceProxies starts haproxy and nginx with generated
// configurations: known hosts are proxied (HTTP and WebSocket), others get
// 404, and Stop leaves no process behind.
func TestReferenceProxies(t *testing.T) {
	be := startBackend(t)
	for _, tc := range []struct {
		bin string
		t   Target
	}{{"haproxy", HAProxy{}}, {"nginx", Nginx{}}} {
		t.Run(tc.bin, func(t *testing.T) {
			if !Installed(tc.bin) {
				t.Skipf("%s is not installed (apt-get install -y %s)", tc.bin, tc.bin)
			}
			s := Setup{Backend: be, Domains: []string{"a.bench.test", "b.bench.test"}, ProbePath: backend.Path13B, Dir: t.TempDir(), WebSocket: true}
			in, err := tc.t.Start(context.Background(), s)
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := in.Stop(); err != nil {
					t.Error(err)
				}
				if err := waitGone(in.PID); err != nil {
					t.Error(err)
				}
			}()
			if in.PID == 0 || !strings.HasPrefix(in.Addr, "127.0.0.1:") {
				t.Fatalf("instance %+v", in)
			}
			if got := status(t, in.Addr, "b.bench.test", backend.Path4KiB); got != 200 {
				t.Fatalf("known host: %d", got)
			}
			if got := status(t, in.Addr, "other.test", backend.Path13B); got != 404 {
				t.Fatalf("unknown host: %d", got)
			}
			c, err := ws.Dial(in.Addr, "a.bench.test", backend.PathWS, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			if err := c.WriteMessage(ws.OpBinary, []byte("hi")); err != nil {
				t.Fatal(err)
			}
			if _, p, err := c.ReadMessage(); err != nil || string(p) != "hi" {
				t.Fatalf("ws echo %q %v", p, err)
			}
			_ = c.Close()
		})
	}
}

func waitGone(pid int) error {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := readProcState(pid); err != nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("process %d still running after Stop", pid)
}

func TestConfigs(t *testing.T) {
	h := HAProxyConfig("127.0.0.1:1", "/x/hosts.lst", "127.0.0.1:2", true, 2)
	for _, want := range []string{"bind 127.0.0.1:1", "-f /x/hosts.lst", "server backend 127.0.0.1:2", "check inter 1s", "http-reuse always"} {
		if !strings.Contains(h, want) {
			t.Errorf("haproxy config lacks %q", want)
		}
	}
	n := NginxConfig("127.0.0.1:1", "/x/hosts.map", "127.0.0.1:2", "/x", 100_000, false)
	for _, want := range []string{"listen 127.0.0.1:1;", "include /x/hosts.map;", "server 127.0.0.1:2;", "keepalive 256;", "map_hash_max_size 262144;", "daemon off;"} {
		if !strings.Contains(n, want) {
			t.Errorf("nginx config lacks %q", want)
		}
	}
	// Under callgrind each reference runs on one thread, in one process.
	if h := HAProxyConfig("127.0.0.1:1", "/x/h", "127.0.0.1:2", false, 1); !strings.Contains(h, "nbthread 1\n") {
		t.Errorf("haproxy config for one thread:\n%s", h)
	}
	if n := NginxConfig("127.0.0.1:1", "/x/h", "127.0.0.1:2", "/x", 1, true); !strings.Contains(n, "master_process off;") || !strings.Contains(n, "worker_processes 1;") {
		t.Errorf("nginx config for one process:\n%s", n)
	}
	if !strings.Contains(n, "master_process on;") || !strings.Contains(n, "worker_processes 2;") {
		t.Errorf("nginx config lacks its master and two workers")
	}
}

func TestFreePortIsLoopback(t *testing.T) {
	a, err := FreePort()
	if err != nil || !strings.HasPrefix(a, "127.0.0.1:") {
		t.Fatalf("%q %v", a, err)
	}
}
