// Package loadgen drives load at a target and measures it: a closed-loop
// HTTP generator on the fasthttp client, a WebSocket round-trip generator,
// a wrk driver, and the CPU time of a process tree from /proc.
package loadgen

import (
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
)

// Histogram records latencies in microseconds with HdrHistogram: every
// value from 1 µs to 60 s is kept with 3 significant digits (relative error
// below 0.1 %), and values below 2,048 µs exactly.
type Histogram struct{ h *hdrhistogram.Histogram }

// Histogram bounds, in microseconds.
const (
	histLowest  = 1
	histHighest = 60_000_000
	histSigFigs = 3
)

// NewHistogram returns an empty histogram.
func NewHistogram() *Histogram {
	return &Histogram{h: hdrhistogram.New(histLowest, histHighest, histSigFigs)}
}

// Record adds one latency; values outside the range are clamped.
func (h *Histogram) Record(d time.Duration) {
	us := d.Microseconds()
	if us < histLowest {
		us = histLowest
	}
	if us > histHighest {
		us = histHighest
	}
	_ = h.h.RecordValue(us)
}

// RecordMicros adds one latency given in microseconds.
func (h *Histogram) RecordMicros(us int64) { h.Record(time.Duration(us) * time.Microsecond) }

// Merge adds every value of o to h.
func (h *Histogram) Merge(o *Histogram) { h.h.Merge(o.h) }

// Count is the number of recorded values.
func (h *Histogram) Count() int64 { return h.h.TotalCount() }

// Quantile returns the value at percentile q (0–100), in microseconds.
func (h *Histogram) Quantile(q float64) float64 {
	if h.h.TotalCount() == 0 {
		return 0
	}
	return float64(h.h.ValueAtQuantile(q))
}

// Max returns the largest recorded value, in microseconds.
func (h *Histogram) Max() float64 { return float64(h.h.Max()) }

// Mean returns the mean, in microseconds.
func (h *Histogram) Mean() float64 { return h.h.Mean() }

// Latency is the summary of a latency distribution, in microseconds.
type Latency struct {
	P50  float64 `json:"p50_us"`
	P90  float64 `json:"p90_us"`
	P99  float64 `json:"p99_us"`
	P999 float64 `json:"p99_9_us"`
	Max  float64 `json:"max_us"`
	Mean float64 `json:"mean_us"`
}

// Summary returns the percentiles the suite reports.
func (h *Histogram) Summary() Latency {
	return Latency{
		P50: h.Quantile(50), P90: h.Quantile(90), P99: h.Quantile(99), P999: h.Quantile(99.9),
		Max: h.Max(), Mean: h.Mean(),
	}
}
