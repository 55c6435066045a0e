package registry

import (
	"sort"
	"strconv"
	"time"

	"github.com/go-proxy/go-proxy/health"
	"github.com/go-proxy/go-proxy/router"
	"github.com/go-proxy/go-proxy/upstream"
)

// scopes select the parts of a change set an apply takes (§4.18).
type scopes uint8

const (
	scopeRoutes scopes = 1 << iota
	scopeHeaders
	scopeOptions
	scopeHealth
	scopeRatelimit
	scopeBreaker
	scopeAll = scopeRoutes | scopeHeaders | scopeOptions | scopeHealth | scopeRatelimit | scopeBreaker
)

var scopeNames = map[string]scopes{
	"routes": scopeRoutes, "headers": scopeHeaders, "options": scopeOptions,
	"health": scopeHealth, "ratelimit": scopeRatelimit, "circuit_breaker": scopeBreaker,
}

// candidate is a session's configuration as an apply would make it (§4.17).
type candidate struct {
	routes   map[uint64]routeSpec
	headers  kvMaps
	options  kvMaps
	health   map[uint64]*healthCfg
	rates    map[uint64]*rateCfg
	breakers map[uint64]*breakerCfg
}

func (r *Registry) candidateLocked(s *session, sc scopes) *candidate {
	st := s.staged
	c := &candidate{routes: make(map[uint64]routeSpec, len(s.routes)+len(st.added))}
	for id, rt := range s.routes {
		c.routes[id] = rt.spec
	}
	if sc&scopeRoutes != 0 {
		for id := range st.removals {
			delete(c.routes, id)
		}
		for id, spec := range st.updates {
			if _, ok := c.routes[id]; ok {
				c.routes[id] = *spec
			}
		}
		for id, spec := range st.added {
			c.routes[id] = *spec
		}
	}
	keep := func(target string) bool {
		if target == "ALL" {
			return true
		}
		id, ok := parseRouteID(target)
		_, in := c.routes[id]
		return ok && in
	}
	c.headers, c.options = s.headers.applyOps(nil, keep), s.options.applyOps(nil, keep)
	if sc&scopeHeaders != 0 {
		c.headers = s.headers.applyOps(st.headers, keep)
	}
	if sc&scopeOptions != 0 {
		c.options = s.options.applyOps(st.options, keep)
	}
	c.health = mergeSettings(s.health, st.health, sc&scopeHealth != 0, c.routes, func(h *healthCfg) bool { return h.Interval == 0 })
	c.rates = mergeSettings(s.rates, st.rates, sc&scopeRatelimit != 0, c.routes, func(x *rateCfg) bool { return x.Requests == 0 })
	c.breakers = mergeSettings(s.breakers, st.breakers, sc&scopeBreaker != 0, c.routes, func(*breakerCfg) bool { return false })
	return c
}

// mergeSettings merges staged per-route settings into the active ones,
// dropping entries whose route is not in the candidate set; removes
// reports a staged entry that deletes the setting.
func mergeSettings[T any](active, staged map[uint64]*T, take bool, routes map[uint64]routeSpec, removes func(*T) bool) map[uint64]*T {
	out := make(map[uint64]*T, len(active))
	for id, v := range active {
		if _, ok := routes[id]; ok {
			out[id] = v
		}
	}
	if take {
		for id, v := range staged {
			if _, ok := routes[id]; !ok {
				continue
			}
			if removes(v) {
				delete(out, id)
			} else {
				out[id] = v
			}
		}
	}
	return out
}

// validateLocked runs the checks of §4.17 in order and returns the first
// error text.
func (r *Registry) validateLocked(s *session, c *candidate) error {
	ids := sortedIDs(c.routes)
	for _, id := range ids {
		spec := c.routes[id]
		if err := checkRouteSpec(spec, "invalid backend url format"); err != nil {
			return protoError("route " + ridString(id) + ": " + err.Error())
		}
	}
	if len(c.routes) > r.cfg.MaxRoutesPerSession {
		return protoError("limit exceeded: routes per session")
	}
	for _, kv := range c.headers {
		for name, v := range kv {
			if !validHeaderName(name) {
				return protoError("invalid header name")
			}
			if !validHeaderValue(v) {
				return protoError("invalid header value")
			}
		}
	}
	for _, kv := range c.options {
		for k, v := range kv {
			if err := validateOption(k, v); err != nil {
				return err
			}
		}
	}
	for _, id := range ids {
		spec := c.routes[id]
		for _, d := range spec.Domains {
			if other := r.conflictLocked(s, poolKey{d, spec.Path, spec.Priority}); other != nil {
				return protoError("route " + ridString(id) + ": conflict with service " + other.service + " on " + d + spec.Path)
			}
		}
	}
	return nil
}

func checkRouteSpec(spec routeSpec, backendErr string) error {
	if _, err := normaliseDomains(spec.Domains); err != nil {
		return err
	}
	if err := validatePath(spec.Path); err != nil {
		return err
	}
	if !validBackendURL(spec.Backend) {
		return protoError(backendErr)
	}
	return nil
}

// conflictLocked returns a session of another service holding an active
// route on the same domain, path and priority. The routes file's session
// never pools with a registered one, whatever its service name.
func (r *Registry) conflictLocked(s *session, k poolKey) *session {
	var found *session
	for other := range r.index[k] {
		if other != s && (other.service != s.service || other.static != s.static) && (found == nil || other.id < found.id) {
			found = other
		}
	}
	return found
}

// applyResult lists what an apply changed, for config_applied.
type applyResult struct {
	added, updated, removed []string
}

// applyLocked validates and applies the scoped part of s's change set in
// one routing-table publish (§4.17, §4.18).
func (r *Registry) applyLocked(s *session, sc scopes, now time.Time) (*applyResult, error) {
	c := r.candidateLocked(s, sc)
	if err := r.validateLocked(s, c); err != nil {
		return nil, err
	}
	res, err := r.commitLocked(s, c, now)
	if err != nil {
		return nil, err
	}
	r.clearStagedLocked(s, sc)
	s.lastApply = now
	r.touchLocked()
	return res, nil
}

// commitLocked makes c the session's active configuration in one
// routing-table publish: an apply after validation, or another replica's
// apply arriving through the shared store. It changes nothing on error.
func (r *Registry) commitLocked(s *session, c *candidate, now time.Time) (*applyResult, error) {
	res := &applyResult{added: []string{}, updated: []string{}, removed: []string{}}
	var removed, added []*activeRoute
	var replaced [][2]*activeRoute
	for _, id := range sortedIDs(s.routes) {
		old := s.routes[id]
		spec, ok := c.routes[id]
		switch {
		case !ok:
			removed = append(removed, old)
			res.removed = append(res.removed, ridString(id))
		case !sameSpec(old.spec, spec):
			nr := &activeRoute{id: id, spec: spec, member: old.member}
			replaced = append(replaced, [2]*activeRoute{old, nr})
			res.updated = append(res.updated, ridString(id))
		}
	}
	for _, id := range sortedIDs(c.routes) {
		if _, ok := s.routes[id]; ok {
			continue
		}
		spec := c.routes[id]
		cfg, err := r.memberConfig(c, id, spec)
		if err != nil {
			return nil, protoError("failed to add route " + ridString(id) + ": " + err.Error())
		}
		m := upstream.NewMember(id, s.live, cfg, r)
		added = append(added, &activeRoute{id: id, spec: spec, member: m})
		res.added = append(res.added, ridString(id))
	}
	// Prepare updated configs before publishing so a failure changes nothing.
	configs := map[uint64]*upstream.Config{}
	for id, spec := range c.routes {
		cfg, err := r.memberConfig(c, id, spec)
		if err != nil {
			return nil, protoError("failed to add route " + ridString(id) + ": " + err.Error())
		}
		configs[id] = cfg
	}
	for _, rt := range added {
		rt.entry = routeEntry(rt)
	}
	for _, p := range replaced {
		p[1].entry = routeEntry(p[1])
	}
	if len(removed)+len(added)+len(replaced) > 0 {
		r.table.Update(func(tx *router.Txn[*upstream.Member]) {
			for _, rt := range removed {
				tx.Remove(rt.entry)
			}
			for _, p := range replaced {
				tx.Remove(p[0].entry)
				tx.Add(p[1].entry)
			}
			for _, rt := range added {
				tx.Add(rt.entry)
			}
		})
	}
	for _, rt := range removed {
		r.unindexLocked(s, rt)
		delete(s.routes, rt.id)
		delete(s.maint, rt.id)
		if r.checker != nil {
			r.checker.Remove(rt.member)
		}
	}
	for _, p := range replaced {
		r.unindexLocked(s, p[0])
		r.indexLocked(s, p[1])
		s.routes[p[1].id] = p[1]
	}
	for _, rt := range added {
		r.indexLocked(s, rt)
		s.routes[rt.id] = rt
		if s.maintAll {
			r.enterMaintenanceLocked(s, rt, s.maintLastURL, now)
		}
	}
	// Live state (§4.17 step 3).
	for id, rt := range s.routes {
		moved := rt.member.Config().Backend.URL != configs[id].Backend.URL
		rt.member.SetConfig(configs[id])
		r.applyLiveSettingsLocked(s, c, rt, moved)
	}
	s.headers, s.options = c.headers, c.options
	s.health, s.rates, s.breakers = c.health, c.rates, c.breakers
	return res, nil
}

func (r *Registry) applyLiveSettingsLocked(s *session, c *candidate, rt *activeRoute, moved bool) {
	id, m := rt.id, rt.member
	if h, old := c.health[id], s.health[id]; h != old || moved {
		if h == nil {
			if r.checker != nil {
				r.checker.Remove(m)
			}
			m.Health.Restart()
		} else if r.checker != nil {
			r.checker.Set(m, health.Check{
				Path: h.Path, Interval: h.Interval, Timeout: h.Timeout,
				UnhealthyAfter: h.UnhealthyAfter, HealthyAfter: h.HealthyAfter,
			})
		}
	}
	if rl, old := c.rates[id], s.rates[id]; rl != old {
		if rl == nil {
			m.SetRateLimit(0, 0)
		} else {
			m.SetRateLimit(rl.Requests, rl.Window)
		}
	}
	if cb, old := c.breakers[id], s.breakers[id]; cb != old {
		if cb == nil {
			m.Breaker.Configure(upstream.DefaultBreakerSettings)
		} else {
			m.Breaker.Configure(upstream.BreakerSettings{Threshold: cb.Threshold, Timeout: cb.Timeout, HalfOpenRequests: cb.HalfOpen})
		}
	}
}

// clearStagedLocked drops the applied parts of the change set. Settings
// for routes that are still only staged stay staged (§4.18).
func (r *Registry) clearStagedLocked(s *session, sc scopes) {
	st := s.staged
	if sc == scopeAll {
		s.staged = newChangeSet()
		return
	}
	if sc&scopeRoutes != 0 {
		st.added, st.updates, st.removals = map[uint64]*routeSpec{}, map[uint64]*routeSpec{}, map[uint64]bool{}
	}
	if sc&scopeHeaders != 0 {
		st.headers = kvOps{}
	}
	if sc&scopeOptions != 0 {
		st.options = kvOps{}
	}
	keepStagedOnly := func(id uint64) bool { _, ok := st.added[id]; return ok }
	if sc&scopeHealth != 0 {
		for id := range st.health {
			if !keepStagedOnly(id) {
				delete(st.health, id)
			}
		}
	}
	if sc&scopeRatelimit != 0 {
		for id := range st.rates {
			if !keepStagedOnly(id) {
				delete(st.rates, id)
			}
		}
	}
	if sc&scopeBreaker != 0 {
		for id := range st.breakers {
			if !keepStagedOnly(id) {
				delete(st.breakers, id)
			}
		}
	}
}

func sameSpec(a, b routeSpec) bool {
	if a.Path != b.Path || a.Backend != b.Backend || a.Priority != b.Priority || len(a.Domains) != len(b.Domains) {
		return false
	}
	for i := range a.Domains {
		if a.Domains[i] != b.Domains[i] {
			return false
		}
	}
	return true
}

func routeEntry(rt *activeRoute) *router.Route[*upstream.Member] {
	return &router.Route[*upstream.Member]{
		ID: rt.id, Domains: rt.spec.Domains, Path: rt.spec.Path, Priority: rt.spec.Priority, Member: rt.member,
	}
}

// memberConfig builds the data-plane configuration of one route from the
// candidate's effective options and headers (§4.11, §6.9, §6.10).
func (r *Registry) memberConfig(c *candidate, id uint64, spec routeSpec) (*upstream.Config, error) {
	be, err := r.transport.Backend(spec.Backend)
	if err != nil {
		return nil, err
	}
	rid := ridString(id)
	cfg := &upstream.Config{Backend: be}
	opts := c.options.effective(rid)
	if v, ok := opts["timeout"]; ok {
		cfg.Timeout, _ = parseDuration(v)
	}
	cfg.WebSocket, _ = parseBool(opts["websocket"])
	cfg.Compression, _ = parseBool(opts["compression"])
	cfg.PreserveHost, _ = parseBool(opts["preserve_host"])
	if v, ok := opts["max_body_size"]; ok {
		cfg.MaxBodySize, _ = strconv.ParseInt(trimSpaces(v), 10, 64)
	}
	if v, ok := opts["retries"]; ok {
		n, _ := strconv.Atoi(trimSpaces(v))
		cfg.Retries = n
	}
	hdrs := c.headers.effective(rid)
	names := make([]string, 0, len(hdrs))
	for n := range hdrs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		cfg.Headers = append(cfg.Headers, upstream.Header{Name: []byte(n), Value: []byte(hdrs[n])})
	}
	if h := c.health[id]; h != nil {
		cfg.HealthPath = h.Path
	}
	return cfg, nil
}

func trimSpaces(s string) string {
	for len(s) > 0 && s[0] == ' ' {
		s = s[1:]
	}
	for len(s) > 0 && s[len(s)-1] == ' ' {
		s = s[:len(s)-1]
	}
	return s
}
