package registry

import (
	"regexp"
	"strings"
	"time"

	"github.com/go-proxy/go-proxy/health"
	"github.com/go-proxy/go-proxy/upstream"
)

var ridListPattern = regexp.MustCompile(`^ *r[1-9][0-9]* *(, *r[1-9][0-9]* *)*$`)

// maintTargets resolves a maintenance target (§4.23) to active routes.
func maintTargets(s *session, target string) ([]*activeRoute, bool, error) {
	if target == "ALL" {
		out := make([]*activeRoute, 0, len(s.routes))
		for _, id := range sortedIDs(s.routes) {
			out = append(out, s.routes[id])
		}
		return out, true, nil
	}
	var out []*activeRoute
	switch {
	case ridListPattern.MatchString(target):
		for _, item := range splitList(target) {
			id, _ := parseRouteID(item)
			rt := s.routes[id]
			if rt == nil {
				return nil, false, protoError("route not found")
			}
			out = append(out, rt)
		}
	case strings.HasPrefix(target, "/"):
		for _, id := range sortedIDs(s.routes) {
			if s.routes[id].spec.Path == target {
				out = append(out, s.routes[id])
			}
		}
	default:
		domain := strings.TrimSuffix(strings.ToLower(target), ".")
		for _, id := range sortedIDs(s.routes) {
			for _, d := range s.routes[id].spec.Domains {
				if d == domain {
					out = append(out, s.routes[id])
					break
				}
			}
		}
	}
	if len(out) == 0 {
		return nil, false, protoError("route not found")
	}
	return out, false, nil
}

func (r *Registry) enterMaintenanceLocked(s *session, rt *activeRoute, pageURL string, now time.Time) {
	mt := &upstream.Maintenance{PageURL: pageURL, EnteredAt: now}
	if pageURL != "" {
		if be, err := r.transport.Backend(pageURL); err == nil {
			mt.Page = be
		}
	}
	rt.member.SetMaintenance(mt)
	s.maint[rt.id] = &maintEntry{PageURL: pageURL, EnteredAt: now}
}

func cmdMaintEnter(r *Registry, _ *conn, s *session, f []string, now time.Time) reply {
	target, page := f[2], f[3]
	routes, all, err := maintTargets(s, target)
	if err != nil {
		return fail(err)
	}
	if page != "" && !validPageURL(page) {
		return lines("ERROR|invalid maintenance page url")
	}
	for _, rt := range routes {
		r.enterMaintenanceLocked(s, rt, page, now)
	}
	if all {
		s.maintAll, s.maintAllAt, s.maintLastURL = true, now, page
	}
	version := r.touchLocked()
	echo := sanitize(target)
	deadline := now.Add(r.cfg.MaintenanceEnterDeadline)
	return reply{
		lines: []string{"ACK"},
		async: func() []string {
			r.persist.wait(version)
			if page == "" || verifyReachable([]string{page}, time.Second, 5*time.Second, deadline, r.cfg.BackendAllow) {
				return []string{"MAINT_OK|" + echo}
			}
			r.mu.Lock()
			for _, rt := range routes {
				if e := s.maint[rt.id]; e != nil && e.PageURL == page && e.EnteredAt.Equal(now) {
					e.PageURL = ""
					rt.member.SetMaintenance(&upstream.Maintenance{EnteredAt: now})
				}
			}
			if s.maintLastURL == page {
				s.maintLastURL = ""
			}
			r.touchLocked()
			r.mu.Unlock()
			return []string{"ERROR|timeout waiting for maintenance page to become reachable"}
		},
		after: r.maintEvent(s, "enter", target, page),
	}
}

func cmdMaintExit(r *Registry, _ *conn, s *session, f []string, now time.Time) reply {
	target := f[2]
	routes, all, err := maintTargets(s, target)
	if err != nil {
		return fail(err)
	}
	var urls []string
	seen := map[string]bool{}
	for _, rt := range routes {
		if rt.member.Maintenance() == nil {
			continue
		}
		rt.member.SetMaintenance(nil)
		delete(s.maint, rt.id)
		u := verifyURL(rt.spec.Backend, s.health[rt.id])
		if !seen[u] {
			seen[u] = true
			urls = append(urls, u)
		}
	}
	if all {
		s.maintAll, s.maintLastURL = false, ""
	}
	version := r.touchLocked()
	echo := sanitize(target)
	deadline := now.Add(r.cfg.MaintenanceExitDeadline)
	return reply{
		lines: []string{"ACK"},
		async: func() []string {
			r.persist.wait(version)
			if len(urls) == 0 || verifyReachable(urls, 500*time.Millisecond, 5*time.Second, deadline, r.cfg.BackendAllow) {
				return []string{"MAINT_OK|" + echo}
			}
			return []string{"ERROR|timeout waiting for backend to become reachable"}
		},
		after: r.maintEvent(s, "exit", target, ""),
	}
}

// verifyURL is what MAINT_EXIT probes for a backend: its health-check URL
// if it has one, otherwise the backend URL, which verifyReachable probes as
// §4.23 says (ws as http, "/" for an empty path).
func verifyURL(backend string, h *healthCfg) string {
	if h != nil {
		return health.ProbeTarget(backend, h.Path)
	}
	return backend
}

func (r *Registry) maintEvent(s *session, action, target, page string) func() {
	return func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.emitLocked(s, "maintenance_changed", map[string]any{
			"action": action, "target": target, "page_url": page,
			"in_maintenance": maintRIDs(s), "all": s.maintAll, "at": ts(time.Now()),
		})
	}
}

func maintRIDs(s *session) []string {
	out := []string{}
	for _, id := range sortedIDs(s.maint) {
		if _, active := s.routes[id]; active {
			out = append(out, ridString(id))
		}
	}
	return out
}

func cmdMaintStatus(_ *Registry, _ *conn, s *session, _ []string, _ time.Time) reply {
	routes := map[string]any{}
	var lastAt time.Time
	lastURL := ""
	for id, e := range s.maint {
		if _, active := s.routes[id]; !active {
			continue
		}
		routes[ridString(id)] = map[string]any{"entered_at": ts(e.EnteredAt), "page_url": e.PageURL}
		if e.EnteredAt.After(lastAt) || lastAt.IsZero() {
			lastAt, lastURL = e.EnteredAt, e.PageURL
		}
	}
	var entered any
	if s.maintAll && s.maintAllAt.After(lastAt) {
		lastAt = s.maintAllAt
		lastURL = s.maintLastURL
	}
	if !lastAt.IsZero() {
		entered = ts(lastAt)
	}
	return jsonReply("MAINT_STATUS_OK", map[string]any{
		"all": s.maintAll, "entered_at": entered, "in_maintenance": maintRIDs(s),
		"maintenance_backend": lastURL, "routes": routes,
	})
}
