package registry

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Static routes are routes that no service registers: backends that cannot
// run anything, declared in the proxy's routes file. They belong to one
// reserved session that no connection can bind (it is not in the session
// table, so RECONNECT answers REREGISTER), that never enters grace or
// expires, and that is not written to the state file: the routes file is
// their source. ApplyStatic stages the file's routes on that session and
// publishes them through the same validation and apply as CONFIG_APPLY, so
// the conflict rules of §4.17 hold between static and registered routes in
// both directions.

// StaticService is the service name of the routes file's session, as
// conflict errors name it ("conflict with service static on …").
const StaticService = "static"

// staticSessionID cannot collide with an issued sid: those always end in
// -<unix seconds>-<16 hex digits> (§2.2).
const staticSessionID = "static"

// StaticRoute is one route of the routes file.
type StaticRoute struct {
	Domains  []string
	Path     string
	Backend  string
	Priority int64
	// Health, when set, runs an active health check (§6.6).
	Health *StaticHealth
	// RateLimit, when set, limits requests (§6.8).
	RateLimit *StaticRateLimit
	// Options are route options as OPTIONS_SET takes them (§4.13).
	Options map[string]string
	// Headers are response headers as HEADERS_SET takes them (§4.12).
	Headers map[string]string
}

// StaticHealth is a static route's active health check. Zero values take
// defaults: interval 10 s, timeout 5 s (at most the interval), thresholds
// 2 and 1.
type StaticHealth struct {
	Path           string
	Interval       time.Duration
	Timeout        time.Duration
	UnhealthyAfter int
	HealthyAfter   int
}

// StaticRateLimit is a static route's rate limit.
type StaticRateLimit struct {
	Requests int64
	Window   time.Duration
}

// staticEntry is a validated StaticRoute in the registry's own terms.
type staticEntry struct {
	spec    routeSpec
	health  *healthCfg
	rate    *rateCfg
	options map[string]string
	headers map[string]string
}

func (e *staticEntry) key() string {
	return strings.Join(e.spec.Domains, ",") + "\x00" + e.spec.Path + "\x00" + e.spec.Backend + "\x00" +
		strconv.FormatInt(int64(e.spec.Priority), 10)
}

func describeStatic(i int, rt StaticRoute) string {
	return fmt.Sprintf("route %d (%s%s)", i+1, strings.Join(rt.Domains, ","), rt.Path)
}

// validateStatic checks one route with the protocol's own rules and error
// texts (§1.6, §4.6, §4.12–§4.15).
func validateStatic(rt StaticRoute) (*staticEntry, error) {
	ds, err := normaliseDomains(trimmedItems(rt.Domains))
	if err != nil {
		return nil, err
	}
	if err := validatePath(rt.Path); err != nil {
		return nil, err
	}
	if !validBackendURL(rt.Backend) {
		return nil, protoError("invalid backend url format")
	}
	if rt.Priority < -1<<31 || rt.Priority > 1<<31-1 {
		return nil, protoError("invalid priority")
	}
	e := &staticEntry{spec: routeSpec{Domains: ds, Path: rt.Path, Backend: rt.Backend, Priority: int32(rt.Priority)}}
	if h := rt.Health; h != nil {
		hc := &healthCfg{Path: h.Path, Interval: h.Interval, Timeout: h.Timeout, UnhealthyAfter: 2, HealthyAfter: 1}
		if err := validatePath(h.Path); err != nil {
			return nil, fmt.Errorf("health: %w", err)
		}
		if hc.Interval == 0 {
			hc.Interval = 10 * time.Second
		}
		if hc.Interval < time.Second {
			return nil, protoError("health: invalid duration (interval must be at least 1s)")
		}
		if hc.Timeout == 0 {
			hc.Timeout = 5 * time.Second
		}
		if hc.Timeout < 0 {
			return nil, protoError("health: invalid duration")
		}
		hc.Timeout = min(hc.Timeout, hc.Interval)
		for _, t := range []struct {
			v   int
			dst *int32
		}{{h.UnhealthyAfter, &hc.UnhealthyAfter}, {h.HealthyAfter, &hc.HealthyAfter}} {
			if t.v == 0 {
				continue
			}
			if t.v < 1 || t.v > 100 {
				return nil, protoError("health: invalid threshold")
			}
			*t.dst = int32(t.v)
		}
		e.health = hc
	}
	if rl := rt.RateLimit; rl != nil {
		if rl.Requests < 0 || rl.Requests > 1<<40 {
			return nil, protoError("rate_limit: invalid requests")
		}
		if rl.Window <= 0 {
			return nil, protoError("rate_limit: invalid duration")
		}
		if rl.Requests > 0 {
			e.rate = &rateCfg{Requests: rl.Requests, Window: rl.Window}
		}
	}
	e.options = make(map[string]string, len(rt.Options))
	for k, v := range rt.Options {
		if k == "" {
			return nil, protoError("invalid option key")
		}
		if err := validateOption(k, v); err != nil {
			return nil, err
		}
		e.options[k] = v
	}
	e.headers = make(map[string]string, len(rt.Headers))
	for n, v := range rt.Headers {
		if !validHeaderName(n) {
			return nil, protoError("invalid header name")
		}
		if forbiddenHeaders[canonicalHeader(n)] {
			return nil, protoError("header not allowed: " + sanitize(n))
		}
		if !validHeaderValue(v) {
			return nil, protoError("invalid header value")
		}
		e.headers[canonicalHeader(n)] = v
	}
	return e, nil
}

// ApplyStatic makes routes the complete set of static routes, in one
// atomic publish. A route whose domains, path, backend and priority are
// unchanged keeps its route id and live state (statistics, health, breaker);
// its options, headers, health check and rate limit are updated in place.
// On any error (an invalid route, a conflict with a registered service, the
// per-session route limit) nothing changes and the previous static routes
// keep serving. At start, call it after Restore, which replaces the whole
// routing table.
func (r *Registry) ApplyStatic(routes []StaticRoute) error {
	entries := make([]*staticEntry, len(routes))
	seen := make(map[string]int, len(routes))
	for i, rt := range routes {
		e, err := validateStatic(rt)
		if err != nil {
			return fmt.Errorf("%s: %w", describeStatic(i, rt), err)
		}
		if j, dup := seen[e.key()]; dup {
			return fmt.Errorf("%s: duplicate of route %d", describeStatic(i, rt), j+1)
		}
		seen[e.key()] = i
		entries[i] = e
	}

	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.static
	if s == nil {
		s = newSession(staticSessionID, StaticService, StaticService, now)
		s.static = true
		r.static = s
	}

	// Keep the rid of every route whose value is unchanged; stage the rest
	// exactly as ROUTE_ADD and ROUTE_REMOVE would.
	existing := make(map[string]uint64, len(s.routes))
	for id, rt := range s.routes {
		existing[(&staticEntry{spec: rt.spec}).key()] = id
	}
	st := newChangeSet()
	ids := make([]uint64, len(entries))
	kept := make(map[uint64]bool, len(entries))
	for i, e := range entries {
		if id, ok := existing[e.key()]; ok {
			ids[i] = id
			kept[id] = true
			continue
		}
		id, err := r.newRouteIDLocked()
		if err != nil {
			return fmt.Errorf("routes file: issuing route ids: %w", err)
		}
		ids[i] = id
		spec := e.spec
		st.added[ids[i]] = &spec
	}
	for id := range s.routes {
		if !kept[id] {
			st.removals[id] = true
		}
	}
	// Options and headers: operations that turn the active maps into the
	// file's, per route.
	desiredOpts, desiredHdrs := kvMaps{}, kvMaps{}
	for i, e := range entries {
		rid := ridString(ids[i])
		if len(e.options) > 0 {
			desiredOpts[rid] = e.options
		}
		if len(e.headers) > 0 {
			desiredHdrs[rid] = e.headers
		}
		if e.health != nil {
			st.health[ids[i]] = e.health
		} else if s.health[ids[i]] != nil {
			st.health[ids[i]] = &healthCfg{} // interval 0 removes the check
		}
		if e.rate != nil {
			st.rates[ids[i]] = e.rate
		} else if s.rates[ids[i]] != nil {
			st.rates[ids[i]] = &rateCfg{} // 0 requests removes the limit
		}
	}
	st.options = diffKV(s.options, desiredOpts)
	st.headers = diffKV(s.headers, desiredHdrs)
	st.changed = now
	s.staged = st

	if _, err := r.applyLocked(s, scopeAll, now); err != nil {
		s.staged = newChangeSet()
		return r.staticError(err, ids, routes)
	}
	return nil
}

// diffKV returns the operations that turn have into want.
func diffKV(have, want kvMaps) kvOps {
	ops := kvOps{}
	for target, kv := range have {
		for name := range kv {
			if _, ok := want[target][name]; !ok {
				ops.set(target, name, nil)
			}
		}
	}
	for target, kv := range want {
		for name, v := range kv {
			if old, ok := have[target][name]; !ok || old != v {
				v := v
				ops.set(target, name, &v)
			}
		}
	}
	return ops
}

// staticError names the file's route instead of its rid, which an
// operator never sees.
func (r *Registry) staticError(err error, ids []uint64, routes []StaticRoute) error {
	msg := err.Error()
	for i, id := range ids {
		rid := "route " + ridString(id) + ":"
		if j := strings.Index(msg, rid); j >= 0 {
			return fmt.Errorf("%s%s:%s", msg[:j], describeStatic(i, routes[i]), msg[j+len(rid):])
		}
	}
	return fmt.Errorf("static routes: %s", msg)
}

// StaticRoutes reports the domains and paths of the active static routes,
// sorted, for logs and the admin server.
func (r *Registry) StaticRoutes() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.static == nil {
		return nil
	}
	out := make([]string, 0, len(r.static.routes))
	for _, rt := range r.static.routes {
		for _, d := range rt.spec.Domains {
			out = append(out, d+rt.spec.Path+" -> "+rt.spec.Backend)
		}
	}
	sort.Strings(out)
	return out
}
