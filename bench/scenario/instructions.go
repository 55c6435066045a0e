package scenario

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/go-proxy/go-proxy/bench/loadgen"
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

// CountInstructions starts t under callgrind, drives the scenario's
// requests with the Go load generator, and counts the process's
// user-space instructions over the measured window. WebSocket and churn
// scenarios are not counted (their cost is not per request).
func CountInstructions(ctx context.Context, s Scenario, t target.Target, round int, opt InstructionOptions) report.InstructionRun {
	r := report.InstructionRun{Scenario: s.Name, Target: t.Name(), Kind: t.Kind(), Round: round}
	fail := func(err error) report.InstructionRun {
		r.Failure = err.Error()
		return r
	}
	if s.WebSocket || s.Churn {
		return fail(errors.New("not counted: the scenario's cost is not per request"))
	}
	conns := opt.Conns
	if conns <= 0 {
		conns = DefaultInstructionConns
	}
	domains := s.Domains()
	inst, err := t.Start(ctx, target.Setup{
		Backend: opt.Backend, Domains: domains, Features: s.Features, ProbePath: s.probePath(),
		Dir: opt.Dir, Callgrind: true,
	})
	if err != nil {
		return fail(err)
	}
	defer func() { _ = inst.Stop() }()
	if inst.Counter == nil {
		return fail(fmt.Errorf("%s runs no process to count", t.Name()))
	}
	if len(domains) > 1 {
		if failed, err := loadgen.Prime(ctx, inst.Addr, domains, s.probePath(), conns); err != nil || failed > 0 {
			return fail(fmt.Errorf("priming the table: %d failed, %v", failed, err))
		}
	}
	var stopBG func() []target.Activity
	if inst.Background != nil {
		stopBG = inst.Background(ctx)
	}
	var onErr error
	load := s
	load.Conns = conns
	res, err := drive(ctx, load, Options{Duration: opt.Duration, Warmup: opt.Warmup, Driver: DriverLoadgen, Dir: opt.Dir},
		inst.Addr, domains, func(begin bool) {
			if begin {
				// During the warm-up's load: valgrind takes commands
				// only while the process runs.
				onErr = inst.Counter.On(ctx)
			}
		})
	if err == nil {
		err = onErr
	}
	var total uint64
	if err == nil {
		// The load has stopped: a probe request now and then keeps an
		// idle process running until callgrind has written its counts
		// (a few requests' instructions in some 400 million).
		wake := func() { _ = target.Probe(ctx, inst.Addr, domains[0], s.probePath(), time.Second) }
		total, err = inst.Counter.Total(ctx, wake)
	}
	if stopBG != nil {
		stopBG()
	}
	if err != nil {
		return fail(err)
	}
	r.Requests, r.Errors, r.Instructions = res.Requests, res.Errors, total
	if ok := res.Requests - res.Errors; ok > 0 {
		r.PerRequest = float64(total) / float64(ok)
	}
	return r
}
