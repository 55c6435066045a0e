package router

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// describe renders a snapshot's hosts and pools in a canonical form.
func describe(t *testing.T, s *Snapshot[string]) []string {
	t.Helper()
	var out []string
	emit := func(kind string) func(string, *hostEntry[string]) {
		return func(key string, h *hostEntry[string]) {
			if !slices.IsSortedFunc(h.routes, func(a, b *Route[string]) int { return int(a.ID) - int(b.ID) }) {
				t.Errorf("%s %s: routes not sorted by ID", kind, key)
			}
			var b strings.Builder
			fmt.Fprintf(&b, "%s %s:", kind, key)
			for _, p := range h.pools {
				ids := make([]uint64, len(p.Routes))
				for i, r := range p.Routes {
					ids[i] = r.ID
				}
				fmt.Fprintf(&b, " [%s p%d ids=%v members=%v]", p.Path, p.Priority, ids, p.Members)
			}
			out = append(out, b.String())
		}
	}
	s.exact.each(emit("exact"))
	s.wildcard.each(emit("wildcard"))
	sort.Strings(out)
	return out
}

func eachDump(s *Snapshot[string]) []string {
	var out []string
	s.Each(func(d string, r *Route[string]) {
		out = append(out, fmt.Sprintf("%s %d %s %d %s", d, r.ID, r.Path, r.Priority, r.Member))
	})
	sort.Strings(out)
	return out
}

func TestTableEmpty(t *testing.T) {
	tbl := NewTable[string]()
	s := tbl.Load()
	if s == nil {
		t.Fatal("Load returned nil")
	}
	if s.Routes() != 0 || s.Hosts() != 0 || s.Version() != 0 {
		t.Fatalf("empty table: routes=%d hosts=%d version=%d", s.Routes(), s.Hosts(), s.Version())
	}
	if p := lookup(s, "a.test", "/"); p != nil {
		t.Fatal("empty table matched")
	}
	s.Each(func(string, *Route[string]) { t.Fatal("Each on empty table called fn") })
}

func TestUpdateAdd(t *testing.T) {
	tbl := NewTable[string]()
	s := tbl.Update(func(tx *Txn[string]) {
		tx.Add(rt(1, "A", "/", 0, "a.test"))
		tx.Add(rt(2, "B", "/api", 0, "a.test"))
		tx.Add(rt(3, "W", "/", 0, "*.w.test"))
	})
	if s != tbl.Load() {
		t.Fatal("Update did not return the published snapshot")
	}
	if s.Routes() != 3 || s.Hosts() != 2 || s.Version() != 1 {
		t.Fatalf("routes=%d hosts=%d version=%d; want 3, 2, 1", s.Routes(), s.Hosts(), s.Version())
	}
	runLookups(t, s, []lookupCase{
		{"a.test", "/", "A"},
		{"a.test", "/api/v", "B"},
		{"x.w.test", "/", "W"},
		{"b.test", "/", "<nil>"},
	})
	// A second update adds to an existing host.
	s2 := tbl.Update(func(tx *Txn[string]) {
		tx.Add(rt(4, "A2", "/", 0, "a.test"))
	})
	if s2.Routes() != 4 || s2.Hosts() != 2 || s2.Version() != 2 {
		t.Fatalf("routes=%d hosts=%d version=%d; want 4, 2, 2", s2.Routes(), s2.Hosts(), s2.Version())
	}
	runLookups(t, s2, []lookupCase{{"a.test", "/", "A+A2"}})
	runLookups(t, s, []lookupCase{{"a.test", "/", "A"}}) // old snapshot unchanged
}

func TestUpdateRemove(t *testing.T) {
	r1 := rt(1, "A", "/", 0, "a.test")
	r2 := rt(2, "A2", "/", 0, "a.test")
	r3 := rt(3, "W", "/", 0, "*.w.test")
	r4 := rt(4, "B", "/", 0, "b.test")
	tbl := tableOf(r1, r2, r3, r4)
	before := tbl.Load()

	s := tbl.Update(func(tx *Txn[string]) { tx.Remove(r1) })
	if s.Routes() != 3 || s.Hosts() != 3 {
		t.Fatalf("routes=%d hosts=%d; want 3, 3", s.Routes(), s.Hosts())
	}
	runLookups(t, s, []lookupCase{{"a.test", "/", "A2"}})

	s = tbl.Update(func(tx *Txn[string]) {
		tx.Remove(r2)
		tx.Remove(r3)
	})
	if s.Routes() != 1 || s.Hosts() != 1 {
		t.Fatalf("routes=%d hosts=%d; want 1, 1", s.Routes(), s.Hosts())
	}
	runLookups(t, s, []lookupCase{
		{"a.test", "/", "<nil>"},
		{"x.w.test", "/", "<nil>"},
		{"b.test", "/", "B"},
	})
	if _, ok := s.exact.get("a.test"); ok {
		t.Fatal("host with no routes left in the exact trie")
	}
	if _, ok := s.wildcard.get("w.test"); ok {
		t.Fatal("host with no routes left in the wildcard trie")
	}

	// Removing a route that is not in the table changes nothing but the version.
	s = tbl.Update(func(tx *Txn[string]) { tx.Remove(rt(99, "X", "/", 0, "b.test", "c.test")) })
	if s.Routes() != 1 || s.Hosts() != 1 || s.Version() != 4 {
		t.Fatalf("routes=%d hosts=%d version=%d; want 1, 1, 4", s.Routes(), s.Hosts(), s.Version())
	}
	runLookups(t, s, []lookupCase{{"b.test", "/", "B"}, {"c.test", "/", "<nil>"}})

	s = tbl.Update(func(tx *Txn[string]) { tx.Remove(r4) })
	if s.Routes() != 0 || s.Hosts() != 0 || s.exact.root != nil || s.wildcard.root != nil {
		t.Fatalf("emptied table: routes=%d hosts=%d", s.Routes(), s.Hosts())
	}
	// The first snapshot still serves everything.
	runLookups(t, before, []lookupCase{
		{"a.test", "/", "A+A2"},
		{"x.w.test", "/", "W"},
		{"b.test", "/", "B"},
	})
}

func TestUpdateReplaceInPlace(t *testing.T) {
	old := rt(2, "old", "/", 0, "a.test")
	tbl := tableOf(rt(1, "A", "/", 0, "a.test"), old, rt(3, "C", "/", 0, "a.test"))
	before := tbl.Load()
	poolBefore := lookup(before, "a.test", "/")

	s := tbl.Update(func(tx *Txn[string]) {
		tx.Remove(old)
		tx.Add(rt(2, "new", "/", 0, "a.test"))
	})
	if s.Routes() != 3 || s.Hosts() != 1 {
		t.Fatalf("routes=%d hosts=%d; want 3, 1", s.Routes(), s.Hosts())
	}
	p := lookup(s, "a.test", "/")
	if poolName(p) != "A+new+C" {
		t.Fatalf("pool = %s, want A+new+C (ID order kept)", poolName(p))
	}
	if p == poolBefore {
		t.Fatal("a changed pool must be a new object")
	}
	if poolName(poolBefore) != "A+old+C" || poolName(lookup(before, "a.test", "/")) != "A+old+C" {
		t.Fatal("old snapshot changed")
	}

	// Add before Remove in the same transaction is the same replacement.
	s = tbl.Update(func(tx *Txn[string]) {
		tx.Add(rt(2, "newer", "/", 0, "a.test"))
		tx.Remove(rt(2, "new", "/", 0, "a.test"))
	})
	if s.Routes() != 3 || poolName(lookup(s, "a.test", "/")) != "A+newer+C" {
		t.Fatalf("routes=%d pool=%s", s.Routes(), poolName(lookup(s, "a.test", "/")))
	}
}

func TestUpdateReplaceMovesRoute(t *testing.T) {
	old := rt(1, "A", "/", 0, "a.test", "*.w.test")
	tbl := tableOf(old, rt(2, "B", "/", 0, "b.test"))
	s := tbl.Update(func(tx *Txn[string]) {
		tx.Remove(old)
		tx.Add(rt(1, "A'", "/api", 3, "b.test", "c.test"))
	})
	if s.Routes() != 2 || s.Hosts() != 2 {
		t.Fatalf("routes=%d hosts=%d; want 2, 2", s.Routes(), s.Hosts())
	}
	runLookups(t, s, []lookupCase{
		{"a.test", "/", "<nil>"},
		{"x.w.test", "/", "<nil>"},
		{"b.test", "/api", "A'"},
		{"b.test", "/", "B"},
		{"c.test", "/api/x", "A'"},
		{"c.test", "/", "<nil>"},
	})
}

func TestUpdateMultiDomain(t *testing.T) {
	multi := rt(1, "M", "/", 0, "a.test", "b.test", "*.w.test")
	tbl := NewTable[string]()
	s := tbl.Update(func(tx *Txn[string]) {
		tx.Add(multi)
		tx.Add(rt(2, "B", "/b", 0, "b.test"))
	})
	if s.Routes() != 2 || s.Hosts() != 3 {
		t.Fatalf("routes=%d hosts=%d; want 2, 3", s.Routes(), s.Hosts())
	}
	runLookups(t, s, []lookupCase{
		{"a.test", "/", "M"},
		{"b.test", "/", "M"},
		{"b.test", "/b", "B"},
		{"q.w.test", "/", "M"},
	})
	want := []string{
		"*.w.test 1 / 0 M",
		"a.test 1 / 0 M",
		"b.test 1 / 0 M",
		"b.test 2 /b 0 B",
	}
	if got := eachDump(s); !slices.Equal(got, want) {
		t.Fatalf("Each = %q, want %q", got, want)
	}
	// The same *Route is shared by every domain.
	pa, pb := lookup(s, "a.test", "/"), lookup(s, "b.test", "/")
	if pa.Routes[0] != multi || pb.Routes[0] != multi {
		t.Fatal("multi-domain route is not shared between its domains")
	}

	s = tbl.Update(func(tx *Txn[string]) { tx.Remove(multi) })
	if s.Routes() != 1 || s.Hosts() != 1 {
		t.Fatalf("after remove: routes=%d hosts=%d; want 1, 1", s.Routes(), s.Hosts())
	}
	runLookups(t, s, []lookupCase{
		{"a.test", "/", "<nil>"},
		{"b.test", "/", "<nil>"},
		{"b.test", "/b", "B"},
		{"q.w.test", "/", "<nil>"},
	})
}

func TestVersionIncrements(t *testing.T) {
	tbl := NewTable[string]()
	want := uint64(0)
	check := func(s *Snapshot[string]) {
		t.Helper()
		want++
		if s.Version() != want || tbl.Load().Version() != want {
			t.Fatalf("version = %d (loaded %d), want %d", s.Version(), tbl.Load().Version(), want)
		}
	}
	check(tbl.Update(func(tx *Txn[string]) { tx.Add(rt(1, "A", "/", 0, "a.test")) }))
	check(tbl.Update(func(tx *Txn[string]) {})) // empty transactions still publish
	check(tbl.Replace([]*Route[string]{rt(2, "B", "/", 0, "b.test")}))
	check(tbl.Update(func(tx *Txn[string]) { tx.Add(rt(3, "C", "/", 0, "c.test")) }))
	check(tbl.Replace(nil))
}

func TestReplace(t *testing.T) {
	tbl := NewTable[string]()
	s1 := tbl.Update(func(tx *Txn[string]) {
		tx.Add(rt(1, "A", "/", 0, "a.test"))
		tx.Add(rt(2, "W", "/", 0, "*.w.test"))
	})
	routes := []*Route[string]{
		rt(10, "X", "/", 0, "x.test", "*.x.test"),
		rt(12, "Y2", "/", 0, "y.test"),
		rt(11, "Y1", "/", 0, "y.test"),
	}
	s2 := tbl.Replace(routes)
	if s2 != tbl.Load() {
		t.Fatal("Replace did not return the published snapshot")
	}
	if s2.Routes() != 3 || s2.Hosts() != 3 || s2.Version() != 2 {
		t.Fatalf("routes=%d hosts=%d version=%d; want 3, 3, 2", s2.Routes(), s2.Hosts(), s2.Version())
	}
	if routes[1].ID != 12 || routes[2].ID != 11 {
		t.Fatal("Replace reordered the caller's slice")
	}
	runLookups(t, s2, []lookupCase{
		{"a.test", "/", "<nil>"},
		{"q.w.test", "/", "<nil>"},
		{"x.test", "/", "X"},
		{"q.x.test", "/", "X"},
		{"y.test", "/", "Y1+Y2"},
	})
	runLookups(t, s1, []lookupCase{
		{"a.test", "/", "A"},
		{"q.w.test", "/", "W"},
		{"x.test", "/", "<nil>"},
	})
	// Updates continue from a replaced table.
	s3 := tbl.Update(func(tx *Txn[string]) { tx.Remove(routes[0]) })
	if s3.Routes() != 2 || s3.Hosts() != 1 {
		t.Fatalf("routes=%d hosts=%d; want 2, 1", s3.Routes(), s3.Hosts())
	}
	s4 := tbl.Replace(nil)
	if s4.Routes() != 0 || s4.Hosts() != 0 || lookup(s4, "y.test", "/") != nil {
		t.Fatal("Replace(nil) did not empty the table")
	}
}

// TestUpdateMatchesReplace applies random transactions with Update and
// checks that every snapshot equals one built from scratch with Replace.
func TestUpdateMatchesReplace(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	domains := []string{"a.test", "b.test", "c.test", "*.test", "*.w.test", "x.w.test", "d.test", "*.d.test"}
	paths := []string{"/", "/api", "/api/", "/api/v1", "/static/", "/s"}
	randRoute := func(id uint64, gen int) *Route[string] {
		n := 1 + rng.IntN(3)
		var ds []string
		for _, i := range rng.Perm(len(domains))[:n] {
			ds = append(ds, domains[i])
		}
		return rt(id, fmt.Sprintf("m%d.%d", id, gen), paths[rng.IntN(len(paths))], int32(rng.IntN(3)), ds...)
	}
	probeHosts := []string{"a.test", "b.test", "c.test", "z.test", "w.test", "x.w.test", "y.w.test", "d.test", "q.d.test", "q.q.d.test"}
	probePaths := []string{"/", "/api", "/api/", "/api/v1/x", "/apix", "/static", "/static/a", "/s", "/s/x", "/sx"}

	model := map[uint64]*Route[string]{}
	tbl := NewTable[string]()
	nextID := uint64(1)
	for step := 0; step < 400; step++ {
		touched := map[uint64]bool{}
		s := tbl.Update(func(tx *Txn[string]) {
			for op := rng.IntN(4); op >= 0; op-- {
				var ids []uint64
				for id := range model {
					if !touched[id] {
						ids = append(ids, id)
					}
				}
				slices.Sort(ids)
				switch k := rng.IntN(3); {
				case k == 0 || len(ids) == 0 || len(model) < 5: // add
					r := randRoute(nextID, step)
					nextID++
					touched[r.ID] = true
					model[r.ID] = r
					tx.Add(r)
				case k == 1: // remove
					id := ids[rng.IntN(len(ids))]
					touched[id] = true
					tx.Remove(model[id])
					delete(model, id)
				default: // replace in place, maybe moving domains
					id := ids[rng.IntN(len(ids))]
					touched[id] = true
					r := randRoute(id, step)
					tx.Remove(model[id])
					tx.Add(r)
					model[id] = r
				}
			}
		})
		var all []*Route[string]
		for _, r := range model {
			all = append(all, r)
		}
		ref := NewTable[string]().Replace(all)
		if s.Routes() != len(model) || s.Routes() != ref.Routes() {
			t.Fatalf("step %d: routes = %d, model %d, replace %d", step, s.Routes(), len(model), ref.Routes())
		}
		if s.Hosts() != ref.Hosts() {
			t.Fatalf("step %d: hosts = %d, replace %d", step, s.Hosts(), ref.Hosts())
		}
		if got, want := describe(t, s), describe(t, ref); !slices.Equal(got, want) {
			t.Fatalf("step %d: snapshot differs from Replace:\n got %q\nwant %q", step, got, want)
		}
		if got, want := eachDump(s), eachDump(ref); !slices.Equal(got, want) {
			t.Fatalf("step %d: Each differs from Replace", step)
		}
		for _, h := range probeHosts {
			for _, p := range probePaths {
				a, b := lookup(s, h, p), lookup(ref, h, p)
				if (a == nil) != (b == nil) || (a != nil && !slices.Equal(a.Members, b.Members)) {
					t.Fatalf("step %d: Lookup(%q, %q) = %s, replace %s", step, h, p, poolName(a), poolName(b))
				}
			}
		}
	}
}

// raceLayout is one consistent configuration of writer group g. Even and
// odd generations use different route sets: some IDs are replaced in place,
// others removed and re-added under new IDs, and one path exists only in even
// generations, another only in odd ones. Every route carries its generation
// as its Member.
func raceLayout(g, gen int) []*Route[int] {
	pre := fmt.Sprintf("g%d-", g)
	hosts := []string{pre + "r1.race.test", pre + "r2.race.test", pre + "r3.race.test", "*." + pre + "rw.race.test"}
	base := uint64(g) * 10000
	odd := gen%2 == 1
	var rs []*Route[int]
	for i, h := range hosts {
		id := base + uint64(i+1)
		if odd && i%2 == 1 {
			id += 1000
		}
		rs = append(rs, &Route[int]{ID: id, Domains: []string{h}, Path: "/", Member: gen})
	}
	mate := base + 50
	if odd {
		mate += 1000
	}
	rs = append(rs,
		&Route[int]{ID: mate, Domains: []string{hosts[0]}, Path: "/", Member: gen},               // pools with route 1
		&Route[int]{ID: base + 60, Domains: hosts[1:], Path: "/multi", Priority: 5, Member: gen}, // multi-domain
	)
	if odd {
		rs = append(rs, &Route[int]{ID: base + 1070, Domains: []string{hosts[2]}, Path: "/odd", Priority: 1, Member: gen})
	} else {
		rs = append(rs, &Route[int]{ID: base + 70, Domains: []string{hosts[2]}, Path: "/even", Priority: 1, Member: gen})
	}
	return rs
}

// TestConcurrentPublishConsistent runs two writers, each flipping its own
// group of hosts between two configurations, while readers check that every
// snapshot they load serves one generation per group across all of the
// group's hosts (never a half-published transaction), that generations never
// go backwards, and that no writer's update is lost.
func TestConcurrentPublishConsistent(t *testing.T) {
	type probe struct {
		host, path        string
		members           int
		evenPath, oddPath string // path of the pool expected to serve
	}
	probes := []probe{ // %[1]s is the group's host prefix
		{"%[1]sr1.race.test", "/x", 2, "/", "/"},
		{"%[1]sR2.race.test:80", "/", 1, "/", "/"},
		{"%[1]sr3.race.test", "/", 1, "/", "/"},
		{"x.%[1]srw.race.test", "/", 1, "/", "/"},
		{"%[1]sr2.race.test", "/multi/a", 1, "/multi", "/multi"},
		{"%[1]sr3.race.test", "/multi", 1, "/multi", "/multi"},
		{"y.%[1]srw.race.test", "/multi", 1, "/multi", "/multi"},
		{"%[1]sr3.race.test", "/even/x", 1, "/even", "/"},
		{"%[1]sr3.race.test", "/odd", 1, "/", "/odd"},
	}
	const groups = 2
	type bprobe struct {
		host, path        []byte
		members           int
		evenPath, oddPath string
	}
	var gprobes [groups][]bprobe
	for g := range groups {
		for _, p := range probes {
			host := fmt.Sprintf(p.host, fmt.Sprintf("g%d-", g))
			gprobes[g] = append(gprobes[g], bprobe{[]byte(host), []byte(p.path), p.members, p.evenPath, p.oddPath})
		}
	}
	const wantRoutes, wantHosts = 7 * groups, 4 * groups

	tbl := NewTable[int]()
	var initial []*Route[int]
	for g := range groups {
		initial = append(initial, raceLayout(g, 0)...)
	}
	tbl.Replace(initial)

	var (
		done      atomic.Bool
		failed    atomic.Bool
		loads     atomic.Int64
		publishes atomic.Int64
		wg        sync.WaitGroup
		lastGen   [groups]int
	)
	deadline := time.Now().Add(400 * time.Millisecond)
	const maxPublishesPerWriter = 10000

	fail := func(format string, args ...any) {
		if failed.CompareAndSwap(false, true) {
			t.Errorf(format, args...)
		}
		done.Store(true)
	}

	// check verifies one snapshot and returns the generation of each group.
	check := func(s *Snapshot[int]) (gens [groups]int, ok bool) {
		if s.Routes() != wantRoutes || s.Hosts() != wantHosts {
			fail("version %d: routes=%d hosts=%d; want %d, %d", s.Version(), s.Routes(), s.Hosts(), wantRoutes, wantHosts)
			return gens, false
		}
		for g := range groups {
			gen := -1
			for _, pr := range gprobes[g] {
				p := s.Lookup(pr.host, pr.path)
				if p == nil {
					fail("version %d: Lookup(%s, %s) = nil", s.Version(), pr.host, pr.path)
					return gens, false
				}
				p.Cursor.Add(1) // what a balancer does with the pool
				if gen < 0 {
					gen = p.Members[0]
				}
				wantPath := pr.evenPath
				if gen%2 == 1 {
					wantPath = pr.oddPath
				}
				if len(p.Members) != pr.members || p.Path != wantPath {
					fail("version %d, generation %d: Lookup(%s, %s) = pool %q with %d members; want %q with %d",
						s.Version(), gen, pr.host, pr.path, p.Path, len(p.Members), wantPath, pr.members)
					return gens, false
				}
				for i, m := range p.Members {
					if m != gen || p.Routes[i].Member != gen {
						fail("version %d: Lookup(%s, %s) serves generation %d, other hosts of the group %d: half-published",
							s.Version(), pr.host, pr.path, m, gen)
						return gens, false
					}
				}
			}
			gens[g] = gen
		}
		return gens, true
	}

	for g := range groups {
		wg.Go(func() {
			cur := raceLayout(g, 0)
			for gen := 1; gen <= maxPublishesPerWriter && !done.Load(); gen++ {
				if time.Now().After(deadline) {
					break
				}
				next := raceLayout(g, gen)
				prev := cur
				tbl.Update(func(tx *Txn[int]) {
					for _, r := range prev {
						tx.Remove(r)
					}
					for _, r := range next {
						tx.Add(r)
					}
				})
				cur = next
				lastGen[g] = gen
				publishes.Add(1)
			}
		})
	}

	var readers sync.WaitGroup
	for range 4 {
		readers.Go(func() {
			first := tbl.Load()
			firstGens, _ := check(first)
			var prev [groups]int
			prevVersion := uint64(0)
			for !done.Load() {
				s := tbl.Load()
				if s.Version() < prevVersion {
					fail("version went backwards: %d after %d", s.Version(), prevVersion)
					return
				}
				prevVersion = s.Version()
				gens, ok := check(s)
				if !ok {
					return
				}
				for g := range groups {
					if gens[g] < prev[g] {
						fail("group %d went back from generation %d to %d", g, prev[g], gens[g])
						return
					}
				}
				prev = gens
				loads.Add(1)
			}
			// A snapshot held across many publishes is unchanged.
			if gens, ok := check(first); ok && gens != firstGens {
				fail("held snapshot changed from %v to %v", firstGens, gens)
			}
		})
	}
	wg.Wait()
	done.Store(true)
	readers.Wait()
	if t.Failed() {
		return
	}

	final := tbl.Load()
	if got, want := final.Version(), uint64(1+publishes.Load()); got != want {
		t.Fatalf("final version %d, want %d", got, want)
	}
	gens, ok := check(final)
	if ok && gens != lastGen {
		t.Fatalf("final generations %v, want %v: an update was lost", gens, lastGen)
	}
	t.Logf("%d publishes, %d snapshot checks", publishes.Load(), loads.Load())
	if publishes.Load() < 10 || loads.Load() < 10 {
		t.Fatalf("too little concurrency exercised: %d publishes, %d loads", publishes.Load(), loads.Load())
	}
}
