package upstream

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/go-proxy/go-proxy/router"
)

// TestWriteRouteMetrics renders the series of a snapshot: one set per
// route even when it has several domains, escaped label values, a
// cumulative histogram, and nothing for a route once it is removed.
func TestWriteRouteMetrics(t *testing.T) {
	table := router.NewTable[*Member]()
	s := NewSession("s1", `we"ird\svc`, true)
	a := NewMember(1, s, &Config{}, nil)
	b := NewMember(2, NewSession("s2", "b", false), &Config{}, nil)
	ra := &router.Route[*Member]{ID: 1, Domains: []string{"a.test", "www.a.test"}, Path: "/", Member: a}
	rb := &router.Route[*Member]{ID: 2, Domains: []string{"b.test"}, Path: "/", Member: b}
	table.Update(func(tx *router.Txn[*Member]) { tx.Add(ra); tx.Add(rb) })
	now := time.Now()
	a.Stats.Record(200, 300*time.Microsecond, 10, 5, false, now.UnixNano())
	a.Stats.Record(503, 30*time.Millisecond, 0, 0, false, now.UnixNano())
	a.Stats.Record(200, 3*time.Second, 0, 0, false, now.UnixNano())
	a.Stats.rateLimited.Add(2)
	b.Breaker.Configure(BreakerSettings{Threshold: 1, Timeout: time.Hour, HalfOpenRequests: 1})
	b.Breaker.Done(false, false, now.UnixNano())

	var out bytes.Buffer
	WriteRouteMetrics(&out, table.Load(), now)
	text := out.String()
	al := `route_id="r1",service="we\"ird\\svc"`
	for _, want := range []string{
		"goproxy_routes 2\n",
		`goproxy_route_requests_total{` + al + `,status_class="2xx"} 2` + "\n",
		`goproxy_route_requests_total{` + al + `,status_class="5xx"} 1` + "\n",
		`goproxy_route_errors_total{` + al + `} 1` + "\n",
		`goproxy_route_request_duration_seconds_bucket{` + al + `,le="0.0005"} 1` + "\n",
		`goproxy_route_request_duration_seconds_bucket{` + al + `,le="0.025"} 1` + "\n",
		`goproxy_route_request_duration_seconds_bucket{` + al + `,le="0.05"} 2` + "\n",
		`goproxy_route_request_duration_seconds_bucket{` + al + `,le="2.5"} 2` + "\n",
		`goproxy_route_request_duration_seconds_bucket{` + al + `,le="5"} 3` + "\n",
		`goproxy_route_request_duration_seconds_bucket{` + al + `,le="+Inf"} 3` + "\n",
		`goproxy_route_request_duration_seconds_sum{` + al + `} 3.0303` + "\n",
		`goproxy_route_request_duration_seconds_count{` + al + `} 3` + "\n",
		`goproxy_route_sent_bytes_total{` + al + `} 10` + "\n",
		`goproxy_route_received_bytes_total{` + al + `} 5` + "\n",
		`goproxy_member_rate_limited_total{` + al + `} 2` + "\n",
		`goproxy_member_breaker_state{route_id="r2",service="b",state="open"} 1` + "\n",
		`goproxy_member_connected{route_id="r2",service="b"} 0` + "\n",
		"# TYPE goproxy_route_request_duration_seconds histogram\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("missing %q", want)
		}
	}
	if n := strings.Count(text, "goproxy_route_errors_total{"); n != 2 {
		t.Errorf("%d errors series for 2 routes (one with 2 domains)", n)
	}
	// Each family's HELP/TYPE appears once, before its samples.
	if n := strings.Count(text, "# TYPE goproxy_route_requests_total "); n != 1 {
		t.Errorf("TYPE line %d times", n)
	}

	table.Update(func(tx *router.Txn[*Member]) { tx.Remove(ra) })
	out.Reset()
	WriteRouteMetrics(&out, table.Load(), now)
	if strings.Contains(out.String(), `route_id="r1"`) {
		t.Error("the removed route's series are still written")
	}
	if !strings.Contains(out.String(), `route_id="r2"`) || !strings.Contains(out.String(), "goproxy_routes 1\n") {
		t.Error("the remaining route's series are missing")
	}
}

func TestBreakerStateAtIsReadOnly(t *testing.T) {
	m := NewMember(1, NewSession("s", "svc", true), &Config{}, nil)
	m.Breaker.Configure(BreakerSettings{Threshold: 1, Timeout: time.Millisecond, HalfOpenRequests: 1})
	now := time.Now().UnixNano()
	m.Breaker.Done(false, false, now)
	later := now + int64(time.Second)
	if got := m.Breaker.StateAt(later); got != BreakerHalfOpen {
		t.Fatalf("StateAt after the timeout: %v", got)
	}
	if got := BreakerState(m.Breaker.state.Load()); got != BreakerOpen {
		t.Fatalf("StateAt moved the breaker to %v", got)
	}
}
