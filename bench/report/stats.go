// Package report turns the runs of the bench suite into summaries, ratios,
// noise estimates and regression verdicts, and writes them as JSON and as
// a table.
package report

import (
	"fmt"
	"math"
	"slices"

	"golang.org/x/perf/benchmath"
)

// Median returns the median of xs (the mean of the middle two for an even
// count), or 0 for none.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// HalfRange is half the distance between the largest and smallest value.
func HalfRange(xs []float64) float64 {
	if len(xs) < 2 {
		return 0
	}
	return (slices.Max(xs) - slices.Min(xs)) / 2
}

// RelSpread is the spread of xs across rounds relative to their median:
// half the range divided by the median. 0.03 reads "±3 %".
func RelSpread(xs []float64) float64 {
	m := Median(xs)
	if m == 0 {
		return 0
	}
	return HalfRange(xs) / math.Abs(m)
}

// PairedRatios returns num[i]/den[i] for the rounds both have, skipping
// rounds whose denominator is 0.
func PairedRatios(num, den []float64) []float64 {
	var out []float64
	for i := 0; i < len(num) && i < len(den); i++ {
		if den[i] != 0 {
			out = append(out, num[i]/den[i])
		}
	}
	return out
}

// Ratio is a paired ratio over rounds: the median of the per-round ratios
// and a confidence interval of that median.
type Ratio struct {
	Value float64 `json:"value"`
	Interval
}

// Interval is a distribution-free confidence interval of a median: Lo and
// Hi are order statistics of the rounds, and Confidence the probability
// that they enclose the true median, whatever the rounds' distribution.
type Interval struct {
	Lo         float64 `json:"lo"`
	Hi         float64 `json:"hi"`
	Confidence float64 `json:"confidence"`
}

// IntervalConfidence is the confidence asked of every interval. Fewer than
// six rounds cannot give it; they get their whole range instead, with the
// confidence that range has.
const IntervalConfidence = 0.95

// MedianInterval returns the median of xs and its confidence interval:
// benchstat's (golang.org/x/perf/benchmath, non-parametric) from six
// rounds on, and below that the range of the rounds, which encloses the
// median with probability 1 - 2^(1-n) (75 % for three rounds). Unlike half
// the range, the interval narrows as rounds are added.
func MedianInterval(xs []float64) (median float64, in Interval) {
	switch len(xs) {
	case 0:
		return 0, Interval{}
	case 1:
		return xs[0], Interval{Lo: xs[0], Hi: xs[0]}
	}
	median = Median(xs)
	if len(xs) < 6 {
		return median, Interval{Lo: slices.Min(xs), Hi: slices.Max(xs), Confidence: 1 - math.Pow(2, float64(1-len(xs)))}
	}
	// NewSample sorts its values in place.
	sum := benchmath.AssumeNothing.Summary(benchmath.NewSample(slices.Clone(xs), &benchmath.DefaultThresholds), IntervalConfidence)
	return median, Interval{Lo: sum.Lo, Hi: sum.Hi, Confidence: sum.Confidence}
}

// PairedRatio computes the Ratio of num over den, paired by round. Pairing
// rounds that ran next to each other cancels most of a noisy machine's
// drift.
func PairedRatio(num, den []float64) Ratio {
	v, in := MedianInterval(PairedRatios(num, den))
	return Ratio{Value: v, Interval: in}
}

// String prints the ratio with its interval: "0.98 [0.91, 1.06]".
func (r Ratio) String() string {
	return fmt.Sprintf("%.2f [%.2f, %.2f]", r.Value, r.Lo, r.Hi)
}
