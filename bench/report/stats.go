// Package report turns the runs of the bench suite into summaries, ratios,
// noise estimates and regression verdicts, and writes them as JSON and as
// a table.
package report

import (
	"math"
	"slices"
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
// and half their range as the noise.
type Ratio struct {
	Value float64 `json:"value"`
	Noise float64 `json:"noise"`
}

// PairedRatio computes the Ratio of num over den, paired by round. Pairing
// rounds that ran next to each other cancels most of a noisy machine's
// drift.
func PairedRatio(num, den []float64) Ratio {
	r := PairedRatios(num, den)
	return Ratio{Value: Median(r), Noise: HalfRange(r)}
}
