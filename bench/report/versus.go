package report

import (
	"fmt"
	"io"
)

// Versus is one go-proxy row of a scenario against one reference proxy's
// row (haproxy, nginx), paired by round: the bar is that go-proxy
// beats the references on requests/s, CPU per request and p99, and a
// noisy machine moves single rounds by more than the gap, so every figure
// comes with its confidence interval and with the rounds won.
type Versus struct {
	Target    string `json:"target"`
	Reference string `json:"reference"`
	Rounds    int    `json:"rounds"` // rounds in which both runs succeeded
	// Ratios are target over reference: above 1 is better for requests/s,
	// below 1 for CPU and p99. CPU pairs only rounds with both figures.
	RPS Ratio `json:"rps"`
	CPU Ratio `json:"cpu"`
	P99 Ratio `json:"p99"`
	// Wins count the rounds in which the target did better.
	RPSWins int `json:"rps_wins"`
	CPUWins int `json:"cpu_wins"`
	P99Wins int `json:"p99_wins"`
	// CPURounds is how many rounds had a CPU figure for both.
	CPURounds int `json:"cpu_rounds"`
}

// Standing says where a ratio leaves the target: "ahead" or "behind" when
// its whole confidence interval is on one side of 1, "level" otherwise.
func Standing(r Ratio, higherIsBetter bool) string {
	switch {
	case r.Value == 0:
		return "-"
	case r.Lo > 1:
		if higherIsBetter {
			return "ahead"
		}
		return "behind"
	case r.Hi < 1:
		if higherIsBetter {
			return "behind"
		}
		return "ahead"
	}
	return "level"
}

// Against pairs every go-proxy row with every reference row, round by
// round. Rounds where either run failed are left out.
func Against(runs []Run, targets []string, kinds map[string]string) []Versus {
	byTarget, rounds := byRound(runs)
	var out []Versus
	for _, t := range targets {
		if kinds[t] != "go-proxy" {
			continue
		}
		for _, ref := range targets {
			if kinds[ref] != "reference" {
				continue
			}
			if v, ok := pairRounds(t, ref, byTarget[t], byTarget[ref], rounds); ok {
				out = append(out, v)
			}
		}
	}
	return out
}

func pairRounds(t, ref string, a, b map[int]Run, rounds int) (Versus, bool) {
	v := Versus{Target: t, Reference: ref}
	var rpsA, rpsB, cpuA, cpuB, p99A, p99B []float64
	for i := 0; i < rounds; i++ {
		ra, oka := a[i]
		rb, okb := b[i]
		if !oka || !okb || ra.Failure != "" || rb.Failure != "" {
			continue
		}
		v.Rounds++
		rpsA, rpsB = append(rpsA, ra.RPS), append(rpsB, rb.RPS)
		if ra.RPS > rb.RPS {
			v.RPSWins++
		}
		p99A, p99B = append(p99A, ra.Latency.P99), append(p99B, rb.Latency.P99)
		if ra.Latency.P99 < rb.Latency.P99 {
			v.P99Wins++
		}
		if ra.CPUPerReqUS > 0 && rb.CPUPerReqUS > 0 {
			v.CPURounds++
			cpuA, cpuB = append(cpuA, ra.CPUPerReqUS), append(cpuB, rb.CPUPerReqUS)
			if ra.CPUPerReqUS < rb.CPUPerReqUS {
				v.CPUWins++
			}
		}
	}
	if v.Rounds == 0 {
		return v, false
	}
	v.RPS = PairedRatio(rpsA, rpsB)
	v.P99 = PairedRatio(p99A, p99B)
	if v.CPURounds > 0 {
		v.CPU = PairedRatio(cpuA, cpuB)
	}
	return v, true
}

// WriteVersus writes each scenario's go-proxy rows against the reference
// proxies as a table.
func WriteVersus(w io.Writer, scenarios []*Scenario) error {
	rows := [][]string{{"scenario", "target", "against", "req/s ratio", "won", "CPU ratio", "won", "p99 ratio", "won", "standing (req/s, CPU, p99)"}}
	for _, sc := range scenarios {
		for _, v := range sc.Versus {
			cpu, cpuWon := "-", "-"
			if v.CPURounds > 0 {
				cpu = v.CPU.String()
				cpuWon = fmt.Sprintf("%d/%d", v.CPUWins, v.CPURounds)
			}
			standing := fmt.Sprintf("%s, %s, %s", Standing(v.RPS, true), Standing(v.CPU, false), Standing(v.P99, false))
			rows = append(rows, []string{sc.Name, v.Target, v.Reference,
				v.RPS.String(), fmt.Sprintf("%d/%d", v.RPSWins, v.Rounds),
				cpu, cpuWon,
				v.P99.String(), fmt.Sprintf("%d/%d", v.P99Wins, v.Rounds),
				standing})
		}
	}
	return renderTable(w, rows, 3)
}

// AnyVersus reports whether some scenario has a comparison to write.
func AnyVersus(scenarios []*Scenario) bool {
	for _, sc := range scenarios {
		if len(sc.Versus) > 0 {
			return true
		}
	}
	return false
}
