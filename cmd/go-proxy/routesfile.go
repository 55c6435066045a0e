package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/go-proxy/go-proxy/registry"
	"gopkg.in/yaml.v3"
)

// The routes file declares static routes: backends that cannot register
// themselves. It is YAML (JSON is YAML too, so a .json file works as well):
//
//	routes:
//	  - domains: [legacy.example.com, www.legacy.example.com]
//	    path: /                      # default /
//	    backend: http://10.2.2.40:8080
//	    priority: 10                 # default 0
//	    health: {path: /health, interval: 10s, timeout: 2s}
//	    rate_limit: {requests: 100, window: 1s}
//	    options: {timeout: 30s, compression: true}
//	    headers: {Strict-Transport-Security: max-age=31536000}
//
// The file is polled; a changed file is parsed and applied as a whole
// (registry.ApplyStatic: one atomic publish). A file that does not parse or
// does not validate is logged and the previous routes keep serving.

type routesDoc struct {
	Routes []routeDoc `yaml:"routes"`
}

type routeDoc struct {
	Domains   stringList        `yaml:"domains"`
	Path      string            `yaml:"path"`
	Backend   string            `yaml:"backend"`
	Priority  int64             `yaml:"priority"`
	Health    *healthDoc        `yaml:"health"`
	RateLimit *rateDoc          `yaml:"rate_limit"`
	Options   map[string]string `yaml:"options"`
	Headers   map[string]string `yaml:"headers"`
}

type healthDoc struct {
	Path           string   `yaml:"path"`
	Interval       duration `yaml:"interval"`
	Timeout        duration `yaml:"timeout"`
	UnhealthyAfter int      `yaml:"unhealthy_after"`
	HealthyAfter   int      `yaml:"healthy_after"`
}

type rateDoc struct {
	Requests int64    `yaml:"requests"`
	Window   duration `yaml:"window"`
}

// stringList is a YAML list of strings or one comma-separated string.
type stringList []string

func (l *stringList) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		*l = nil
		for _, s := range strings.Split(n.Value, ",") {
			if s = strings.TrimSpace(s); s != "" {
				*l = append(*l, s)
			}
		}
		return nil
	}
	var v []string
	if err := n.Decode(&v); err != nil {
		return err
	}
	*l = v
	return nil
}

// duration is a Go duration ("10s") or a number of seconds, as in the
// protocol (§1.6).
type duration time.Duration

func (d *duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: duration must be a value like 10s", n.Line)
	}
	if secs, err := strconv.ParseUint(n.Value, 10, 32); err == nil {
		*d = duration(time.Duration(secs) * time.Second)
		return nil
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil || v < 0 {
		return fmt.Errorf("line %d: invalid duration %q", n.Line, n.Value)
	}
	*d = duration(v)
	return nil
}

// parseRoutes reads a routes file. Unknown keys are errors, so that a typo
// does not silently drop a setting.
func parseRoutes(data []byte) ([]registry.StaticRoute, error) {
	var doc routesDoc
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	out := make([]registry.StaticRoute, 0, len(doc.Routes))
	for i, r := range doc.Routes {
		if len(r.Domains) == 0 {
			return nil, fmt.Errorf("route %d: no domains", i+1)
		}
		if r.Backend == "" {
			return nil, fmt.Errorf("route %d: no backend", i+1)
		}
		sr := registry.StaticRoute{
			Domains: r.Domains, Path: r.Path, Backend: r.Backend, Priority: r.Priority,
			Options: r.Options, Headers: r.Headers,
		}
		if sr.Path == "" {
			sr.Path = "/"
		}
		if h := r.Health; h != nil {
			sr.Health = &registry.StaticHealth{Path: h.Path, Interval: time.Duration(h.Interval), Timeout: time.Duration(h.Timeout),
				UnhealthyAfter: h.UnhealthyAfter, HealthyAfter: h.HealthyAfter}
			if sr.Health.Path == "" {
				sr.Health.Path = "/"
			}
		}
		if rl := r.RateLimit; rl != nil {
			sr.RateLimit = &registry.StaticRateLimit{Requests: rl.Requests, Window: time.Duration(rl.Window)}
		}
		out = append(out, sr)
	}
	return out, nil
}

// routesFile keeps the registry's static routes equal to the file.
type routesFile struct {
	path string
	reg  *registry.Registry
	log  *slog.Logger

	stamp   fileStamp // version last read
	pending bool      // the last read version did not apply; retry it
	lastErr string
	routes  []registry.StaticRoute
}

func newRoutesFile(path string, reg *registry.Registry, log *slog.Logger) *routesFile {
	return &routesFile{path: path, reg: reg, log: log}
}

// load reads and applies the file at start. A file that cannot be read or
// parsed is a start-up error; one that does not apply (a conflict with a
// restored session, say) is logged and retried while the proxy runs.
func (f *routesFile) load() error {
	st, err := stampOf(f.path)
	if err != nil {
		return fmt.Errorf("routes file: %w", err)
	}
	data, err := os.ReadFile(f.path)
	if err != nil {
		return fmt.Errorf("routes file: %w", err)
	}
	routes, err := parseRoutes(data)
	if err != nil {
		return fmt.Errorf("routes file %s: %w", f.path, err)
	}
	f.stamp, f.routes = st, routes
	f.apply()
	return nil
}

func (f *routesFile) apply() {
	if err := f.reg.ApplyStatic(f.routes); err != nil {
		f.pending = true
		if msg := err.Error(); msg != f.lastErr {
			f.lastErr = msg
			f.log.Error("routes file not applied; the previous static routes keep serving", "file", f.path, "err", err)
		}
		return
	}
	f.pending, f.lastErr = false, ""
	f.log.Info("static routes applied", "file", f.path, "routes", len(f.routes))
}

// check reloads the file if it changed, and retries a version that did
// not apply.
func (f *routesFile) check() {
	st, err := stampOf(f.path)
	if err != nil {
		if msg := err.Error(); msg != f.lastErr {
			f.lastErr = msg
			f.log.Error("routes file unreadable; the previous static routes keep serving", "file", f.path, "err", err)
		}
		return
	}
	if st.same(f.stamp) {
		if f.pending {
			f.apply()
		}
		return
	}
	data, err := os.ReadFile(f.path)
	if err != nil {
		f.log.Error("routes file unreadable; the previous static routes keep serving", "file", f.path, "err", err)
		return
	}
	// A file still being written changes under the read: wait for the
	// writer to finish (or better, for it to rename a complete file in).
	if again, err := stampOf(f.path); err != nil || !again.same(st) {
		return
	}
	f.stamp = st
	routes, err := parseRoutes(data)
	if err != nil {
		f.pending = false
		f.lastErr = err.Error()
		f.log.Error("routes file does not parse; the previous static routes keep serving", "file", f.path, "err", err)
		return
	}
	f.routes = routes
	f.apply()
}

func (f *routesFile) watch(interval time.Duration, stop <-chan struct{}) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			f.check()
		}
	}
}
