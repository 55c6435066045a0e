package router

import (
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
)

// benchPaths are the routes of every benchmark host: five paths of
// different lengths and priorities.
var benchPaths = []struct {
	path string
	prio int32
}{
	{"/", 0},
	{"/api", 10},
	{"/api/v1", 10},
	{"/static/", 5},
	{"/api/v1/users", 20},
}

// benchReqPaths spread over every pool, the fall-through to "/" and the
// segment boundary cases.
var benchReqPaths = []string{
	"/",
	"/index.html",
	"/api",
	"/api/",
	"/api/v2/orders",
	"/api/v1",
	"/api/v1/items/42",
	"/api/v1/users",
	"/api/v1/users/1234/profile",
	"/apix",
	"/static/css/site.css",
	"/static",
}

func benchHost(i int) string { return "h" + strconv.Itoa(i) + ".bench.example.com" }

// benchRoutes returns n routes over n/5 hosts, five paths per host. Each
// route's Member is its index.
func benchRoutes(n int) []*Route[int] {
	rs := make([]*Route[int], n)
	for i := range rs {
		p := benchPaths[i%len(benchPaths)]
		rs[i] = &Route[int]{
			ID:       uint64(i + 1),
			Domains:  []string{benchHost(i / len(benchPaths))},
			Path:     p.path,
			Priority: p.prio,
			Member:   i,
		}
	}
	return rs
}

type benchReq struct{ host, path []byte }

// benchRequests returns 4096 requests (a power of two) to existing hosts of a
// table of n routes, with a spread of paths; a few carry a port or capitals.
func benchRequests(n int) []benchReq {
	hosts := (n + len(benchPaths) - 1) / len(benchPaths)
	rng := rand.New(rand.NewPCG(7, 7))
	reqs := make([]benchReq, 4096)
	for i := range reqs {
		h := benchHost(rng.IntN(hosts))
		switch i % 8 {
		case 3:
			h += ":8443"
		case 5:
			h = "H" + h[1:]
		}
		reqs[i] = benchReq{[]byte(h), []byte(benchReqPaths[rng.IntN(len(benchReqPaths))])}
	}
	return reqs
}

// benchTables caches the read-only lookup tables, which the benchmark
// framework would otherwise rebuild on every b.N round.
var benchTables sync.Map // int -> *Table[int]

func benchTable(n int) *Table[int] {
	if t, ok := benchTables.Load(n); ok {
		return t.(*Table[int])
	}
	t := NewTable[int]()
	t.Replace(benchRoutes(n))
	benchTables.Store(n, t)
	return t
}

var benchSink *Pool[int]

func BenchmarkLookup(b *testing.B) {
	for _, n := range []int{10, 1000, 100000} {
		b.Run("routes="+sizeName(n), func(b *testing.B) {
			s := benchTable(n).Load()
			if s.Routes() != n {
				b.Fatalf("table holds %d routes, want %d", s.Routes(), n)
			}
			reqs := benchRequests(n)
			for _, r := range reqs {
				if s.Lookup(r.host, r.path) == nil {
					b.Fatalf("no route for %s%s", r.host, r.path)
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			var p *Pool[int]
			for i := 0; i < b.N; i++ {
				r := &reqs[i&(len(reqs)-1)]
				p = s.Lookup(r.host, r.path)
			}
			benchSink = p
		})
	}
}

// publishOne replaces route idx in place with a copy carrying a new member,
// as the registry does when one backend changes.
func publishOne(t *Table[int], routes []*Route[int], idx int) {
	old := routes[idx]
	nr := &Route[int]{ID: old.ID, Domains: old.Domains, Path: old.Path, Priority: old.Priority, Member: old.Member + 1}
	t.Update(func(tx *Txn[int]) {
		tx.Remove(old)
		tx.Add(nr)
	})
	routes[idx] = nr
}

func BenchmarkPublish(b *testing.B) {
	for _, n := range []int{1000, 10000, 100000} {
		b.Run("routes="+sizeName(n), func(b *testing.B) {
			routes := benchRoutes(n)
			t := NewTable[int]()
			t.Replace(routes)
			v0 := t.Load().Version()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				publishOne(t, routes, (i*7919)%n)
			}
			b.StopTimer()
			s := t.Load()
			if s.Routes() != n || s.Hosts() != n/len(benchPaths) || s.Version() != v0+uint64(b.N) {
				b.Fatalf("after %d publishes: routes=%d hosts=%d version=%d", b.N, s.Routes(), s.Hosts(), s.Version())
			}
		})
	}
}

// BenchmarkLookupDuringPublish measures lookups on the 100k table while a
// background goroutine publishes one-route updates back to back. The
// B/op and allocs/op it reports are the publisher's (memory statistics are
// process-wide); the lookups themselves allocate nothing.
func BenchmarkLookupDuringPublish(b *testing.B) {
	const n = 100000
	routes := benchRoutes(n)
	t := NewTable[int]()
	t.Replace(routes)
	reqs := benchRequests(n)

	var (
		stop      atomic.Bool
		publishes atomic.Int64
		misses    atomic.Int64
		wg        sync.WaitGroup
	)
	wg.Go(func() {
		for i := 0; !stop.Load(); i++ {
			publishOne(t, routes, (i*7919)%n)
			publishes.Add(1)
		}
	})
	var start atomic.Uint32
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := int(start.Add(1013))
		for pb.Next() {
			r := &reqs[i&(len(reqs)-1)]
			i++
			if t.Load().Lookup(r.host, r.path) == nil {
				misses.Add(1)
			}
		}
	})
	b.StopTimer()
	stop.Store(true)
	wg.Wait()
	if m := misses.Load(); m != 0 {
		b.Fatalf("%d lookups missed while publishing", m)
	}
	b.ReportMetric(float64(publishes.Load())/b.Elapsed().Seconds(), "publishes/s")
}

func sizeName(n int) string {
	switch {
	case n >= 1000 && n%1000 == 0:
		return strconv.Itoa(n/1000) + "k"
	default:
		return strconv.Itoa(n)
	}
}
