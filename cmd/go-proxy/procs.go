package main

import "runtime"

// extraProcs raises GOMAXPROCS above Go's default by extra, unless the
// GOMAXPROCS environment variable sets it. It returns the value in effect.
//
// Why: on a node whose cores are shared (a Swarm node runs services beside
// the proxy), the poller readies a batch of connections onto the run queue
// of the processor that polled, and when the kernel then deschedules that
// processor's thread the batch waits for it: a runtime trace of the bench
// (features-13b, 3 processors on 2 CPUs) showed 62 % of the waits over 2 ms
// stranded so, behind one run of 1 ms (median) to 8.5 ms (p90) on a thread
// the kernel had taken away. Idle processors take such batches instead.
// Measured in three bench runs with haproxy beside (README, "Bench
// suite"): 8 processors on 2 CPUs halved p99 against 3
// (13 B: 8.3–9.2 ms to 4.3–5.2 ms; 4 KiB: 9.0 to 5.5 ms) at the same
// requests/s and 0–11 % more CPU per request; 16 lowered it little more and
// 32 cost 40 % more CPU.
func extraProcs(extra int, getenv func(string) string) int {
	if extra > 0 && getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + extra)
	}
	return runtime.GOMAXPROCS(0)
}
