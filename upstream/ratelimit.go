package upstream

import (
	"sync/atomic"
	"time"
)

// TokenBucket is a lock-free token bucket (registry-v2 §6.8) in its GCRA
// form: one atomic "theoretical arrival time" instead of a token count and
// a refill timestamp, so taking a token is a single compare-and-swap.
// Capacity is `capacity` tokens, refilled continuously at capacity per
// window, full at the start.
type TokenBucket struct {
	capacity int64
	window   time.Duration
	interval int64 // nanoseconds per token
	burst    int64 // capacity * interval
	tat      atomic.Int64
}

// NewTokenBucket returns a full bucket.
func NewTokenBucket(capacity int64, window time.Duration) *TokenBucket {
	interval := int64(window) / capacity
	if interval <= 0 {
		interval = 1
	}
	return &TokenBucket{capacity: capacity, window: window, interval: interval, burst: interval * capacity}
}

// Take removes one token. When none is left it returns false and the wait
// until the next token.
func (b *TokenBucket) Take(now int64) (ok bool, wait time.Duration) {
	for {
		tat := b.tat.Load()
		start := tat
		if start < now {
			start = now
		}
		next := start + b.interval
		if next-now > b.burst {
			return false, time.Duration(next - now - b.burst)
		}
		if b.tat.CompareAndSwap(tat, next) {
			return true, 0
		}
	}
}

// HasToken reports whether Take would succeed now.
func (b *TokenBucket) HasToken(now int64) bool {
	start := b.tat.Load()
	if start < now {
		start = now
	}
	return start+b.interval-now <= b.burst
}

// Refund gives back a token taken for a request that was not forwarded
// after all (§6.8: only forwarded requests take one).
func (b *TokenBucket) Refund() {
	for {
		tat := b.tat.Load()
		if b.tat.CompareAndSwap(tat, tat-b.interval) {
			return
		}
	}
}
