package registry

import (
	"encoding/json"
	"time"

	"github.com/go-proxy/go-proxy/upstream"
)

// session is the server-side record of one registered service instance
// (§2). All fields are guarded by Registry.mu.
type session struct {
	id        string
	service   string
	instance  string
	maintPort int
	metadata  json.RawMessage // nil: no metadata (reported as null)
	tokenFP   string

	connectedAt    time.Time
	lastActivity   time.Time
	lastApply      time.Time // zero: never
	disconnectedAt time.Time // zero while connected
	conn           *conn     // nil while in grace

	live *upstream.Session

	routes   map[uint64]*activeRoute
	headers  kvMaps
	options  kvMaps
	health   map[uint64]*healthCfg
	rates    map[uint64]*rateCfg
	breakers map[uint64]*breakerCfg
	staged   *changeSet

	maintAll     bool
	maintAllAt   time.Time
	maint        map[uint64]*maintEntry
	maintLastURL string

	drain *drainState
	subs  map[string]bool

	// static marks the reserved session of the routes file (static.go).
	static bool
	// stored is the session's shared-store record (shared.go).
	stored storedSession
}

func newSession(id, service, instance string, now time.Time) *session {
	return &session{
		id: id, service: service, instance: instance,
		connectedAt: now, lastActivity: now,
		live:     upstream.NewSession(id, service, true),
		routes:   map[uint64]*activeRoute{},
		headers:  kvMaps{},
		options:  kvMaps{},
		health:   map[uint64]*healthCfg{},
		rates:    map[uint64]*rateCfg{},
		breakers: map[uint64]*breakerCfg{},
		staged:   newChangeSet(),
		maint:    map[uint64]*maintEntry{},
		subs:     map[string]bool{},
	}
}

func (s *session) identity() identity { return identity{s.service, s.instance} }

type identity struct{ service, instance string }

// hasRoute reports whether id is one of the session's routes in any state.
func (s *session) hasRoute(id uint64) bool {
	if _, ok := s.routes[id]; ok {
		return true
	}
	_, ok := s.staged.added[id]
	return ok
}

// targetRoutes resolves a header or option target (§4.11): "ALL" or a list
// of the session's rids.
func (s *session) resolveTarget(target string) ([]string, error) {
	if target == "ALL" {
		return []string{"ALL"}, nil
	}
	items := splitList(target)
	if len(items) == 0 {
		return nil, protoError("route not found")
	}
	for _, it := range items {
		id, ok := parseRouteID(it)
		if !ok || !s.hasRoute(id) {
			return nil, protoError("route not found")
		}
	}
	return items, nil
}

func (s *session) subscribed(event string) bool { return s.subs[event] || s.subs["*"] }

// routeStatus returns the ROUTE_LIST status of an active route.
func (s *session) routeStatus(id uint64) string {
	if s.staged.removals[id] {
		return "pending_removal"
	}
	return "active"
}
