// Package scenario defines the bench suite's scenarios and runs them: each
// round runs every target once, in the same order (A B A B …), so that a
// noisy machine's drift hits all targets alike.
package scenario

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/go-proxy/go-proxy/bench/backend"
)

// Scenario is one load shape.
type Scenario struct {
	Name        string
	Description string
	Path        string
	Method      string
	BodySize    int // request body bytes
	RespSize    int // expected response body bytes; -1: not checked
	Conns       int
	Routes      int  // routes in the table; traffic rotates over all of them
	Features    bool // health checks, breaker, rate limit, statistics polling
	WebSocket   bool // WebSocket message round trips instead of requests
	Churn       bool // go-proxy also runs with registry churn; checks errors and p99
}

// DefaultConns is the connection count of most scenarios.
const DefaultConns = 64

// All returns every scenario, in the order they run.
func All() []Scenario {
	get := func(name, desc, path string, size int) Scenario {
		return Scenario{Name: name, Description: desc, Path: path, RespSize: size, Conns: DefaultConns, Routes: 1}
	}
	s13 := get("get-13b", "GET, 13 B response body, 64 connections", backend.Path13B, 13)
	s4k := get("get-4kib", "GET, 4 KiB response body, 64 connections", backend.Path4KiB, 4096)
	s64k := get("get-64kib", "GET, 64 KiB response body, 64 connections", backend.Path64KiB, 65536)
	post := get("post-1mib", "POST of a 1 MiB body to the upload sink, 64 connections", backend.PathUpload, len("1048576"))
	post.Method, post.BodySize = "POST", 1<<20
	c256 := get("get-13b-c256", "GET, 13 B, 256 connections", backend.Path13B, 13)
	c256.Conns = 256
	r1k := get("routes-1k", "GET, 13 B, 1,000 routes in the table, Host rotating over all of them", backend.Path13B, 13)
	r1k.Routes = 1000
	r100k := get("routes-100k", "GET, 13 B, 100,000 routes in the table (100 sessions), Host rotating over all of them", backend.Path13B, 13)
	r100k.Routes = 100_000
	f13 := get("features-13b", "GET, 13 B, with health checks (1 s), breaker, rate limit and statistics polling", backend.Path13B, 13)
	f13.Features = true
	f4k := get("features-4kib", "GET, 4 KiB, with health checks (1 s), breaker, rate limit and statistics polling", backend.Path4KiB, 4096)
	f4k.Features = true
	wsc := get("websocket", "WebSocket round trip of a 13 B message, 64 connections", backend.PathWS, 13)
	wsc.WebSocket = true
	ch := get("churn", "GET, 13 B, 1,000 routes, quiet registry versus sessions registering and applying during the run", backend.Path13B, 13)
	ch.Routes, ch.Churn = 1000, true
	return []Scenario{s13, s4k, s64k, post, c256, r1k, r100k, f13, f4k, wsc, ch}
}

// Select returns the scenarios named in a comma list ("all" or empty:
// every scenario).
func Select(list string) ([]Scenario, error) {
	all := All()
	if list == "" || list == "all" {
		return all, nil
	}
	var out []Scenario
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		found := false
		for _, s := range all {
			if s.Name == name {
				out = append(out, s)
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("unknown scenario %q (have %s)", name, strings.Join(Names(), ", "))
		}
	}
	return out, nil
}

// Names lists every scenario name.
func Names() []string {
	var n []string
	for _, s := range All() {
		n = append(n, s.Name)
	}
	return n
}

// Domains returns the table's domains: r0.bench.test, r1.bench.test, ….
func (s Scenario) Domains() []string {
	n := max(s.Routes, 1)
	d := make([]string, n)
	for i := range d {
		d[i] = "r" + strconv.Itoa(i) + ".bench.test"
	}
	return d
}

// Params describes the scenario for the JSON report.
func (s Scenario) Params() map[string]any {
	return map[string]any{
		"path": s.Path, "method": s.method(), "request_body_bytes": s.BodySize, "response_body_bytes": s.RespSize,
		"connections": s.Conns, "routes": s.Routes, "features": s.Features, "websocket": s.WebSocket, "churn": s.Churn,
	}
}

func (s Scenario) method() string {
	if s.Method == "" {
		return "GET"
	}
	return s.Method
}
