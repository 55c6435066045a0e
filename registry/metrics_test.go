package registry

import (
	"bytes"
	"strings"
	"testing"
)

// TestCommandErrorCounting: ERROR replies count for their command, also
// when they come from an asynchronous reply after an ACK; words that are
// not commands count as "unknown", so the label set stays bounded.
func TestCommandErrorCounting(t *testing.T) {
	r := &Registry{sessions: map[string]*session{}}
	m := &r.metrics
	rep := lines("ERROR|route not found")
	m.countReply("ROUTE_REMOVE", &rep)
	ok := lines("OK")
	m.countReply("CONFIG_APPLY", &ok)
	async := reply{lines: []string{"ACK"}, async: func() []string { return []string{"ERROR|timeout"} }}
	m.countReply("MAINT_ENTER", &async)
	if r.CommandErrors("MAINT_ENTER") != 0 {
		t.Fatal("counted before the asynchronous reply was computed")
	}
	if got := async.async(); got[0] != "ERROR|timeout" {
		t.Fatalf("wrapped async reply %v", got)
	}
	for _, w := range []string{"NOPE", "x\"y", strings.Repeat("A", 100)} {
		bad := lines("ERROR|unknown command")
		m.countReply(w, &bad)
	}
	if r.CommandErrors("ROUTE_REMOVE") != 1 || r.CommandErrors("CONFIG_APPLY") != 0 || r.CommandErrors("MAINT_ENTER") != 1 ||
		r.CommandErrors("unknown") != 3 || r.CommandErrors("NOPE") != 3 {
		t.Fatalf("counts: remove %d apply %d maint %d unknown %d", r.CommandErrors("ROUTE_REMOVE"),
			r.CommandErrors("CONFIG_APPLY"), r.CommandErrors("MAINT_ENTER"), r.CommandErrors("unknown"))
	}
	var out bytes.Buffer
	r.WriteMetrics(&out)
	for _, want := range []string{
		`goproxy_registry_command_errors_total{command="unknown"} 3`,
		`goproxy_registry_command_errors_total{command="MAINT_ENTER"} 1`,
		`goproxy_registry_sessions{state="connected"} 0`,
	} {
		if !strings.Contains(out.String(), want+"\n") {
			t.Errorf("missing %s in\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "NOPE") {
		t.Error("a client's word became a label value")
	}
}
