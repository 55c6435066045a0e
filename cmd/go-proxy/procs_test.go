package main

import (
	"io"
	"runtime"
	"testing"
)

// TestExtraProcs: six processors beyond Go's default unless told
// otherwise, at least one per event loop, and the GOMAXPROCS variable
// wins.
func TestExtraProcs(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	base := runtime.GOMAXPROCS(0)
	env := map[string]string{}
	getenv := func(k string) string { return env[k] }

	c, err := parseConfig(nil, getenv, io.Discard)
	if err != nil || c.ExtraProcs != 6 {
		t.Fatalf("default extra-procs = %d, %v; want 6", c.ExtraProcs, err)
	}
	if got := extraProcs(c.ExtraProcs, 0, getenv); got != base+6 {
		t.Fatalf("GOMAXPROCS %d, want %d", got, base+6)
	}
	runtime.GOMAXPROCS(base)
	if got := extraProcs(c.ExtraProcs, 10, getenv); got != base+10 {
		t.Fatalf("with 10 event loops: GOMAXPROCS %d, want %d (a P per loop)", got, base+10)
	}
	runtime.GOMAXPROCS(base)

	env["GOMAXPROCS"] = "1"
	if got := extraProcs(1, 0, getenv); got != base {
		t.Fatalf("with GOMAXPROCS set: %d, want it left at %d", got, base)
	}
	delete(env, "GOMAXPROCS")

	env["PROXY_EXTRA_PROCS"] = "0"
	if c, err := parseConfig(nil, getenv, io.Discard); err != nil || extraProcs(c.ExtraProcs, 0, getenv) != base {
		t.Fatalf("extra-procs 0: %v, GOMAXPROCS %d, want %d", err, runtime.GOMAXPROCS(0), base)
	}
	env["PROXY_EXTRA_PROCS"] = "-1"
	if _, err := parseConfig(nil, getenv, io.Discard); err == nil {
		t.Fatal("a negative extra-procs was accepted")
	}
}
