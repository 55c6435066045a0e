package upstream

import (
	"sync/atomic"
	"time"
)

// Session is the live state of one registry session that every one of its
// routes reads per request: whether it is connected (its members are
// connected, otherwise standby) and its drain.
type Session struct {
	ID          string
	ServiceName string

	connected atomic.Bool
	drain     atomic.Pointer[Drain]
	// InFlight counts HTTP requests in progress and open WebSocket
	// tunnels on the session's routes (DRAIN_STATUS in_flight).
	InFlight atomic.Int64
}

// NewSession returns a session in the given connection state.
func NewSession(id, service string, connected bool) *Session {
	s := &Session{ID: id, ServiceName: service}
	s.connected.Store(connected)
	return s
}

// SetConnected records whether a registry connection is bound.
func (s *Session) SetConnected(c bool) { s.connected.Store(c) }

// Connected reports whether a registry connection is bound.
func (s *Session) Connected() bool { return s.connected.Load() }

// Drain is a session's drain schedule (registry-v2 §6.5).
type Drain struct {
	StartedAt time.Time
	EndsAt    time.Time
}

// SetDrain starts (or with nil cancels) the session's drain.
func (s *Session) SetDrain(d *Drain) { s.drain.Store(d) }

// Drain returns the drain, nil when none is active or completed.
func (s *Session) Drain() *Drain { return s.drain.Load() }

// Share returns the session's share of new requests in parts per million
// at now: 1e6 without a drain, falling linearly to 0 at the end.
func (d *Drain) Share(now int64) int64 {
	start, end := d.StartedAt.UnixNano(), d.EndsAt.UnixNano()
	if now >= end {
		return 0
	}
	if now <= start {
		return 1_000_000
	}
	return (end - now) * 1_000_000 / (end - start)
}

// Percent is DRAIN_STATUS traffic_percent: 100 − floor(100 × elapsed /
// duration), clamped, and 0 once completed.
func (d *Drain) Percent(now time.Time) int64 {
	dur := d.EndsAt.Sub(d.StartedAt)
	if !now.Before(d.EndsAt) || dur <= 0 {
		return 0
	}
	elapsed := now.Sub(d.StartedAt)
	if elapsed < 0 {
		elapsed = 0
	}
	p := 100 - int64(100*elapsed/dur)
	return max(0, min(100, p))
}
