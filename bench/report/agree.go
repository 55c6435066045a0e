package report

import (
	"fmt"
	"io"
	"math"
)

// Agreement compares one metric measured by two load generators (a: the
// Go loadgen, b: wrk) over alternating rounds.
type Agreement struct {
	Metric string    `json:"metric"`
	A      []float64 `json:"a"`
	B      []float64 `json:"b"`
	// Diff is median(B)/median(A)-1.
	Diff float64 `json:"diff"`
	// Noise is the two series' relative spreads added: how far apart
	// their medians could be by round-to-round noise alone.
	Noise     float64 `json:"noise"`
	Tolerance float64 `json:"tolerance"`
	Gated     bool    `json:"gated"` // whether Pass counts
	Pass      bool    `json:"pass"`
}

// Agree compares a and b: they agree when |Diff| <= Noise + tolerance.
func Agree(metric string, a, b []float64, tolerance float64, gated bool) Agreement {
	g := Agreement{Metric: metric, A: a, B: b, Tolerance: tolerance, Gated: gated}
	ma, mb := Median(a), Median(b)
	if ma == 0 || mb == 0 {
		return g
	}
	g.Diff = mb/ma - 1
	g.Noise = RelSpread(a) + RelSpread(b)
	g.Pass = math.Abs(g.Diff) <= g.Noise+tolerance
	return g
}

// WriteAgreements writes agreements as a table.
func WriteAgreements(w io.Writer, as []Agreement, nameA, nameB string) error {
	rows := [][]string{{"metric", nameA, nameB, "difference", "noise", "tolerance", "verdict"}}
	for _, a := range as {
		verdict := "agree"
		switch {
		case !a.Pass && a.Gated:
			verdict = "DISAGREE"
		case !a.Pass:
			verdict = "differ (not gated)"
		case !a.Gated:
			verdict = "agree (not gated)"
		}
		rows = append(rows, []string{a.Metric, FormatNumber(Median(a.A)), FormatNumber(Median(a.B)),
			FormatPercent(a.Diff), fmt.Sprintf("±%.1f%%", 100*a.Noise), fmt.Sprintf("%.0f%%", 100*a.Tolerance), verdict})
	}
	return renderTable(w, rows, 1)
}

// FormatNumber prints large numbers with separators and small ones with
// four significant digits.
func FormatNumber(x float64) string {
	if math.Abs(x) >= 1000 {
		return FormatRPS(x)
	}
	return fmt.Sprintf("%.4g", x)
}
