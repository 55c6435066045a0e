package loadgen

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-proxy/go-proxy/bench/backend"
	"github.com/valyala/fasthttp"
)

func serve(t *testing.T, h fasthttp.RequestHandler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: h}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return ln.Addr().String()
}

func TestRunHTTPRotatesHostsAndCountsErrors(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]int{}
	addr := serve(t, func(ctx *fasthttp.RequestCtx) {
		mu.Lock()
		seen[string(ctx.Host())]++
		mu.Unlock()
		if strings.HasPrefix(string(ctx.Host()), "bad") {
			ctx.SetStatusCode(503)
			return
		}
		backend.Handler(ctx)
	})
	hosts := []string{"a.test", "b.test", "c.test", "bad.test"}
	var edges []bool
	res, err := RunHTTP(context.Background(), HTTPConfig{
		Addr: addr, Hosts: hosts, Path: backend.Path13B, Conns: 4,
		Warmup: 100 * time.Millisecond, Duration: 300 * time.Millisecond,
		ExpectBodyLen: 13, OnMeasure: func(s bool) { edges = append(edges, s) },
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts {
		if seen[h] == 0 {
			t.Errorf("host %s never sent: %v", h, seen)
		}
	}
	if res.Errors == 0 || res.Requests <= res.Errors || res.Statuses[503] != res.Errors {
		t.Fatalf("requests %d errors %d statuses %v", res.Requests, res.Errors, res.Statuses)
	}
	if len(edges) != 2 || !edges[0] || edges[1] {
		t.Fatalf("edges %v", edges)
	}
	if res.RPS <= 0 || res.Latency.P50 <= 0 || res.Latency.P999 < res.Latency.P50 {
		t.Fatalf("result %+v", res)
	}
	if res.Elapsed < 250*time.Millisecond || res.Elapsed > time.Second {
		t.Fatalf("elapsed %v", res.Elapsed)
	}
}

func TestRunHTTPUploadAndWebSocket(t *testing.T) {
	addr := serve(t, backend.Handler)
	body := make([]byte, 1<<20)
	res, err := RunHTTP(context.Background(), HTTPConfig{
		Addr: addr, Path: backend.PathUpload, Method: "POST", Body: body, Conns: 2,
		Duration: 200 * time.Millisecond, ExpectBodyLen: len("1048576"),
	})
	if err != nil || res.Errors != 0 || res.RPS <= 0 {
		t.Fatalf("upload: %v %+v", err, res)
	}
	wres, err := RunWS(context.Background(), WSConfig{
		Addr: addr, Path: backend.PathWS, Message: backend.Body13B, Conns: 2,
		Warmup: 50 * time.Millisecond, Duration: 200 * time.Millisecond,
	})
	if err != nil || wres.Errors != 0 || wres.RPS <= 0 {
		t.Fatalf("ws: %v %+v", err, wres)
	}
}

func TestRunHTTPConnectionRefusedIsAnError(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	res, err := RunHTTP(context.Background(), HTTPConfig{Addr: addr, Path: "/", Conns: 1, Duration: 100 * time.Millisecond, ExpectBodyLen: -1})
	if err != nil || res.Errors == 0 || len(res.ErrorSamples) == 0 {
		t.Fatalf("%v %+v", err, res)
	}
}

func TestRunHTTPStopsOnContext(t *testing.T) {
	addr := serve(t, backend.Handler)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := RunHTTP(ctx, HTTPConfig{Addr: addr, Path: "/13b", Conns: 2, Duration: time.Hour, ExpectBodyLen: -1})
	if err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("err %v after %v", err, time.Since(start))
	}
}

func TestCoprimeStride(t *testing.T) {
	for _, n := range []int{2, 3, 10, 1000, 100000, 4096} {
		s := coprimeStride(n)
		seen := map[int]bool{}
		for i, x := 0, 0; i < n; i++ {
			x = (x + s) % n
			seen[x] = true
		}
		if len(seen) != n {
			t.Fatalf("n=%d stride %d visits %d", n, s, len(seen))
		}
	}
}
