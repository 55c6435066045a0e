package upstream

import (
	"sync/atomic"
	"time"
)

// Config is the immutable configuration of one route as the data plane
// uses it. The registry builds a new Config at each apply and swaps it into
// the Member; requests in flight keep the one they started with.
type Config struct {
	Backend      *Backend
	Timeout      time.Duration // response-header timeout (§6.9 timeout)
	WebSocket    bool
	Compression  bool
	PreserveHost bool
	MaxBodySize  int64
	Retries      int
	// Headers are set on every relayed response (§6.10), names canonical.
	Headers []Header
	// HealthPath is used by MAINT_EXIT verification; "" without a check.
	HealthPath string
}

// Header is one response header a route sets.
type Header struct {
	Name, Value []byte
}

// Member is one active route's live state: what selection reads and what
// forwarding, the health checker and the breaker write. It survives
// re-publishes of the routing table; the registry replaces it only when the
// route is removed.
type Member struct {
	RouteID uint64
	Session *Session

	config  atomic.Pointer[Config]
	maint   atomic.Pointer[Maintenance]
	limiter atomic.Pointer[TokenBucket]

	Breaker Breaker
	Health  Health
	Stats   Stats

	InFlight atomic.Int64
	events   Events
}

// NewMember returns a member with its configuration set. events may be nil.
func NewMember(routeID uint64, session *Session, cfg *Config, events Events) *Member {
	m := &Member{RouteID: routeID, Session: session, events: events}
	m.config.Store(cfg)
	m.Breaker.owner = m
	m.Breaker.Configure(DefaultBreakerSettings)
	m.Health.owner = m
	m.Health.reset()
	return m
}

// Config returns the route's current configuration.
func (m *Member) Config() *Config { return m.config.Load() }

// SetConfig swaps the route's configuration. A changed backend URL resets
// the breaker and the health verdict (registry-v2 §4.17).
func (m *Member) SetConfig(cfg *Config) {
	old := m.config.Swap(cfg)
	if old != nil && old.Backend != cfg.Backend && old.Backend.URL != cfg.Backend.URL {
		m.Breaker.Reset()
		m.Health.reset()
	}
}

// SetRateLimit installs a fresh, full token bucket, or removes the limit
// when requests is 0.
func (m *Member) SetRateLimit(requests int64, window time.Duration) {
	if requests <= 0 {
		m.limiter.Store(nil)
		return
	}
	m.limiter.Store(NewTokenBucket(requests, window))
}

// refundToken returns a token taken for a request that was refused
// before it reached the backend.
func (m *Member) refundToken() {
	if b := m.limiter.Load(); b != nil {
		b.Refund()
	}
}

// RateLimit reports the current limit settings, if any.
func (m *Member) RateLimit() (requests int64, window time.Duration, ok bool) {
	b := m.limiter.Load()
	if b == nil {
		return 0, 0, false
	}
	return b.capacity, b.window, true
}

// Maintenance describes a route in maintenance. Page is nil for the
// built-in page.
type Maintenance struct {
	PageURL   string
	Page      *Backend
	EnteredAt time.Time
}

// SetMaintenance puts the route into maintenance (nil takes it out).
func (m *Member) SetMaintenance(mt *Maintenance) { m.maint.Store(mt) }

// Maintenance returns the route's maintenance state, nil when serving.
func (m *Member) Maintenance() *Maintenance { return m.maint.Load() }

// Events receives the live-state changes that the registry reports to
// subscribed sessions. Implementations must not block.
type Events interface {
	HealthChanged(m *Member, healthy bool, reason string)
	BreakerChanged(m *Member, from, to BreakerState, failures int64)
}
