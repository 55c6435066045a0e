package upstream

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// Stats are a route's request statistics (registry-v2 §6.13), counted with
// atomics only. Everything beyond the counters is allocated on demand, in
// small pieces, and kept once allocated (so that a route in steady state
// allocates nothing): the status-code table one decade of codes at a time,
// the latency windows one minute slot at a time and, within a slot, one
// power of two of latencies at a time. An idle route costs a few words, a
// route that served one request under 1 KiB.
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

// statusTable counts responses by status code, 100-599, in decades
// (codes 100-109, 110-119, …) allocated on their first response.
type statusTable [statusDecades]atomic.Pointer[statusDecade]

type statusDecade [10]atomic.Uint64

const statusDecades = 50

// count returns the counter of status (100-599), allocating its decade.
func (t *statusTable) count(status int) *atomic.Uint64 {
	return &loadOrNew(&t[status/10-10])[status%10]
}

// load returns the count of status, 0 for a decade never used.
func (t *statusTable) load(status int) uint64 {
	if d := t[status/10-10].Load(); d != nil {
		return d[status%10].Load()
	}
	return 0
}

// Latency histogram: values in microseconds, exact below 32 µs, then 16
// log-linear buckets per power of two up to 2^27 µs (134 s). Reporting the
// bucket midpoint keeps the relative error under 3.2 %. The buckets come
// in chunks of 16 (the exact range is the first two, every power of two
// from 32 µs one more), allocated in a slot when a latency first falls in
// them: a route's latencies usually span a few powers of two.
const (
	latencyExact   = 32
	latencySubBits = 4
	latencyMaxMSB  = 27
	latencyBuckets = latencyExact + (latencyMaxMSB-4)*(1<<latencySubBits)
	latencyChunk   = 1 << latencySubBits
	latencyChunks  = latencyBuckets / latencyChunk
	latencySlots   = 5
	latencySlotNS  = int64(time.Minute)
	latencyMaxReqs = 10_000
)

// latencySlot is one minute of latencies. Its request count is the sum of
// its buckets, read at report time, so recording takes one atomic fewer.
type latencySlot struct {
	epoch  atomic.Int64
	sumUS  atomic.Uint64
	chunks [latencyChunks]atomic.Pointer[latencyCounts]
}

type latencyCounts [latencyChunk]atomic.Uint32

// latencyWindows are the slots of the last five minutes, each allocated on
// the first request of its minute and reused after.
type latencyWindows [latencySlots]atomic.Pointer[latencySlot]

// loadOrNew returns *p, allocating it when nil.
func loadOrNew[T any](p *atomic.Pointer[T]) *T {
	v := p.Load()
	if v == nil {
		v = new(T)
		if !p.CompareAndSwap(nil, v) {
			v = p.Load()
		}
	}
	return v
}

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
		loadOrNew(&s.codes).count(status).Add(1)
	}
	w := loadOrNew(&s.latency)
	epoch := now / latencySlotNS
	slot := loadOrNew(&w[epoch%latencySlots])
	if old := slot.epoch.Load(); old != epoch && slot.epoch.CompareAndSwap(old, epoch) {
		// A new minute reuses the slot and its chunks; a few concurrent
		// records may land in the old counts, well within the allowed
		// approximation.
		slot.sumUS.Store(0)
		for i := range slot.chunks {
			if c := slot.chunks[i].Load(); c != nil {
				for j := range c {
					c[j].Store(0)
				}
			}
		}
	}
	us := uint64(max(latency, 0) / time.Microsecond)
	s.observe(us)
	b := latencyBucket(us)
	loadOrNew(&slot.chunks[b/latencyChunk])[b%latencyChunk].Add(1)
	slot.sumUS.Add(us)
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
		for i := range t {
			if d := t[i].Load(); d != nil {
				for j := range d {
					if n := d[j].Load(); n > 0 {
						r.StatusCodes[100+10*i+j] = n
					}
				}
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
		slot := w[(epoch-back)%latencySlots].Load()
		if slot == nil || slot.epoch.Load() != epoch-back {
			continue
		}
		sum += slot.sumUS.Load()
		for i := range slot.chunks {
			if c := slot.chunks[i].Load(); c != nil {
				for j := range c {
					n := uint64(c[j].Load())
					hist[i*latencyChunk+j] += n
					count += n
				}
			}
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
