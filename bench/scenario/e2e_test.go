package scenario

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-proxy/go-proxy/bench/backend"
	"github.com/go-proxy/go-proxy/bench/report"
	"github.com/go-proxy/go-proxy/bench/target"
)

// TestEndToEnd builds go-proxy and runs two tiny scenarios (1 s, 1 round)
// against the real binary: a plain GET and registry churn over 1,000
// routes, direct and through the proxy.
func TestEndToEnd(t *testing.T) {
	dir := t.TempDir()
	bin := buildGoProxy(t, dir)
	be := startTestBackend(t)

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var progress bytes.Buffer
	opt := Options{
		Duration: time.Second, Warmup: 300 * time.Millisecond, Rounds: 1, Driver: DriverLoadgen,
		Backend: be, Dir: dir, Progress: &progress,
		Targets: []target.Target{target.Direct{}, &target.GoProxy{Label: "go-proxy", Binary: bin}},
		Churn:   target.ChurnConfig{Rate: 10, Routes: 5},
	}
	sel, _ := Select("get-13b,churn")
	var results []*report.Scenario
	for _, s := range sel {
		res, err := Run(ctx, s, opt)
		if err != nil {
			t.Fatalf("%s: %v\n%s", s.Name, err, progress.String())
		}
		results = append(results, res)
	}
	t.Log("\n" + progress.String())

	get := results[0]
	if len(get.Runs) != 2 || len(get.Summaries) != 2 {
		t.Fatalf("get-13b: %d runs, %d summaries", len(get.Runs), len(get.Summaries))
	}
	gp := get.Find("go-proxy")
	if gp == nil || gp.RPS <= 0 || gp.Errors != 0 || gp.Failures != 0 || gp.CPUPerReqUS <= 0 || gp.SwitchesPerReq <= 0 || gp.VsDirect == nil ||
		gp.Latency.P50 <= 0 || gp.Latency.P999 < gp.Latency.P50 {
		t.Fatalf("go-proxy summary %+v\n%+v", gp, get.Runs)
	}
	if d := get.Find("direct"); d == nil || d.RPS <= 0 || d.CPUPerReqUS != 0 || d.SwitchesPerReq != 0 {
		t.Fatalf("direct summary %+v", d)
	}

	churn := results[1]
	if len(churn.Runs) != 3 {
		t.Fatalf("churn: %d runs", len(churn.Runs))
	}
	for _, r := range churn.Runs {
		if r.Target == "go-proxy+churn" && (len(r.Background) != 1 || r.Background[0].Cycles == 0) {
			t.Fatalf("churn did not run: %+v", r)
		}
	}
	for _, c := range append(get.Checks, churn.Checks...) {
		// The p99 check depends on the machine's load; the others may not fail.
		if !c.Pass && !strings.Contains(c.Name, "p99") {
			t.Errorf("check failed: %+v", c)
		}
	}
	if len(churn.Checks) != 3 {
		t.Fatalf("churn checks %+v", churn.Checks)
	}

	var table bytes.Buffer
	if err := report.WriteTable(&table, results); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(table.String(), "go-proxy+churn") || strings.Count(table.String(), "\n") != 6 {
		t.Fatalf("table:\n%s", table.String())
	}
	rep := &report.Report{Scenarios: results}
	path := filepath.Join(dir, "results.json")
	if err := rep.WriteJSON(path); err != nil {
		t.Fatal(err)
	}
	if back, err := report.ReadJSON(path); err != nil || len(back.Scenarios) != 2 {
		t.Fatalf("json: %v", err)
	}
}

// buildGoProxy builds the work tree's go-proxy into dir.
func buildGoProxy(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "go-proxy")
	build := exec.Command("go", "build", "-o", bin, "./cmd/go-proxy")
	build.Dir = "../.."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// startTestBackend serves the bundled backend on loopback until the test ends.
func startTestBackend(t *testing.T) string {
	t.Helper()
	addr, err := backend.ServeLoopback(t.Cleanup)
	if err != nil {
		t.Fatal(err)
	}
	return addr
}
