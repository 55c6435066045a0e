package upstream

import (
	"errors"
	"net/netip"
	"sync"
	"time"

	"github.com/go-proxy/go-proxy/router"
	"github.com/valyala/fasthttp"
)

// Settings configure the request path.
type Settings struct {
	// DefaultTimeout is the response-header timeout of routes without a
	// timeout option (registry-v2 §1.8: 60 s).
	DefaultTimeout time.Duration
	// TrustedProxies are the peers whose X-Forwarded-For is kept and
	// appended to; from anyone else it is replaced.
	TrustedProxies []netip.Prefix
	// MaintenancePageTimeout bounds the wait for a maintenance page's
	// response headers before the built-in page is served (§6.4: 10 s).
	MaintenancePageTimeout time.Duration
	// Scheme is "http" or "https", for X-Forwarded-Proto.
	Scheme string
	// MaxRequestHeaders bounds a request's header lines; more get 431
	// (guard.go). 0 means DefaultMaxRequestHeaders.
	MaxRequestHeaders int
	// AccessLog receives one entry per settled request; nil turns the
	// access log off at the cost of one nil check (accesslog.go).
	AccessLog AccessLog
	// Counters are the proxy-wide counters (metrics.go); proxies built
	// from the same Settings share them. nil: the proxy makes its own.
	Counters *ProxyCounters
}

// Proxy is the fasthttp request handler of the data plane.
type Proxy struct {
	table    *router.Table[*Member]
	settings Settings
	scheme   []byte
	calls    sync.Pool
	counters *ProxyCounters
}

// NewProxy returns a proxy serving the routes of table.
func NewProxy(table *router.Table[*Member], s Settings) *Proxy {
	if s.DefaultTimeout <= 0 {
		s.DefaultTimeout = 60 * time.Second
	}
	if s.MaintenancePageTimeout <= 0 {
		s.MaintenancePageTimeout = 10 * time.Second
	}
	if s.Scheme == "" {
		s.Scheme = "http"
	}
	if s.Counters == nil {
		s.Counters = new(ProxyCounters)
	}
	p := &Proxy{table: table, settings: s, scheme: []byte(s.Scheme), counters: s.Counters}
	p.calls.New = func() any { return &call{proxy: p} }
	return p
}

// Handle serves one request. It is a fasthttp.RequestHandler.
func (p *Proxy) Handle(ctx *fasthttp.RequestCtx) {
	// fasthttp stamps each request once its headers are read; a context
	// made by hand (tests) has no stamp.
	start := ctx.Time()
	if start.IsZero() {
		start = time.Now()
	}
	now := start.UnixNano()
	path, present, ok := p.admit(ctx)
	if !ok {
		p.logGenerated(ctx, nil, start) // refused before routing (guard.go)
		return
	}
	pool := p.table.Load().Lookup(ctx.Host(), path)
	if pool == nil {
		writeNotFound(ctx)
		p.counters.unmatched.Add(1)
		p.logGenerated(ctx, nil, start)
		return
	}
	upgrade := isWebSocketUpgrade(&ctx.Request.Header, present)
	var tried uint64
	for attempt := 0; ; attempt++ {
		pl, ok := p.pick(ctx, pool, now, tried, start, present, upgrade)
		if !ok {
			return
		}
		m := pl.member
		if pl.maintenance {
			if err := p.forwardTo(ctx, m, pl.cfg, false, start, true, present); err != nil {
				writeBuiltinMaintenance(ctx)
				p.recordGenerated(ctx, m, start)
			}
			return
		}
		if upgrade {
			p.tunnel(ctx, m, pl.cfg, pl.trial, start, present)
			return
		}
		err := p.forward(ctx, m, pl.cfg, pl.trial, start, present)
		if err == nil {
			return
		}
		if p.retries(ctx, pool, m, pl.cfg, err, attempt, &tried) {
			continue
		}
		p.writeForwardError(ctx, m, err, start)
		return
	}
}

// plan is where a request goes: the member's backend, or (maintenance) the
// member's maintenance page.
type plan struct {
	member      *Member
	cfg         *Config
	trial       bool
	maintenance bool
}

// pick runs member selection for one attempt of the request. When it
// returns false it has written (and counted) the response the proxy
// generates instead: unavailable, draining, rate limited, the built-in
// maintenance page, or a refusal by the route's settings.
func (p *Proxy) pick(ctx *fasthttp.RequestCtx, pool *router.Pool[*Member], now int64, tried uint64, start time.Time, present headerSet, upgrade bool) (plan, bool) {
	c := choose(pool, now, tried)
	m := c.member
	switch c.outcome {
	case outcomeUnavailable:
		writeUnavailable(ctx)
		p.recordGenerated(ctx, m, start)
		return plan{}, false
	case outcomeDrain:
		writeDraining(ctx)
		m.Stats.drained.Add(1)
		p.recordGenerated(ctx, m, start)
		return plan{}, false
	case outcomeRateLimited:
		writeRateLimited(ctx, c.retryAfter)
		m.Stats.rateLimited.Add(1)
		p.recordGenerated(ctx, m, start)
		return plan{}, false
	case outcomeMaintenance:
		mt := m.maint.Load()
		if mt == nil || mt.Page == nil || isWebSocketUpgrade(&ctx.Request.Header, present) {
			writeBuiltinMaintenance(ctx)
			p.recordGenerated(ctx, m, start)
			return plan{}, false
		}
		return plan{member: m, cfg: &Config{Backend: mt.Page, Timeout: p.settings.MaintenancePageTimeout}, maintenance: true}, true
	}
	cfg := m.Config()
	if upgrade && !cfg.WebSocket {
		m.Breaker.Release(c.trial)
		m.refundToken()
		writeText(ctx, fasthttp.StatusBadRequest, bodyWSNotAllowed)
		p.recordGenerated(ctx, m, start)
		return plan{}, false
	}
	if cfg.MaxBodySize > 0 && int64(ctx.Request.Header.ContentLength()) > cfg.MaxBodySize {
		m.Breaker.Release(c.trial)
		m.refundToken()
		writeText(ctx, fasthttp.StatusRequestEntityTooLarge, bodyTooLarge)
		p.recordGenerated(ctx, m, start)
		return plan{}, false
	}
	return plan{member: m, cfg: cfg, trial: c.trial}, true
}

// retries reports whether a failed attempt is tried again on another
// member of the pool (a connect failure of an idempotent request, within
// the route's retries), marking m as tried.
func (p *Proxy) retries(ctx *fasthttp.RequestCtx, pool *router.Pool[*Member], m *Member, cfg *Config, err error, attempt int, tried *uint64) bool {
	var dialErr *DialError
	if errors.As(err, &dialErr) && attempt < cfg.Retries && isIdempotent(ctx) && len(pool.Members) > 1 {
		*tried |= memberBit(pool, m)
		return true
	}
	return false
}

func memberBit(pool *router.Pool[*Member], m *Member) uint64 {
	for i, x := range pool.Members {
		if x == m && i < maxPoolScan {
			return uint64(1) << i
		}
	}
	return 0
}

func isIdempotent(ctx *fasthttp.RequestCtx) bool {
	h := &ctx.Request.Header
	return h.IsGet() || h.IsHead() || h.IsOptions() || h.IsTrace() || h.IsPut() || h.IsDelete()
}

func (p *Proxy) writeForwardError(ctx *fasthttp.RequestCtx, m *Member, err error, start time.Time) {
	switch {
	case errors.Is(err, errBodyTooLarge):
		writeText(ctx, fasthttp.StatusRequestEntityTooLarge, bodyTooLarge)
	case err == errClientBody:
		refuse(ctx, fasthttp.StatusBadRequest, bodyBadRequest)
	case err == errClientTimeout:
		refuse(ctx, fasthttp.StatusRequestTimeout, bodyRequestTimeout)
	case errors.Is(err, fasthttp.ErrTimeout):
		writeText(ctx, fasthttp.StatusGatewayTimeout, bodyGatewayTimeout)
	default:
		writeText(ctx, fasthttp.StatusBadGateway, bodyBadGateway)
	}
	p.recordGenerated(ctx, m, start)
}

// recordGenerated counts a response the proxy made itself for member m.
func (p *Proxy) recordGenerated(ctx *fasthttp.RequestCtx, m *Member, start time.Time) {
	if m == nil {
		return
	}
	now := time.Now()
	m.Stats.Record(ctx.Response.StatusCode(), now.Sub(start), int64(len(ctx.Response.Body())), 0, false, now.UnixNano())
	p.logGenerated(ctx, m, start)
}
