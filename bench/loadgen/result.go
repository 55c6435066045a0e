package loadgen

import (
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Result is what one load run measured, over the measured window only.
type Result struct {
	Driver       string         `json:"driver"`
	Requests     uint64         `json:"requests"` // completed in the window, errors included
	Errors       uint64         `json:"errors"`
	Elapsed      time.Duration  `json:"elapsed_ns"`
	RPS          float64        `json:"rps"` // successful requests per second
	Latency      Latency        `json:"latency"`
	ErrorSamples []string       `json:"error_samples,omitempty"`
	Statuses     map[int]uint64 `json:"statuses,omitempty"`
	Hist         *Histogram     `json:"-"`
	// GenCPU is the load generator's own CPU time in the window (this
	// process for the Go generators, the wrk process for wrk).
	GenCPU time.Duration `json:"generator_cpu_ns"`
}

// selfCPU measures this process's CPU time across the measured window.
type selfCPU struct{ start, total time.Duration }

func (s *selfCPU) edge(begin bool) {
	c, err := ProcessCPU(os.Getpid())
	if err != nil {
		return
	}
	if begin {
		s.start = c
	} else {
		s.total = c - s.start
	}
}

// wrapMeasure calls the generator's own CPU probe with the user's.
func (s *selfCPU) wrap(f func(bool)) func(bool) {
	return func(begin bool) {
		if begin {
			if f != nil {
				f(true)
			}
			s.edge(true)
			return
		}
		s.edge(false)
		if f != nil {
			f(false)
		}
	}
}

// window is the measured interval: a load run warms up, then marks the
// start, then the end; only completions inside count.
type window struct {
	base       time.Time
	start, end atomic.Int64 // offsets from base, ns
	stop       atomic.Bool
}

func newWindow() *window {
	w := &window{base: time.Now()}
	w.start.Store(1<<63 - 1)
	w.end.Store(1<<63 - 1)
	return w
}

func (w *window) now() int64 { return int64(time.Since(w.base)) }

// in reports whether a completion at offset t is inside the window.
func (w *window) in(t int64) bool { return t >= w.start.Load() && t < w.end.Load() }

// errorLog keeps the first few distinct error texts.
type errorLog struct {
	mu   sync.Mutex
	seen map[string]bool
	list []string
}

func (e *errorLog) add(s string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.list) >= 8 || e.seen[s] {
		return
	}
	if e.seen == nil {
		e.seen = map[string]bool{}
	}
	e.seen[s] = true
	e.list = append(e.list, s)
}

// runWindow sleeps through warm-up and the measured window, calling
// onMeasure at both edges, and returns the window's length. It returns early
// (with ok false) when done is closed or the context ends.
func runWindow(w *window, warmup, duration time.Duration, onMeasure func(bool), done <-chan struct{}) (time.Duration, bool) {
	sleep := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-done:
			return false
		}
	}
	if !sleep(warmup) {
		w.stop.Store(true)
		return 0, false
	}
	if onMeasure != nil {
		onMeasure(true)
	}
	t0 := w.now()
	w.start.Store(t0)
	ok := sleep(duration)
	t1 := w.now()
	w.end.Store(t1)
	w.stop.Store(true)
	if onMeasure != nil {
		onMeasure(false)
	}
	return time.Duration(t1 - t0), ok
}
