package upstream

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func takeN(b *TokenBucket, now int64, n int) (taken int, wait time.Duration) {
	for i := 0; i < n; i++ {
		ok, w := b.Take(now)
		if !ok {
			return taken, w
		}
		taken++
	}
	return taken, 0
}

func TestTokenBucketBurstIsCapacity(t *testing.T) {
	b := NewTokenBucket(10, time.Second)
	if !b.HasToken(t0) {
		t.Fatal("a new bucket is not full")
	}
	taken, wait := takeN(b, t0, 100)
	if taken != 10 {
		t.Fatalf("burst %d, want capacity 10", taken)
	}
	if wait != 100*time.Millisecond {
		t.Errorf("wait for the next token %v, want 100ms (window/capacity)", wait)
	}
	if b.HasToken(t0) {
		t.Error("HasToken on an empty bucket")
	}
}

func TestTokenBucketRefill(t *testing.T) {
	b := NewTokenBucket(10, time.Second)
	takeN(b, t0, 10)
	// 350ms later: 3.5 tokens refilled, so 3 can be taken and the 4th
	// waits the remaining 50ms.
	taken, wait := takeN(b, t0+int64(350*time.Millisecond), 100)
	if taken != 3 || wait != 50*time.Millisecond {
		t.Errorf("after 350ms: took %d, wait %v; want 3 and 50ms", taken, wait)
	}
	// A long idle period refills to capacity, never beyond.
	if taken, _ := takeN(b, t0+int64(time.Hour), 100); taken != 10 {
		t.Errorf("after an hour: took %d, want 10", taken)
	}
	// Steady rate: one token every 100ms over 10 s.
	start := t0 + int64(2*time.Hour)
	takeN(b, start, 10)
	got := 0
	for ms := int64(1); ms <= 10_000; ms++ {
		if ok, _ := b.Take(start + ms*int64(time.Millisecond)); ok {
			got++
		}
	}
	if got != 100 {
		t.Errorf("over 10 s at 10/s: %d tokens, want 100", got)
	}
}

func TestTokenBucketSlowRate(t *testing.T) {
	// 2 per minute: the wait after the burst is 30 s.
	b := NewTokenBucket(2, time.Minute)
	if taken, wait := takeN(b, t0, 5); taken != 2 || wait != 30*time.Second {
		t.Errorf("took %d, wait %v; want 2 and 30s", taken, wait)
	}
	if taken, wait := takeN(b, t0+int64(20*time.Second), 5); taken != 0 || wait != 10*time.Second {
		t.Errorf("20s later: took %d, wait %v; want 0 and 10s", taken, wait)
	}
}

func TestTokenBucketConcurrent(t *testing.T) {
	b := NewTokenBucket(500, time.Hour)
	var ok atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				if took, _ := b.Take(t0); took {
					ok.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if ok.Load() != 500 {
		t.Errorf("%d tokens taken concurrently, want exactly 500", ok.Load())
	}
}

func TestRetryAfterSeconds(t *testing.T) {
	h := newHarness(t, Settings{})
	a := namedBackend(t, "A")
	m := h.member(a.URL)
	h.route("rl.test", "/", m)
	c := httpClient()
	for _, tc := range []struct {
		requests int64
		window   time.Duration
		want     string
	}{
		{1, 5 * time.Second, "5"},     // 5 s to the next token
		{100, time.Second, "1"},       // 10ms, rounded up to at least 1
		{3, 10 * time.Second, "4"},    // 3.33 s, rounded up
		{1, 90 * time.Minute, "5400"}, // long windows are not capped
	} {
		m.SetRateLimit(tc.requests, tc.window)
		if r, w, ok := m.RateLimit(); !ok || r != tc.requests || w != tc.window {
			t.Fatalf("RateLimit() = %d %v %v", r, w, ok)
		}
		var got string
		for i := int64(0); i <= tc.requests+50; i++ {
			status, hdr, _ := h.do(c, "GET", "rl.test", "/", nil)
			if status == 429 {
				got = hdr.Get("Retry-After")
				break
			}
		}
		if got != tc.want {
			t.Errorf("limit %d per %v: Retry-After %q, want %q", tc.requests, tc.window, got, tc.want)
		}
	}
	m.SetRateLimit(0, 0)
	if _, _, ok := m.RateLimit(); ok {
		t.Error("limit still set after SetRateLimit(0)")
	}
	if status, _, _ := h.do(c, "GET", "rl.test", "/", nil); status != 200 {
		t.Errorf("without a limit: %d", status)
	}
}

func TestTokenBucketRefund(t *testing.T) {
	b := NewTokenBucket(2, time.Hour)
	now := time.Now().UnixNano()
	for i := 0; i < 2; i++ {
		if ok, _ := b.Take(now); !ok {
			t.Fatalf("take %d refused", i)
		}
	}
	if ok, _ := b.Take(now); ok {
		t.Fatal("third take admitted from a bucket of 2")
	}
	b.Refund()
	if ok, _ := b.Take(now); !ok {
		t.Fatal("a refunded token was not available again")
	}
	if ok, _ := b.Take(now); ok {
		t.Fatal("refund gave back more than one token")
	}
}
