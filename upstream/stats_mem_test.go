package upstream

import (
	"runtime"
	"testing"
	"time"
	"unsafe"
)

// footprint is the size of s and of everything it has allocated.
func (s *Stats) footprint() uintptr {
	n := unsafe.Sizeof(*s)
	if t := s.codes.Load(); t != nil {
		n += unsafe.Sizeof(*t)
		for i := range t {
			if t[i].Load() != nil {
				n += unsafe.Sizeof(statusDecade{})
			}
		}
	}
	if w := s.latency.Load(); w != nil {
		n += unsafe.Sizeof(*w)
		for i := range w {
			if slot := w[i].Load(); slot != nil {
				n += unsafe.Sizeof(*slot)
				for j := range slot.chunks {
					if slot.chunks[j].Load() != nil {
						n += unsafe.Sizeof(latencyCounts{})
					}
				}
			}
		}
	}
	if s.histogram.Load() != nil {
		n += unsafe.Sizeof(promHistogram{})
	}
	return n
}

func recordOne(s *Stats) { s.Record(200, 1500*time.Microsecond, 13, 0, false, t0) }

// recordBusy: four status codes and latencies over six powers of two in
// each of the five minutes of the window.
func recordBusy(s *Stats) {
	for minute := int64(0); minute < latencySlots; minute++ {
		now := t0 + minute*latencySlotNS
		for i, status := range []int{200, 304, 404, 502} {
			for octave := 0; octave < 6; octave++ {
				s.Record(status, time.Duration(200<<octave+i)*time.Microsecond, 100, 0, false, now)
			}
		}
	}
}

// TestStatsMemoryPerRoute bounds what the statistics of a route take: one
// that served a single request (what each of 100,000 mostly quiet routes
// costs), and a busy one.
func TestStatsMemoryPerRoute(t *testing.T) {
	var one, busy Stats
	recordOne(&one)
	recordBusy(&busy)
	t.Logf("statistics per route: %d B after one request, %d B busy", one.footprint(), busy.footprint())
	if one.footprint() > 1280 || busy.footprint() > 6144 {
		t.Errorf("statistics take %d B per route after one request (want <= 1280), %d B busy (want <= 6144)",
			one.footprint(), busy.footprint())
	}
}

// BenchmarkStatsMemory reports the heap the statistics of a route take,
// allocator rounding included, as measured over many routes.
func BenchmarkStatsMemory(b *testing.B) {
	for _, c := range []struct {
		name   string
		record func(*Stats)
	}{{"one-request", recordOne}, {"busy", recordBusy}} {
		b.Run(c.name, func(b *testing.B) {
			const n = 2000
			var perRoute float64
			for i := 0; i < b.N; i++ {
				routes := make([]*Stats, n)
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				for j := range routes {
					routes[j] = new(Stats)
					c.record(routes[j])
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				runtime.KeepAlive(routes)
				perRoute = float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / n
			}
			b.ReportMetric(perRoute, "B/route")
		})
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
