package registry

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestStaticRoutesServe: static routes serve through the real data plane
// with their options, response headers and active health check applied.
func TestStaticRoutesServe(t *testing.T) {
	e := startEnv(t)
	a := newBackend(t, "A")
	err := e.registry.ApplyStatic([]StaticRoute{{
		Domains: []string{"Legacy.Test.", "www.legacy.test"}, Path: "/", Backend: a.URL, Priority: 5,
		Options: map[string]string{"preserve_host": "true"},
		Headers: map[string]string{"x-static": "yes"},
		Health:  &StaticHealth{Path: "/health", Interval: time.Second, Timeout: time.Second},
	}})
	if err != nil {
		t.Fatal(err)
	}
	r := e.mustGet("legacy.test", "/page", 200, "A")
	if r.header.Get("X-Static") != "yes" || r.header.Get("X-Got-Host") != "legacy.test" {
		t.Fatalf("options/headers not applied: %v", r.header)
	}
	e.mustGet("www.legacy.test", "/", 200, "A")
	eventually(t, 5*time.Second, "health probes", func() bool { return a.probes.Load() > 0 })
	if got := e.registry.StaticRoutes(); len(got) != 2 || !strings.HasPrefix(got[0], "legacy.test/ -> ") {
		t.Fatalf("StaticRoutes: %v", got)
	}
}

// TestStaticRoutesReapply: a new set replaces the old one in one publish;
// unchanged routes keep their id and member, removed ones stop serving,
// settings follow the file.
func TestStaticRoutesReapply(t *testing.T) {
	e := startEnv(t)
	a, b := newBackend(t, "A"), newBackend(t, "B")
	keep := StaticRoute{Domains: []string{"keep.test"}, Path: "/", Backend: a.URL, Headers: map[string]string{"X-V": "1"}}
	gone := StaticRoute{Domains: []string{"gone.test"}, Path: "/", Backend: a.URL}
	move := StaticRoute{Domains: []string{"move.test"}, Path: "/", Backend: a.URL}
	if err := e.registry.ApplyStatic([]StaticRoute{keep, gone, move}); err != nil {
		t.Fatal(err)
	}
	memberOf := func(domain string) any {
		e.registry.mu.Lock()
		defer e.registry.mu.Unlock()
		for _, rt := range e.registry.static.routes {
			if rt.spec.Domains[0] == domain {
				return rt.member
			}
		}
		return nil
	}
	before := memberOf("keep.test")
	keep.Headers = map[string]string{"X-V": "2"}
	move.Backend = b.URL
	if err := e.registry.ApplyStatic([]StaticRoute{keep, move}); err != nil {
		t.Fatal(err)
	}
	if memberOf("keep.test") != before {
		t.Fatal("unchanged route got a new member")
	}
	if r := e.mustGet("keep.test", "/", 200, "A"); r.header.Get("X-V") != "2" {
		t.Fatalf("header not updated: %v", r.header)
	}
	e.mustGet("gone.test", "/", 404, "")
	e.mustGet("move.test", "/", 200, "B")
	if err := e.registry.ApplyStatic(nil); err != nil {
		t.Fatal(err)
	}
	e.mustGet("keep.test", "/", 404, "")
}

// TestStaticRoutesInvalidKeepsPrevious: a bad set is rejected whole with a
// message naming the file's route, and the previous routes keep serving.
func TestStaticRoutesInvalidKeepsPrevious(t *testing.T) {
	e := startEnv(t)
	a := newBackend(t, "A")
	if err := e.registry.ApplyStatic([]StaticRoute{{Domains: []string{"ok.test"}, Path: "/", Backend: a.URL}}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		routes []StaticRoute
		want   string
	}{
		{[]StaticRoute{{Domains: []string{"x.test"}, Path: "/", Backend: "ftp://x"}}, "route 1 (x.test/): invalid backend url format"},
		{[]StaticRoute{{Domains: []string{"bad_domain"}, Path: "/", Backend: a.URL}}, "invalid domain: bad_domain"},
		{[]StaticRoute{{Domains: []string{"x.test"}, Path: "nope", Backend: a.URL}}, "path must start with /"},
		{[]StaticRoute{{Domains: []string{"x.test"}, Path: "/", Backend: a.URL, Options: map[string]string{"timeout": "soon"}}}, "invalid duration"},
		{[]StaticRoute{{Domains: []string{"x.test"}, Path: "/", Backend: a.URL, Headers: map[string]string{"Connection": "x"}}}, "header not allowed"},
		{[]StaticRoute{{Domains: []string{"x.test"}, Path: "/", Backend: a.URL, Health: &StaticHealth{Path: "/h", Interval: 10 * time.Millisecond}}}, "invalid duration"},
		{[]StaticRoute{{Domains: []string{"x.test"}, Path: "/", Backend: a.URL}, {Domains: []string{"x.test"}, Path: "/", Backend: a.URL}}, "route 2 (x.test/): duplicate of route 1"},
	} {
		err := e.registry.ApplyStatic(tc.routes)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want %q", tc.routes, err, tc.want)
		}
		e.mustGet("ok.test", "/", 200, "A")
		e.mustGet("x.test", "/", 404, "")
	}
}

// TestStaticRoutesConflictRules: §4.17 conflicts hold in both directions,
// including for a registered service that calls itself "static".
func TestStaticRoutesConflictRules(t *testing.T) {
	e := startEnv(t)
	a, b := newBackend(t, "A"), newBackend(t, "B")
	web := e.reg("i1", "web")
	web.add("shop.test", "/", b.URL)
	web.apply()
	err := e.registry.ApplyStatic([]StaticRoute{
		{Domains: []string{"other.test"}, Path: "/", Backend: a.URL},
		{Domains: []string{"shop.test"}, Path: "/", Backend: a.URL, Priority: 10},
	})
	if err == nil || !strings.Contains(err.Error(), "route 2 (shop.test/): conflict with service web on shop.test/") {
		t.Fatalf("conflict not reported: %v", err)
	}
	e.mustGet("other.test", "/", 404, "") // nothing of the rejected set applied
	e.mustGet("shop.test", "/", 200, "B")
	// A different priority is never a conflict.
	if err := e.registry.ApplyStatic([]StaticRoute{{Domains: []string{"shop.test"}, Path: "/", Backend: a.URL, Priority: 1}, {Domains: []string{"legacy.test"}, Path: "/", Backend: a.URL}}); err != nil {
		t.Fatal(err)
	}
	// Registered services conflict with static routes...
	web.add("legacy.test", "/", b.URL, 0)
	if got := web.do("CONFIG_APPLY"); !strings.HasPrefix(got, "ERROR|route r") || !strings.HasSuffix(got, ": conflict with service static on legacy.test/") {
		t.Fatalf("apply over a static route: %s", got)
	}
	web.expect("CONFIG_ROLLBACK", "OK")
	// ...even one named "static": it never joins the static pool.
	imp := e.reg("i9", StaticService)
	imp.add("legacy.test", "/", b.URL, 0)
	if got := imp.do("CONFIG_APPLY"); !strings.Contains(got, "conflict with service static on legacy.test/") {
		t.Fatalf("service named static pooled with static routes: %s", got)
	}
	e.mustGet("legacy.test", "/", 200, "A")
}

// TestStaticSessionIsReserved: no connection can resume the static
// session, it never expires, and it is not written to the state file.
func TestStaticSessionIsReserved(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	e := startEnv(t, func(c *Config) { c.Grace = time.Second; c.Store = NewFileStore(path, quietLogger()) })
	a := newBackend(t, "A")
	if err := e.registry.ApplyStatic([]StaticRoute{{Domains: []string{"static.test"}, Path: "/", Backend: a.URL}}); err != nil {
		t.Fatal(err)
	}
	c := e.dial()
	c.expect("RECONNECT|"+staticSessionID, "REREGISTER")
	c.expect("ROUTE_LIST|"+staticSessionID, "ERROR|no session")
	svc := e.reg("i1", "web")
	svc.add("web.test", "/", a.URL)
	svc.apply()
	time.Sleep(2 * time.Second) // past the grace period
	e.mustGet("static.test", "/", 200, "A")
	e.stop()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), "static.test") || !strings.Contains(string(data), "web.test") {
		t.Fatalf("state file: %s", data)
	}
}
