package scenario

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/go-proxy/go-proxy/bench/report"
	"github.com/go-proxy/go-proxy/bench/target"
)

// InstructionOptions are the settings of an instruction count.
type InstructionOptions struct {
	Duration time.Duration // measured window; under callgrind a few thousand requests a second
	Warmup   time.Duration
	Conns    int // connections of the load generator; DefaultInstructionConns when 0
	Backend  string
	Dir      string
}

// DefaultInstructionConns keeps the process under callgrind busy without
// queueing long behind its single thread.
const DefaultInstructionConns = 8

// CountInstructions runs the scenario once against t under callgrind,
// with the Go load generator, and counts the process's user-space
// instructions over the measured window. WebSocket and churn scenarios
// are not counted (their cost is not per request).
func CountInstructions(ctx context.Context, s Scenario, t target.Target, round int, opt InstructionOptions) report.InstructionRun {
	r := report.InstructionRun{Scenario: s.Name, Target: t.Name(), Kind: t.Kind(), Round: round}
	fail := func(err error) report.InstructionRun {
		r.Failure = err.Error()
		return r
	}
	if s.WebSocket || s.Churn {
		return fail(errors.New("not counted: the scenario's cost is not per request"))
	}
	load := s
	load.Conns = opt.Conns
	if load.Conns <= 0 {
		load.Conns = DefaultInstructionConns
	}
	domains := s.Domains()
	var total uint64
	var countErr error
	count := func(inst *target.Instance, begin bool) {
		switch {
		case inst.Counter == nil:
			countErr = fmt.Errorf("%s runs no process to count", t.Name())
		case begin:
			// During the warm-up's load: valgrind takes commands only
			// while the process runs.
			countErr = inst.Counter.On(ctx)
		case countErr == nil:
			// The load is stopping: a probe request now and then keeps
			// an idle process running until callgrind has written its
			// counts (a few requests' instructions in some 400 million).
			wake := func() { _ = target.Probe(ctx, inst.Addr, domains[0], s.probePath(), time.Second) }
			total, countErr = inst.Counter.Total(ctx, wake)
		}
	}
	run := runOne(ctx, load, t, round, domains, Options{
		Duration: opt.Duration, Warmup: opt.Warmup, Driver: DriverLoadgen, Backend: opt.Backend, Dir: opt.Dir,
		Callgrind: true, OnWindow: count,
	})
	switch {
	case run.Failure != "":
		return fail(errors.New(run.Failure))
	case countErr != nil:
		return fail(countErr)
	}
	r.Requests, r.Errors, r.Instructions = run.Requests, run.Errors, total
	if ok := run.Requests - run.Errors; ok > 0 {
		r.PerRequest = float64(total) / float64(ok)
	}
	return r
}
