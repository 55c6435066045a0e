package upstream

import (
	"io"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/go-proxy/go-proxy/router"
)

// Prometheus exposition of the data plane. The request path only adds to
// member atomics (Stats, InFlight, the breaker and health state); the
// series are rendered at scrape time by walking the current routing
// snapshot, so a removed route's series disappear with it and the request
// path never takes a lock or allocates for metrics. Series are labelled by
// route id and service only, never by anything from a request.

// LatencyBuckets are the upper bounds, in seconds, of the route latency
// histogram goproxy_route_request_duration_seconds (time to the backend's
// response headers, or to the generated response).
var LatencyBuckets = [...]float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

var (
	latencyBoundsUS [len(LatencyBuckets)]uint64
	latencyLE       [len(LatencyBuckets) + 1]string
)

func init() {
	for i, b := range LatencyBuckets {
		latencyBoundsUS[i] = uint64(b * 1e6)
		latencyLE[i] = strconv.FormatFloat(b, 'g', -1, 64)
	}
	latencyLE[len(LatencyBuckets)] = "+Inf"
}

// promHistogram is a cumulative latency histogram made of atomics: one
// counter per bucket (not cumulated; the scrape sums them) and the sum.
type promHistogram struct {
	counts [len(LatencyBuckets) + 1]atomic.Uint64
	sumUS  atomic.Uint64
}

// observe adds one latency, in microseconds, to the route's histogram,
// allocating it on the route's first request.
func (s *Stats) observe(us uint64) {
	h := loadOrNew(&s.histogram)
	i := 0
	for i < len(latencyBoundsUS) && us > latencyBoundsUS[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sumUS.Add(us)
}

// StatsCounters are the cumulative counters of a route, as scraped.
type StatsCounters struct {
	Requests, Errors, BytesSent, BytesReceived uint64
	// StatusClasses counts responses by class: [0] 1xx … [4] 5xx.
	StatusClasses [5]uint64
	// Latency is the histogram: Buckets[i] counts requests with a latency
	// of at most LatencyBuckets[i] (cumulative), Count all of them.
	LatencyBuckets    [len(LatencyBuckets)]uint64
	LatencyCount      uint64
	LatencySumSeconds float64
	RateLimited       uint64
	Drained           uint64
}

// Counters reads the route's cumulative counters without a lock.
func (s *Stats) Counters() StatsCounters {
	c := StatsCounters{
		Requests:      s.requests.Load(),
		Errors:        s.errors.Load(),
		BytesSent:     s.bytesSent.Load(),
		BytesReceived: s.bytesReceived.Load(),
		RateLimited:   s.rateLimited.Load(),
		Drained:       s.drained.Load(),
	}
	if t := s.codes.Load(); t != nil {
		for code := 100; code < 600; code++ {
			c.StatusClasses[code/100-1] += t.load(code)
		}
	}
	if h := s.histogram.Load(); h != nil {
		var cum uint64
		for i := range h.counts {
			cum += h.counts[i].Load()
			if i < len(c.LatencyBuckets) {
				c.LatencyBuckets[i] = cum
			}
		}
		c.LatencyCount = cum
		c.LatencySumSeconds = float64(h.sumUS.Load()) / 1e6
	}
	return c
}

// StateAt reports the breaker's state at now without changing it: an open
// breaker whose timeout has passed reads as half-open, as the next request
// would find it.
func (b *Breaker) StateAt(now int64) BreakerState {
	s := BreakerState(b.state.Load())
	if s == BreakerOpen && now >= b.nextAttempt.Load() {
		return BreakerHalfOpen
	}
	return s
}

// Failures is the breaker's count of consecutive failures.
func (b *Breaker) Failures() int64 { return b.failures.Load() }

// Members returns the distinct members of snap in route-id order (a route
// with several domains appears in the snapshot once per domain).
func Members(snap *router.Snapshot[*Member]) []*Member {
	seen := make(map[*Member]struct{}, snap.Routes())
	out := make([]*Member, 0, snap.Routes())
	snap.Each(func(_ string, r *router.Route[*Member]) {
		if _, ok := seen[r.Member]; ok || r.Member == nil {
			return
		}
		seen[r.Member] = struct{}{}
		out = append(out, r.Member)
	})
	slices.SortFunc(out, func(a, b *Member) int {
		switch {
		case a.RouteID < b.RouteID:
			return -1
		case a.RouteID > b.RouteID:
			return 1
		}
		return 0
	})
	return out
}

// ProxyCounters are the data plane's counters that belong to no route.
type ProxyCounters struct {
	unmatched atomic.Uint64
}

// Unmatched is the number of requests no route matched (answered 404).
func (c *ProxyCounters) Unmatched() uint64 { return c.unmatched.Load() }

// WriteMetrics writes the counters in Prometheus text format.
func (c *ProxyCounters) WriteMetrics(w io.Writer) {
	b := make([]byte, 0, 256)
	b = AppendPromFamily(b, "goproxy_unmatched_requests_total", "counter", "Requests no route matched (answered 404).")
	b = AppendPromSample(b, "goproxy_unmatched_requests_total", "", c.unmatched.Load())
	_, _ = w.Write(b)
}

// WriteMetrics writes the data plane's series: the proxy's counters and
// those of every route in the current snapshot.
func (p *Proxy) WriteMetrics(w io.Writer) {
	p.counters.WriteMetrics(w)
	WriteRouteMetrics(w, p.table.Load(), time.Now())
}

// metricWriter batches exposition text and hands it to w in chunks.
type metricWriter struct {
	w   io.Writer
	buf []byte
}

func (mw *metricWriter) maybeFlush() {
	if len(mw.buf) >= 32<<10 {
		mw.flush()
	}
}

func (mw *metricWriter) flush() {
	if len(mw.buf) > 0 {
		_, _ = mw.w.Write(mw.buf)
		mw.buf = mw.buf[:0]
	}
}

var statusClassLabels = [5]string{`,status_class="1xx"`, `,status_class="2xx"`, `,status_class="3xx"`, `,status_class="4xx"`, `,status_class="5xx"`}

var breakerStateLabels = [3]struct {
	state BreakerState
	label string
}{{BreakerClosed, `,state="closed"`}, {BreakerOpen, `,state="open"`}, {BreakerHalfOpen, `,state="half-open"`}}

// WriteRouteMetrics writes the per-route and per-member series of every
// route in snap in Prometheus text format, family by family. Only routes
// in snap are written, so the series of a removed route vanish with the
// snapshot that removed it.
func WriteRouteMetrics(w io.Writer, snap *router.Snapshot[*Member], now time.Time) {
	members := Members(snap)
	labels := make([]string, len(members))
	counters := make([]StatsCounters, len(members))
	for i, m := range members {
		labels[i] = routeLabels(m)
		counters[i] = m.Stats.Counters()
	}
	mw := &metricWriter{w: w, buf: make([]byte, 0, 64<<10)}
	nowNS := now.UnixNano()

	mw.buf = AppendPromFamily(mw.buf, "goproxy_routes", "gauge", "Routes in the published routing table.")
	mw.buf = AppendPromSample(mw.buf, "goproxy_routes", "", uint64(len(members)))
	mw.buf = AppendPromFamily(mw.buf, "goproxy_route_table_version", "gauge", "Publishes of the routing table since start.")
	mw.buf = AppendPromSample(mw.buf, "goproxy_route_table_version", "", snap.Version())

	type family struct {
		name, typ, help string
		value           func(i int) uint64
	}
	simple := func(f family) {
		mw.buf = AppendPromFamily(mw.buf, f.name, f.typ, f.help)
		for i := range members {
			mw.buf = AppendPromSample(mw.buf, f.name, labels[i], f.value(i))
			mw.maybeFlush()
		}
	}

	mw.buf = AppendPromFamily(mw.buf, "goproxy_route_requests_total", "counter", "Requests settled on the route, by response status class.")
	for i := range members {
		for class, l := range statusClassLabels {
			mw.buf = AppendPromSample(mw.buf, "goproxy_route_requests_total", labels[i]+l, counters[i].StatusClasses[class])
		}
		mw.maybeFlush()
	}
	simple(family{"goproxy_route_errors_total", "counter", "Requests answered 5xx or whose response body failed.",
		func(i int) uint64 { return counters[i].Errors }})

	const hist = "goproxy_route_request_duration_seconds"
	mw.buf = AppendPromFamily(mw.buf, hist, "histogram", "Time to the backend's response headers (or to the generated response).")
	for i := range members {
		c := &counters[i]
		for b, le := range latencyLE {
			v := c.LatencyCount
			if b < len(c.LatencyBuckets) {
				v = c.LatencyBuckets[b]
			}
			mw.buf = append(mw.buf, hist...)
			mw.buf = append(mw.buf, "_bucket{"...)
			mw.buf = append(mw.buf, labels[i]...)
			mw.buf = append(mw.buf, `,le="`...)
			mw.buf = append(mw.buf, le...)
			mw.buf = append(mw.buf, `"} `...)
			mw.buf = strconv.AppendUint(mw.buf, v, 10)
			mw.buf = append(mw.buf, '\n')
		}
		mw.buf = append(mw.buf, hist+"_sum{"...)
		mw.buf = append(mw.buf, labels[i]...)
		mw.buf = append(mw.buf, "} "...)
		mw.buf = strconv.AppendFloat(mw.buf, c.LatencySumSeconds, 'g', -1, 64)
		mw.buf = append(mw.buf, '\n')
		mw.buf = AppendPromSample(mw.buf, hist+"_count", labels[i], c.LatencyCount)
		mw.maybeFlush()
	}

	simple(family{"goproxy_route_received_bytes_total", "counter", "Request body bytes received from clients (bytes in).",
		func(i int) uint64 { return counters[i].BytesReceived }})
	simple(family{"goproxy_route_sent_bytes_total", "counter", "Response body bytes sent to clients (bytes out).",
		func(i int) uint64 { return counters[i].BytesSent }})
	simple(family{"goproxy_route_in_flight", "gauge", "Requests in progress and open WebSocket tunnels on the route.",
		func(i int) uint64 { return uint64(max(members[i].InFlight.Load(), 0)) }})

	simple(family{"goproxy_member_healthy", "gauge", "1 when the member's active health verdict is healthy.",
		func(i int) uint64 { return b2u(members[i].Health.Healthy()) }})
	simple(family{"goproxy_member_connected", "gauge", "1 when the member's session is connected (0: standby, in grace).",
		func(i int) uint64 { return b2u(members[i].Session.Connected()) }})
	mw.buf = AppendPromFamily(mw.buf, "goproxy_member_breaker_state", "gauge", "Circuit breaker state: 1 for the current state.")
	for i, m := range members {
		st := m.Breaker.StateAt(nowNS)
		for _, s := range breakerStateLabels {
			mw.buf = AppendPromSample(mw.buf, "goproxy_member_breaker_state", labels[i]+s.label, b2u(st == s.state))
		}
		mw.maybeFlush()
	}
	simple(family{"goproxy_member_breaker_failures", "gauge", "Consecutive failures counted by the circuit breaker.",
		func(i int) uint64 { return uint64(max(members[i].Breaker.Failures(), 0)) }})
	simple(family{"goproxy_member_maintenance", "gauge", "1 when the member is in maintenance.",
		func(i int) uint64 { return b2u(members[i].Maintenance() != nil) }})
	simple(family{"goproxy_member_draining", "gauge", "1 when the member's session is draining or drained.",
		func(i int) uint64 { return b2u(members[i].Session.Drain() != nil) }})
	simple(family{"goproxy_member_rate_limited_total", "counter", "Requests refused with 429 by the member's rate limit.",
		func(i int) uint64 { return counters[i].RateLimited }})
	simple(family{"goproxy_member_drained_total", "counter", "Requests refused with 503 because the member's session was drained.",
		func(i int) uint64 { return counters[i].Drained }})
	mw.flush()
}

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// routeLabels is `route_id="r7",service="shop"`.
func routeLabels(m *Member) string {
	b := make([]byte, 0, 48)
	b = append(b, `route_id="r`...)
	b = strconv.AppendUint(b, m.RouteID, 10)
	b = append(b, `",service="`...)
	if m.Session != nil {
		b = appendLabelValue(b, m.Session.ServiceName)
	}
	b = append(b, '"')
	return string(b)
}

// appendLabelValue escapes a label value for the text exposition format.
func appendLabelValue(dst []byte, v string) []byte {
	for i := 0; i < len(v); i++ {
		switch c := v[i]; c {
		case '\\':
			dst = append(dst, '\\', '\\')
		case '"':
			dst = append(dst, '\\', '"')
		case '\n':
			dst = append(dst, '\\', 'n')
		default:
			dst = append(dst, c)
		}
	}
	return dst
}

// AppendPromFamily writes the HELP and TYPE lines of a metric family.
func AppendPromFamily(dst []byte, name, typ, help string) []byte {
	dst = append(dst, "# HELP "...)
	dst = append(dst, name...)
	dst = append(dst, ' ')
	dst = append(dst, help...)
	dst = append(dst, "\n# TYPE "...)
	dst = append(dst, name...)
	dst = append(dst, ' ')
	dst = append(dst, typ...)
	return append(dst, '\n')
}

// AppendPromSample writes `name{labels} value`; labels may be empty.
func AppendPromSample(dst []byte, name, labels string, v uint64) []byte {
	dst = append(dst, name...)
	if labels != "" {
		dst = append(dst, '{')
		dst = append(dst, labels...)
		dst = append(dst, '}')
	}
	dst = append(dst, ' ')
	dst = strconv.AppendUint(dst, v, 10)
	return append(dst, '\n')
}
