package report

import (
	"encoding/json"
	"os"
	"time"
)

// Latency percentiles, in microseconds.
type Latency struct {
	P50  float64 `json:"p50_us"`
	P90  float64 `json:"p90_us"`
	P99  float64 `json:"p99_us"`
	P999 float64 `json:"p99_9_us"`
	Max  float64 `json:"max_us"`
}

// Activity is what a background task did during a run.
type Activity struct {
	Name   string   `json:"name"`
	Cycles uint64   `json:"cycles"`
	Errors uint64   `json:"errors"`
	Sample []string `json:"error_samples,omitempty"`
}

// Run is one measured window of one target in one round.
type Run struct {
	Scenario    string  `json:"scenario"`
	Target      string  `json:"target"`
	Kind        string  `json:"kind"`
	Round       int     `json:"round"`
	Driver      string  `json:"driver"`
	Requests    uint64  `json:"requests"`
	Errors      uint64  `json:"errors"`
	Seconds     float64 `json:"seconds"`
	RPS         float64 `json:"rps"`
	Latency     Latency `json:"latency"`
	CPUSeconds  float64 `json:"cpu_seconds,omitempty"`
	CPUPerReqUS float64 `json:"cpu_us_per_request,omitempty"`
	// SwitchesPerReq is the target's context switches per request, over
	// all its threads (loadgen.TreeUsage): its threads' sleeps and
	// wake-ups, a cost its own work per request does not show.
	SwitchesPerReq float64 `json:"switches_per_request,omitempty"`
	// GenCPUPerReqUS is the load generator's own CPU per request.
	GenCPUPerReqUS float64 `json:"generator_cpu_us_per_request,omitempty"`
	// MachineIdle is the share of the machine's CPU time left idle during
	// the window (loadgen.IdleShare).
	MachineIdle  float64 `json:"machine_idle"`
	SetupSeconds float64 `json:"setup_seconds"`
	RSSMiB       float64 `json:"rss_mib,omitempty"` // the process tree's resident memory at the end
	// PrimeSeconds is how long one request to every route of a large
	// table took before the warm-up (first requests are not measured).
	PrimeSeconds float64        `json:"prime_seconds,omitempty"`
	ErrorSamples []string       `json:"error_samples,omitempty"`
	Statuses     map[int]uint64 `json:"statuses,omitempty"`
	Background   []Activity     `json:"background,omitempty"`
	Failure      string         `json:"failure,omitempty"` // the run could not be made
}

// Summary is one target's rounds of one scenario.
type Summary struct {
	Target string `json:"target"`
	Kind   string `json:"kind"`
	Driver string `json:"driver"`
	Rounds int    `json:"rounds"`
	// RPS is the median over rounds; RPSSpread its RelSpread.
	RPS       float64 `json:"rps"`
	RPSSpread float64 `json:"rps_spread"`
	// Latency percentiles are medians over rounds.
	Latency     Latency `json:"latency"`
	Errors      uint64  `json:"errors"`
	CPUPerReqUS float64 `json:"cpu_us_per_request,omitempty"`
	// SwitchesPerReq is the median of the rounds' context switches per
	// request.
	SwitchesPerReq float64 `json:"switches_per_request,omitempty"`
	// MachineIdle is the median share of the machine's CPU left idle.
	MachineIdle float64 `json:"machine_idle"`
	// VsDirect is this target's throughput over the direct-to-backend
	// throughput, paired by round.
	VsDirect *Ratio `json:"vs_direct,omitempty"`
	Failures int    `json:"failures,omitempty"`
}

// Check is a pass/fail condition of the suite.
type Check struct {
	Scenario string `json:"scenario"`
	Name     string `json:"name"`
	Pass     bool   `json:"pass"`
	Detail   string `json:"detail"`
}

// Scenario is the result of one scenario.
type Scenario struct {
	Name        string         `json:"name"`
	Description string         `json:"description"`
	Params      map[string]any `json:"params"`
	Summaries   []Summary      `json:"summaries"`
	Runs        []Run          `json:"runs"`
	Checks      []Check        `json:"checks,omitempty"`
	// Versus sets each go-proxy row against each reference proxy's.
	Versus []Versus `json:"versus,omitempty"`
}

// Report is a whole run of the suite.
type Report struct {
	Command   string            `json:"command"`
	Started   time.Time         `json:"started"`
	Finished  time.Time         `json:"finished"`
	Host      map[string]string `json:"host"`
	Options   map[string]any    `json:"options"`
	Scenarios []*Scenario       `json:"scenarios"`
	Changes   []Change          `json:"changes,omitempty"`
	// Instruction counts (gpbench instructions).
	Instructions         []InstructionRun     `json:"instructions,omitempty"`
	InstructionSummaries []InstructionSummary `json:"instruction_summaries,omitempty"`
	InstructionChanges   []InstructionChange  `json:"instruction_changes,omitempty"`
	Checks               []Check              `json:"checks,omitempty"`
	Pass                 bool                 `json:"pass"`
}

// WriteJSON writes r to path, indented.
func (r *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// ReadJSON reads a report written by WriteJSON.
func ReadJSON(path string) (*Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// Summarize builds one Summary per target, in the order of targets, from
// the runs of a scenario. Rounds where a run failed are left out of the
// medians; ratios pair only rounds where both runs succeeded.
func Summarize(runs []Run, targets []string, kinds map[string]string) []Summary {
	byTarget, rounds := byRound(runs)
	series := func(t string, f func(Run) float64) []float64 {
		var xs []float64
		for i := 0; i < rounds; i++ {
			if r, ok := byTarget[t][i]; ok && r.Failure == "" {
				xs = append(xs, f(r))
			}
		}
		return xs
	}
	// paired returns the RPS of a and b over the rounds both succeeded.
	paired := func(a, b string) ([]float64, []float64) {
		var xa, xb []float64
		for i := 0; i < rounds; i++ {
			ra, oka := byTarget[a][i]
			rb, okb := byTarget[b][i]
			if oka && okb && ra.Failure == "" && rb.Failure == "" {
				xa, xb = append(xa, ra.RPS), append(xb, rb.RPS)
			}
		}
		return xa, xb
	}
	direct := ""
	for _, t := range targets {
		if kinds[t] == "direct" {
			direct = t
		}
	}
	var out []Summary
	for _, t := range targets {
		rs, ok := byTarget[t]
		if !ok {
			continue
		}
		s := Summary{Target: t, Kind: kinds[t]}
		for _, r := range rs {
			if r.Failure != "" {
				s.Failures++
				continue
			}
			s.Rounds++
			s.Errors += r.Errors
			s.Driver = r.Driver
		}
		rps := series(t, func(r Run) float64 { return r.RPS })
		s.RPS, s.RPSSpread = Median(rps), RelSpread(rps)
		s.Latency = Latency{
			P50:  Median(series(t, func(r Run) float64 { return r.Latency.P50 })),
			P90:  Median(series(t, func(r Run) float64 { return r.Latency.P90 })),
			P99:  Median(series(t, func(r Run) float64 { return r.Latency.P99 })),
			P999: Median(series(t, func(r Run) float64 { return r.Latency.P999 })),
			Max:  Median(series(t, func(r Run) float64 { return r.Latency.Max })),
		}
		var cpu []float64
		for _, x := range series(t, func(r Run) float64 { return r.CPUPerReqUS }) {
			if x > 0 {
				cpu = append(cpu, x)
			}
		}
		s.CPUPerReqUS = Median(cpu)
		s.SwitchesPerReq = Median(positive(series(t, func(r Run) float64 { return r.SwitchesPerReq })))
		s.MachineIdle = Median(series(t, func(r Run) float64 { return r.MachineIdle }))
		if direct != "" && t != direct {
			num, den := paired(t, direct)
			if len(num) > 0 {
				r := PairedRatio(num, den)
				s.VsDirect = &r
			}
		}
		out = append(out, s)
	}
	return out
}

// byRound indexes runs by target and round, failed ones included; rounds
// is one past the highest round seen.
func byRound(runs []Run) (byTarget map[string]map[int]Run, rounds int) {
	byTarget = map[string]map[int]Run{}
	for _, r := range runs {
		if byTarget[r.Target] == nil {
			byTarget[r.Target] = map[int]Run{}
		}
		byTarget[r.Target][r.Round] = r
		rounds = max(rounds, r.Round+1)
	}
	return byTarget, rounds
}

// Find returns the summary of target, or nil.
func (s *Scenario) Find(target string) *Summary {
	for i := range s.Summaries {
		if s.Summaries[i].Target == target {
			return &s.Summaries[i]
		}
	}
	return nil
}

// RPSSeries returns a target's requests/s by round, with 0 for a failed
// or missing round, for pairing.
func (s *Scenario) RPSSeries(target string, rounds int) []float64 {
	xs := make([]float64, rounds)
	for _, r := range s.Runs {
		if r.Target == target && r.Failure == "" && r.Round < rounds {
			xs[r.Round] = r.RPS
		}
	}
	return xs
}
