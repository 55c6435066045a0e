package upstream

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const t0 = int64(1_700_000_000) * int64(time.Second) // a fixed "now"

func newBreaker(th int64, timeout time.Duration, half int32) (*Breaker, *events) {
	ev := &events{}
	m := NewMember(1, NewSession("s", "svc", true), &Config{}, ev)
	m.Breaker.Configure(BreakerSettings{Threshold: th, Timeout: timeout, HalfOpenRequests: half})
	return &m.Breaker, ev
}

func mustAcquire(t *testing.T, b *Breaker, now int64, wantTrial bool) {
	t.Helper()
	trial, ok := b.Acquire(now)
	if !ok || trial != wantTrial {
		t.Fatalf("Acquire at %v: trial %v ok %v, want trial %v ok true", time.Duration(now-t0), trial, ok, wantTrial)
	}
}

func mustRefuse(t *testing.T, b *Breaker, now int64) {
	t.Helper()
	if trial, ok := b.Acquire(now); ok {
		t.Fatalf("Acquire at %v admitted (trial %v), want refused", time.Duration(now-t0), trial)
	}
	if b.Admits(now) {
		t.Fatalf("Admits at %v, want false", time.Duration(now-t0))
	}
}

func TestBreakerOpensAtThreshold(t *testing.T) {
	b, ev := newBreaker(3, time.Second, 1)
	for i := 0; i < 2; i++ {
		mustAcquire(t, b, t0, false)
		b.Done(false, false, t0)
	}
	if s := b.State(t0); s != BreakerClosed {
		t.Fatalf("after 2 of 3 failures: %v", s)
	}
	// A success in between resets the consecutive count.
	mustAcquire(t, b, t0, false)
	b.Done(false, true, t0)
	for i := 0; i < 2; i++ {
		b.Done(false, false, t0)
	}
	if s := b.State(t0); s != BreakerClosed {
		t.Fatalf("failures are not consecutive across a success: %v", s)
	}
	b.Done(false, false, t0+10)
	if s := b.State(t0 + 10); s != BreakerOpen {
		t.Fatalf("after 3 consecutive failures: %v, want open", s)
	}
	f, _, last, next := b.Snapshot()
	if f != 3 || last != t0+10 || next != t0+10+int64(time.Second) {
		t.Errorf("snapshot failures %d last %d next %d", f, last, next)
	}
	mustRefuse(t, b, t0+10)
	mustRefuse(t, b, t0+int64(time.Second)) // 10ns before next_attempt
	if got := ev.breakerLog(); fmt.Sprint(got) != "[closed->open]" {
		t.Errorf("events %v", got)
	}
}

func TestBreakerHalfOpenCycle(t *testing.T) {
	b, ev := newBreaker(1, time.Second, 1)
	b.Done(false, false, t0)
	next := t0 + int64(time.Second)
	mustRefuse(t, b, next-1)

	// At next_attempt: half-open, one trial at a time.
	mustAcquire(t, b, next, true)
	if s := b.State(next); s != BreakerHalfOpen {
		t.Fatalf("state %v, want half-open", s)
	}
	mustRefuse(t, b, next)
	// A failed trial re-opens with a new next_attempt.
	b.Done(true, false, next+5)
	if s := b.State(next + 5); s != BreakerOpen {
		t.Fatalf("after a failed trial: %v", s)
	}
	if _, _, _, na := b.Snapshot(); na != next+5+int64(time.Second) {
		t.Errorf("next_attempt %d, want %d", na, next+5+int64(time.Second))
	}
	mustRefuse(t, b, next+int64(time.Second))
	// The next trial succeeds: closed, failures reset, everything admitted.
	next2 := next + 5 + int64(time.Second)
	mustAcquire(t, b, next2, true)
	// A non-trial success (admitted while closed, finishing late) does not
	// close a half-open breaker; only a trial does.
	b.Done(false, true, next2)
	if s := b.State(next2); s != BreakerHalfOpen {
		t.Fatalf("non-trial success closed the breaker: %v", s)
	}
	b.Done(true, true, next2)
	if s := b.State(next2); s != BreakerClosed {
		t.Fatalf("after a successful trial: %v", s)
	}
	if f, _, _, _ := b.Snapshot(); f != 0 {
		t.Errorf("failures %d after closing, want 0", f)
	}
	mustAcquire(t, b, next2, false)
	mustAcquire(t, b, next2, false)
	want := "[closed->open open->half-open half-open->open open->half-open half-open->closed]"
	if got := fmt.Sprint(ev.breakerLog()); got != want {
		t.Errorf("events %s, want %s", got, want)
	}
}

func TestBreakerHalfOpenRequests(t *testing.T) {
	b, _ := newBreaker(1, time.Second, 3)
	b.Done(false, false, t0)
	next := t0 + int64(time.Second)
	for i := 0; i < 3; i++ {
		mustAcquire(t, b, next, true)
	}
	mustRefuse(t, b, next)
	// A slot given back without an outcome (the proxy refused the request
	// before contacting the backend) admits one more trial and changes
	// nothing else.
	b.Release(true)
	if s := b.State(next); s != BreakerHalfOpen {
		t.Fatalf("Release changed the state to %v", s)
	}
	mustAcquire(t, b, next, true)
	mustRefuse(t, b, next)
	// The first successful trial closes it.
	b.Done(true, true, next)
	if s := b.State(next); s != BreakerClosed {
		t.Fatalf("state %v", s)
	}
	// The other trials finish late: a failure counts as an ordinary
	// closed-state failure (threshold 1: it opens again).
	b.Done(true, true, next)
	b.Done(true, false, next+1)
	if s := b.State(next + 1); s != BreakerOpen {
		t.Fatalf("state %v", s)
	}
}

func TestBreakerDisabled(t *testing.T) {
	b, ev := newBreaker(0, time.Second, 1)
	for i := 0; i < 100; i++ {
		mustAcquire(t, b, t0, false)
		b.Done(false, false, t0)
	}
	if s := b.State(t0); s != BreakerClosed || !b.Admits(t0) {
		t.Fatalf("threshold 0: %v", s)
	}
	if got := ev.breakerLog(); len(got) != 0 {
		t.Errorf("events %v", got)
	}
}

func TestBreakerReset(t *testing.T) {
	b, ev := newBreaker(2, time.Hour, 1)
	b.Done(false, false, t0)
	b.Done(false, false, t0)
	mustRefuse(t, b, t0+1)
	b.Reset()
	if s := b.State(t0 + 1); s != BreakerClosed {
		t.Fatalf("after Reset: %v", s)
	}
	if f, s, _, next := b.Snapshot(); f != 0 || s != 0 || next != 0 {
		t.Errorf("after Reset: failures %d successes %d next %d", f, s, next)
	}
	mustAcquire(t, b, t0+1, false)
	// One failure is not enough to re-open: the count restarted.
	b.Done(false, false, t0+2)
	mustAcquire(t, b, t0+2, false)
	if got := fmt.Sprint(ev.breakerLog()); got != "[closed->open open->closed]" {
		t.Errorf("events %s", got)
	}
	// Reset of a closed breaker reports nothing.
	b.Reset()
	if got := len(ev.breakerLog()); got != 2 {
		t.Errorf("%d events after resetting a closed breaker", got)
	}
}

// TestBreakerNoStampede: when an open breaker reaches next_attempt under
// concurrent requests, exactly half_open_requests of them get a trial.
func TestBreakerNoStampede(t *testing.T) {
	const goroutines = 8
	for _, half := range []int32{1, 2} {
		for round := 0; round < 2000; round++ {
			b, _ := newBreaker(1, time.Millisecond, half)
			b.Done(false, false, t0)
			now := t0 + int64(time.Millisecond)
			var admitted atomic.Int32
			var start, wg sync.WaitGroup
			start.Add(1)
			for g := 0; g < goroutines; g++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					start.Wait()
					if trial, ok := b.Acquire(now); ok {
						if !trial {
							t.Error("admitted without a trial slot while half-open")
						}
						admitted.Add(1)
					}
				}()
			}
			start.Done()
			wg.Wait()
			if n := admitted.Load(); n != half {
				t.Fatalf("half_open_requests %d, round %d: %d concurrent trials admitted", half, round, n)
			}
		}
	}
}

// TestBreakerTrialsBoundedUnderLoad hammers a breaker that keeps failing
// its trials, so it cycles open -> half-open -> open, and checks that the
// trials in flight never exceed half_open_requests.
func TestBreakerTrialsBoundedUnderLoad(t *testing.T) {
	for _, half := range []int32{1, 3} {
		b, _ := newBreaker(1, time.Microsecond, half)
		var inFlight, peak, trials atomic.Int32
		var clock atomic.Int64
		clock.Store(t0)
		deadline := time.Now().Add(300 * time.Millisecond)
		var wg sync.WaitGroup
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(deadline) {
					now := clock.Add(300) // 0.3 µs per attempt
					trial, ok := b.Acquire(now)
					if !ok {
						runtime.Gosched() // let the trials in flight finish
						continue
					}
					if trial {
						n := inFlight.Add(1)
						for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
						}
						trials.Add(1)
						runtime.Gosched()
						inFlight.Add(-1)
					}
					b.Done(trial, false, clock.Load())
				}
			}()
		}
		wg.Wait()
		t.Logf("half_open_requests %d: %d trials, peak %d in flight", half, trials.Load(), peak.Load())
		if trials.Load() < 100 {
			t.Errorf("only %d trials admitted: the breaker got stuck", trials.Load())
		}
		if p := peak.Load(); p > half {
			t.Errorf("half_open_requests %d: %d trials in flight at once", half, p)
		}
	}
}
