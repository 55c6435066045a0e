package registry

import (
	"time"

	"github.com/go-proxy/go-proxy/upstream"
)

// eventTypes are the subscribable events of §5.2.
var eventTypes = map[string]bool{
	"backend_health_changed": true, "circuit_state_changed": true, "config_applied": true,
	"maintenance_changed": true, "drain_completed": true, "server_shutdown": true, "*": true,
}

// liveEvent is a change reported by the data plane or the health checker.
// They arrive on a buffered channel so the request path never waits for
// the registry's lock; when the channel is full the event is dropped.
type liveEvent struct {
	member  *upstream.Member
	kind    string
	payload map[string]any
}

// HealthChanged implements upstream.Events.
func (r *Registry) HealthChanged(m *upstream.Member, healthy bool, reason string) {
	r.offer(liveEvent{member: m, kind: "backend_health_changed", payload: map[string]any{
		"route_id": ridString(m.RouteID), "backend": m.Config().Backend.URL, "healthy": healthy,
		"reason": reason, "at": ts(time.Now()),
	}})
}

// BreakerChanged implements upstream.Events.
func (r *Registry) BreakerChanged(m *upstream.Member, from, to upstream.BreakerState, failures int64) {
	r.offer(liveEvent{member: m, kind: "circuit_state_changed", payload: map[string]any{
		"route_id": ridString(m.RouteID), "backend": m.Config().Backend.URL, "state": to.String(),
		"previous_state": from.String(), "failures": failures, "at": ts(time.Now()),
	}})
}

func (r *Registry) offer(e liveEvent) {
	select {
	case r.liveEvent <- e:
	default:
	}
}

func (r *Registry) deliverLiveEvents() {
	defer r.stopped.Done()
	for {
		select {
		case <-r.stop:
			return
		case e := <-r.liveEvent:
			r.mu.Lock()
			if s := r.sessions[e.member.Session.ID]; s != nil && s.live == e.member.Session {
				r.emitLocked(s, e.kind, e.payload)
			}
			r.mu.Unlock()
		}
	}
}

// emitLocked queues an event line on the session's connection if it is
// connected and subscribed (§5.2). Events for sessions in grace are dropped.
func (r *Registry) emitLocked(s *session, kind string, payload map[string]any) {
	if s.conn == nil || !s.subscribed(kind) {
		return
	}
	body, err := marshalJSON(payload)
	if err != nil {
		return
	}
	s.conn.queueEvent("EVENT|" + kind + "|" + body)
}
