package report

import (
	"fmt"
	"io"
	"math"
	"strings"
	"unicode/utf8"
)

// renderTable writes rows as aligned columns: the first left columns
// left-aligned, the others right-aligned, two spaces apart.
func renderTable(w io.Writer, rows [][]string, left int) error {
	var widths []int
	for _, r := range rows {
		for i, c := range r {
			if i >= len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	var b strings.Builder
	for _, r := range rows {
		for i, c := range r {
			pad := strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c))
			if i > 0 {
				b.WriteString("  ")
			}
			if i < left {
				b.WriteString(c)
				if i < len(r)-1 {
					b.WriteString(pad)
				}
			} else {
				b.WriteString(pad)
				b.WriteString(c)
			}
		}
		b.WriteByte('\n')
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// FormatRPS prints requests/s with thousands separators.
func FormatRPS(x float64) string {
	n := int64(math.Round(x))
	s := fmt.Sprint(n)
	if n < 0 {
		return s
	}
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// FormatLatency prints microseconds as milliseconds.
func FormatLatency(us float64) string {
	if us <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", us/1000)
}

// FormatPercent prints a fraction as a signed percentage.
func FormatPercent(x float64) string { return fmt.Sprintf("%+.1f%%", 100*x) }

// WriteTable writes every scenario's summaries as one aligned table.
func WriteTable(w io.Writer, scenarios []*Scenario) error {
	rows := [][]string{{"scenario", "target", "driver", "req/s", "±", "vs direct", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "errors", "CPU µs/req", "switches/req", "idle %"}}
	for _, sc := range scenarios {
		for _, s := range sc.Summaries {
			ratio := "-"
			if s.VsDirect != nil {
				ratio = s.VsDirect.String()
			}
			cpu := "-"
			if s.CPUPerReqUS > 0 {
				cpu = fmt.Sprintf("%.1f", s.CPUPerReqUS)
			}
			switches := "-"
			if s.SwitchesPerReq > 0 {
				switches = fmt.Sprintf("%.2f", s.SwitchesPerReq)
			}
			errs := fmt.Sprint(s.Errors)
			if s.Failures > 0 {
				errs += fmt.Sprintf(" (%d failed)", s.Failures)
			}
			rows = append(rows, []string{sc.Name, s.Target, s.Driver, FormatRPS(s.RPS),
				fmt.Sprintf("%.1f%%", 100*s.RPSSpread), ratio,
				FormatLatency(s.Latency.P50), FormatLatency(s.Latency.P90),
				FormatLatency(s.Latency.P99), FormatLatency(s.Latency.P999), errs, cpu, switches,
				fmt.Sprintf("%.1f", 100*s.MachineIdle)})
		}
	}
	return renderTable(w, rows, 3)
}

// WriteChanges writes the regression comparison as a table.
func WriteChanges(w io.Writer, changes []Change) error {
	rows := [][]string{{"scenario", "base req/s", "new req/s", "change", "interval", "threshold", "p99 ms base→new", "CPU µs/req base→new", "verdict"}}
	for _, c := range changes {
		verdict := "ok"
		switch {
		case c.Rounds == 0:
			verdict = "no data"
		case c.Regression:
			verdict = "REGRESSION"
		case c.Lo > c.Threshold:
			verdict = "faster"
		}
		rows = append(rows, []string{c.Scenario, FormatRPS(c.BaseRPS), FormatRPS(c.NewRPS), FormatPercent(c.Change),
			fmt.Sprintf("[%s, %s] %.0f%%", FormatPercent(c.Lo), FormatPercent(c.Hi), 100*c.Confidence), fmt.Sprintf("%.1f%%", 100*c.Threshold),
			FormatLatency(c.BaseP99) + "→" + FormatLatency(c.NewP99),
			fmt.Sprintf("%.1f→%.1f", c.BaseCPU, c.NewCPU), verdict})
	}
	return renderTable(w, rows, 1)
}

// WriteChecks writes the checks, one a line.
func WriteChecks(w io.Writer, checks []Check) {
	for _, c := range checks {
		mark := "PASS"
		if !c.Pass {
			mark = "FAIL"
		}
		fmt.Fprintf(w, "%s  %s: %s — %s\n", mark, c.Scenario, c.Name, c.Detail)
	}
}
