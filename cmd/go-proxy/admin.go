package main

import (
	"crypto/subtle"
	"embed"
	"encoding/json"
	"io"
	"io/fs"
	"net/http"
	"net/http/pprof"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/go-proxy/go-proxy/registry"
	"github.com/go-proxy/go-proxy/router"
	"github.com/go-proxy/go-proxy/upstream"
)

// The admin server: /healthz and /readyz for orchestrators, /metrics for
// Prometheus, a read-only JSON API and the dashboard that polls it. With
// an admin token every path but /healthz and /readyz needs it, as
// "Authorization: Bearer <token>" or "?token=<token>". A request that
// passes the token in the query also gets it back as an HttpOnly,
// SameSite=Strict cookie, so that the dashboard opened as /?token=… can
// load its script and poll the API.

// adminCookie carries the admin token for the dashboard's own requests.
const adminCookie = "goproxy_admin_token"

//go:embed dashboard
var dashboardFiles embed.FS

// adminServer holds what the admin server reads. Nothing here writes to the
// data plane or the registry.
type adminServer struct {
	table        *router.Table[*upstream.Member]
	counters     *upstream.ProxyCounters
	reg          *registry.Registry
	accessLog    *upstream.AccessLogWriter // nil without an access log
	loops        *upstream.LoopServer      // nil without event loops
	token        string
	shuttingDown *atomic.Bool
	started      time.Time
	// metrics is this server's own metric set: the scrape-time writers of
	// the data plane, the registry and the access log, and the admin
	// server's request counters. It is not registered globally, so
	// several servers in one process (tests) do not mix their series.
	metrics *metrics.Set
}

// adminPaths are the paths counted in goproxy_admin_requests_total; any
// other path counts as "other" so that the label stays bounded.
var adminPaths = []string{"/", "/metrics", "/healthz", "/readyz", "/api/routes", "/api/sessions", "/api/backends", "/api/stats", "/app.js", "/style.css", "/debug/pprof/"}

func newAdmin(a *adminServer) http.Handler {
	if a.started.IsZero() {
		a.started = time.Now()
	}
	a.metrics = metrics.NewSet()
	a.metrics.RegisterMetricsWriter(a.counters.WriteMetrics)
	a.metrics.RegisterMetricsWriter(func(w io.Writer) { upstream.WriteRouteMetrics(w, a.table.Load(), time.Now()) })
	a.metrics.RegisterMetricsWriter(a.reg.WriteMetrics)
	if a.accessLog != nil {
		a.metrics.RegisterMetricsWriter(a.accessLog.WriteMetrics)
	}
	if a.loops != nil {
		a.metrics.RegisterMetricsWriter(a.loops.WriteMetrics)
	}
	a.metrics.NewGauge("goproxy_start_time_seconds", func() float64 { return float64(a.started.UnixNano()) / 1e9 })
	a.metrics.NewGauge("goproxy_ready", func() float64 {
		if a.shuttingDown.Load() {
			return 0
		}
		return 1
	})
	a.metrics.NewCounter("goproxy_admin_unauthorized_total")
	for _, p := range append(adminPaths, "other") {
		a.metrics.NewCounter(`goproxy_admin_requests_total{path="` + p + `"}`)
	}

	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if a.shuttingDown.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, "shutting down\n")
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	mux.HandleFunc("/metrics", a.serveMetrics)
	mux.HandleFunc("/api/routes", a.serveRoutes)
	mux.HandleFunc("/api/sessions", a.serveSessions)
	mux.HandleFunc("/api/backends", a.serveBackends)
	mux.HandleFunc("/api/stats", a.serveStats)
	// Go's profiler, for a profile of the live proxy (and the build's
	// default.pgo): behind the token like everything else here.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/api/", func(w http.ResponseWriter, _ *http.Request) {
		writeJSONStatus(w, http.StatusNotFound, map[string]string{"error": "not found"})
	})
	static, err := fs.Sub(dashboardFiles, "dashboard")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.FileServer(http.FS(static))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Cache-Control", "no-cache")
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		files.ServeHTTP(w, r)
	})
	return a.guard(mux)
}

// guard counts requests, allows only reads and checks the admin token.
func (a *adminServer) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.metrics.GetOrCreateCounter(`goproxy_admin_requests_total{path="` + adminPathLabel(r.URL.Path) + `"}`).Inc()
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeJSONStatus(w, http.StatusMethodNotAllowed, map[string]string{"error": "the admin server is read-only"})
			return
		}
		if a.token != "" && r.URL.Path != "/healthz" && r.URL.Path != "/readyz" {
			via := a.authorized(r)
			if via == "" {
				a.metrics.GetOrCreateCounter("goproxy_admin_unauthorized_total").Inc()
				w.Header().Set("WWW-Authenticate", `Bearer realm="go-proxy admin"`)
				writeJSONStatus(w, http.StatusUnauthorized, map[string]string{"error": "unauthorized: send the admin token as Authorization: Bearer <token> or ?token=<token>"})
				return
			}
			if via == "query" {
				http.SetCookie(w, &http.Cookie{Name: adminCookie, Value: a.token, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
			}
		}
		next.ServeHTTP(w, r)
	})
}

func adminPathLabel(p string) string {
	for _, known := range adminPaths {
		if p == known {
			return p
		}
	}
	if strings.HasPrefix(p, "/debug/pprof/") {
		return "/debug/pprof/"
	}
	return "other"
}

// authorized reports how r carries the admin token: "bearer", "query",
// "cookie", or "" when it does not.
func (a *adminServer) authorized(r *http.Request) string {
	if h := r.Header.Get("Authorization"); h != "" {
		if scheme, tok, ok := strings.Cut(h, " "); ok && strings.EqualFold(scheme, "Bearer") && a.tokenMatches(strings.TrimSpace(tok)) {
			return "bearer"
		}
	}
	if a.tokenMatches(r.URL.Query().Get("token")) {
		return "query"
	}
	if c, err := r.Cookie(adminCookie); err == nil && a.tokenMatches(c.Value) {
		return "cookie"
	}
	return ""
}

func (a *adminServer) tokenMatches(got string) bool {
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(a.token)) == 1
}

func (a *adminServer) serveMetrics(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	a.metrics.WritePrometheus(w)
	// The default set (anything registered globally) and the Go runtime
	// and process series.
	metrics.WritePrometheus(w, true)
}

func writeJSONStatus(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(true)
	_ = enc.Encode(v)
}

func writeJSON(w http.ResponseWriter, v any) { writeJSONStatus(w, http.StatusOK, v) }

// JSON shapes of the API.

type breakerJSON struct {
	State       string     `json:"state"`
	Enabled     bool       `json:"enabled"`
	Failures    int64      `json:"failures"`
	Threshold   int64      `json:"threshold"`
	LastFailure *time.Time `json:"last_failure"`
	NextAttempt *time.Time `json:"next_attempt"`
}

type maintenanceJSON struct {
	PageURL   string    `json:"page_url"`
	EnteredAt time.Time `json:"entered_at"`
}

type drainJSON struct {
	StartedAt      time.Time `json:"started_at"`
	EndsAt         time.Time `json:"ends_at"`
	TrafficPercent float64   `json:"traffic_percent"`
	Completed      bool      `json:"completed"`
}

type rateLimitJSON struct {
	Requests      int64   `json:"requests"`
	WindowSeconds float64 `json:"window_seconds"`
}

type backendJSON struct {
	RouteID     string           `json:"route_id"`
	Service     string           `json:"service"`
	SessionID   string           `json:"session_id"`
	Backend     string           `json:"backend"`
	Connected   bool             `json:"connected"`
	Healthy     bool             `json:"healthy"`
	HealthCheck *string          `json:"health_check"`
	Breaker     breakerJSON      `json:"breaker"`
	Maintenance *maintenanceJSON `json:"maintenance"`
	Drain       *drainJSON       `json:"drain"`
	RateLimit   *rateLimitJSON   `json:"rate_limit"`
	InFlight    int64            `json:"in_flight"`
}

type latencyJSON struct {
	AvgMS float64 `json:"avg_ms"`
	P95MS float64 `json:"p95_ms"`
	P99MS float64 `json:"p99_ms"`
	// Count and SumSeconds are the cumulative histogram totals: a poller
	// gets the mean latency of an interval from two readings.
	Count      uint64  `json:"count"`
	SumSeconds float64 `json:"sum_seconds"`
}

type routeStatsJSON struct {
	Requests      uint64            `json:"requests"`
	Errors        uint64            `json:"errors"`
	Status        map[string]uint64 `json:"status"`
	BytesReceived uint64            `json:"bytes_received"`
	BytesSent     uint64            `json:"bytes_sent"`
	RateLimited   uint64            `json:"rate_limited"`
	Drained       uint64            `json:"drained"`
	Latency       latencyJSON       `json:"latency"`
}

type routeJSON struct {
	backendJSON
	Domains  []string       `json:"domains"`
	Path     string         `json:"path"`
	Priority int32          `json:"priority"`
	Stats    routeStatsJSON `json:"stats"`
}

var statusClassNames = [5]string{"1xx", "2xx", "3xx", "4xx", "5xx"}

func rid(id uint64) string { return "r" + strconv.FormatUint(id, 10) }

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func backendView(st upstream.MemberState, m *upstream.Member, now time.Time) backendJSON {
	b := backendJSON{
		RouteID: rid(st.RouteID), Service: st.Service, SessionID: st.SessionID, Backend: st.Backend,
		Connected: st.Connected, Healthy: st.Healthy, InFlight: st.InFlight,
		Breaker: breakerJSON{
			State: st.Breaker.String(), Enabled: st.BreakerEnabled, Failures: st.BreakerFailures,
			Threshold:   m.Breaker.Settings().Threshold,
			LastFailure: timePtr(st.BreakerLastFailure), NextAttempt: timePtr(st.BreakerNextAttempt),
		},
	}
	if st.HealthPath != "" {
		p := st.HealthPath
		b.HealthCheck = &p
	}
	if mt := st.Maintenance; mt != nil {
		b.Maintenance = &maintenanceJSON{PageURL: mt.PageURL, EnteredAt: mt.EnteredAt}
	}
	if d := st.Drain; d != nil {
		b.Drain = &drainJSON{StartedAt: d.StartedAt, EndsAt: d.EndsAt, TrafficPercent: st.DrainShare * 100, Completed: !now.Before(d.EndsAt)}
	}
	if st.RateLimitRequests > 0 {
		b.RateLimit = &rateLimitJSON{Requests: st.RateLimitRequests, WindowSeconds: st.RateLimitWindow.Seconds()}
	}
	return b
}

// routesOf returns the distinct routes of the current snapshot by id.
func (a *adminServer) routesOf() []*router.Route[*upstream.Member] {
	snap := a.table.Load()
	seen := make(map[uint64]*router.Route[*upstream.Member], snap.Routes())
	snap.Each(func(_ string, r *router.Route[*upstream.Member]) { seen[r.ID] = r })
	out := make([]*router.Route[*upstream.Member], 0, len(seen))
	for _, m := range upstream.Members(snap) {
		if r := seen[m.RouteID]; r != nil && r.Member == m {
			out = append(out, r)
		}
	}
	return out
}

func (a *adminServer) serveRoutes(w http.ResponseWriter, _ *http.Request) {
	now := time.Now()
	routes := a.routesOf()
	out := make([]routeJSON, 0, len(routes))
	for _, r := range routes {
		m := r.Member
		st := m.State(now)
		rep := m.Stats.Report(now.UnixNano())
		c := st.Counters
		rj := routeJSON{
			backendJSON: backendView(st, m, now),
			Domains:     r.Domains, Path: r.Path, Priority: r.Priority,
			Stats: routeStatsJSON{
				Requests: c.Requests, Errors: c.Errors, Status: map[string]uint64{},
				BytesReceived: c.BytesReceived, BytesSent: c.BytesSent,
				RateLimited: c.RateLimited, Drained: c.Drained,
				Latency: latencyJSON{AvgMS: rep.AvgMS, P95MS: rep.P95MS, P99MS: rep.P99MS, Count: c.LatencyCount, SumSeconds: c.LatencySumSeconds},
			},
		}
		for i, n := range c.StatusClasses {
			rj.Stats.Status[statusClassNames[i]] = n
		}
		out = append(out, rj)
	}
	writeJSON(w, map[string]any{"generated_at": now, "table_version": a.table.Load().Version(), "routes": out})
}

func (a *adminServer) serveBackends(w http.ResponseWriter, _ *http.Request) {
	now := time.Now()
	members := upstream.Members(a.table.Load())
	out := make([]backendJSON, 0, len(members))
	for _, m := range members {
		out = append(out, backendView(m.State(now), m, now))
	}
	writeJSON(w, map[string]any{"generated_at": now, "backends": out})
}

func (a *adminServer) serveSessions(w http.ResponseWriter, _ *http.Request) {
	sessions := a.reg.Sessions()
	connected := 0
	for _, s := range sessions {
		if s.Connected {
			connected++
		}
	}
	writeJSON(w, map[string]any{
		"generated_at": time.Now(), "connected": connected, "grace": len(sessions) - connected, "sessions": sessions,
	})
}

type routeRateJSON struct {
	RouteID  string      `json:"route_id"`
	Service  string      `json:"service"`
	Requests uint64      `json:"requests"`
	Errors   uint64      `json:"errors"`
	InFlight int64       `json:"in_flight"`
	Latency  latencyJSON `json:"latency"`
}

// serveStats is the dashboard's rate source: cumulative totals, overall
// and per route, stamped with the time they were read.
func (a *adminServer) serveStats(w http.ResponseWriter, _ *http.Request) {
	now := time.Now()
	members := upstream.Members(a.table.Load())
	var total routeRateJSON
	var bytesIn, bytesOut uint64
	routes := make([]routeRateJSON, 0, len(members))
	for _, m := range members {
		c := m.Stats.Counters()
		rep := m.Stats.Report(now.UnixNano())
		r := routeRateJSON{
			RouteID: rid(m.RouteID), Service: m.Session.ServiceName, Requests: c.Requests, Errors: c.Errors,
			InFlight: m.InFlight.Load(),
			Latency:  latencyJSON{AvgMS: rep.AvgMS, P95MS: rep.P95MS, P99MS: rep.P99MS, Count: c.LatencyCount, SumSeconds: c.LatencySumSeconds},
		}
		routes = append(routes, r)
		total.Requests += c.Requests
		total.Errors += c.Errors
		total.InFlight += r.InFlight
		total.Latency.Count += c.LatencyCount
		total.Latency.SumSeconds += c.LatencySumSeconds
		bytesIn += c.BytesReceived
		bytesOut += c.BytesSent
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	out := map[string]any{
		"time_ms":        float64(now.UnixNano()) / 1e6,
		"uptime_seconds": now.Sub(a.started).Seconds(),
		"requests":       total.Requests,
		"errors":         total.Errors,
		"unmatched":      a.counters.Unmatched(),
		"in_flight":      total.InFlight,
		"bytes_received": bytesIn,
		"bytes_sent":     bytesOut,
		"latency":        map[string]any{"count": total.Latency.Count, "sum_seconds": total.Latency.SumSeconds},
		"routes":         routes,
		"go":             map[string]any{"goroutines": runtime.NumGoroutine(), "heap_bytes": ms.HeapAlloc},
		"ready":          !a.shuttingDown.Load(),
	}
	if l := a.accessLog; l != nil {
		out["access_log"] = map[string]any{"lines": l.Lines(), "dropped": l.Dropped(), "write_errors": l.WriteErrors()}
	}
	writeJSON(w, out)
}
