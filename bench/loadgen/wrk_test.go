package loadgen

import (
	"strings"
	"testing"
	"time"
)

func TestParseWrk(t *testing.T) {
	out := []byte("Running 1s test\n  2 threads\nGPBENCH_WRK 100000 1000000 0 1 0 4 0 250 400 900 1500 3000 280.5\n")
	r, err := parseWrk(out)
	if err != nil {
		t.Fatal(err)
	}
	if r.Requests != 100000 || r.Errors != 5 || r.RPS != 99996 || r.Elapsed != time.Second {
		t.Fatalf("%+v", r)
	}
	if r.Latency.P50 != 250 || r.Latency.P999 != 1500 || r.Latency.Max != 3000 {
		t.Fatalf("%+v", r.Latency)
	}
	if _, err := parseWrk([]byte("nothing")); err == nil {
		t.Fatal("no marker accepted")
	}
}

func TestWrkScript(t *testing.T) {
	s := wrkScript(WrkConfig{Method: "POST", Body: make([]byte, 10), Hosts: []string{"a.test"}, Path: "/upload"})
	for _, want := range []string{`wrk.method = "POST"`, `string.rep("x", 10)`, `wrk.headers["Host"] = "a.test"`, "done = function"} {
		if !strings.Contains(s, want) {
			t.Errorf("script lacks %q:\n%s", want, s)
		}
	}
	s = wrkScript(WrkConfig{Hosts: []string{"a.test", "b.test", "c.test"}, Path: "/13b"})
	if !strings.Contains(s, "request = function") || !strings.Contains(s, `"c.test"`) {
		t.Errorf("multi-host script:\n%s", s)
	}
	if wrkSeconds(300*time.Millisecond) != "1s" || wrkSeconds(2500*time.Millisecond) != "3s" {
		t.Fatal("wrkSeconds")
	}
}
