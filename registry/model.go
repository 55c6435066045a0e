package registry

import (
	"sort"
	"time"

	"github.com/go-proxy/go-proxy/router"
	"github.com/go-proxy/go-proxy/upstream"
)

// routeSpec is a route's value: what ROUTE_ADD and ROUTE_UPDATE set.
type routeSpec struct {
	Domains  []string `json:"domains"`
	Path     string   `json:"path"`
	Backend  string   `json:"backend"`
	Priority int32    `json:"priority"`
}

// activeRoute is a route in the routing table.
type activeRoute struct {
	id     uint64
	spec   routeSpec
	member *upstream.Member
	entry  *router.Route[*upstream.Member]
}

type healthCfg struct {
	Path           string        `json:"path"`
	Interval       time.Duration `json:"interval"`
	Timeout        time.Duration `json:"timeout"`
	UnhealthyAfter int32         `json:"unhealthy_after"`
	HealthyAfter   int32         `json:"healthy_after"`
}

type rateCfg struct {
	Requests int64         `json:"requests"`
	Window   time.Duration `json:"window"`
}

type breakerCfg struct {
	Threshold int64         `json:"threshold"`
	Timeout   time.Duration `json:"timeout"`
	HalfOpen  int32         `json:"half_open"`
}

// kvOps are staged header or option operations: target → name → value,
// where nil means "remove". The last operation per name wins.
type kvOps map[string]map[string]*string

func (o kvOps) set(target, name string, value *string) {
	m := o[target]
	if m == nil {
		m = map[string]*string{}
		o[target] = m
	}
	m[name] = value
}

func (o kvOps) count() int {
	n := 0
	for _, m := range o {
		n += len(m)
	}
	return n
}

// kvMaps are active headers or options: target ("ALL" or a rid) → name → value.
type kvMaps map[string]map[string]string

func (m kvMaps) clone() kvMaps {
	out := make(kvMaps, len(m))
	for t, kv := range m {
		c := make(map[string]string, len(kv))
		for k, v := range kv {
			c[k] = v
		}
		out[t] = c
	}
	return out
}

// applyOps returns m with ops applied, keeping only targets that survive.
func (m kvMaps) applyOps(ops kvOps, keep func(target string) bool) kvMaps {
	out := m.clone()
	for target, kv := range ops {
		if !keep(target) {
			continue
		}
		for name, v := range kv {
			if v == nil {
				delete(out[target], name)
				continue
			}
			if out[target] == nil {
				out[target] = map[string]string{}
			}
			out[target][name] = *v
		}
	}
	for t, kv := range out {
		if len(kv) == 0 || !keep(t) {
			delete(out, t)
		}
	}
	return out
}

// effective merges the ALL entries with the route's own (§4.11).
func (m kvMaps) effective(rid string) map[string]string {
	out := make(map[string]string, len(m["ALL"])+len(m[rid]))
	for k, v := range m["ALL"] {
		out[k] = v
	}
	for k, v := range m[rid] {
		out[k] = v
	}
	return out
}

// changeSet is a session's staged configuration (§4.5).
type changeSet struct {
	added    map[uint64]*routeSpec
	updates  map[uint64]*routeSpec
	removals map[uint64]bool
	headers  kvOps
	options  kvOps
	health   map[uint64]*healthCfg
	rates    map[uint64]*rateCfg
	breakers map[uint64]*breakerCfg
	changed  time.Time
}

func newChangeSet() *changeSet {
	return &changeSet{
		added: map[uint64]*routeSpec{}, updates: map[uint64]*routeSpec{}, removals: map[uint64]bool{},
		headers: kvOps{}, options: kvOps{},
		health: map[uint64]*healthCfg{}, rates: map[uint64]*rateCfg{}, breakers: map[uint64]*breakerCfg{},
	}
}

func (c *changeSet) empty() bool {
	return len(c.added)+len(c.updates)+len(c.removals)+c.headers.count()+c.options.count()+
		len(c.health)+len(c.rates)+len(c.breakers) == 0
}

// dropRoute forgets everything staged for a staged route that is removed.
func (c *changeSet) dropRoute(id uint64) {
	delete(c.added, id)
	delete(c.updates, id)
	delete(c.health, id)
	delete(c.rates, id)
	delete(c.breakers, id)
	rid := ridString(id)
	delete(c.headers, rid)
	delete(c.options, rid)
}

func sortedIDs[V any](m map[uint64]V) []uint64 {
	ids := make([]uint64, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

// maintEntry is one route's maintenance, as reported and persisted.
type maintEntry struct {
	PageURL   string    `json:"page_url"`
	EnteredAt time.Time `json:"entered_at"`
}

// drainState is a session's drain (§4.22, §6.5).
type drainState struct {
	StartedAt time.Time     `json:"started_at"`
	Duration  time.Duration `json:"duration"`
	Notified  bool          `json:"notified"`
}

func (d *drainState) endsAt() time.Time { return d.StartedAt.Add(d.Duration) }

// live is the drain as the data plane reads it.
func (d *drainState) live() *upstream.Drain {
	return &upstream.Drain{StartedAt: d.StartedAt, EndsAt: d.endsAt()}
}
