package router

import (
	"strings"
	"testing"
)

// rt builds a route whose Member is a name, for readable tests.
func rt(id uint64, member, path string, prio int32, domains ...string) *Route[string] {
	return &Route[string]{ID: id, Domains: domains, Path: path, Priority: prio, Member: member}
}

func tableOf(routes ...*Route[string]) *Table[string] {
	t := NewTable[string]()
	t.Replace(routes)
	return t
}

// poolName names a pool by its members, "<nil>" for a 404.
func poolName(p *Pool[string]) string {
	if p == nil {
		return "<nil>"
	}
	return strings.Join(p.Members, "+")
}

func lookup[M any](s *Snapshot[M], host, path string) *Pool[M] {
	return s.Lookup([]byte(host), []byte(path))
}

type lookupCase struct {
	host, path string
	want       string // pool members joined by "+", "<nil>" for 404
}

func runLookups(t *testing.T, s *Snapshot[string], cases []lookupCase) {
	t.Helper()
	for _, c := range cases {
		if got := poolName(lookup(s, c.host, c.path)); got != c.want {
			t.Errorf("Lookup(%q, %q) = %s, want %s", c.host, c.path, got, c.want)
		}
	}
}

func TestNormalizeHost(t *testing.T) {
	long := strings.Repeat("a", MaxHostLen)
	cases := []struct {
		in   string
		want string
		ok   bool
	}{
		{"example.com", "example.com", true},
		{"Example.COM", "example.com", true},
		{"example.com:8080", "example.com", true},
		{"A.M.TEST:8080", "a.m.test", true},
		{"example.com.", "example.com", true},
		{"example.com.:443", "example.com", true},
		{"example.com..", "example.com.", true}, // only one trailing dot
		{"[::1]:80", "[::1]", true},
		{"[::1]", "[::1]", true},
		{"[FE80::1]:443", "[fe80::1]", true},
		{"[::1", "", false},
		{"", "", false},
		{":80", "", false},
		{".", "", false},
		{long, long, true},
		{long + ".", long, true},
		{long + "a", "", false},
		{long + "a:80", "", false},
	}
	for _, c := range cases {
		got, ok := NormalizeHost(nil, []byte(c.in))
		if ok != c.ok || (ok && string(got) != c.want) {
			t.Errorf("NormalizeHost(%q) = %q, %v; want %q, %v", c.in, got, ok, c.want, c.ok)
		}
	}
	// It appends to dst.
	got, ok := NormalizeHost([]byte("x|"), []byte("A.B:1"))
	if !ok || string(got) != "x|a.b" {
		t.Errorf("NormalizeHost appending = %q, %v", got, ok)
	}
}

func TestPathMatches(t *testing.T) {
	cases := []struct {
		route, req string
		want       bool
	}{
		{"/api", "/api", true},
		{"/api", "/api/", true},
		{"/api", "/api/x", true},
		{"/api", "/apix", false},
		{"/api", "/ap", false},
		{"/api", "/", false},
		{"/api", "", false},
		{"/api/", "/api/", true},
		{"/api/", "/api/x", true},
		{"/api/", "/api", false},
		{"/api/", "/apix", false},
		{"/", "/", true},
		{"/", "/anything", true},
		{"/", "/a/b/c", true},
		{"/static/", "/static/a", true},
		{"/static/", "/static", false},
		{"/v1", "/v1x", false},
		{"/v1", "/v1/x", true},
		{"/API", "/api", false}, // paths are case-sensitive
		// An empty route path must not panic; by the three rules it matches
		// the empty path and any path starting with '/'.
		{"", "", true},
		{"", "/", true},
		{"", "/x", true},
		{"", "x", false},
	}
	for _, c := range cases {
		if got := PathMatches(c.route, []byte(c.req)); got != c.want {
			t.Errorf("PathMatches(%q, %q) = %v, want %v", c.route, c.req, got, c.want)
		}
	}
}

func TestLookupWildcard(t *testing.T) {
	s := tableOf(
		rt(1, "B", "/", 0, "*.m.test"),
		rt(2, "A", "/", 0, "a.m.test"),
		rt(3, "A", "/v1", 0, "api.m.test"),
	).Load()
	runLookups(t, s, []lookupCase{
		{"a.m.test", "/", "A"},
		{"b.m.test", "/", "B"},
		{"A.M.TEST:8080", "/", "A"},
		{"B.M.Test:443", "/x", "B"},
		{"a.m.test.", "/", "A"},
		{"x.y.m.test", "/", "<nil>"},
		{"m.test", "/", "<nil>"},
		{".m.test", "/", "<nil>"},
		{"api.m.test", "/v1", "A"},
		{"api.m.test", "/v1/x", "A"},
		{"api.m.test", "/other", "B"}, // falls through to the wildcard
		{"api.m.test", "/v1x", "B"},
		{"other.test", "/", "<nil>"},
		{"", "/", "<nil>"},
	})
	// The exact match is route 3, not the wildcard.
	if p := lookup(s, "api.m.test", "/v1/x"); p == nil || p.Routes[0].ID != 3 {
		t.Errorf("api.m.test /v1/x served by %v, want route 3", p)
	}
	if p := lookup(s, "api.m.test", "/other"); p == nil || p.Routes[0].ID != 1 {
		t.Errorf("api.m.test /other served by %v, want route 1", p)
	}
}

func TestLookupWildcardOneLabel(t *testing.T) {
	s := tableOf(
		rt(1, "T", "/", 0, "*.test"),
		rt(2, "W", "/", 0, "*.w.test"),
	).Load()
	runLookups(t, s, []lookupCase{
		{"m.test", "/", "T"},
		{"w.test", "/", "T"}, // w is one label under *.test
		{"a.w.test", "/", "W"},
		{"a.b.w.test", "/", "<nil>"}, // two labels: neither wildcard
		{"test", "/", "<nil>"},
		{"test.", "/", "<nil>"},
		{"a.", "/", "<nil>"},
	})
}

func TestLookupExactBeforeWildcard(t *testing.T) {
	s := tableOf(
		rt(1, "W", "/", 100, "*.w.test"),
		rt(2, "X", "/", 0, "x.w.test"),
		rt(3, "WAPI", "/api", 100, "*.w.test"),
	).Load()
	runLookups(t, s, []lookupCase{
		{"x.w.test", "/", "X"},
		{"x.w.test", "/api/x", "X"}, // exact / matches first
		{"y.w.test", "/api/x", "WAPI"},
		{"y.w.test", "/apix", "W"},
	})
}

func TestLookupPriority(t *testing.T) {
	s := tableOf(
		rt(1, "A", "/", 20, "pr.test"),
		rt(2, "B", "/api", 10, "pr.test"),
		rt(3, "C", "/", 0, "lp.test"),
		rt(4, "D", "/api", 0, "lp.test"),
		rt(5, "E", "/api/v1", 0, "lp.test"),
		rt(6, "N", "/neg", -5, "neg.test"),
		rt(7, "Z", "/", 0, "neg.test"),
	).Load()
	runLookups(t, s, []lookupCase{
		{"pr.test", "/api/x", "A"},
		{"pr.test", "/api", "A"},
		{"pr.test", "/", "A"},
		{"lp.test", "/api/x", "D"},
		{"lp.test", "/api/v1/x", "E"},
		{"lp.test", "/api/v2", "D"},
		{"lp.test", "/x", "C"},
		{"neg.test", "/neg", "Z"}, // priority beats path length
	})
}

func TestLookupSegments(t *testing.T) {
	s := tableOf(
		rt(1, "A", "/", 0, "sb2.test"),
		rt(2, "B", "/api", 0, "sb2.test"),
		rt(3, "C", "/static/", 0, "ts.test"),
	).Load()
	runLookups(t, s, []lookupCase{
		{"sb2.test", "/api", "B"},
		{"sb2.test", "/api/", "B"},
		{"sb2.test", "/api/x", "B"},
		{"sb2.test", "/apix", "A"},
		{"sb2.test", "/", "A"},
		{"ts.test", "/static/a", "C"},
		{"ts.test", "/static/", "C"},
		{"ts.test", "/static", "<nil>"},
		{"ts.test", "/", "<nil>"},
	})
}

func TestLookupEmptyRoutePath(t *testing.T) {
	s := tableOf(rt(1, "E", "", 0, "e.test"), rt(2, "A", "/api", 0, "e.test")).Load()
	runLookups(t, s, []lookupCase{
		{"e.test", "/", "E"},
		{"e.test", "/x/y", "E"},
		{"e.test", "/api/x", "A"},
	})
}

func TestLookupPools(t *testing.T) {
	s := tableOf(
		rt(7, "m7", "/", 0, "pool.test"),
		rt(3, "m3", "/", 0, "pool.test"),
		rt(5, "m5", "/", 1, "pool.test"),  // other priority: its own pool
		rt(9, "m9", "/x", 0, "pool.test"), // other path: its own pool
	).Load()
	p := lookup(s, "pool.test", "/a")
	if p == nil {
		t.Fatal("no pool")
	}
	if p.Path != "/" || p.Priority != 1 || poolName(p) != "m5" {
		t.Fatalf("highest priority pool = %s (%q, %d)", poolName(p), p.Path, p.Priority)
	}
	h, _ := s.exact.get("pool.test")
	if len(h.pools) != 3 {
		t.Fatalf("%d pools, want 3", len(h.pools))
	}
	var shared *Pool[string]
	for _, p := range h.pools {
		if p.Path == "/" && p.Priority == 0 {
			shared = p
		}
	}
	if shared == nil {
		t.Fatal("no pool for / priority 0")
	}
	if len(shared.Routes) != 2 || shared.Routes[0].ID != 3 || shared.Routes[1].ID != 7 {
		t.Fatalf("pool routes not sorted by ID: %v", shared.Routes)
	}
	if poolName(shared) != "m3+m7" {
		t.Fatalf("pool members = %s, want m3+m7", poolName(shared))
	}
}

func TestLookupIPv6(t *testing.T) {
	s := tableOf(rt(1, "L", "/", 0, "[::1]")).Load()
	runLookups(t, s, []lookupCase{
		{"[::1]:80", "/", "L"},
		{"[::1]", "/x", "L"},
		{"[::2]:80", "/", "<nil>"},
		{"[::1", "/", "<nil>"},
	})
}

func TestLookupLongHost(t *testing.T) {
	long := strings.Repeat("a", 300) + ".test"
	s := tableOf(rt(1, "W", "/", 0, "*.test")).Load()
	if p := lookup(s, long, "/"); p != nil {
		t.Fatalf("over-long host matched %s", poolName(p))
	}
}

func TestLookupZeroAlloc(t *testing.T) {
	tbl := tableOf(
		rt(1, "B", "/", 0, "*.m.test"),
		rt(2, "A", "/", 0, "a.m.test"),
		rt(3, "A", "/v1", 0, "api.m.test"),
		rt(4, "S", "/static/", 0, "ts.test"),
		rt(5, "L", "/", 0, "[::1]"),
	)
	for i := 0; i < 2000; i++ { // enough hosts for a multi-level trie
		tbl.Update(func(tx *Txn[string]) {
			tx.Add(rt(uint64(100+i), "F", "/", 0, hkey(i)))
		})
	}
	s := tbl.Load()
	cases := []struct {
		name, host, path string
		hit              bool
	}{
		{"exact", "a.m.test", "/", true},
		{"exact-port-upper", "A.M.TEST:8080", "/x", true},
		{"exact-fallthrough", "api.m.test", "/other", true},
		{"wildcard", "b.m.test", "/x/y", true},
		{"ipv6", "[::1]:80", "/", true},
		{"many", hkey(1234), "/", true},
		{"miss-host", "nope.test", "/", false},
		{"miss-path", "ts.test", "/static", false},
		{"miss-deep", "x.y.m.test", "/", false},
		{"miss-invalid", "[::1", "/", false},
	}
	for _, c := range cases {
		host, path := []byte(c.host), []byte(c.path)
		if got := s.Lookup(host, path) != nil; got != c.hit {
			t.Fatalf("%s: hit = %v, want %v", c.name, got, c.hit)
		}
		if n := testing.AllocsPerRun(1000, func() { s.Lookup(host, path) }); n != 0 {
			t.Errorf("%s: Lookup allocates %v times per call", c.name, n)
		}
	}
	host, path := []byte("a.m.test"), []byte("/")
	if n := testing.AllocsPerRun(1000, func() { tbl.Load().Lookup(host, path) }); n != 0 {
		t.Errorf("Load+Lookup allocates %v times per call", n)
	}
}
