package report

// Change is the throughput change of one scenario from a base build to a
// new one, from rounds that ran in alternation.
type Change struct {
	Scenario string  `json:"scenario"`
	Base     string  `json:"base"`
	New      string  `json:"new"`
	BaseRPS  float64 `json:"base_rps"`
	NewRPS   float64 `json:"new_rps"`
	// Change is the median of the per-round relative changes new/base-1,
	// and Interval its confidence interval (MedianInterval): how far the
	// noise leaves the change uncertain.
	Change float64 `json:"change"`
	Interval
	Threshold float64 `json:"threshold"`
	// Regression is set when throughput fell by more than the threshold
	// beyond the noise: the whole interval lies below -Threshold.
	Regression bool    `json:"regression"`
	BaseP99    float64 `json:"base_p99_us"`
	NewP99     float64 `json:"new_p99_us"`
	BaseCPU    float64 `json:"base_cpu_us_per_request"`
	NewCPU     float64 `json:"new_cpu_us_per_request"`
	Rounds     int     `json:"rounds"`
}

// Compare computes the change of throughput from base to new, given each
// build's requests/s per round (paired by index).
func Compare(scenario, baseName, newName string, base, new []float64, threshold float64) Change {
	// Rounds where either build has no result (0) are left out.
	var changes []float64
	for i := 0; i < len(base) && i < len(new); i++ {
		if base[i] > 0 && new[i] > 0 {
			changes = append(changes, new[i]/base[i]-1)
		}
	}
	c := Change{
		Scenario: scenario, Base: baseName, New: newName,
		BaseRPS: Median(positive(base)), NewRPS: Median(positive(new)),
		Threshold: threshold, Rounds: len(changes),
	}
	if len(changes) == 0 {
		return c
	}
	c.Change, c.Interval = MedianInterval(changes)
	c.Regression = c.Hi < -threshold
	return c
}

// AnyRegression reports whether a change is a regression.
func AnyRegression(cs []Change) bool {
	for _, c := range cs {
		if c.Regression {
			return true
		}
	}
	return false
}

func positive(xs []float64) []float64 {
	var out []float64
	for _, x := range xs {
		if x > 0 {
			out = append(out, x)
		}
	}
	return out
}
