package etcdstore_test

import (
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/go-proxy/go-proxy/registry/etcdstore/etcdtest"
)

// BenchmarkApplyPropagation measures how long an apply through replica A
// takes to serve on replica B: from sending CONFIG_APPLY (a route moved to
// another backend) until B's data plane answers from the new backend. It
// reports the median and p99 besides ns/op.
//
//	go test -run '^$' -bench ApplyPropagation -benchtime 200x ./registry/etcdstore/
func BenchmarkApplyPropagation(b *testing.B) {
	etcd := etcdtest.Start(b)
	ra := startReplica(b, "A", etcd.Endpoint, time.Minute)
	rb := startReplica(b, "B", etcd.Endpoint, time.Minute)
	backends := []string{backend(b, "even").URL, backend(b, "odd").URL}
	c := dial(b, ra.regAddr)
	sid := strings.TrimPrefix(c.say("REGISTER|bench|i1|0|{}"), "ACK|")
	rid := strings.TrimPrefix(c.say("ROUTE_ADD|"+sid+"|p.test|/|"+backends[0]+"|10"), "ROUTE_OK|")
	if got := c.say("CONFIG_APPLY"); got != "OK" {
		b.Fatal(got)
	}
	waitFor(b, 2*time.Second, "first apply on B", serves(rb.httpAddr, "p.test", "even"))
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		next, body := backends[(i+1)%2], []string{"even", "odd"}[(i+1)%2]
		c.say("ROUTE_UPDATE|" + sid + "|" + rid + "|backend_url|" + next)
		start := time.Now()
		if got := c.say("CONFIG_APPLY"); got != "OK" {
			b.Fatal(got)
		}
		for !serves(rb.httpAddr, "p.test", body)() {
			if time.Since(start) > 5*time.Second {
				b.Fatal("apply did not reach B within 5 s")
			}
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}
