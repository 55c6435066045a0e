package main

import (
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRoutesFileHotReload runs the proxy with a routes file and changes
// the file under it: changes apply atomically, a broken file or a conflict
// keeps the previous routes (and says why), and a conflict that goes away
// is applied without another edit.
func TestRoutesFileHotReload(t *testing.T) {
	a, b := echoBackend(t, "A"), echoBackend(t, "B")
	path := filepath.Join(t.TempDir(), "routes.yml")
	writeFileAtomic(t, path, []byte(`# static routes
routes:
  - domains: [legacy.test, www.legacy.test]
    backend: `+a.URL+`
    options: {preserve_host: true, timeout: 30s}
    headers: {X-Static: "yes"}
    health: {path: /health, interval: 1s}
  - domains: old.test
    path: /api
    backend: `+a.URL+`
    priority: 5
`))
	p := startProxy(t, "-routes-file", path, "-reload-interval", "50ms")
	h := p.ls.HTTP.String()
	r := doHTTP(t, "GET", h, "www.legacy.test", "/x")
	if r.status != 200 || r.body != "A" || r.header.Get("X-Static") != "yes" || r.header.Get("X-Got-Host") != "www.legacy.test" {
		t.Fatalf("static route: %d %q %v", r.status, r.body, r.header)
	}
	if r := doHTTP(t, "GET", h, "old.test", "/api/v1"); r.status != 200 {
		t.Fatalf("second route: %d", r.status)
	}

	// An edit: one route changes backend, one goes, one comes (JSON this time).
	writeFileAtomic(t, path, []byte(`{"routes": [
  {"domains": ["legacy.test", "www.legacy.test"], "backend": "`+b.URL+`"},
  {"domains": ["new.test"], "backend": "`+a.URL+`", "rate_limit": {"requests": 100, "window": "1s"}}
]}`))
	eventually(t, 5*time.Second, "edited routes", func() bool {
		return doHTTP(t, "GET", h, "legacy.test", "/").body == "B"
	})
	if r := doHTTP(t, "GET", h, "old.test", "/api/v1"); r.status != 404 {
		t.Fatalf("removed route still serves: %d", r.status)
	}
	if r := doHTTP(t, "GET", h, "new.test", "/"); r.status != 200 || r.body != "A" {
		t.Fatalf("added route: %d", r.status)
	}
	if r := doHTTP(t, "GET", h, "legacy.test", "/"); r.header.Get("X-Static") != "" {
		t.Fatalf("header of the previous version kept: %v", r.header)
	}

	// Broken files keep the previous routes.
	for _, broken := range []string{
		"routes:\n  - domains: [x.test\n",                                                // YAML syntax
		"routes:\n  - domains: [x.test]\n    backend: " + a.URL + "\n    bakend: typo\n", // unknown key
		"routes:\n  - domains: [x.test]\n    backend: ftp://nope\n",                      // invalid backend
	} {
		before := strings.Count(p.logs.String(), "previous static routes keep serving")
		writeFileAtomic(t, path, []byte(broken))
		eventually(t, 5*time.Second, "broken file reported", func() bool {
			return strings.Count(p.logs.String(), "previous static routes keep serving") > before
		})
		if r := doHTTP(t, "GET", h, "legacy.test", "/"); r.status != 200 || r.body != "B" {
			t.Fatalf("broken file %q dropped routes: %d", broken, r.status)
		}
		if r := doHTTP(t, "GET", h, "x.test", "/"); r.status != 404 {
			t.Fatalf("broken file applied partly: %d", r.status)
		}
	}

	// A conflict with a registered service is not applied until the
	// service is gone.
	svc := registerRoute(t, p.ls.Registry.String(), "web", "taken.test", a.URL)
	writeFileAtomic(t, path, []byte("routes:\n  - {domains: [taken.test], backend: "+b.URL+", priority: 10}\n  - {domains: [legacy.test], backend: "+b.URL+"}\n"))
	eventually(t, 5*time.Second, "conflict reported", func() bool {
		return strings.Contains(p.logs.String(), "conflict with service web on taken.test/")
	})
	if r := doHTTP(t, "GET", h, "new.test", "/"); r.status != 200 {
		t.Fatalf("conflicting file dropped routes: %d", r.status)
	}
	if got := svc.say("CLIENT_SHUTDOWN"); got != "SHUTDOWN_OK" {
		t.Fatal(got)
	}
	eventually(t, 5*time.Second, "pending routes applied", func() bool {
		return doHTTP(t, "GET", h, "taken.test", "/").body == "B"
	})
	if r := doHTTP(t, "GET", h, "new.test", "/"); r.status != 404 {
		t.Fatalf("route of the previous file kept: %d", r.status)
	}
	// Now registered services conflict with the static route.
	c := dialRegistry(t, p.ls.Registry.String())
	c.sid = strings.TrimPrefix(c.say("REGISTER|web|i2|0|{}"), "ACK|")
	c.say("ROUTE_ADD|" + c.sid + "|taken.test|/|" + a.URL + "|10")
	if got := c.say("CONFIG_APPLY"); !strings.Contains(got, "conflict with service static on taken.test/") {
		t.Fatalf("registration over a static route: %s", got)
	}
}

// TestRoutesFileStartup: a file that does not parse stops the start, a
// missing one too; an empty file is no routes.
func TestRoutesFileStartup(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{"bad.yml": "routes: [", "typo.yml": "rootes: []\n"} {
		path := filepath.Join(dir, name)
		writeFileAtomic(t, path, []byte(body))
		cfg, err := parseConfig([]string{"-http-addr", "127.0.0.1:0", "-registry-addr", "127.0.0.1:0", "-admin-addr", "127.0.0.1:0", "-routes-file", path}, env(nil), io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if err := serve(t.Context(), cfg, quietLog(), nil); err == nil || !strings.Contains(err.Error(), "routes file") {
			t.Errorf("%s: serve returned %v", name, err)
		}
	}
	empty := filepath.Join(dir, "empty.yml")
	writeFileAtomic(t, empty, []byte("# nothing yet\n"))
	p := startProxy(t, "-routes-file", empty)
	if r := doHTTP(t, "GET", p.ls.HTTP.String(), "x.test", "/"); r.status != 404 {
		t.Fatalf("empty routes file: %d", r.status)
	}
}

func TestParseRoutes(t *testing.T) {
	routes, err := parseRoutes([]byte(`
routes:
  - domains: "a.test, b.test"
    backend: http://10.2.2.40:8080
    health: {path: /up, interval: 15, timeout: 2s, unhealthy_after: 3}
    options: {compression: true, retries: 2}
`))
	if err != nil {
		t.Fatal(err)
	}
	r := routes[0]
	if len(r.Domains) != 2 || r.Domains[1] != "b.test" || r.Path != "/" || r.Health.Interval != 15*time.Second ||
		r.Health.Timeout != 2*time.Second || r.Health.UnhealthyAfter != 3 || r.Options["compression"] != "true" || r.Options["retries"] != "2" {
		t.Fatalf("parsed: %+v %+v", r, r.Health)
	}
	for _, bad := range []string{"routes:\n  - backend: http://x\n", "routes:\n  - domains: [a.test]\n", "routes:\n  - {domains: [a.test], backend: http://x, health: {interval: soon}}\n"} {
		if _, err := parseRoutes([]byte(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}
