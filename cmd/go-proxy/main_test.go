package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestConfigDefaults(t *testing.T) {
	c, err := parseConfig(nil, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTPAddr != ":80" || c.RegistryAddr != ":81" || c.AdminAddr != ":9090" ||
		c.SessionGrace != 90*time.Second || c.IdleTimeout != 120*time.Second ||
		c.StateFile != "" || c.RegistryToken != "" || c.TrustedProxies != "" || c.LogLevel != "info" ||
		c.ShutdownTimeout != 30*time.Second {
		t.Fatalf("defaults: %+v", c)
	}
}

func TestConfigEnvironmentAndFlags(t *testing.T) {
	e := env(map[string]string{
		"PROXY_HTTP_ADDR": ":1080", "PROXY_REGISTRY_ADDR": ":1081", "PROXY_SESSION_GRACE": "5s",
		"PROXY_IDLE_TIMEOUT": "30", "PROXY_STATE_FILE": "/tmp/s.json", "PROXY_REGISTRY_TOKEN": "tok",
		"PROXY_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.1", "PROXY_LOG_LEVEL": "debug",
	})
	c, err := parseConfig([]string{"-http-addr", ":2080"}, e, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTPAddr != ":2080" {
		t.Errorf("flag must win over environment: %q", c.HTTPAddr)
	}
	if c.RegistryAddr != ":1081" || c.SessionGrace != 5*time.Second || c.IdleTimeout != 30*time.Second ||
		c.StateFile != "/tmp/s.json" || c.RegistryToken != "tok" || c.LogLevel != "debug" {
		t.Errorf("environment not applied: %+v", c)
	}
	p, err := c.trustedPrefixes()
	if err != nil || len(p) != 2 || p[1].String() != "192.168.1.1/32" {
		t.Errorf("trusted proxies: %v %v", p, err)
	}
}

func TestConfigRejectsBadValues(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
	}{
		{[]string{"-session-grace", "soon"}, nil},
		{nil, map[string]string{"PROXY_IDLE_TIMEOUT": "-3s"}},
		{[]string{"-trusted-proxies", "not-a-cidr"}, nil},
		{[]string{"-max-sessions", "many"}, nil},
		{[]string{"-store", "consul://x:8500"}, nil},
		{[]string{"-store", "etcd://"}, nil},
		{[]string{"-store", "etcd://e1:2379", "-state-file", "/tmp/s.json"}, nil},
		{[]string{"-store", "etcd://e1:2379", "-store-cert", "c.pem"}, nil},
	} {
		if _, err := parseConfig(tc.args, env(tc.env), io.Discard); err == nil {
			t.Errorf("%v %v: accepted", tc.args, tc.env)
		}
	}
}

func TestConfigStoreEndpoints(t *testing.T) {
	c, err := parseConfig(nil, env(map[string]string{"PROXY_STORE": "etcd://e1:2379, e2:2379"}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	eps, _ := c.storeEndpoints()
	if strings.Join(eps, " ") != "http://e1:2379 http://e2:2379" {
		t.Fatalf("endpoints %v", eps)
	}
	c, err = parseConfig([]string{"-store", "etcd://e1:2379", "-store-ca", "ca.pem"}, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if eps, _ := c.storeEndpoints(); eps[0] != "https://e1:2379" {
		t.Fatalf("with a CA the endpoints are https: %v", eps)
	}
	if c, _ := parseConfig(nil, env(nil), io.Discard); c.Store != "" {
		t.Fatal("the default store must be the embedded one")
	}
}

func TestHelpDocumentsEveryFlag(t *testing.T) {
	var out bytes.Buffer
	code := run([]string{"-h"}, env(nil), io.Discard, &out)
	if code != 0 {
		t.Fatalf("-h exit code %d", code)
	}
	for _, name := range []string{"http-addr", "registry-addr", "admin-addr", "session-grace", "idle-timeout",
		"state-file", "registry-token", "trusted-proxies", "log-level", "store", "store-ca", "replica"} {
		if !strings.Contains(out.String(), "-"+name) {
			t.Errorf("-h does not document -%s", name)
		}
	}
	for _, v := range []string{"PROXY_HTTP_ADDR", "PROXY_REGISTRY_ADDR", "PROXY_ADMIN_ADDR", "PROXY_SESSION_GRACE",
		"PROXY_IDLE_TIMEOUT", "PROXY_STATE_FILE", "PROXY_REGISTRY_TOKEN", "PROXY_TRUSTED_PROXIES", "PROXY_LOG_LEVEL", "PROXY_STORE"} {
		if !strings.Contains(out.String(), v) {
			t.Errorf("-h does not name %s", v)
		}
	}
}

// TestServeEndToEnd starts the whole proxy as `go-proxy serve` does, routes
// a request registered over the protocol, and shuts it down as SIGTERM
// does: readyz turns 503, the in-flight request completes, serve returns.
func TestServeEndToEnd(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("slow") != "" {
			time.Sleep(1500 * time.Millisecond)
		}
		_, _ = io.WriteString(w, "hello")
	}))
	defer backend.Close()
	cfg, err := parseConfig([]string{"-http-addr", "127.0.0.1:0", "-registry-addr", "127.0.0.1:0", "-admin-addr", "127.0.0.1:0"}, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan listeners, 1)
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), ready) }()
	var ls listeners
	select {
	case ls = <-ready:
	case err := <-done:
		t.Fatalf("serve: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not start")
	}
	get := func(host, path string) (int, string) {
		req, _ := http.NewRequest("GET", "http://"+ls.HTTP.String()+path, nil)
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("nothing.test", "/"); code != 404 {
		t.Fatalf("unknown host: %d", code)
	}
	conn, err := net.Dial("tcp", ls.Registry.String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rd := bufio.NewReader(conn)
	say := func(line string) string {
		fmt.Fprintf(conn, "%s\n", line)
		reply, err := rd.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(reply)
	}
	sid := strings.TrimPrefix(say("REGISTER|web|i1|0|{}"), "ACK|")
	if !strings.HasPrefix(say("ROUTE_ADD|"+sid+"|app.test|/|"+backend.URL+"|10"), "ROUTE_OK|") || say("CONFIG_APPLY") != "OK" {
		t.Fatal("registration failed")
	}
	if code, body := get("app.test", "/"); code != 200 || body != "hello" {
		t.Fatalf("routed request: %d %q", code, body)
	}
	readyz := func() int {
		resp, err := http.Get("http://" + ls.Admin.String() + "/readyz")
		if err != nil {
			return -1
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if readyz() != 200 {
		t.Fatal("not ready")
	}
	slow := make(chan int, 1)
	go func() { code, _ := get("app.test", "/?slow=1"); slow <- code }()
	time.Sleep(300 * time.Millisecond)
	cancel()
	deadline := time.Now().Add(time.Second)
	for readyz() == 200 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if code := readyz(); code != 503 {
		t.Fatalf("readyz during shutdown: %d, want 503", code)
	}
	if code := <-slow; code != 200 {
		t.Fatalf("in-flight request during shutdown: %d", code)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve returned %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not return after shutdown")
	}
}
