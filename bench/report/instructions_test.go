package report

import (
	"strings"
	"testing"
)

func TestInstructionSummariesAndChanges(t *testing.T) {
	run := func(target, kind string, round int, per float64) InstructionRun {
		return InstructionRun{Scenario: "s", Target: target, Kind: kind, Round: round, Requests: 1000, PerRequest: per}
	}
	runs := []InstructionRun{
		run("base", "go-proxy", 0, 20000), run("new", "go-proxy", 0, 21000),
		run("base", "go-proxy", 1, 20200), run("new", "go-proxy", 1, 21200),
		run("base", "go-proxy", 2, 20100), run("new", "go-proxy", 2, 21100),
		{Scenario: "s", Target: "haproxy", Kind: "reference", Failure: "would not start"},
	}
	sums := SummarizeInstructions(runs)
	if len(sums) != 3 || sums[0].Target != "base" || sums[1].Target != "new" {
		t.Fatalf("summaries %+v", sums)
	}
	if b := sums[0]; b.PerRequest != 20100 || b.Rounds != 3 || b.Requests != 3000 || !near(b.Spread, 100.0/20100) {
		t.Fatalf("base summary %+v", b)
	}
	if h := sums[2]; h.Failures != 1 || h.PerRequest != 0 {
		t.Fatalf("failed reference %+v", h)
	}
	// 21,100 against 20,100 is +5.0 %: beyond 2 % plus the 0.5 % spread.
	ch := CompareInstructions(sums, "base", "new", 0.02)
	if len(ch) != 1 || !near(ch[0].Change, 21100.0/20100-1) || !ch[0].Regression || !AnyInstructionRegression(ch) {
		t.Fatalf("changes %+v", ch)
	}
	if ch := CompareInstructions(sums, "base", "new", 0.06); ch[0].Regression {
		t.Fatalf("a 5 %% rise under a 6 %% threshold is no regression: %+v", ch)
	}
	var b strings.Builder
	if err := WriteInstructions(&b, sums); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"20,100", "21,100", "1.05x", "failed"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
	b.Reset()
	_ = WriteInstructionChanges(&b, ch)
	if !strings.Contains(b.String(), "+5.0%") || !strings.Contains(b.String(), "REGRESSION") {
		t.Errorf("changes table:\n%s", b.String())
	}
}
