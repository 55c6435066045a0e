package upstream

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// Stats are a route's request statistics (registry-v2 §6.13), counted with
// atomics only. The status-code table and the latency windows are
// allocated on the route's first request, so idle routes cost a few words.
type Stats struct {
	requests      atomic.Uint64
	errors        atomic.Uint64
	bytesSent     atomic.Uint64
	bytesReceived atomic.Uint64
	codes         atomic.Pointer[statusTable]
	latency       atomic.Pointer[latencyWindows]
	// Prometheus counters (metrics.go): a cumulative latency histogram
	// with fixed buckets, and requests refused by the rate limit or a
	// completed drain.
	histogram   atomic.Pointer[promHistogram]
	rateLimited atomic.Uint64
	drained     atomic.Uint64
}

type statusTable [600]atomic.Uint64

// Latency histogram: values in microseconds, exact below 32 µs, then 16
// log-linear buckets per power of two up to 2^27 µs (134 s). Reporting the
// bucket midpoint keeps the relative error under 3.2 %.
const (
	latencyExact   = 32
	latencySubBits = 4
	latencyMaxMSB  = 27
	latencyBuckets = latencyExact + (latencyMaxMSB-4)*(1<<latencySubBits)
	latencySlots   = 5
	latencySlotNS  = int64(time.Minute)
	latencyMaxReqs = 10_000
)

type latencySlot struct {
	epoch  atomic.Int64
	count  atomic.Uint64
	sumUS  atomic.Uint64
	counts [latencyBuckets]atomic.Uint32
}

type latencyWindows [latencySlots]latencySlot

func latencyBucket(us uint64) int {
	if us < latencyExact {
		return int(us)
	}
	msb := bits.Len64(us) - 1
	if msb > latencyMaxMSB {
		return latencyBuckets - 1
	}
	shift := msb - latencySubBits
	sub := int(us>>shift) - (1 << latencySubBits)
	return latencyExact + (msb-5)*(1<<latencySubBits) + sub
}

// bucketMidpoint is the representative value of bucket i, in microseconds.
func bucketMidpoint(i int) float64 {
	if i < latencyExact {
		return float64(i)
	}
	j := i - latencyExact
	msb := j/(1<<latencySubBits) + 5
	sub := j % (1 << latencySubBits)
	shift := msb - latencySubBits
	lo := uint64((1<<latencySubBits)+sub) << shift
	return float64(lo) + float64(uint64(1)<<shift)/2
}

// Record counts one finished request.
func (s *Stats) Record(status int, latency time.Duration, sent, received int64, failed bool, now int64) {
	s.requests.Add(1)
	if status >= 500 || failed {
		s.errors.Add(1)
	}
	if sent > 0 {
		s.bytesSent.Add(uint64(sent))
	}
	if received > 0 {
		s.bytesReceived.Add(uint64(received))
	}
	if status >= 100 && status < 600 {
		t := s.codes.Load()
		if t == nil {
			t = new(statusTable)
			if !s.codes.CompareAndSwap(nil, t) {
				t = s.codes.Load()
			}
		}
		t[status].Add(1)
	}
	w := s.latency.Load()
	if w == nil {
		w = new(latencyWindows)
		if !s.latency.CompareAndSwap(nil, w) {
			w = s.latency.Load()
		}
	}
	epoch := now / latencySlotNS
	slot := &w[epoch%latencySlots]
	if old := slot.epoch.Load(); old != epoch && slot.epoch.CompareAndSwap(old, epoch) {
		// A new minute reuses the slot; a few concurrent records may land
		// in the old counts, well within the allowed approximation.
		slot.count.Store(0)
		slot.sumUS.Store(0)
		for i := range slot.counts {
			slot.counts[i].Store(0)
		}
	}
	us := uint64(max(latency, 0) / time.Microsecond)
	s.observe(us)
	slot.counts[latencyBucket(us)].Add(1)
	slot.sumUS.Add(us)
	slot.count.Add(1)
}

// AddBytes counts bytes moved outside a request's own accounting (the
// WebSocket frames of a tunnel).
func (s *Stats) AddBytes(sent, received int64) {
	s.bytesSent.Add(uint64(sent))
	s.bytesReceived.Add(uint64(received))
}

// Report is a copy of the statistics for STATS_GET.
type Report struct {
	Requests, Errors, BytesSent, BytesReceived uint64
	AvgMS, P95MS, P99MS                        float64
	StatusCodes                                map[int]uint64
}

// Report summarises the counters; latency figures cover the last five
// minutes or the last 10,000 requests, whichever is fewer.
func (s *Stats) Report(now int64) Report {
	r := Report{
		Requests:      s.requests.Load(),
		Errors:        s.errors.Load(),
		BytesSent:     s.bytesSent.Load(),
		BytesReceived: s.bytesReceived.Load(),
		StatusCodes:   map[int]uint64{},
	}
	if t := s.codes.Load(); t != nil {
		for code := range t {
			if n := t[code].Load(); n > 0 {
				r.StatusCodes[code] = n
			}
		}
	}
	w := s.latency.Load()
	if w == nil {
		return r
	}
	var hist [latencyBuckets]uint64
	var count, sum uint64
	epoch := now / latencySlotNS
	for back := int64(0); back < latencySlots && count < latencyMaxReqs; back++ {
		slot := &w[(epoch-back)%latencySlots]
		if slot.epoch.Load() != epoch-back {
			continue
		}
		count += slot.count.Load()
		sum += slot.sumUS.Load()
		for i := range slot.counts {
			hist[i] += uint64(slot.counts[i].Load())
		}
	}
	if count == 0 {
		return r
	}
	r.AvgMS = float64(sum) / float64(count) / 1000
	r.P95MS = percentile(&hist, 0.95) / 1000
	r.P99MS = percentile(&hist, 0.99) / 1000
	return r
}

func percentile(hist *[latencyBuckets]uint64, q float64) float64 {
	var total uint64
	for _, n := range hist {
		total += n
	}
	if total == 0 {
		return 0
	}
	rank := uint64(q*float64(total) + 0.5)
	if rank == 0 {
		rank = 1
	}
	var seen uint64
	for i, n := range hist {
		seen += n
		if seen >= rank {
			return bucketMidpoint(i)
		}
	}
	return bucketMidpoint(latencyBuckets - 1)
}
