package upstream

import "time"

// MemberState is a read-only copy of one member's live state, for the
// admin API. Reading it changes nothing (an expired open breaker is
// reported half-open without being moved there).
type MemberState struct {
	RouteID   uint64
	SessionID string
	Service   string
	// Connected is false while the member's session is in grace (the
	// member is then a standby).
	Connected bool
	Backend   string
	// HealthPath is the active check's path, "" without a check (such a
	// member is always healthy).
	HealthPath string
	Healthy    bool

	BreakerEnabled     bool
	Breaker            BreakerState
	BreakerFailures    int64
	BreakerLastFailure time.Time // zero: never
	BreakerNextAttempt time.Time // zero unless open

	Maintenance *Maintenance // nil when serving
	Drain       *Drain       // nil without a drain
	// DrainShare is the session's share of new requests, 1 without a
	// drain, falling to 0 when the drain completes.
	DrainShare float64

	RateLimitRequests int64 // 0 without a rate limit
	RateLimitWindow   time.Duration

	InFlight int64
	Counters StatsCounters
}

// State reads the member's live state at now.
func (m *Member) State(now time.Time) MemberState {
	ns := now.UnixNano()
	st := MemberState{
		RouteID:    m.RouteID,
		Healthy:    m.Health.Healthy(),
		Breaker:    m.Breaker.StateAt(ns),
		InFlight:   m.InFlight.Load(),
		Counters:   m.Stats.Counters(),
		DrainShare: 1,
	}
	if s := m.Session; s != nil {
		st.SessionID, st.Service, st.Connected = s.ID, s.ServiceName, s.Connected()
		if d := s.Drain(); d != nil {
			st.Drain = d
			st.DrainShare = float64(d.Share(ns)) / 1e6
		}
	}
	if cfg := m.Config(); cfg != nil {
		if cfg.Backend != nil {
			st.Backend = cfg.Backend.URL
		}
		st.HealthPath = cfg.HealthPath
	}
	st.BreakerEnabled = m.Breaker.Settings().Threshold > 0
	failures, _, last, next := m.Breaker.Snapshot()
	st.BreakerFailures = failures
	if last != 0 {
		st.BreakerLastFailure = time.Unix(0, last)
	}
	if next != 0 {
		st.BreakerNextAttempt = time.Unix(0, next)
	}
	st.Maintenance = m.Maintenance()
	if req, win, ok := m.RateLimit(); ok {
		st.RateLimitRequests, st.RateLimitWindow = req, win
	}
	return st
}
