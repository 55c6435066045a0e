package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/go-proxy/go-proxy/bench/report"
	"github.com/go-proxy/go-proxy/bench/scenario"
	"github.com/go-proxy/go-proxy/bench/target"
)

// cmdInstructions counts the user-space instructions each target spends per
// request (callgrind), a figure that the machine's noise does not move:
// go-proxy against the reference proxies, or against the build of -base,
// failing when the work tree needs more than -threshold beyond the
// rounds' spread.
func cmdInstructions(args []string, stdout, stderr io.Writer) int {
	const name = "gpbench instructions"
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	scenarios := fs.String("scenarios", "features-13b,features-4kib", "comma list of scenarios (gpbench list; not websocket or churn)")
	refList := fs.String("references", "auto", "reference proxies: auto (those installed), none, or a list of haproxy,nginx")
	base := fs.String("base", "", "git ref of a base build to count against the work tree (instead of the references)")
	proxy := fs.String("proxy", "", "go-proxy binary (empty: build the work tree)")
	duration := fs.Duration("duration", 5*time.Second, "measured window of each run")
	warmup := fs.Duration("warmup", 2*time.Second, "warm-up before each measured window")
	rounds := fs.Int("rounds", 2, "runs of each target per scenario; the spread of their counts is the noise")
	conns := fs.Int("conns", scenario.DefaultInstructionConns, "connections of the load generator")
	threshold := fs.Float64("threshold", 0.02, "with -base: fail when instructions per request rise by more than this fraction beyond the noise")
	out := fs.String("out", "bench-instructions.json", "JSON results file; the table is also written next to it as .txt")
	dirFlag := fs.String("dir", "", "scratch directory (default: a new temporary directory, removed after)")
	keep := fs.Bool("keep", false, "keep the scratch directory (callgrind files, configurations, logs)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log := func(format string, a ...any) { fmt.Fprintf(stderr, format+"\n", a...) }
	if !target.CallgrindAvailable() {
		log("%s: valgrind is not installed (apt-get install -y valgrind)", name)
		return 2
	}
	scens, err := scenario.Select(*scenarios)
	if err != nil || *rounds < 1 || *duration <= 0 {
		log("%s: need known scenarios, -rounds >= 1 and a positive -duration (%v)", name, err)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	dir, removeDir, err := scratchDir(*dirFlag, *keep, "gpbench-instr-", log)
	if err != nil {
		log("%s: %v", name, err)
		return 1
	}
	defer removeDir()

	root, rootErr := moduleRoot()
	host := hostInfo()
	newBin, err := proxyBinary(ctx, *proxy, dir, log)
	if err != nil {
		log("%s: %v", name, err)
		return 1
	}
	host["go-proxy"] = gitDescribe(root)
	host["valgrind"] = target.Version("valgrind", "--version")

	newLabel := "go-proxy"
	var targets []target.Target
	if *base != "" {
		if rootErr != nil {
			log("%s: %v", name, rootErr)
			return 1
		}
		baseBin := filepath.Join(dir, "base", "go-proxy")
		log("building go-proxy at %s in a temporary worktree", *base)
		rev, err := buildRef(ctx, root, *base, filepath.Join(dir, "base-src"), baseBin)
		if err != nil {
			log("%s: %v", name, err)
			return 1
		}
		host["base"] = *base + " " + rev
		newLabel = "new"
		targets = append(targets, &target.GoProxy{Label: "base", Binary: baseBin}, &target.GoProxy{Label: newLabel, Binary: newBin})
	} else {
		targets = append(targets, &target.GoProxy{Label: newLabel, Binary: newBin})
		refs, err := references(*refList, host)
		if err != nil {
			log("%s: %v", name, err)
			return 2
		}
		targets = append(targets, refs...)
	}

	// A run takes its window and warm-up plus some 10 s to start a process
	// under valgrind and write its counts.
	planned := time.Duration(len(scens)*len(targets)**rounds) * (*duration + *warmup + 10*time.Second)
	timeout := 2*planned + 5*time.Minute
	log("%d scenarios × %d rounds, %d targets under callgrind: about %v planned, bounded at %v",
		len(scens), *rounds, len(targets), planned.Round(time.Second), timeout)
	ctx, be, stopBackend, err := boundedBackend(ctx, dir, timeout)
	if err != nil {
		log("%s: backend: %v", name, err)
		return 1
	}
	defer stopBackend()

	rep := newReport(host, map[string]any{"duration": duration.String(), "warmup": warmup.String(), "rounds": *rounds, "connections": *conns})
	opt := scenario.InstructionOptions{Duration: *duration, Warmup: *warmup, Conns: *conns, Backend: be.addr, Dir: dir}
	for _, s := range scens {
		for round := 0; round < *rounds; round++ {
			for _, t := range targets {
				if ctx.Err() != nil {
					break
				}
				r := scenario.CountInstructions(ctx, s, t, round, opt)
				rep.Instructions = append(rep.Instructions, r)
				if r.Failure != "" {
					log("[%s] round %d/%d %-10s FAILED: %s", s.Name, round+1, *rounds, t.Name(), r.Failure)
				} else {
					log("[%s] round %d/%d %-10s %s instructions/request over %d requests (%d errors)",
						s.Name, round+1, *rounds, t.Name(), report.FormatRPS(r.PerRequest), r.Requests, r.Errors)
				}
			}
		}
	}
	rep.Finished = time.Now().UTC()
	rep.InstructionSummaries = report.SummarizeInstructions(rep.Instructions)
	rep.Pass = ctx.Err() == nil
	for _, s := range rep.InstructionSummaries {
		pass := s.Failures == 0 && s.Errors == 0
		rep.Checks = append(rep.Checks, report.Check{Scenario: s.Scenario, Name: s.Target + " counted without errors", Pass: pass,
			Detail: fmt.Sprintf("%d failed runs, %d request errors, %d rounds", s.Failures, s.Errors, s.Rounds)})
		rep.Pass = rep.Pass && (pass || s.Kind == target.KindReference)
	}
	if *base != "" {
		rep.InstructionChanges = report.CompareInstructions(rep.InstructionSummaries, "base", newLabel, *threshold)
		rep.Options["threshold"] = *threshold
		if report.AnyInstructionRegression(rep.InstructionChanges) {
			rep.Pass = false
		}
	}

	var table strings.Builder
	fmt.Fprintf(&table, "%s — %s, %d rounds of %v (warm-up %v), %d connections, user-space instructions per request (callgrind, one thread)\n\n",
		name, rep.Started.Format(time.RFC3339), *rounds, *duration, *warmup, *conns)
	_ = report.WriteInstructions(&table, rep.InstructionSummaries)
	if len(rep.InstructionChanges) > 0 {
		table.WriteString("\n")
		_ = report.WriteInstructionChanges(&table, rep.InstructionChanges)
	}
	table.WriteString("\n")
	report.WriteChecks(&table, rep.Checks)
	fmt.Fprint(stdout, table.String())
	if err := writeResults(*out, rep, table.String(), log); err != nil {
		log("%s: %v", name, err)
		return 1
	}
	switch {
	case ctx.Err() != nil:
		log("%s: stopped: %v", name, ctx.Err())
		return 1
	case !rep.Pass && report.AnyInstructionRegression(rep.InstructionChanges):
		log("%s: instructions per request rose beyond the threshold and noise", name)
		return 1
	case !rep.Pass:
		log("%s: failed checks", name)
		return 1
	}
	return 0
}
