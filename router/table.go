package router

import (
	"sort"
	"sync"
	"sync/atomic"
)

// Route is one active route as the data plane sees it. Member is the
// caller's per-route object (the upstream member with its live atomics); the
// router never looks inside it.
type Route[M any] struct {
	ID       uint64
	Domains  []string
	Path     string
	Priority int32
	Member   M
}

// Pool is every route sharing one domain, path and priority (registry-v2
// §6.3). Routes are kept in ascending ID order, so Routes[0] is the pool's
// lowest rid, the route that generated responses are attributed to.
type Pool[M any] struct {
	Path     string
	Priority int32
	Routes   []*Route[M]
	Members  []M
	// Cursor is the balancer's round-robin position. It lives in the pool
	// so that it is per snapshot and needs no map lookup per request.
	Cursor atomic.Uint32
}

// hostEntry holds the pools of one domain key, in match order: priority
// highest first, then path length longest first.
type hostEntry[M any] struct {
	routes []*Route[M]
	pools  []*Pool[M]
}

// Snapshot is one immutable routing table. Readers get it from
// Table.Load and may keep using it while newer snapshots are published.
type Snapshot[M any] struct {
	exact    hamt[*hostEntry[M]]
	wildcard hamt[*hostEntry[M]] // keyed by the suffix S of "*.S"
	routes   int
	version  uint64
}

// Routes is the number of routes in the snapshot.
func (s *Snapshot[M]) Routes() int { return s.routes }

// Version increases by one with every publish.
func (s *Snapshot[M]) Version() uint64 { return s.version }

// Hosts is the number of distinct domain keys (exact and wildcard).
func (s *Snapshot[M]) Hosts() int { return s.exact.count + s.wildcard.count }

// Table publishes snapshots through an atomic pointer. Readers never lock;
// writers are serialised among themselves by a mutex that readers never see.
type Table[M any] struct {
	current atomic.Pointer[Snapshot[M]]
	writer  sync.Mutex
}

// NewTable returns a table holding an empty snapshot.
func NewTable[M any]() *Table[M] {
	t := &Table[M]{}
	t.current.Store(&Snapshot[M]{})
	return t
}

// Load returns the current snapshot. It is safe for any number of readers.
func (t *Table[M]) Load() *Snapshot[M] { return t.current.Load() }

// Txn collects route removals and additions that become visible together.
type Txn[M any] struct {
	remove map[uint64]struct{}
	add    []*Route[M]
	keys   map[string]struct{}
}

// Remove takes the route out of the table; r must carry the domains it was
// added with.
func (tx *Txn[M]) Remove(r *Route[M]) {
	if tx.remove == nil {
		tx.remove = make(map[uint64]struct{})
	}
	tx.remove[r.ID] = struct{}{}
	tx.touch(r.Domains)
}

// Add puts a route into the table. Adding an ID that is also removed in the
// same transaction replaces the route in place.
func (tx *Txn[M]) Add(r *Route[M]) {
	tx.add = append(tx.add, r)
	tx.touch(r.Domains)
}

func (tx *Txn[M]) touch(domains []string) {
	if tx.keys == nil {
		tx.keys = make(map[string]struct{})
	}
	for _, d := range domains {
		tx.keys[d] = struct{}{}
	}
}

// Update runs fn to fill a transaction and publishes the result in one
// atomic swap. Its cost is proportional to the routes on the touched
// domains, not to the size of the table.
func (t *Table[M]) Update(fn func(tx *Txn[M])) *Snapshot[M] {
	t.writer.Lock()
	defer t.writer.Unlock()
	var tx Txn[M]
	fn(&tx)
	old := t.current.Load()
	next := &Snapshot[M]{exact: old.exact, wildcard: old.wildcard, routes: old.routes, version: old.version + 1}
	removedRoutes := map[uint64]struct{}{}
	addedRoutes := map[uint64]struct{}{}
	for key := range tx.keys {
		tree, name := &next.exact, key
		if suffix, ok := wildcardSuffix(key); ok {
			tree, name = &next.wildcard, suffix
		}
		var kept []*Route[M]
		if prev, ok := tree.get(name); ok {
			kept = make([]*Route[M], 0, len(prev.routes)+1)
			for _, r := range prev.routes {
				if _, gone := tx.remove[r.ID]; gone {
					removedRoutes[r.ID] = struct{}{}
					continue
				}
				kept = append(kept, r)
			}
		}
		for _, r := range tx.add {
			if containsDomain(r.Domains, key) {
				kept = append(kept, r)
				addedRoutes[r.ID] = struct{}{}
			}
		}
		if len(kept) == 0 {
			*tree = tree.delete(name)
			continue
		}
		*tree = tree.set(name, buildHost(kept))
	}
	next.routes += len(addedRoutes) - len(removedRoutes)
	t.current.Store(next)
	return next
}

// Replace publishes a snapshot holding exactly routes, built from scratch.
// It is used at start-up, when the whole table is restored at once.
func (t *Table[M]) Replace(routes []*Route[M]) *Snapshot[M] {
	t.writer.Lock()
	defer t.writer.Unlock()
	byKey := make(map[string][]*Route[M])
	for _, r := range routes {
		for _, d := range r.Domains {
			byKey[d] = append(byKey[d], r)
		}
	}
	next := &Snapshot[M]{routes: len(routes), version: t.current.Load().version + 1}
	for key, rs := range byKey {
		if suffix, ok := wildcardSuffix(key); ok {
			next.wildcard = next.wildcard.set(suffix, buildHost(rs))
		} else {
			next.exact = next.exact.set(key, buildHost(rs))
		}
	}
	t.current.Store(next)
	return next
}

func containsDomain(domains []string, key string) bool {
	for _, d := range domains {
		if d == key {
			return true
		}
	}
	return false
}

func wildcardSuffix(domain string) (string, bool) {
	if len(domain) > 2 && domain[0] == '*' && domain[1] == '.' {
		return domain[2:], true
	}
	return "", false
}

// buildHost groups the routes of one domain key into pools in match order.
func buildHost[M any](routes []*Route[M]) *hostEntry[M] {
	sort.Slice(routes, func(i, j int) bool { return routes[i].ID < routes[j].ID })
	h := &hostEntry[M]{routes: routes}
	type poolKey struct {
		path     string
		priority int32
	}
	index := make(map[poolKey]*Pool[M], len(routes))
	for _, r := range routes {
		k := poolKey{r.Path, r.Priority}
		p := index[k]
		if p == nil {
			p = &Pool[M]{Path: r.Path, Priority: r.Priority}
			index[k] = p
			h.pools = append(h.pools, p)
		}
		p.Routes = append(p.Routes, r)
		p.Members = append(p.Members, r.Member)
	}
	sort.SliceStable(h.pools, func(i, j int) bool {
		a, b := h.pools[i], h.pools[j]
		if a.Priority != b.Priority {
			return a.Priority > b.Priority
		}
		return len(a.Path) > len(b.Path)
	})
	return h
}

// Each calls fn once for every route in the snapshot (a route with several
// domains once per domain). It is for diagnostics, not the request path.
func (s *Snapshot[M]) Each(fn func(domain string, r *Route[M])) {
	s.exact.each(func(key string, h *hostEntry[M]) {
		for _, r := range h.routes {
			fn(key, r)
		}
	})
	s.wildcard.each(func(key string, h *hostEntry[M]) {
		for _, r := range h.routes {
			fn("*."+key, r)
		}
	})
}
