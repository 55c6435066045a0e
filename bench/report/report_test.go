package report

import (
	"bytes"
	"math"
	"path/filepath"
	"strings"
	"testing"
)

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestMedianAndSpread(t *testing.T) {
	if Median(nil) != 0 || Median([]float64{3}) != 3 || Median([]float64{4, 1, 3}) != 3 || Median([]float64{1, 2, 3, 10}) != 2.5 {
		t.Fatal("median")
	}
	xs := []float64{90, 100, 110}
	if HalfRange(xs) != 10 || !near(RelSpread(xs), 0.1) || HalfRange([]float64{5}) != 0 || RelSpread(nil) != 0 {
		t.Fatal("spread")
	}
	in := []float64{3, 1, 2}
	Median(in)
	if in[0] != 3 {
		t.Fatal("Median sorted its input")
	}
}

func TestPairedRatio(t *testing.T) {
	proxy := []float64{50, 60, 40}
	direct := []float64{100, 120, 100}
	r := PairedRatio(proxy, direct)
	if !near(r.Value, 0.5) || !near(r.Lo, 0.4) || !near(r.Hi, 0.5) || !near(r.Confidence, 0.75) || r.String() != "0.50 [0.40, 0.50]" {
		t.Fatalf("%+v", r)
	}
	if got := PairedRatios([]float64{1, 2}, []float64{0, 4}); len(got) != 1 || got[0] != 0.5 {
		t.Fatalf("zero denominator: %v", got)
	}
}

// TestMedianInterval: below six rounds the interval is the rounds' range
// with its own confidence; from six on it is benchstat's 95 % interval,
// which, unlike the range, narrows as rounds are added.
func TestMedianInterval(t *testing.T) {
	if m, in := MedianInterval(nil); m != 0 || in != (Interval{}) {
		t.Fatalf("none: %v %+v", m, in)
	}
	if m, in := MedianInterval([]float64{7}); m != 7 || in.Lo != 7 || in.Hi != 7 {
		t.Fatalf("one: %v %+v", m, in)
	}
	xs := []float64{1.1, 0.9, 1.0}
	m, in := MedianInterval(xs)
	if m != 1.0 || in.Lo != 0.9 || in.Hi != 1.1 || !near(in.Confidence, 0.75) || xs[0] != 1.1 {
		t.Fatalf("three: %v %+v (input %v)", m, in, xs)
	}
	// The same spread of values, eight and then twenty-four rounds.
	spread := func(n int) []float64 {
		out := make([]float64, n)
		for i := range out {
			out[i] = 0.9 + 0.2*float64(i%8)/7 // 0.9 … 1.1
		}
		return out
	}
	_, in8 := MedianInterval(spread(8))
	_, in24 := MedianInterval(spread(24))
	if in8.Confidence < IntervalConfidence || in24.Confidence < IntervalConfidence {
		t.Fatalf("confidence below %v: %+v %+v", IntervalConfidence, in8, in24)
	}
	if !(in8.Lo <= 1 && 1 <= in8.Hi) || !(in24.Lo <= 1 && 1 <= in24.Hi) {
		t.Fatalf("interval misses the median: %+v %+v", in8, in24)
	}
	if in24.Hi-in24.Lo >= in8.Hi-in8.Lo || in24.Hi-in24.Lo >= 0.2 {
		t.Fatalf("more rounds did not narrow the interval: 8 rounds %+v, 24 rounds %+v", in8, in24)
	}
}

func TestCompareVerdicts(t *testing.T) {
	base := []float64{100, 102, 98}
	// 10 % slower, steady: a regression at 5 %.
	c := Compare("s", "base", "new", base, []float64{90, 91.8, 88.2}, 0.05)
	if !near(c.Change, -0.1) || c.Hi-c.Lo > 1e-9 || !c.Regression || c.Rounds != 3 {
		t.Fatalf("steady 10%% drop: %+v", c)
	}
	// 4 % slower: within the threshold.
	c = Compare("s", "base", "new", base, []float64{96, 97.92, 94.08}, 0.05)
	if c.Regression {
		t.Fatalf("4%% drop flagged: %+v", c)
	}
	// 8 % slower in the median but one round was faster: noise.
	c = Compare("s", "base", "new", []float64{100, 100, 100}, []float64{82, 92, 102}, 0.05)
	if c.Regression || !near(c.Lo, -0.18) || !near(c.Hi, 0.02) || !near(c.Change, -0.08) {
		t.Fatalf("noisy drop flagged: %+v", c)
	}
	// Faster is never a regression.
	if c = Compare("s", "b", "n", base, []float64{150, 150, 150}, 0.05); c.Regression || c.Change < 0.4 {
		t.Fatalf("faster: %+v", c)
	}
	// Failed rounds (0) are left out of the pairing.
	c = Compare("s", "b", "n", []float64{100, 0, 100}, []float64{80, 100, 80}, 0.05)
	if c.Rounds != 2 || !near(c.Change, -0.2) || !c.Regression || c.NewRPS != 80 {
		t.Fatalf("failed round: %+v", c)
	}
	if c = Compare("s", "b", "n", nil, nil, 0.05); c.Regression || c.Rounds != 0 {
		t.Fatalf("no data: %+v", c)
	}
	if !AnyRegression([]Change{{}, {Regression: true}}) || AnyRegression([]Change{{}}) {
		t.Fatal("AnyRegression")
	}
}

func TestAgree(t *testing.T) {
	a := Agree("cpu", []float64{10, 10.2, 9.8}, []float64{10.5, 10.4, 10.6}, 0.05, true)
	if !a.Pass || !near(a.Diff, 0.05) {
		t.Fatalf("%+v", a)
	}
	if a = Agree("cpu", []float64{10, 10, 10}, []float64{12, 12, 12}, 0.1, true); a.Pass {
		t.Fatalf("20%% apart agreed: %+v", a)
	}
	if a = Agree("cpu", []float64{10, 10, 10}, []float64{12, 14, 10}, 0.05, true); !a.Pass {
		t.Fatalf("noisy pair disagreed: %+v", a)
	}
	var buf bytes.Buffer
	_ = WriteAgreements(&buf, []Agreement{a}, "loadgen", "wrk")
	if !strings.Contains(buf.String(), "agree") {
		t.Fatal(buf.String())
	}
}

func testRuns() []Run {
	var runs []Run
	for round, v := range [][3]float64{{100, 50, 60}, {120, 54, 66}, {110, 0, 55}} {
		runs = append(runs,
			Run{Scenario: "s", Target: "direct", Kind: "direct", Round: round, Driver: "loadgen", RPS: v[0], Latency: Latency{P50: 100, P99: 300}},
			Run{Scenario: "s", Target: "go-proxy", Kind: "go-proxy", Round: round, Driver: "loadgen", RPS: v[1],
				Latency: Latency{P50: 200, P99: 600 + 100*float64(round)}, CPUPerReqUS: 10 + float64(round), Errors: uint64(round),
				SwitchesPerReq: 0.3 + 0.1*float64(round),
				MachineIdle:    0.1 + 0.02*float64(round)},
			Run{Scenario: "s", Target: "haproxy", Kind: "reference", Round: round, Driver: "loadgen", RPS: v[2]},
		)
	}
	runs[4].Failure = "" // round 1 go-proxy ok
	runs[7] = Run{Scenario: "s", Target: "go-proxy", Kind: "go-proxy", Round: 2, Failure: "boom"}
	return runs
}

func TestSummarize(t *testing.T) {
	kinds := map[string]string{"direct": "direct", "go-proxy": "go-proxy", "haproxy": "reference"}
	sums := Summarize(testRuns(), []string{"direct", "go-proxy", "haproxy", "absent"}, kinds)
	if len(sums) != 3 {
		t.Fatalf("%d summaries", len(sums))
	}
	d, g, h := sums[0], sums[1], sums[2]
	if d.RPS != 110 || !near(d.RPSSpread, 10.0/110) || d.VsDirect != nil || d.Rounds != 3 {
		t.Fatalf("direct %+v", d)
	}
	// go-proxy: rounds 0 and 1 only (round 2 failed).
	if g.Rounds != 2 || g.Failures != 1 || g.RPS != 52 || g.Errors != 1 || g.Latency.P99 != 650 || g.CPUPerReqUS != 10.5 ||
		!near(g.MachineIdle, 0.11) || !near(g.SwitchesPerReq, 0.35) || d.SwitchesPerReq != 0 {
		t.Fatalf("go-proxy %+v", g)
	}
	if g.VsDirect == nil || !near(g.VsDirect.Value, 0.475) || !near(g.VsDirect.Lo, 0.45) || !near(g.VsDirect.Hi, 0.5) {
		t.Fatalf("go-proxy ratio %+v", g.VsDirect)
	}
	if h.VsDirect == nil || !near(h.VsDirect.Value, 0.55) || h.CPUPerReqUS != 0 {
		t.Fatalf("haproxy %+v %+v", h, h.VsDirect)
	}
	sc := &Scenario{Name: "s", Runs: testRuns(), Summaries: sums}
	if got := sc.RPSSeries("go-proxy", 3); got[0] != 50 || got[1] != 54 || got[2] != 0 {
		t.Fatalf("series %v", got)
	}
	if sc.Find("haproxy") == nil || sc.Find("nope") != nil {
		t.Fatal("Find")
	}
}

func TestTableAndJSON(t *testing.T) {
	kinds := map[string]string{"direct": "direct", "go-proxy": "go-proxy", "haproxy": "reference"}
	sc := &Scenario{Name: "get-13b", Runs: testRuns()}
	sc.Summaries = Summarize(sc.Runs, []string{"direct", "go-proxy", "haproxy"}, kinds)
	var buf bytes.Buffer
	if err := WriteTable(&buf, []*Scenario{sc}); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "scenario") || !strings.Contains(lines[2], "0.47 [0.45, 0.50]") ||
		!strings.Contains(lines[2], "1 (1 failed)") || !strings.Contains(lines[2], "10.5") || !strings.Contains(lines[2], "0.35") ||
		!strings.Contains(lines[0], "switches/req") ||
		!strings.HasSuffix(lines[0], "idle %") || !strings.HasSuffix(lines[2], "11.0") {
		t.Fatalf("table:\n%s", out)
	}
	buf.Reset()
	_ = WriteChanges(&buf, []Change{Compare("get-13b", "base", "new", []float64{100, 100}, []float64{80, 80}, 0.05)})
	if !strings.Contains(buf.String(), "REGRESSION") || !strings.Contains(buf.String(), "-20.0%") || !strings.Contains(buf.String(), "[-20.0%, -20.0%] 50%") {
		t.Fatalf("changes:\n%s", buf.String())
	}
	buf.Reset()
	WriteChecks(&buf, []Check{{Scenario: "churn", Name: "p99", Pass: false, Detail: "x"}})
	if !strings.HasPrefix(buf.String(), "FAIL  churn: p99") {
		t.Fatal(buf.String())
	}
	r := &Report{Scenarios: []*Scenario{sc}, Pass: true, Changes: []Change{Compare("x", "b", "n", nil, nil, 0.05)}}
	path := filepath.Join(t.TempDir(), "r.json")
	if err := r.WriteJSON(path); err != nil {
		t.Fatal(err)
	}
	back, err := ReadJSON(path)
	if err != nil || len(back.Scenarios) != 1 || back.Scenarios[0].Summaries[1].RPS != 52 {
		t.Fatalf("round trip: %v %+v", err, back)
	}
	if FormatRPS(1234567.4) != "1,234,567" || FormatRPS(999) != "999" || FormatLatency(0) != "-" || FormatLatency(1500) != "1.50" {
		t.Fatal("formatting")
	}
}
