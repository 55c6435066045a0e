package registry

import (
	"encoding/json"
	"sort"
	"time"
)

// SessionView is a read-only copy of one registry session for the admin
// API. It holds no reference into the registry's state.
type SessionView struct {
	ID       string          `json:"id"`
	Service  string          `json:"service"`
	Instance string          `json:"instance"`
	Metadata json.RawMessage `json:"metadata"`
	// Connected is false while the session is in grace.
	Connected bool `json:"connected"`
	// Replica holds the session's connection (shared store only).
	Replica        string     `json:"replica,omitempty"`
	RemoteAddr     string     `json:"remote_addr,omitempty"`
	ConnectedAt    time.Time  `json:"connected_at"`
	LastActivity   time.Time  `json:"last_activity"`
	LastApply      *time.Time `json:"last_apply"`
	DisconnectedAt *time.Time `json:"disconnected_at"`
	GraceEndsAt    *time.Time `json:"grace_ends_at"`
	// Routes are the active route ids, in order.
	Routes []string `json:"routes"`
	// StagedChanges reports staged configuration not yet applied.
	StagedChanges bool `json:"staged_changes"`
	// Maintenance lists the routes in maintenance.
	Maintenance []string   `json:"maintenance"`
	Drain       *DrainView `json:"drain"`
	InFlight    int64      `json:"in_flight"`
	// Subscriptions are the subscribed event types, sorted.
	Subscriptions []string `json:"subscriptions"`
}

// DrainView is a session's drain.
type DrainView struct {
	StartedAt      time.Time `json:"started_at"`
	EndsAt         time.Time `json:"ends_at"`
	Completed      bool      `json:"completed"`
	TrafficPercent int64     `json:"traffic_percent"`
}

// Sessions returns every registry session (connected and in grace),
// ordered by service, instance and id. It holds the registry lock only
// while copying.
func (r *Registry) Sessions() []SessionView {
	now := time.Now()
	r.mu.Lock()
	out := make([]SessionView, 0, len(r.sessions))
	for _, s := range r.sessions {
		v := SessionView{
			ID: s.id, Service: s.service, Instance: s.instance,
			Metadata:  append(json.RawMessage(nil), s.metadata...),
			Connected: s.conn != nil, ConnectedAt: s.connectedAt, LastActivity: s.lastActivity,
			StagedChanges: !s.staged.empty(),
			InFlight:      s.live.InFlight.Load(),
			Routes:        make([]string, 0, len(s.routes)),
			Maintenance:   make([]string, 0, len(s.maint)),
			Subscriptions: make([]string, 0, len(s.subs)),
		}
		if len(v.Metadata) == 0 {
			v.Metadata = nil
		}
		if rec := s.stored.rec; rec != nil {
			v.Replica = rec.Owner
			v.Connected = v.Connected || rec.Connected && rec.Owner != r.shared.replica
		}
		if s.conn != nil && s.conn.ip.IsValid() {
			v.RemoteAddr = s.conn.ip.String()
		}
		if !s.lastApply.IsZero() {
			t := s.lastApply
			v.LastApply = &t
		}
		if !s.disconnectedAt.IsZero() && s.conn == nil {
			d, g := s.disconnectedAt, s.disconnectedAt.Add(r.cfg.Grace)
			v.DisconnectedAt, v.GraceEndsAt = &d, &g
		}
		for _, id := range sortedIDs(s.routes) {
			v.Routes = append(v.Routes, ridString(id))
		}
		for _, id := range sortedIDs(s.maint) {
			v.Maintenance = append(v.Maintenance, ridString(id))
		}
		for ev, on := range s.subs {
			if on {
				v.Subscriptions = append(v.Subscriptions, ev)
			}
		}
		if d := s.drain; d != nil {
			v.Drain = &DrainView{StartedAt: d.StartedAt, EndsAt: d.endsAt(), Completed: !now.Before(d.endsAt()),
				TrafficPercent: d.live().Percent(now)}
		}
		out = append(out, v)
	}
	r.mu.Unlock()
	for i := range out {
		sort.Strings(out[i].Subscriptions)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := &out[i], &out[j]
		if a.Service != b.Service {
			return a.Service < b.Service
		}
		if a.Instance != b.Instance {
			return a.Instance < b.Instance
		}
		return a.ID < b.ID
	})
	return out
}
