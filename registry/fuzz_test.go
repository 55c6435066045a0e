package registry

import (
	"strings"
	"testing"
	"time"
)

// replyForms are the line shapes of §1.5; every reply must have one.
var replyForms = []string{"OK", "ACK", "PONG", "REREGISTER", "ERROR|", "BACKEND_OK|", "BACKEND_FAIL|"}

func wellFormed(line string) bool {
	for _, p := range replyForms {
		if line == p || strings.HasPrefix(line, p+"|") || (strings.HasSuffix(p, "|") && strings.HasPrefix(line, p)) {
			return true
		}
	}
	word, _, _ := strings.Cut(line, "|")
	return strings.HasSuffix(word, "_OK") && !strings.HasPrefix(line, "EVENT")
}

// FuzzLine sends arbitrary lines to the real server, each on a freshly
// registered session, and checks that every request line gets exactly one
// well-formed reply (two for MAINT commands) and the server survives.
// Commands that reach out to URLs from the input are not sent, so the
// fuzzer never makes the server contact anything beyond loopback.
func FuzzLine(f *testing.F) {
	for _, seed := range []string{
		"PING", "PING|x", "ROUTE_ADD||a.test|/|http://127.0.0.1:1|10", "ROUTE_ADD_BULK||[{\"domains\":[\"b.test\"]}]",
		"ROUTE_ADD_BULK||[{\"domains\":[\"b.test\"],\"path\":\"/\",\"backend_url\":\"http://h:1\",\"priority\":1.5}]",
		"HEADERS_SET||ALL|X-A|1", "OPTIONS_SET||ALL|timeout|1s", "HEALTH_SET||r1|/h|1s|1s|0", "CONFIG_APPLY_PARTIAL||routes,bogus",
		"RATELIMIT_SET||r1|2|1s", "CIRCUIT_BREAKER_STATUS||r1", "DRAIN_START||10", "DRAIN_STATUS", "SUBSCRIBE||*",
		"MAINT_STATUS", "STATS_GET||r1", "ROUTE_UPDATE||r1|path|/x", "CONFIG_DIFF", "SESSION_INFO", "RECONNECT|zz",
		"REGISTER|a|b|c", "REGISTER|a|b|1|{\"x\":1}|2", "ping", " PING", "", "\r", "ROUTE_LIST|",
	} {
		f.Add(seed)
	}
	e := startEnv(f)
	f.Fuzz(func(t *testing.T, line string) {
		line = strings.ReplaceAll(line, "\n", "")
		if len(line) > 8192 {
			line = line[:8192]
		}
		word, _, _ := strings.Cut(strings.TrimSuffix(line, "\r"), "|")
		switch word {
		case "BACKEND_TEST", "MAINT_ENTER", "MAINT_EXIT":
			return
		}
		e.t = t
		c := e.dial()
		c.t = t
		reg := c.do("REGISTER|fuzz|fuzz|0|{}")
		if !strings.HasPrefix(reg, "ACK|") {
			t.Fatalf("REGISTER: %q", reg)
		}
		c.send(line)
		c.send("PING")
		var got []string
		for {
			l, err := c.recvWithin(5 * time.Second)
			if err != nil {
				// CLIENT_SHUTDOWN and REGISTER errors that close are fine
				// as long as the reply came before the close.
				if len(got) == 1 && (got[0] == "SHUTDOWN_OK" || got[0] == "ERROR|unauthorized") {
					return
				}
				t.Fatalf("line %q: replies %q then %v", line, got, err)
			}
			if l == "PONG" || l == "ERROR|no session" {
				break
			}
			got = append(got, l)
		}
		want := 1
		if strings.TrimSuffix(line, "\r") == "" {
			want = 0
		}
		if word == "PING" && len(got) == 0 {
			return // the fuzzed line was itself a PING
		}
		if len(got) != want {
			t.Fatalf("line %q: %d replies %q, want %d", line, len(got), got, want)
		}
		for _, l := range got {
			if !wellFormed(l) || len(l) > maxLineContent {
				t.Fatalf("line %q: malformed reply %q", line, l)
			}
		}
	})
}
