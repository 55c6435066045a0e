package loadgen

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
)

// HTTPConfig is one closed-loop HTTP run: Conns connections, each sending
// its next request as soon as the previous response has arrived.
type HTTPConfig struct {
	Addr     string   // host:port to connect to
	Hosts    []string // Host headers; connection i starts at Hosts[i%len] and rotates
	Path     string
	Method   string // GET when empty
	Body     []byte
	Conns    int
	Warmup   time.Duration
	Duration time.Duration
	// ExpectStatus is the status a successful response has (200 when 0);
	// ExpectBodyLen its body length (not checked when negative).
	ExpectStatus  int
	ExpectBodyLen int
	Timeout       time.Duration // per request; 10 s when 0
	// OnMeasure is called when the measured window opens (true) and closes.
	OnMeasure func(start bool)
}

// RunHTTP runs cfg and returns the measured window's result.
func RunHTTP(ctx context.Context, cfg HTTPConfig) (*Result, error) {
	if cfg.Conns <= 0 || cfg.Duration <= 0 {
		return nil, fmt.Errorf("loadgen: need connections and a duration")
	}
	if cfg.Method == "" {
		cfg.Method = fasthttp.MethodGet
	}
	if cfg.ExpectStatus == 0 {
		cfg.ExpectStatus = fasthttp.StatusOK
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	hosts := cfg.Hosts
	if len(hosts) == 0 {
		hosts = []string{"bench.test"}
	}
	w := newWindow()
	var errs errorLog
	type workerResult struct {
		hist       *Histogram
		ok, failed uint64
		statuses   map[int]uint64
	}
	results := make([]workerResult, cfg.Conns)
	var wg sync.WaitGroup
	for i := 0; i < cfg.Conns; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			wr := &results[i]
			wr.hist = NewHistogram()
			wr.statuses = map[int]uint64{}
			c := &fasthttp.HostClient{
				Addr:                          cfg.Addr,
				MaxConns:                      1,
				ReadTimeout:                   cfg.Timeout,
				WriteTimeout:                  cfg.Timeout,
				MaxIdleConnDuration:           time.Minute,
				NoDefaultUserAgentHeader:      true,
				DisableHeaderNamesNormalizing: true,
				ReadBufferSize:                16 << 10,
				WriteBufferSize:               16 << 10,
				MaxResponseBodySize:           16 << 20,
				// No silent retries: every failed exchange is an error.
				MaxIdemponentCallAttempts: 1,
			}
			defer c.CloseIdleConnections()
			req := fasthttp.AcquireRequest()
			resp := fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			req.Header.SetMethod(cfg.Method)
			req.SetRequestURI("http://" + hosts[i%len(hosts)] + cfg.Path)
			if cfg.Body != nil {
				req.SetBodyRaw(cfg.Body)
			}
			// Stride through the hosts so that neighbouring requests hit
			// unrelated table entries.
			hi, stride := i%len(hosts), 1
			if len(hosts) > 1 {
				stride = coprimeStride(len(hosts))
			}
			for !w.stop.Load() {
				if len(hosts) > 1 {
					hi = (hi + stride) % len(hosts)
					req.URI().SetHost(hosts[hi])
				}
				start := w.now()
				err := c.Do(req, resp)
				end := w.now()
				if !w.in(end) {
					if err != nil {
						time.Sleep(time.Millisecond)
					}
					continue
				}
				switch {
				case err != nil:
					wr.failed++
					errs.add(err.Error())
					time.Sleep(time.Millisecond)
				case resp.StatusCode() != cfg.ExpectStatus:
					wr.failed++
					wr.statuses[resp.StatusCode()]++
					errs.add("status " + strconv.Itoa(resp.StatusCode()))
				case cfg.ExpectBodyLen >= 0 && len(resp.Body()) != cfg.ExpectBodyLen:
					wr.failed++
					wr.statuses[resp.StatusCode()]++
					errs.add(fmt.Sprintf("body of %d bytes, want %d", len(resp.Body()), cfg.ExpectBodyLen))
				default:
					wr.ok++
					wr.statuses[resp.StatusCode()]++
					wr.hist.Record(time.Duration(end - start))
				}
			}
		}(i)
	}
	var gen selfCPU
	elapsed, _ := runWindow(w, cfg.Warmup, cfg.Duration, gen.wrap(cfg.OnMeasure), ctx.Done())
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	res := &Result{Driver: "loadgen", Hist: NewHistogram(), Elapsed: elapsed, GenCPU: gen.total, Statuses: map[int]uint64{}}
	var ok uint64
	for _, wr := range results {
		res.Hist.Merge(wr.hist)
		ok += wr.ok
		res.Errors += wr.failed
		for s, n := range wr.statuses {
			res.Statuses[s] += n
		}
	}
	res.Requests = ok + res.Errors
	if elapsed > 0 {
		res.RPS = float64(ok) / elapsed.Seconds()
	}
	res.Latency = res.Hist.Summary()
	res.ErrorSamples = errs.list
	return res, nil
}

// coprimeStride returns a step near n/φ that is coprime with n, so that
// stepping by it visits every index.
func coprimeStride(n int) int {
	s := int(float64(n)*0.618) | 1
	for s > 1 && gcd(s, n) != 1 {
		s--
	}
	if s < 1 {
		s = 1
	}
	return s
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// Prime sends one GET for path to every host once, over conns
// connections, and returns how many failed. The suite primes large tables
// before warming up so that the measured window sees every route in its
// steady state rather than its first request.
func Prime(ctx context.Context, addr string, hosts []string, path string, conns int) (failed uint64, err error) {
	if conns <= 0 {
		conns = 1
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c := &fasthttp.HostClient{Addr: addr, MaxConns: 1, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second,
				MaxIdemponentCallAttempts: 1}
			defer c.CloseIdleConnections()
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			var n uint64
			for j := i; j < len(hosts) && ctx.Err() == nil; j += conns {
				req.SetRequestURI("http://" + hosts[j] + path)
				if err := c.Do(req, resp); err != nil || resp.StatusCode() != fasthttp.StatusOK {
					n++
				}
			}
			mu.Lock()
			failed += n
			mu.Unlock()
		}(i)
	}
	wg.Wait()
	return failed, ctx.Err()
}
