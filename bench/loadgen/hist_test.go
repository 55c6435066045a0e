package loadgen

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// exactQuantile is the nearest-rank percentile of sorted values.
func exactQuantile(sorted []int64, q float64) float64 {
	rank := int(math.Ceil(q / 100 * float64(len(sorted))))
	if rank < 1 {
		rank = 1
	}
	return float64(sorted[rank-1])
}

func TestHistogramMatchesExactPercentiles(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	h := NewHistogram()
	var vals []int64
	for i := 0; i < 200_000; i++ {
		// Log-normal-ish latencies from 20 µs to a few hundred ms.
		us := int64(math.Exp(3+r.Float64()*9)) + 1
		vals = append(vals, us)
		h.RecordMicros(us)
	}
	slices.Sort(vals)
	for _, q := range []float64{50, 90, 99, 99.9, 100} {
		want := exactQuantile(vals, q)
		got := h.Quantile(q)
		if math.Abs(got-want)/want > 0.001 {
			t.Errorf("p%v: got %v, want %v (±0.1%%)", q, got, want)
		}
	}
	if h.Count() != int64(len(vals)) {
		t.Fatalf("count %d", h.Count())
	}
}

func TestHistogramExactBelow2048(t *testing.T) {
	h := NewHistogram()
	for us := int64(1); us <= 2000; us++ {
		h.RecordMicros(us)
	}
	if got := h.Quantile(50); got != 1000 {
		t.Fatalf("p50 = %v, want 1000", got)
	}
	if got := h.Quantile(99.9); got != 1998 {
		t.Fatalf("p99.9 = %v, want 1998", got)
	}
}

func TestHistogramMergeAndClamp(t *testing.T) {
	a, b := NewHistogram(), NewHistogram()
	a.Record(100 * time.Microsecond)
	b.Record(300 * time.Microsecond)
	b.Record(0)         // clamped to 1 µs
	b.Record(time.Hour) // clamped to 60 s
	a.Merge(b)
	if a.Count() != 4 {
		t.Fatalf("count %d", a.Count())
	}
	s := a.Summary()
	if s.P50 != 100 || s.Max < 59_000_000 {
		t.Fatalf("summary %+v", s)
	}
	if (&Histogram{h: NewHistogram().h}).Quantile(99) != 0 {
		t.Fatal("empty quantile")
	}
}
