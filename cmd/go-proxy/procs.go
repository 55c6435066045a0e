package main

import "runtime"

// extraProcs raises GOMAXPROCS above Go's default by extra, and by at
// least the number of event loops when extra is not 0, unless the
// GOMAXPROCS environment variable sets it. It returns the value in effect.
//
// Why: on a node whose cores are shared (a Swarm node runs services beside
// the proxy), the poller readies a batch of connections onto the run queue
// of the processor that polled, and when the kernel then deschedules that
// processor's thread the batch waits for it (a runtime trace of the bench
// showed most waits over 2 ms stranded so). Idle processors take such
// batches instead: more processors than CPUs trade some CPU for a lower
// p99. The measurements behind the default are in the README ("Bench
// suite").
//
// The loops: a busy loop waits for its next events holding its P, which
// it does only while the rest of the proxy keeps a P per CPU besides the
// loops' (upstream/loop.go, wait).
func extraProcs(extra, loops int, getenv func(string) string) int {
	if extra > 0 {
		extra = max(extra, loops)
	}
	if extra > 0 && getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + extra)
	}
	return runtime.GOMAXPROCS(0)
}
