package upstream

import (
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

// exactPercentile is the nearest-rank percentile of sorted values.
func exactPercentile(sorted []time.Duration, q float64) float64 {
	rank := int(math.Ceil(q * float64(len(sorted))))
	rank = max(rank, 1)
	return float64(sorted[rank-1]) / float64(time.Millisecond)
}

func within(got, want, rel float64) bool {
	return math.Abs(got-want) <= rel*want
}

func TestStatsPercentiles(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, dist := range []struct {
		name string
		gen  func(i int) time.Duration
		n    int
	}{
		{"uniform 0.1-100ms", func(i int) time.Duration { return time.Duration(i+1) * 100 * time.Microsecond }, 1000},
		{"log-normal around 20ms", func(int) time.Duration {
			return time.Duration(math.Exp(rng.NormFloat64()*0.8+math.Log(20)) * float64(time.Millisecond))
		}, 10000},
		{"bimodal 1ms / 800ms", func(i int) time.Duration {
			if i%50 == 0 {
				return 800*time.Millisecond + time.Duration(rng.IntN(100))*time.Millisecond
			}
			return time.Millisecond + time.Duration(rng.IntN(500))*time.Microsecond
		}, 5000},
		{"microseconds", func(i int) time.Duration { return time.Duration(1+i%30) * time.Microsecond }, 3000},
	} {
		t.Run(dist.name, func(t *testing.T) {
			var s Stats
			now := t0
			vals := make([]time.Duration, dist.n)
			var sum time.Duration
			for i := range vals {
				vals[i] = dist.gen(i)
				sum += vals[i]
			}
			rng.Shuffle(len(vals), func(i, j int) { vals[i], vals[j] = vals[j], vals[i] })
			for _, v := range vals {
				s.Record(200, v, 0, 0, false, now)
			}
			slices.Sort(vals)
			r := s.Report(now)
			p95, p99 := exactPercentile(vals, 0.95), exactPercentile(vals, 0.99)
			avg := float64(sum) / float64(len(vals)) / float64(time.Millisecond)
			t.Logf("p95 %.4f (exact %.4f)  p99 %.4f (exact %.4f)  avg %.4f (exact %.4f)", r.P95MS, p95, r.P99MS, p99, r.AvgMS, avg)
			if !within(r.P95MS, p95, 0.05) || !within(r.P99MS, p99, 0.05) {
				t.Errorf("percentiles off by more than 5%%")
			}
			// The average is kept in whole microseconds.
			if math.Abs(r.AvgMS-avg) > 0.001 {
				t.Errorf("average %.4f, want %.4f", r.AvgMS, avg)
			}
		})
	}
}

func TestStatsCounters(t *testing.T) {
	var s Stats
	if r := s.Report(t0); r.Requests != 0 || len(r.StatusCodes) != 0 || r.P99MS != 0 {
		t.Fatalf("an idle route reports %+v", r)
	}
	s.Record(200, time.Millisecond, 1000, 10, false, t0)
	s.Record(200, time.Millisecond, 500, 0, true, t0) // body aborted by the backend
	s.Record(404, time.Millisecond, 19, 0, false, t0)
	s.Record(502, time.Millisecond, 16, 0, false, t0)
	s.Record(503, time.Millisecond, 0, 5, false, t0)
	s.AddBytes(7, 9) // WebSocket frames
	r := s.Report(t0)
	if r.Requests != 5 || r.Errors != 3 {
		t.Errorf("requests %d errors %d, want 5 and 3 (5xx plus the aborted body)", r.Requests, r.Errors)
	}
	if r.BytesSent != 1000+500+19+16+7 || r.BytesReceived != 10+5+9 {
		t.Errorf("bytes sent %d received %d", r.BytesSent, r.BytesReceived)
	}
	want := map[int]uint64{200: 2, 404: 1, 502: 1, 503: 1}
	if len(r.StatusCodes) != len(want) {
		t.Errorf("status codes %v, want %v", r.StatusCodes, want)
	}
	for code, n := range want {
		if r.StatusCodes[code] != n {
			t.Errorf("status codes %v, want %v", r.StatusCodes, want)
		}
	}
}

func TestStatsWindow(t *testing.T) {
	var s Stats
	minute := int64(time.Minute)
	// 6 minutes ago: outside the 5-minute window.
	for i := 0; i < 100; i++ {
		s.Record(200, time.Second, 0, 0, false, t0-6*minute)
	}
	// 4 minutes ago and now: inside.
	for i := 0; i < 100; i++ {
		s.Record(200, 10*time.Millisecond, 0, 0, false, t0-4*minute)
		s.Record(200, 20*time.Millisecond, 0, 0, false, t0)
	}
	r := s.Report(t0)
	if r.Requests != 300 {
		t.Errorf("requests %d: the window limits latency only", r.Requests)
	}
	if !within(r.AvgMS, 15, 0.01) || !within(r.P99MS, 20, 0.05) {
		t.Errorf("avg %.3f p99 %.3f: the 1 s latencies of 6 minutes ago must be out of the window", r.AvgMS, r.P99MS)
	}
	// Five minutes on, only the newest slot remains... and then none.
	if r := s.Report(t0 + 4*minute); !within(r.AvgMS, 20, 0.01) {
		t.Errorf("4 minutes later avg %.3f, want 20", r.AvgMS)
	}
	if r := s.Report(t0 + 6*minute); r.AvgMS != 0 || r.P95MS != 0 {
		t.Errorf("6 minutes later avg %.3f p95 %.3f, want no latency data", r.AvgMS, r.P95MS)
	}
	// A slot reused by a new minute starts empty.
	s.Record(200, 50*time.Millisecond, 0, 0, false, t0+5*minute)
	if r := s.Report(t0 + 5*minute); !within(r.AvgMS, 50, 0.01) {
		t.Errorf("reused slot avg %.3f, want 50 (old counts cleared)", r.AvgMS)
	}
}

func TestStatsLast10000(t *testing.T) {
	var s Stats
	minute := int64(time.Minute)
	// An older minute full of slow requests, then 10,000 fast ones now:
	// the percentiles cover the last 10,000.
	for i := 0; i < 5000; i++ {
		s.Record(200, time.Second, 0, 0, false, t0-minute)
	}
	for i := 0; i < 10000; i++ {
		s.Record(200, time.Millisecond, 0, 0, false, t0)
	}
	if r := s.Report(t0); !within(r.P99MS, 1, 0.05) {
		t.Errorf("p99 %.3f, want 1ms from the last 10,000 requests", r.P99MS)
	}
}

func TestStatsConcurrent(t *testing.T) {
	var s Stats
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				s.Record(200+g, time.Duration(i)*time.Microsecond, 1, 2, false, t0)
			}
		}()
	}
	wg.Wait()
	r := s.Report(t0)
	if r.Requests != 16000 || r.BytesSent != 16000 || r.BytesReceived != 32000 || len(r.StatusCodes) != 8 {
		t.Errorf("%+v", r)
	}
}

func TestLatencyBucketError(t *testing.T) {
	// Every value up to 2^27 µs is reported within 3.2% by its bucket.
	for us := uint64(1); us < 1<<27; us = us*1001/1000 + 1 {
		mid := bucketMidpoint(latencyBucket(us))
		if !within(mid, float64(us), 0.032) {
			t.Fatalf("%d µs reported as %.1f", us, mid)
		}
	}
}
