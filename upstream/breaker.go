package upstream

import (
	"sync/atomic"
	"time"
)

// BreakerState is the state of a circuit breaker (registry-v2 §6.7).
type BreakerState int32

const (
	BreakerClosed BreakerState = iota
	BreakerOpen
	BreakerHalfOpen
)

func (s BreakerState) String() string {
	switch s {
	case BreakerOpen:
		return "open"
	case BreakerHalfOpen:
		return "half-open"
	}
	return "closed"
}

// BreakerSettings are a breaker's effective settings. Threshold 0 disables it.
type BreakerSettings struct {
	Threshold        int64
	Timeout          time.Duration
	HalfOpenRequests int32
}

// DefaultBreakerSettings apply to every route without CIRCUIT_BREAKER_SET.
var DefaultBreakerSettings = BreakerSettings{Threshold: 5, Timeout: 30 * time.Second, HalfOpenRequests: 1}

// Breaker is a passive circuit breaker made of atomics only. Transitions
// are compare-and-swap on the state, so concurrent requests agree on one
// winner per transition and the breaker never stampedes when it half-opens:
// at most HalfOpenRequests trials hold a slot at a time.
type Breaker struct {
	settings  atomic.Pointer[BreakerSettings]
	state     atomic.Int32
	failures  atomic.Int64
	successes atomic.Int64
	// trials counts the half-open trials in flight. Every admitted trial
	// gives its slot back (Done or Release), so the count is exact across
	// state changes and is never reset: zeroing it would let new trials in
	// beside ones still running.
	trials      atomic.Int32
	nextAttempt atomic.Int64 // unix nanoseconds
	lastFailure atomic.Int64 // unix nanoseconds, 0 = never
	owner       *Member
}

// Configure installs settings and restarts the breaker closed.
func (b *Breaker) Configure(s BreakerSettings) {
	b.settings.Store(&s)
	b.Reset()
}

// Settings returns the effective settings.
func (b *Breaker) Settings() BreakerSettings { return *b.settings.Load() }

// Reset closes the breaker and clears its counters (CIRCUIT_BREAKER_RESET).
func (b *Breaker) Reset() {
	prev := BreakerState(b.state.Swap(int32(BreakerClosed)))
	b.failures.Store(0)
	b.successes.Store(0)
	b.nextAttempt.Store(0)
	if prev != BreakerClosed {
		b.emit(prev, BreakerClosed)
	}
}

// State returns the current state, turning an expired open state into
// half-open as a request would.
func (b *Breaker) State(now int64) BreakerState {
	s := BreakerState(b.state.Load())
	if s == BreakerOpen && now >= b.nextAttempt.Load() {
		b.toHalfOpen()
		return BreakerState(b.state.Load())
	}
	return s
}

// Snapshot reports the counters for CIRCUIT_BREAKER_STATUS.
func (b *Breaker) Snapshot() (failures, successes int64, lastFailure, nextAttempt int64) {
	next := int64(0)
	if BreakerState(b.state.Load()) == BreakerOpen {
		next = b.nextAttempt.Load()
	}
	return b.failures.Load(), b.successes.Load(), b.lastFailure.Load(), next
}

// Admits reports, without taking anything, whether a request could pass.
func (b *Breaker) Admits(now int64) bool {
	st := b.settings.Load()
	if st.Threshold == 0 {
		return true
	}
	switch BreakerState(b.state.Load()) {
	case BreakerClosed:
		return true
	case BreakerOpen:
		return now >= b.nextAttempt.Load() && b.trials.Load() < st.HalfOpenRequests
	default:
		return b.trials.Load() < st.HalfOpenRequests
	}
}

// Acquire admits one request. trial is true when the request holds a
// half-open slot, which Done must give back.
func (b *Breaker) Acquire(now int64) (trial, ok bool) {
	st := b.settings.Load()
	if st.Threshold == 0 {
		return false, true
	}
	for {
		switch BreakerState(b.state.Load()) {
		case BreakerClosed:
			return false, true
		case BreakerOpen:
			if now < b.nextAttempt.Load() {
				return false, false
			}
			b.toHalfOpen()
			continue
		}
		n := b.trials.Load()
		if n >= st.HalfOpenRequests {
			return false, false
		}
		if b.trials.CompareAndSwap(n, n+1) {
			return true, true
		}
	}
}

func (b *Breaker) toHalfOpen() {
	if b.state.CompareAndSwap(int32(BreakerOpen), int32(BreakerHalfOpen)) {
		b.emit(BreakerOpen, BreakerHalfOpen)
	}
}

// Release gives back the half-open slot of an admitted request that the
// proxy refused before contacting the backend. Such a request is no
// outcome (§6.7 counts forwarded requests): it must neither reset the
// failure count nor close a half-open breaker.
func (b *Breaker) Release(trial bool) {
	if trial {
		b.releaseTrial()
	}
}

func (b *Breaker) releaseTrial() {
	for {
		n := b.trials.Load()
		if n <= 0 || b.trials.CompareAndSwap(n, n-1) {
			return
		}
	}
}

// Done records the outcome of an admitted request.
func (b *Breaker) Done(trial, success bool, now int64) {
	if trial {
		b.releaseTrial()
	}
	st := b.settings.Load()
	if success {
		b.successes.Add(1)
		if b.failures.Load() != 0 {
			b.failures.Store(0)
		}
		if trial && b.state.CompareAndSwap(int32(BreakerHalfOpen), int32(BreakerClosed)) {
			b.emit(BreakerHalfOpen, BreakerClosed)
		}
		return
	}
	b.successes.Store(0)
	b.lastFailure.Store(now)
	f := b.failures.Add(1)
	if st.Threshold == 0 {
		return
	}
	switch BreakerState(b.state.Load()) {
	case BreakerHalfOpen:
		// nextAttempt is written before the state so that no reader sees
		// an open breaker with a stale deadline.
		if trial {
			b.nextAttempt.Store(now + int64(st.Timeout))
			if b.state.CompareAndSwap(int32(BreakerHalfOpen), int32(BreakerOpen)) {
				b.emit(BreakerHalfOpen, BreakerOpen)
			}
		}
	case BreakerClosed:
		if f >= st.Threshold {
			b.nextAttempt.Store(now + int64(st.Timeout))
			if b.state.CompareAndSwap(int32(BreakerClosed), int32(BreakerOpen)) {
				b.emit(BreakerClosed, BreakerOpen)
			}
		}
	}
}

func (b *Breaker) emit(from, to BreakerState) {
	if b.owner != nil && b.owner.events != nil {
		b.owner.events.BreakerChanged(b.owner, from, to, b.failures.Load())
	}
}
