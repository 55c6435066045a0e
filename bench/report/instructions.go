package report

import (
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
)

// InstructionRun is one target's user-space instruction count over a
// measured window of one scenario (callgrind): a per-request cost that the
// machine's noise does not move, unlike time.
type InstructionRun struct {
	Scenario     string  `json:"scenario"`
	Target       string  `json:"target"`
	Kind         string  `json:"kind"`
	Round        int     `json:"round"`
	Requests     uint64  `json:"requests"`
	Errors       uint64  `json:"errors"`
	Instructions uint64  `json:"instructions"`
	PerRequest   float64 `json:"instructions_per_request"`
	Failure      string  `json:"failure,omitempty"`
}

// InstructionSummary is one target's runs in one scenario: the median
// count per request and the spread of the rounds.
type InstructionSummary struct {
	Scenario   string  `json:"scenario"`
	Target     string  `json:"target"`
	Kind       string  `json:"kind"`
	Rounds     int     `json:"rounds"`
	Failures   int     `json:"failures"`
	Requests   uint64  `json:"requests"`
	Errors     uint64  `json:"errors"`
	PerRequest float64 `json:"instructions_per_request"` // median of the rounds
	Spread     float64 `json:"spread"`                   // half the rounds' range over the median
}

// SummarizeInstructions groups runs by scenario and target, in the order
// they first appear.
func SummarizeInstructions(runs []InstructionRun) []InstructionSummary {
	var out []InstructionSummary
	index := map[[2]string]int{}
	per := map[[2]string][]float64{}
	for _, r := range runs {
		k := [2]string{r.Scenario, r.Target}
		i, ok := index[k]
		if !ok {
			i = len(out)
			index[k] = i
			out = append(out, InstructionSummary{Scenario: r.Scenario, Target: r.Target, Kind: r.Kind})
		}
		s := &out[i]
		s.Rounds++
		s.Errors += r.Errors
		if r.Failure != "" || r.Requests == 0 {
			s.Failures++
			continue
		}
		s.Requests += r.Requests
		per[k] = append(per[k], r.PerRequest)
	}
	for i := range out {
		v := per[[2]string{out[i].Scenario, out[i].Target}]
		if len(v) == 0 {
			continue
		}
		out[i].PerRequest, out[i].Spread = Median(v), RelSpread(v)
	}
	return out
}

// InstructionChange is the new build's count against the base build's in
// one scenario.
type InstructionChange struct {
	Scenario   string  `json:"scenario"`
	Base       float64 `json:"base_instructions_per_request"`
	New        float64 `json:"new_instructions_per_request"`
	Change     float64 `json:"change"` // new/base - 1
	Noise      float64 `json:"noise"`  // the larger spread of the two
	Threshold  float64 `json:"threshold"`
	Regression bool    `json:"regression"`
}

// CompareInstructions compares the base and new rows of every scenario: a
// regression is a rise of more than threshold beyond the noise.
func CompareInstructions(sums []InstructionSummary, base, new string, threshold float64) []InstructionChange {
	find := func(scenario, target string) *InstructionSummary {
		for i := range sums {
			if sums[i].Scenario == scenario && sums[i].Target == target && sums[i].PerRequest > 0 {
				return &sums[i]
			}
		}
		return nil
	}
	var out []InstructionChange
	for _, s := range sums {
		if s.Target != new {
			continue
		}
		b, n := find(s.Scenario, base), find(s.Scenario, new)
		if b == nil || n == nil {
			continue
		}
		c := InstructionChange{Scenario: s.Scenario, Base: b.PerRequest, New: n.PerRequest, Threshold: threshold,
			Change: n.PerRequest/b.PerRequest - 1, Noise: max(b.Spread, n.Spread)}
		c.Regression = c.Change > threshold+c.Noise
		out = append(out, c)
	}
	return out
}

// WriteInstructions writes the summaries as a table; each row also gives
// its count relative to the first go-proxy row of its scenario.
func WriteInstructions(w io.Writer, sums []InstructionSummary) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\ttarget\trounds\trequests\tinstructions/req\t±\tvs go-proxy\t")
	ref := map[string]float64{}
	for _, s := range sums {
		if _, ok := ref[s.Scenario]; !ok && s.Kind == "go-proxy" && s.PerRequest > 0 {
			ref[s.Scenario] = s.PerRequest
		}
	}
	for _, s := range sums {
		if s.PerRequest == 0 {
			fmt.Fprintf(tw, "%s\t%s\t%d\t-\tfailed\t\t\t\n", s.Scenario, s.Target, s.Rounds)
			continue
		}
		vs := "-"
		if r := ref[s.Scenario]; r > 0 {
			vs = fmt.Sprintf("%.2fx", s.PerRequest/r)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%.1f%%\t%s\t\n", s.Scenario, s.Target, s.Rounds, s.Requests,
			FormatRPS(s.PerRequest), s.Spread*100, vs)
	}
	return tw.Flush()
}

// WriteInstructionChanges writes the base-against-new verdicts.
func WriteInstructionChanges(w io.Writer, changes []InstructionChange) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tbase instr/req\tnew instr/req\tchange\tnoise\tthreshold\tverdict\t")
	for _, c := range changes {
		verdict := "ok"
		if c.Regression {
			verdict = "REGRESSION"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%+.1f%%\t±%.1f%%\t%.1f%%\t%s\t\n", c.Scenario, FormatRPS(c.Base),
			FormatRPS(c.New), c.Change*100, c.Noise*100, c.Threshold*100, verdict)
	}
	return tw.Flush()
}

// AnyInstructionRegression reports whether a change is a regression.
func AnyInstructionRegression(changes []InstructionChange) bool {
	return slices.ContainsFunc(changes, func(c InstructionChange) bool { return c.Regression })
}
