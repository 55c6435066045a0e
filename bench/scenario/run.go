package scenario

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/go-proxy/go-proxy/bench/backend"
	"github.com/go-proxy/go-proxy/bench/loadgen"
	"github.com/go-proxy/go-proxy/bench/report"
	"github.com/go-proxy/go-proxy/bench/target"
)

// Drivers.
const (
	DriverLoadgen = "loadgen"
	DriverWrk     = "wrk"
)

// Options are the settings of a suite run.
type Options struct {
	Duration   time.Duration // measured window of each run
	Warmup     time.Duration
	Rounds     int
	Driver     string // DriverLoadgen or DriverWrk (WebSocket always uses the loadgen)
	WrkBinary  string
	WrkThreads int
	Backend    string          // address of the bundled backend
	Targets    []target.Target // in the order each round runs them
	Churn      target.ChurnConfig
	Dir        string    // scratch directory
	Progress   io.Writer // one line per run; nil: quiet
	Pause      time.Duration
	// Callgrind runs each target's process under callgrind
	// (target.Setup.Callgrind; CountInstructions).
	Callgrind bool
	// OnWindow, when set, is called as each run's measured window opens
	// and after it closes, with the target still running (gpbench profile
	// takes the proxy's CPU profile across it; CountInstructions counts).
	OnWindow func(inst *target.Instance, begin bool)
}

// DefaultChurn is the registry churn of the churn scenario: 20 sessions a
// second, each staging and applying 10 routes, then shutting down.
var DefaultChurn = target.ChurnConfig{Rate: 20, Routes: 10}

// TargetsFor returns the targets a scenario runs: for churn, each go-proxy
// build quiet and with churn (reference proxies have no registry);
// otherwise all of them.
func TargetsFor(s Scenario, targets []target.Target, churn target.ChurnConfig) []target.Target {
	if !s.Churn {
		return targets
	}
	var out []target.Target
	for _, t := range targets {
		switch g := t.(type) {
		case *target.GoProxy:
			out = append(out, g, g.WithChurn(churn))
		default:
			if t.Kind() == target.KindDirect {
				out = append(out, t)
			}
		}
	}
	return out
}

// Run runs a scenario: Rounds rounds, each running every target once.
func Run(ctx context.Context, s Scenario, opt Options) (*report.Scenario, error) {
	if opt.Rounds < 1 {
		opt.Rounds = 1
	}
	if opt.Churn.Rate == 0 {
		opt.Churn = DefaultChurn
	}
	targets := TargetsFor(s, opt.Targets, opt.Churn)
	res := &report.Scenario{Name: s.Name, Description: s.Description, Params: s.Params()}
	names := make([]string, len(targets))
	kinds := map[string]string{}
	for i, t := range targets {
		names[i] = t.Name()
		kinds[t.Name()] = t.Kind()
	}
	domains := s.Domains()
rounds:
	for round := 0; round < opt.Rounds; round++ {
		for _, t := range targets {
			if ctx.Err() != nil {
				break rounds
			}
			r := runOne(ctx, s, t, round, domains, opt)
			res.Runs = append(res.Runs, r)
			if opt.Progress != nil {
				fmt.Fprintln(opt.Progress, progressLine(s, r, opt.Rounds))
			}
			if opt.Pause > 0 {
				select {
				case <-ctx.Done():
				case <-time.After(opt.Pause):
				}
			}
		}
	}
	res.Summaries = report.Summarize(res.Runs, names, kinds)
	res.Versus = report.Against(res.Runs, names, kinds)
	res.Checks = Checks(s, res, targets)
	return res, ctx.Err()
}

func progressLine(s Scenario, r report.Run, rounds int) string {
	if r.Failure != "" {
		return fmt.Sprintf("[%s] round %d/%d %s: FAILED: %s", s.Name, r.Round+1, rounds, r.Target, r.Failure)
	}
	cpu := ""
	if r.CPUPerReqUS > 0 {
		cpu = fmt.Sprintf(", CPU %.1f µs/req", r.CPUPerReqUS)
	}
	if r.SwitchesPerReq > 0 {
		cpu += fmt.Sprintf(", %.2f switches/req", r.SwitchesPerReq)
	}
	if r.RSSMiB > 0 {
		cpu += fmt.Sprintf(", RSS %.0f MiB", r.RSSMiB)
	}
	cpu += fmt.Sprintf(", machine idle %.0f%%", 100*r.MachineIdle)
	setup := fmt.Sprintf("setup %.1fs", r.SetupSeconds)
	if r.PrimeSeconds > 0 {
		setup += fmt.Sprintf(", priming %.1fs", r.PrimeSeconds)
	}
	return fmt.Sprintf("[%s] round %d/%d %-16s %s req/s, p50 %s ms, p99 %s ms, errors %d%s (%s)",
		s.Name, r.Round+1, rounds, r.Target, report.FormatRPS(r.RPS), report.FormatLatency(r.Latency.P50),
		report.FormatLatency(r.Latency.P99), r.Errors, cpu, setup)
}

// probePath is a GET path that answers 200 once a target serves.
func (s Scenario) probePath() string {
	if s.Method == "" && !s.WebSocket {
		return s.Path
	}
	return backend.Path13B
}

func runOne(ctx context.Context, s Scenario, t target.Target, round int, domains []string, opt Options) report.Run {
	r := report.Run{Scenario: s.Name, Target: t.Name(), Kind: t.Kind(), Round: round}
	setup := target.Setup{
		Backend: opt.Backend, Domains: domains, Features: s.Features, WebSocket: s.WebSocket,
		ProbePath: s.probePath(), Dir: opt.Dir, Callgrind: opt.Callgrind,
	}
	start := time.Now()
	inst, err := t.Start(ctx, setup)
	r.SetupSeconds = time.Since(start).Seconds()
	if err != nil {
		r.Failure = err.Error()
		return r
	}
	if len(domains) > 1 && !s.WebSocket {
		t0 := time.Now()
		failed, err := loadgen.Prime(ctx, inst.Addr, domains, s.probePath(), s.Conns)
		r.PrimeSeconds = time.Since(t0).Seconds()
		if err == nil && failed > 0 {
			err = fmt.Errorf("priming the table: %d of %d requests failed", failed, len(domains))
		}
		if err != nil {
			_ = inst.Stop()
			r.Failure = err.Error()
			return r
		}
	}
	var stopBG func() []target.Activity
	if inst.Background != nil {
		stopBG = inst.Background(ctx)
	}
	var use0, use1 loadgen.TreeUsage
	var useErr error
	var machine0 loadgen.MachineCPU
	onMeasure := func(begin bool) {
		if opt.OnWindow != nil {
			if begin {
				opt.OnWindow(inst, true)
			} else {
				defer opt.OnWindow(inst, false)
			}
		}
		if m, err := loadgen.ReadMachineCPU(); err == nil {
			if begin {
				machine0 = m
			} else {
				r.MachineIdle = loadgen.IdleShare(machine0, m)
			}
		}
		if inst.PID == 0 {
			return
		}
		u, err := loadgen.ReadTreeUsage(inst.PID)
		if err != nil {
			useErr = err
		}
		if begin {
			use0 = u
		} else {
			use1 = u
			r.RSSMiB = float64(u.RSS) / (1 << 20)
		}
	}
	res, err := drive(ctx, s, opt, inst.Addr, domains, onMeasure)
	if stopBG != nil {
		for _, a := range stopBG() {
			r.Background = append(r.Background, report.Activity(a))
		}
	}
	if stopErr := inst.Stop(); stopErr != nil {
		r.ErrorSamples = append(r.ErrorSamples, "stop: "+stopErr.Error())
	}
	if err != nil {
		r.Failure = err.Error()
		return r
	}
	r.Driver = res.Driver
	r.Requests, r.Errors = res.Requests, res.Errors
	r.Seconds, r.RPS = res.Elapsed.Seconds(), res.RPS
	r.Latency = report.Latency{P50: res.Latency.P50, P90: res.Latency.P90, P99: res.Latency.P99, P999: res.Latency.P999, Max: res.Latency.Max}
	r.ErrorSamples = append(res.ErrorSamples, r.ErrorSamples...)
	r.Statuses = res.Statuses
	ok := res.Requests - res.Errors
	if ok > 0 {
		r.GenCPUPerReqUS = res.GenCPU.Seconds() * 1e6 / float64(ok)
	}
	if inst.PID != 0 && useErr == nil {
		r.CPUSeconds = (use1.CPU - use0.CPU).Seconds()
		// A worker that exits in the window takes its switches along.
		if ok > 0 {
			r.CPUPerReqUS = r.CPUSeconds * 1e6 / float64(ok)
			if use1.Switches >= use0.Switches {
				r.SwitchesPerReq = float64(use1.Switches-use0.Switches) / float64(ok)
			}
		}
	}
	return r
}

// drive runs the load generator the options and scenario call for.
func drive(ctx context.Context, s Scenario, opt Options, addr string, domains []string, onMeasure func(bool)) (*loadgen.Result, error) {
	if s.WebSocket {
		return loadgen.RunWS(ctx, loadgen.WSConfig{
			Addr: addr, Host: domains[0], Path: s.Path, Message: backend.Body13B, Conns: s.Conns,
			Warmup: opt.Warmup, Duration: opt.Duration, OnMeasure: onMeasure,
		})
	}
	var body []byte
	if s.BodySize > 0 {
		body = make([]byte, s.BodySize)
		for i := range body {
			body[i] = 'x'
		}
	}
	if opt.Driver == DriverWrk {
		return loadgen.RunWrk(ctx, loadgen.WrkConfig{
			Binary: opt.WrkBinary, Addr: addr, Hosts: domains, Path: s.Path, Method: s.Method, Body: body,
			Conns: s.Conns, Threads: opt.WrkThreads, Warmup: opt.Warmup, Duration: opt.Duration,
			Dir: opt.Dir, OnMeasure: onMeasure,
		})
	}
	return loadgen.RunHTTP(ctx, loadgen.HTTPConfig{
		Addr: addr, Hosts: domains, Path: s.Path, Method: s.Method, Body: body, Conns: s.Conns,
		Warmup: opt.Warmup, Duration: opt.Duration, ExpectBodyLen: s.RespSize, OnMeasure: onMeasure,
	})
}

// Checks returns the scenario's pass/fail conditions: every go-proxy row
// without request errors or failed runs; for churn, no error under churn,
// churn sessions that all succeeded, and a p99 at most twice the quiet
// p99.
func Checks(s Scenario, res *report.Scenario, targets []target.Target) []report.Check {
	var checks []report.Check
	for _, t := range targets {
		if t.Kind() != target.KindGoProxy {
			continue
		}
		sum := res.Find(t.Name())
		if sum == nil {
			continue
		}
		var bgErrs []string
		for _, r := range res.Runs {
			if r.Target != t.Name() {
				continue
			}
			for _, a := range r.Background {
				if a.Errors > 0 || (a.Cycles == 0 && a.Name == "registry-churn") {
					bgErrs = append(bgErrs, fmt.Sprintf("round %d %s: %d of %d cycles failed %v", r.Round+1, a.Name, a.Errors, a.Cycles, a.Sample))
				}
			}
		}
		checks = append(checks, report.Check{
			Scenario: s.Name, Name: t.Name() + " without errors",
			Pass: sum.Errors == 0 && sum.Failures == 0 && len(bgErrs) == 0 && sum.Rounds > 0,
			Detail: fmt.Sprintf("%d request errors, %d failed runs, %d rounds%s", sum.Errors, sum.Failures, sum.Rounds,
				strings.Join(append([]string{""}, bgErrs...), "; ")),
		})
		g, ok := t.(*target.GoProxy)
		if !ok || g.Churn == nil {
			continue
		}
		quiet := res.Find(g.Label)
		if quiet == nil || quiet.Latency.P99 == 0 {
			continue
		}
		ratio := sum.Latency.P99 / quiet.Latency.P99
		checks = append(checks, report.Check{
			Scenario: s.Name, Name: t.Name() + " p99 at most 2x quiet",
			Pass: sum.Rounds > 0 && ratio <= 2,
			Detail: fmt.Sprintf("p99 %s ms under churn, %s ms quiet (%.2fx)",
				report.FormatLatency(sum.Latency.P99), report.FormatLatency(quiet.Latency.P99), ratio),
		})
	}
	return checks
}
