package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/go-proxy/go-proxy/bench/report"
)

func TestListAndUsage(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"list"}, &out, &errOut); code != 0 || !strings.Contains(out.String(), "routes-100k") {
		t.Fatalf("list: %d %q", code, out.String())
	}
	if code := run(nil, &out, &errOut); code != 2 {
		t.Fatalf("no args: %d", code)
	}
	if code := run([]string{"compare"}, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "-base is required") {
		t.Fatalf("compare without base: %d %q", code, errOut.String())
	}
	if code := run([]string{"run", "-scenarios", "nope"}, &out, &errOut); code != 2 {
		t.Fatalf("unknown scenario: %d", code)
	}
	if code := run([]string{"run", "-driver", "ab"}, &out, &errOut); code != 2 {
		t.Fatalf("unknown driver: %d", code)
	}
	if _, err := listenLoopback("0.0.0.0:0"); err == nil {
		t.Fatal("listened on a non-loopback address")
	}
}

var (
	buildOnce            sync.Once
	buildErr             error
	gpbenchBin, proxyBin string
)

// binaries builds gpbench and go-proxy once for the tests below (without
// the race detector: they measure).
func binaries(t *testing.T) (string, string) {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "gpbench-test-")
		if err != nil {
			buildErr = err
			return
		}
		gpbenchBin, proxyBin = filepath.Join(dir, "gpbench"), filepath.Join(dir, "go-proxy")
		for bin, pkg := range map[string]string{gpbenchBin: "./bench/cmd/gpbench", proxyBin: "./cmd/go-proxy"} {
			cmd := exec.Command("go", "build", "-o", bin, pkg)
			cmd.Dir = "../../.."
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = err
				t.Logf("%s", out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return gpbenchBin, proxyBin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if gpbenchBin != "" {
		_ = os.RemoveAll(filepath.Dir(gpbenchBin))
	}
	os.Exit(code)
}

// TestWrkAgreesWithLoadgen is the documented check that the Go load
// generator and wrk agree (gpbench agree), shortened: 1 s runs, 2 rounds,
// a wider tolerance than the default 10 % because other tests share the
// cores.
func TestWrkAgreesWithLoadgen(t *testing.T) {
	if _, err := exec.LookPath("wrk"); err != nil {
		t.Skip("wrk is not installed (apt-get install -y wrk)")
	}
	gp, proxy := binaries(t)
	out := filepath.Join(t.TempDir(), "agree.json")
	cmd := exec.Command(gp, "agree", "-proxy", proxy, "-scenarios", "get-13b", "-duration", "1s", "-warmup", "300ms",
		"-rounds", "2", "-tolerance", "0.3", "-out", out, "-timeout", "2m")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	t.Log("\n" + stdout.String())
	if err != nil {
		t.Fatalf("gpbench agree: %v\n%s", err, stderr.String())
	}
	rep, err := report.ReadJSON(out)
	if err != nil || !rep.Pass || len(rep.Scenarios) != 2 {
		t.Fatalf("report: %v %+v", err, rep)
	}
	if !strings.Contains(stdout.String(), "get-13b: go-proxy CPU µs/req") {
		t.Fatal("agreement table missing")
	}
}

// TestCompareEndToEnd runs make bench-compare's command against HEAD: the
// base build comes from a temporary worktree, both builds run in
// alternation, and identical proxies pass a generous threshold.
func TestCompareEndToEnd(t *testing.T) {
	gp, proxy := binaries(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "compare.json")
	cmd := exec.Command(gp, "compare", "-base", "HEAD", "-proxy", proxy, "-scenarios", "get-13b", "-duration", "1s",
		"-warmup", "300ms", "-rounds", "2", "-threshold", "0.5", "-out", out, "-dir", filepath.Join(dir, "scratch"), "-timeout", "3m")
	cmd.Dir = "../../.."
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	t.Log("\n" + stdout.String())
	if err != nil {
		t.Fatalf("gpbench compare: %v\n%s", err, stderr.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var rep report.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Changes) != 1 || rep.Changes[0].Rounds != 2 || rep.Changes[0].BaseRPS <= 0 || rep.Changes[0].NewRPS <= 0 || !rep.Pass {
		var failures []string
		for _, sc := range rep.Scenarios {
			for _, r := range sc.Runs {
				if r.Failure != "" {
					failures = append(failures, r.Target+": "+r.Failure)
				}
			}
		}
		t.Fatalf("changes %+v; failed runs %q", rep.Changes, failures)
	}
	if !strings.Contains(stdout.String(), "base req/s") {
		t.Fatal("change table missing")
	}
	// The temporary worktree is gone.
	wt, _ := exec.Command("git", "-C", "../../..", "worktree", "list").Output()
	if strings.Contains(string(wt), "base-src") {
		t.Fatalf("worktree left behind:\n%s", wt)
	}
}

// TestProfileEndToEnd takes go-proxy's CPU profile under two scenarios'
// load and merges them, as make pgo does for default.pgo.
func TestProfileEndToEnd(t *testing.T) {
	gp, proxy := binaries(t)
	out := filepath.Join(t.TempDir(), "default.pgo")
	cmd := exec.Command(gp, "profile", "-proxy", proxy, "-scenarios", "get-13b,features-4kib", "-duration", "1s",
		"-warmup", "300ms", "-driver", "loadgen", "-out", out)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("gpbench profile: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "[get-13b] profiled 1s") || !strings.Contains(stderr.String(), "[features-4kib] profiled 1s") {
		t.Fatalf("log:\n%s", stderr.String())
	}
	top, err := exec.Command("go", "tool", "pprof", "-top", "-nodecount=100000", out).CombinedOutput()
	if err != nil {
		t.Fatalf("the merged profile does not read: %v\n%s", err, top)
	}
	if !strings.Contains(string(top), "Type: cpu") || !strings.Contains(string(top), "go-proxy/upstream.") {
		t.Fatalf("the merged profile has no samples of the proxy:\n%.2000s", top)
	}
	var errOut bytes.Buffer
	if code := run([]string{"profile", "-duration", "10ms"}, &bytes.Buffer{}, &errOut); code != 2 {
		t.Fatalf("sub-second duration: %d %s", code, errOut.String())
	}
}
