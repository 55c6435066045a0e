package loadgen

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/go-proxy/go-proxy/bench/ws"
)

// WSConfig is a closed-loop WebSocket run: Conns connections, each sending
// one message and waiting for its echo before sending the next.
type WSConfig struct {
	Addr      string
	Host      string
	Path      string
	Message   []byte
	Conns     int
	Warmup    time.Duration
	Duration  time.Duration
	Timeout   time.Duration // per round trip and handshake; 10 s when 0
	OnMeasure func(start bool)
}

// RunWS runs cfg; a "request" of the result is one message round trip.
func RunWS(ctx context.Context, cfg WSConfig) (*Result, error) {
	if cfg.Conns <= 0 || cfg.Duration <= 0 {
		return nil, fmt.Errorf("loadgen: need connections and a duration")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Host == "" {
		cfg.Host = "bench.test"
	}
	w := newWindow()
	var errs errorLog
	type workerResult struct {
		hist       *Histogram
		ok, failed uint64
	}
	results := make([]workerResult, cfg.Conns)
	var wg sync.WaitGroup
	for i := 0; i < cfg.Conns; i++ {
		wg.Add(1)
		go func(wr *workerResult) {
			defer wg.Done()
			wr.hist = NewHistogram()
			var c *ws.Conn
			defer func() {
				if c != nil {
					_ = c.Close()
				}
			}()
			fail := func(err error) {
				if w.in(w.now()) {
					wr.failed++
					errs.add(err.Error())
				}
				if c != nil {
					_ = c.Conn.Close()
					c = nil
				}
				time.Sleep(10 * time.Millisecond)
			}
			for !w.stop.Load() {
				if c == nil {
					var err error
					if c, err = ws.Dial(cfg.Addr, cfg.Host, cfg.Path, cfg.Timeout); err != nil {
						c = nil
						fail(err)
						continue
					}
				}
				start := w.now()
				_ = c.SetDeadline(time.Now().Add(cfg.Timeout))
				if err := c.WriteMessage(ws.OpBinary, cfg.Message); err != nil {
					fail(err)
					continue
				}
				op, p, err := c.ReadMessage()
				end := w.now()
				if err == nil && (op != ws.OpBinary || !bytes.Equal(p, cfg.Message)) {
					err = fmt.Errorf("websocket echo: opcode %d, %d bytes", op, len(p))
				}
				if err != nil {
					fail(err)
					continue
				}
				if w.in(end) {
					wr.ok++
					wr.hist.Record(time.Duration(end - start))
				}
			}
		}(&results[i])
	}
	var gen selfCPU
	elapsed, _ := runWindow(w, cfg.Warmup, cfg.Duration, gen.wrap(cfg.OnMeasure), ctx.Done())
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	res := &Result{Driver: "loadgen-ws", Hist: NewHistogram(), Elapsed: elapsed, GenCPU: gen.total}
	var ok uint64
	for _, wr := range results {
		res.Hist.Merge(wr.hist)
		ok += wr.ok
		res.Errors += wr.failed
	}
	res.Requests = ok + res.Errors
	if elapsed > 0 {
		res.RPS = float64(ok) / elapsed.Seconds()
	}
	res.Latency = res.Hist.Summary()
	res.ErrorSamples = errs.list
	return res, nil
}
