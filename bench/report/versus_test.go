package report

import (
	"strings"
	"testing"
)

func versusRuns() ([]Run, []string, map[string]string) {
	run := func(target string, round int, rps, cpu, p99 float64) Run {
		return Run{Target: target, Round: round, RPS: rps, CPUPerReqUS: cpu, Latency: Latency{P99: p99}}
	}
	runs := []Run{
		run("direct", 0, 100, 0, 1000), run("go-proxy", 0, 44, 30, 4000), run("haproxy", 0, 40, 33, 5000),
		run("direct", 1, 100, 0, 1000), run("go-proxy", 1, 46, 31, 4100), run("haproxy", 1, 41, 32, 5000),
		run("direct", 2, 100, 0, 1000), run("go-proxy", 2, 35, 29, 6000), run("haproxy", 2, 40, 34, 4000),
		// A failed round pairs with nothing.
		{Target: "haproxy", Round: 3, Failure: "would not start"}, run("go-proxy", 3, 1, 1, 1),
	}
	targets := []string{"direct", "go-proxy", "haproxy"}
	kinds := map[string]string{"direct": "direct", "go-proxy": "go-proxy", "haproxy": "reference"}
	return runs, targets, kinds
}

func TestAgainstPairsRounds(t *testing.T) {
	runs, targets, kinds := versusRuns()
	vs := Against(runs, targets, kinds)
	if len(vs) != 1 {
		t.Fatalf("want one pairing (go-proxy, haproxy), got %+v", vs)
	}
	v := vs[0]
	if v.Target != "go-proxy" || v.Reference != "haproxy" || v.Rounds != 3 || v.CPURounds != 3 {
		t.Fatalf("pairing: %+v", v)
	}
	// Round ratios of requests/s: 1.1, 46/41, 0.875.
	if !near(v.RPS.Value, 1.1) || !near(v.RPS.Lo, 0.875) || !near(v.RPS.Hi, 46.0/41) {
		t.Fatalf("rps ratio: %+v", v.RPS)
	}
	if v.RPSWins != 2 || v.CPUWins != 3 || v.P99Wins != 2 {
		t.Fatalf("wins: rps %d cpu %d p99 %d", v.RPSWins, v.CPUWins, v.P99Wins)
	}
	if got := Standing(v.CPU, false); got != "ahead" {
		t.Fatalf("CPU lower in every round: %s (%+v)", got, v.CPU)
	}
	if got := Standing(v.RPS, true); got != "level" {
		t.Fatalf("requests/s inside the noise: %s (%+v)", got, v.RPS)
	}
}

func ratio(v, lo, hi float64) Ratio { return Ratio{Value: v, Interval: Interval{Lo: lo, Hi: hi}} }

func TestStanding(t *testing.T) {
	cases := []struct {
		r      Ratio
		higher bool
		want   string
	}{
		{ratio(1.2, 1.1, 1.3), true, "ahead"},
		{ratio(1.2, 1.1, 1.3), false, "behind"},
		{ratio(0.8, 0.7, 0.9), true, "behind"},
		{ratio(0.8, 0.7, 0.9), false, "ahead"},
		{ratio(1.05, 0.95, 1.15), true, "level"},
		{ratio(0.98, 0.9, 1), false, "level"},
		{Ratio{}, true, "-"},
	}
	for _, c := range cases {
		if got := Standing(c.r, c.higher); got != c.want {
			t.Errorf("Standing(%+v, %v) = %s, want %s", c.r, c.higher, got, c.want)
		}
	}
}

func TestWriteVersus(t *testing.T) {
	runs, targets, kinds := versusRuns()
	sc := &Scenario{Name: "features-13b", Versus: Against(runs, targets, kinds)}
	if !AnyVersus([]*Scenario{sc}) || AnyVersus([]*Scenario{{Name: "x"}}) {
		t.Fatal("AnyVersus")
	}
	var b strings.Builder
	if err := WriteVersus(&b, []*Scenario{sc}); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"features-13b", "go-proxy", "haproxy", "1.10 [0.88, 1.12]", "2/3", "3/3", "level, ahead, level"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}
