package registry

import (
	"encoding/json"
	"sort"
	"strings"
	"time"
)

func sortStrings(s []string) { sort.Strings(s) }

// routeCount is what the per-session route limit counts (§1.8).
func routeCount(s *session) int {
	return len(s.routes) - len(s.staged.removals) + len(s.staged.added)
}

func (r *Registry) stageChanged(s *session, now time.Time) { s.staged.changed = now }

// parseRouteFields validates ROUTE_ADD's fields in order (§4.6).
func parseRouteFields(domains, path, backend, priority string) (*routeSpec, error) {
	ds, err := parseDomains(domains)
	if err != nil {
		return nil, err
	}
	if err := validatePath(path); err != nil {
		return nil, err
	}
	if !validBackendURL(backend) {
		return nil, protoError("invalid backend url format")
	}
	p, err := parseInt(priority, -1<<31, 1<<31-1, "invalid priority")
	if err != nil {
		return nil, err
	}
	return &routeSpec{Domains: ds, Path: path, Backend: backend, Priority: int32(p)}, nil
}

func cmdRouteAdd(r *Registry, _ *conn, s *session, f []string, now time.Time) reply {
	spec, err := parseRouteFields(f[2], f[3], f[4], f[5])
	if err != nil {
		return fail(err)
	}
	if routeCount(s)+1 > r.cfg.MaxRoutesPerSession {
		return lines("ERROR|limit exceeded: routes per session")
	}
	id, err := r.newRouteIDLocked()
	if err != nil {
		return lines("ERROR|store unavailable")
	}
	s.staged.added[id] = spec
	r.stageChanged(s, now)
	return lines("ROUTE_OK|" + ridString(id))
}

type bulkEntry struct {
	Domains  json.RawMessage `json:"domains"`
	Path     *string         `json:"path"`
	Backend  *string         `json:"backend_url"`
	Priority json.RawMessage `json:"priority"`
}

func cmdRouteAddBulk(r *Registry, _ *conn, s *session, f []string, now time.Time) reply {
	raw := f[2]
	if !json.Valid([]byte(raw)) && len(f) > 3 {
		raw = strings.Join(f[2:], "|")
	}
	var entries []bulkEntry
	if err := json.Unmarshal([]byte(raw), &entries); err != nil || entries == nil && strings.TrimSpace(raw) != "[]" {
		return lines("ERROR|invalid json")
	}
	specs := make([]*routeSpec, 0, len(entries))
	for _, e := range entries {
		var domains []string
		if err := json.Unmarshal(e.Domains, &domains); err != nil {
			domains = nil
		}
		priority := "0"
		if len(e.Priority) > 0 {
			var n json.Number
			if err := json.Unmarshal(e.Priority, &n); err != nil || strings.ContainsAny(n.String(), ".eE") {
				return lines("ERROR|invalid priority")
			}
			priority = n.String()
		}
		ds, err := normaliseDomains(trimmedItems(domains))
		if err != nil {
			return fail(err)
		}
		path, backend := "", ""
		if e.Path != nil {
			path = *e.Path
		}
		if e.Backend != nil {
			backend = *e.Backend
		}
		spec, err := parseRouteFields(strings.Join(ds, ","), path, backend, priority)
		if err != nil {
			return fail(err)
		}
		specs = append(specs, spec)
	}
	if routeCount(s)+len(specs) > r.cfg.MaxRoutesPerSession {
		return lines("ERROR|limit exceeded: routes per session")
	}
	ids, err := r.newRouteIDsLocked(len(specs))
	if err != nil {
		return lines("ERROR|store unavailable")
	}
	out := make([]map[string]string, 0, len(specs))
	for i, spec := range specs {
		id := ids[i]
		s.staged.added[id] = spec
		out = append(out, map[string]string{"route_id": ridString(id), "status": "ok"})
	}
	r.stageChanged(s, now)
	return jsonReply("ROUTE_BULK_OK", out)
}

func trimmedItems(items []string) []string {
	var out []string
	for _, it := range items {
		if it = strings.Trim(it, " "); it != "" {
			out = append(out, it)
		}
	}
	return out
}

// lookupRoute resolves a rid of the session: its staged value or its
// active one (with any staged update applied).
func (s *session) routeValue(id uint64) (spec *routeSpec, staged, active bool) {
	if sp, ok := s.staged.added[id]; ok {
		return sp, true, false
	}
	if rt, ok := s.routes[id]; ok {
		if up, ok := s.staged.updates[id]; ok {
			return up, false, true
		}
		v := rt.spec
		return &v, false, true
	}
	return nil, false, false
}

func cmdRouteUpdate(r *Registry, _ *conn, s *session, f []string, now time.Time) reply {
	id, ok := parseRouteID(f[2])
	if !ok {
		return lines("ERROR|route not found")
	}
	cur, staged, active := s.routeValue(id)
	if cur == nil || (active && s.staged.removals[id]) {
		return lines("ERROR|route not found")
	}
	next := *cur
	next.Domains = append([]string(nil), cur.Domains...)
	value := f[4]
	switch f[3] {
	case "backend_url":
		if !validBackendURL(value) {
			return lines("ERROR|invalid backend url")
		}
		next.Backend = value
	case "priority":
		p, err := parseInt(value, -1<<31, 1<<31-1, "invalid priority")
		if err != nil {
			return fail(err)
		}
		next.Priority = int32(p)
	case "domains":
		ds, err := parseDomains(value)
		if err != nil {
			return fail(err)
		}
		next.Domains = ds
	case "path":
		if err := validatePath(value); err != nil {
			return fail(err)
		}
		next.Path = value
	default:
		return lines("ERROR|unknown field")
	}
	if staged {
		s.staged.added[id] = &next
	} else {
		s.staged.updates[id] = &next
	}
	r.stageChanged(s, now)
	return lines("ROUTE_OK")
}

func cmdRouteRemove(r *Registry, _ *conn, s *session, f []string, now time.Time) reply {
	id, ok := parseRouteID(f[2])
	if !ok || !s.hasRoute(id) {
		return lines("ERROR|route not found")
	}
	if _, staged := s.staged.added[id]; staged {
		s.staged.dropRoute(id)
	} else {
		s.staged.removals[id] = true
		delete(s.staged.updates, id)
	}
	r.stageChanged(s, now)
	return lines("ROUTE_OK")
}

func cmdRouteList(_ *Registry, _ *conn, s *session, _ []string, _ time.Time) reply {
	ids := make([]uint64, 0, len(s.routes)+len(s.staged.added))
	for id := range s.routes {
		ids = append(ids, id)
	}
	for id := range s.staged.added {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	out := make([]map[string]any, 0, len(ids))
	for _, id := range ids {
		var spec routeSpec
		status := "staged"
		if rt, ok := s.routes[id]; ok {
			spec, status = rt.spec, s.routeStatus(id)
		} else {
			spec = *s.staged.added[id]
		}
		rid := ridString(id)
		e := map[string]any{
			"route_id": rid, "id": rid, "domains": spec.Domains, "path": spec.Path,
			"backend": spec.Backend, "priority": spec.Priority, "status": status,
		}
		if up, ok := s.staged.updates[id]; ok && status == "active" {
			e["staged_update"] = map[string]any{"backend": up.Backend, "domains": up.Domains, "path": up.Path, "priority": up.Priority}
		}
		out = append(out, e)
	}
	return jsonReply("ROUTE_LIST_OK", out)
}

func cmdHeadersSet(r *Registry, _ *conn, s *session, f []string, now time.Time) reply {
	targets, err := s.resolveTarget(f[2])
	if err != nil {
		return fail(err)
	}
	name := f[3]
	if !validHeaderName(name) {
		return lines("ERROR|invalid header name")
	}
	name = canonicalHeader(name)
	if forbiddenHeaders[name] {
		return lines("ERROR|header not allowed: " + sanitize(f[3]))
	}
	value := f[4]
	if !validHeaderValue(value) {
		return lines("ERROR|invalid header value")
	}
	for _, t := range targets {
		v := value
		s.staged.headers.set(t, name, &v)
	}
	r.stageChanged(s, now)
	return lines("HEADERS_OK")
}

func cmdHeadersRemove(r *Registry, _ *conn, s *session, f []string, now time.Time) reply {
	targets, err := s.resolveTarget(f[2])
	if err != nil {
		return fail(err)
	}
	if !validHeaderName(f[3]) {
		return lines("ERROR|invalid header name")
	}
	name := canonicalHeader(f[3])
	for _, t := range targets {
		s.staged.headers.set(t, name, nil)
	}
	r.stageChanged(s, now)
	return lines("HEADERS_OK")
}

func cmdOptionsSet(r *Registry, _ *conn, s *session, f []string, now time.Time) reply {
	targets, err := s.resolveTarget(f[2])
	if err != nil {
		return fail(err)
	}
	key, value := f[3], f[4]
	if key == "" {
		return lines("ERROR|invalid option key")
	}
	if err := validateOption(key, value); err != nil {
		return fail(err)
	}
	for _, t := range targets {
		v := value
		s.staged.options.set(t, key, &v)
	}
	r.stageChanged(s, now)
	return lines("OPTIONS_OK")
}

func cmdOptionsRemove(r *Registry, _ *conn, s *session, f []string, now time.Time) reply {
	targets, err := s.resolveTarget(f[2])
	if err != nil {
		return fail(err)
	}
	if f[3] == "" {
		return lines("ERROR|invalid option key")
	}
	for _, t := range targets {
		s.staged.options.set(t, f[3], nil)
	}
	r.stageChanged(s, now)
	return lines("OPTIONS_OK")
}

// sessionRoute resolves a rid field to a route of the session in any state.
func sessionRoute(s *session, field string) (uint64, bool) {
	id, ok := parseRouteID(field)
	return id, ok && s.hasRoute(id)
}

func cmdHealthSet(r *Registry, _ *conn, s *session, f []string, now time.Time) reply {
	id, ok := sessionRoute(s, f[2])
	if !ok {
		return lines("ERROR|route not found")
	}
	if err := validatePath(f[3]); err != nil {
		return fail(err)
	}
	interval, err := parseDuration(f[4])
	if err != nil || (interval != 0 && interval < time.Second) {
		return lines("ERROR|invalid duration")
	}
	timeout, err := parseDuration(f[5])
	if err != nil || timeout <= 0 {
		return lines("ERROR|invalid duration")
	}
	if interval > 0 && timeout > interval {
		timeout = interval
	}
	h := &healthCfg{Path: f[3], Interval: interval, Timeout: timeout, UnhealthyAfter: 2, HealthyAfter: 1}
	for i, dst := range []*int32{&h.UnhealthyAfter, &h.HealthyAfter} {
		if v := strings.Trim(field(f, 6+i), " "); v != "" {
			n, err := parseInt(v, 1, 100, "invalid threshold")
			if err != nil {
				return fail(err)
			}
			*dst = int32(n)
		}
	}
	s.staged.health[id] = h
	r.stageChanged(s, now)
	return lines("HEALTH_OK")
}

func cmdRatelimitSet(r *Registry, _ *conn, s *session, f []string, now time.Time) reply {
	id, ok := sessionRoute(s, f[2])
	if !ok {
		return lines("ERROR|route not found")
	}
	n, err := parseInt(f[3], 0, 1<<40, "invalid requests")
	if err != nil {
		return fail(err)
	}
	window, err := parseDuration(f[4])
	if err != nil || window <= 0 {
		return lines("ERROR|invalid duration")
	}
	s.staged.rates[id] = &rateCfg{Requests: n, Window: window}
	r.stageChanged(s, now)
	return lines("RATELIMIT_OK")
}

func cmdBreakerSet(r *Registry, _ *conn, s *session, f []string, now time.Time) reply {
	id, ok := sessionRoute(s, f[2])
	if !ok {
		return lines("ERROR|route not found")
	}
	th, err := parseInt(f[3], 0, 1<<31-1, "invalid threshold")
	if err != nil {
		return fail(err)
	}
	timeout, err := parseDuration(f[4])
	if err != nil || timeout <= 0 {
		return lines("ERROR|invalid duration")
	}
	ho, err := parseInt(f[5], 1, 1000, "invalid half_open_requests")
	if err != nil {
		return fail(err)
	}
	s.staged.breakers[id] = &breakerCfg{Threshold: th, Timeout: timeout, HalfOpen: int32(ho)}
	r.stageChanged(s, now)
	return lines("CIRCUIT_OK")
}

func cmdConfigValidate(r *Registry, _ *conn, s *session, _ []string, _ time.Time) reply {
	if err := r.validateLocked(s, r.candidateLocked(s, scopeAll)); err != nil {
		return fail(err)
	}
	return lines("OK")
}

func cmdConfigApply(r *Registry, _ *conn, s *session, _ []string, now time.Time) reply {
	return r.applyReply(s, scopeAll, now)
}

func cmdConfigApplyPartial(r *Registry, _ *conn, s *session, f []string, now time.Time) reply {
	items := splitList(f[2])
	if len(items) == 0 {
		return lines("ERROR|invalid format")
	}
	var sc scopes
	for _, it := range items {
		v, ok := scopeNames[it]
		if !ok {
			return lines("ERROR|unknown scope: " + sanitize(it))
		}
		sc |= v
	}
	return r.applyReply(s, sc, now)
}

func (r *Registry) applyReply(s *session, sc scopes, now time.Time) reply {
	res, err := r.applyLocked(s, sc, now)
	r.metrics.countApply(err)
	if err != nil {
		return fail(err)
	}
	rep := r.persisted(lines("OK"))
	rep.after = func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.emitLocked(s, "config_applied", map[string]any{
			"session_id": s.id, "added": res.added, "updated": res.updated, "removed": res.removed,
			"routes_active": len(s.routes), "at": ts(now),
		})
	}
	return rep
}

func cmdConfigRollback(r *Registry, _ *conn, s *session, _ []string, _ time.Time) reply {
	s.staged = newChangeSet()
	return lines("OK")
}

func cmdConfigDiff(_ *Registry, _ *conn, s *session, _ []string, _ time.Time) reply {
	st := s.staged
	rids := func(m []uint64) []string {
		out := make([]string, 0, len(m))
		for _, id := range m {
			out = append(out, ridString(id))
		}
		return out
	}
	return jsonReply("DIFF_OK", map[string]any{
		"circuit_breakers": len(st.breakers), "headers": st.headers.count(), "health": len(st.health),
		"options": st.options.count(), "ratelimits": len(st.rates),
		"routes": map[string]any{
			"added": len(st.added), "added_ids": rids(sortedIDs(st.added)),
			"removed": len(st.removals), "removed_ids": rids(sortedIDs(st.removals)),
			"updated": len(st.updates), "updated_ids": rids(sortedIDs(st.updates)),
		},
	})
}
