package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/go-proxy/go-proxy/bench/report"
	"github.com/go-proxy/go-proxy/bench/scenario"
)

// agreeDrivers runs each scenario with the Go generator and with wrk in
// alternation (loadgen, wrk, loadgen, wrk …) and checks that they agree.
//
// Gated: requests/s of go-proxy and of direct-to-backend, go-proxy's ratio
// to direct, and go-proxy's CPU per request. Shown but not gated: p50
// (each driver stamps time at a different point of its event loop) and
// the generators' own CPU per request; wrk, in C on epoll, spends less
// than a Go client, which on a machine where the generator shares the
// cores with the proxy and backend lifts wrk's requests/s a little.
func agreeDrivers(ctx context.Context, scens []scenario.Scenario, opt scenario.Options, f suiteFlags,
	rep *report.Report, stdout io.Writer, log func(string, ...any)) int {
	drivers := []string{scenario.DriverLoadgen, scenario.DriverWrk}
	byDriver := map[string]map[string]*report.Scenario{}
	for _, d := range drivers {
		byDriver[d] = map[string]*report.Scenario{}
	}
	for _, s := range scens {
		if s.WebSocket {
			log("%s: wrk cannot drive WebSocket; skipped", s.Name)
			continue
		}
		for round := 0; round < f.rounds; round++ {
			for _, d := range drivers {
				o := opt
				o.Driver, o.Rounds = d, 1
				res, err := scenario.Run(ctx, s, o)
				if err != nil {
					log("gpbench agree: %v", err)
					return 1
				}
				acc := byDriver[d][s.Name]
				if acc == nil {
					acc = &report.Scenario{Name: s.Name + " [" + d + "]", Description: s.Description, Params: s.Params()}
					byDriver[d][s.Name] = acc
				}
				for _, r := range res.Runs {
					r.Round = round
					acc.Runs = append(acc.Runs, r)
				}
			}
		}
	}
	var agreements []report.Agreement
	for _, s := range scens {
		if s.WebSocket {
			continue
		}
		var pair [2]*report.Scenario
		for i, d := range drivers {
			sc := byDriver[d][s.Name]
			kinds := map[string]string{}
			var names []string
			for _, r := range sc.Runs {
				if _, ok := kinds[r.Target]; !ok {
					kinds[r.Target] = r.Kind
					names = append(names, r.Target)
				}
			}
			sc.Summaries = report.Summarize(sc.Runs, names, kinds)
			rep.Scenarios = append(rep.Scenarios, sc)
			pair[i] = sc
		}
		series := func(sc *report.Scenario, t string, m func(report.Run) float64) []float64 {
			var xs []float64
			for _, r := range sc.Runs {
				if r.Target == t && r.Failure == "" {
					xs = append(xs, m(r))
				}
			}
			return xs
		}
		ratio := func(sc *report.Scenario) []float64 {
			return report.PairedRatios(sc.RPSSeries("go-proxy", f.rounds), sc.RPSSeries("direct", f.rounds))
		}
		rps := func(r report.Run) float64 { return r.RPS }
		cpu := func(r report.Run) float64 { return r.CPUPerReqUS }
		gen := func(r report.Run) float64 { return r.GenCPUPerReqUS }
		p50 := func(r report.Run) float64 { return r.Latency.P50 }
		a, b := pair[0], pair[1]
		agreements = append(agreements,
			report.Agree(s.Name+": go-proxy CPU µs/req", series(a, "go-proxy", cpu), series(b, "go-proxy", cpu), f.tolerance, true),
			report.Agree(s.Name+": go-proxy req/s ÷ direct", ratio(a), ratio(b), f.tolerance, true),
			report.Agree(s.Name+": go-proxy req/s", series(a, "go-proxy", rps), series(b, "go-proxy", rps), f.tolerance, true),
			report.Agree(s.Name+": direct req/s", series(a, "direct", rps), series(b, "direct", rps), f.tolerance, true),
			report.Agree(s.Name+": go-proxy p50 µs", series(a, "go-proxy", p50), series(b, "go-proxy", p50), f.tolerance, false),
			report.Agree(s.Name+": generator CPU µs/req (go-proxy)", series(a, "go-proxy", gen), series(b, "go-proxy", gen), f.tolerance, false),
		)
	}
	rep.Finished = time.Now().UTC()
	rep.Pass = true
	for _, g := range agreements {
		if g.Gated && !g.Pass {
			rep.Pass = false
		}
		rep.Checks = append(rep.Checks, report.Check{Scenario: "agree", Name: g.Metric, Pass: g.Pass || !g.Gated,
			Detail: fmt.Sprintf("loadgen %s, wrk %s, %s, noise ±%.1f%%, gated %v", report.FormatNumber(report.Median(g.A)), report.FormatNumber(report.Median(g.B)),
				report.FormatPercent(g.Diff), 100*g.Noise, g.Gated)})
	}
	var out strings.Builder
	fmt.Fprintf(&out, "gpbench agree — %s, %d rounds of %v (warm-up %v) per driver, in alternation\n\n",
		rep.Started.Format(time.RFC3339), f.rounds, f.duration, f.warmup)
	_ = report.WriteTable(&out, rep.Scenarios)
	out.WriteString("\n")
	_ = report.WriteAgreements(&out, agreements, "loadgen", "wrk")
	fmt.Fprint(stdout, out.String())
	if f.out != "" {
		if err := rep.WriteJSON(f.out); err != nil {
			log("gpbench agree: %v", err)
			return 1
		}
		txt := strings.TrimSuffix(f.out, filepath.Ext(f.out)) + ".txt"
		if err := os.WriteFile(txt, []byte(out.String()), 0o644); err != nil {
			log("gpbench agree: %v", err)
			return 1
		}
	}
	if !rep.Pass {
		log("gpbench agree: the drivers disagree beyond the noise and tolerance")
		return 1
	}
	return 0
}
