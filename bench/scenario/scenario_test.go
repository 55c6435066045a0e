package scenario

import (
	"strings"
	"testing"

	"github.com/go-proxy/go-proxy/bench/report"
	"github.com/go-proxy/go-proxy/bench/target"
)

func TestScenarioSet(t *testing.T) {
	all := All()
	want := map[string]bool{"get-13b": true, "get-4kib": true, "get-64kib": true, "post-1mib": true, "get-13b-c256": true,
		"routes-1k": true, "routes-100k": true, "features-13b": true, "features-4kib": true, "websocket": true, "churn": true}
	if len(all) != len(want) {
		t.Fatalf("%d scenarios", len(all))
	}
	for _, s := range all {
		if !want[s.Name] || s.Conns < 1 || s.Path == "" {
			t.Errorf("scenario %+v", s)
		}
	}
	sel, err := Select("churn, get-13b")
	if err != nil || len(sel) != 2 || sel[0].Name != "churn" {
		t.Fatalf("%v %v", sel, err)
	}
	if _, err := Select("nope"); err == nil || !strings.Contains(err.Error(), "get-13b") {
		t.Fatalf("unknown scenario: %v", err)
	}
	if s, _ := Select(""); len(s) != len(all) {
		t.Fatal("empty list")
	}
	r, _ := Select("routes-100k")
	d := r[0].Domains()
	if len(d) != 100_000 || d[0] != "r0.bench.test" || d[99_999] != "r99999.bench.test" {
		t.Fatalf("domains %d %s", len(d), d[0])
	}
	if p := r[0].Params(); p["routes"] != 100_000 || p["method"] != "GET" {
		t.Fatalf("params %v", p)
	}
	post, _ := Select("post-1mib")
	if post[0].BodySize != 1<<20 || post[0].probePath() != "/13b" {
		t.Fatalf("post %+v", post[0])
	}
}

func TestTargetsFor(t *testing.T) {
	g := &target.GoProxy{Label: "go-proxy", Binary: "x"}
	ts := []target.Target{target.Direct{}, g, target.HAProxy{}, target.Nginx{}}
	plain, _ := Select("get-13b")
	if got := TargetsFor(plain[0], ts, DefaultChurn); len(got) != 4 {
		t.Fatalf("plain: %d", len(got))
	}
	ch, _ := Select("churn")
	got := TargetsFor(ch[0], ts, DefaultChurn)
	var names []string
	for _, x := range got {
		names = append(names, x.Name())
	}
	if strings.Join(names, ",") != "direct,go-proxy,go-proxy+churn" {
		t.Fatalf("churn targets %v", names)
	}
}

func TestChecks(t *testing.T) {
	g := &target.GoProxy{Label: "go-proxy"}
	gc := g.WithChurn(DefaultChurn)
	targets := []target.Target{target.Direct{}, g, gc}
	ch, _ := Select("churn")
	mk := func(p99Quiet, p99Churn float64, churnErrs uint64, bgErrs uint64) []report.Check {
		runs := []report.Run{
			{Target: "direct", Kind: "direct", RPS: 100},
			{Target: "go-proxy", Kind: "go-proxy", RPS: 50, Latency: report.Latency{P99: p99Quiet}},
			{Target: "go-proxy+churn", Kind: "go-proxy", RPS: 45, Errors: churnErrs, Latency: report.Latency{P99: p99Churn},
				Background: []report.Activity{{Name: "registry-churn", Cycles: 20, Errors: bgErrs}}},
		}
		sc := &report.Scenario{Name: "churn", Runs: runs}
		sc.Summaries = report.Summarize(runs, []string{"direct", "go-proxy", "go-proxy+churn"},
			map[string]string{"direct": "direct", "go-proxy": "go-proxy", "go-proxy+churn": "go-proxy"})
		return Checks(ch[0], sc, targets)
	}
	pass := func(cs []report.Check) (n int) {
		for _, c := range cs {
			if c.Pass {
				n++
			}
		}
		return n
	}
	if cs := mk(1000, 1900, 0, 0); len(cs) != 3 || pass(cs) != 3 {
		t.Fatalf("good run: %+v", cs)
	}
	if cs := mk(1000, 2100, 0, 0); pass(cs) != 2 || cs[2].Pass {
		t.Fatalf("p99 over 2x: %+v", cs)
	}
	if cs := mk(1000, 1000, 3, 0); pass(cs) != 2 || cs[1].Pass {
		t.Fatalf("request errors: %+v", cs)
	}
	if cs := mk(1000, 1000, 0, 1); pass(cs) != 2 || cs[1].Pass || !strings.Contains(cs[1].Detail, "registry-churn") {
		t.Fatalf("churn errors: %+v", cs)
	}
}
