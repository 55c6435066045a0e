package upstream

import (
	"runtime"
	"testing"
	"time"
)

// statsBytesPerRoute is the heap a route's statistics take, on average
// over n routes, after record has run on each.
func statsBytesPerRoute(n int, record func(s *Stats)) float64 {
	routes := make([]*Stats, n)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range routes {
		routes[i] = new(Stats)
		record(routes[i])
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(routes)
	return float64(after.HeapAlloc-before.HeapAlloc) / float64(n)
}

// TestStatsMemoryPerRoute bounds what the statistics of a route cost: one
// that served a single request (what 100,000 mostly quiet routes cost
// each), and a busy one, with four status codes and latencies over six
// powers of two in each of the five minutes of the window.
func TestStatsMemoryPerRoute(t *testing.T) {
	one := statsBytesPerRoute(2000, func(s *Stats) {
		s.Record(200, 1500*time.Microsecond, 13, 0, false, t0)
	})
	busy := statsBytesPerRoute(500, func(s *Stats) {
		for minute := int64(0); minute < latencySlots; minute++ {
			now := t0 + minute*latencySlotNS
			for i, status := range []int{200, 304, 404, 502} {
				for octave := 0; octave < 6; octave++ {
					s.Record(status, time.Duration(200<<octave+i)*time.Microsecond, 100, 0, false, now)
				}
			}
		}
	})
	t.Logf("statistics per route: %.0f B after one request, %.0f B busy", one, busy)
	if one > 2048 || busy > 8192 {
		t.Errorf("statistics take %.0f B per route after one request (want <= 2048), %.0f B busy (want <= 8192)", one, busy)
	}
}

// BenchmarkStatsRecord is the statistics' share of a request: a 200 with a
// latency around a millisecond, from parallel goroutines on one route.
func BenchmarkStatsRecord(b *testing.B) {
	var s Stats
	now := time.Now().UnixNano()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			s.Record(200, time.Duration(800+i%512)*time.Microsecond, 13, 0, false, now)
		}
	})
}
