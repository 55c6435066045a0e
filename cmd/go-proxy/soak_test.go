//go:build soak

package main

// The soak run (issue 8): `make soak`, never part of `make test`. The whole
// proxy runs in this process on 127.0.0.1 for SOAK_DURATION (default 3m)
// under steady HTTP traffic and registry churn — sessions registering,
// applying routes with health checks, probing backends, dropping their
// connections into grace, reconnecting, shutting down — and the run fails
// if goroutines or heap keep growing, or if any request to a route that
// never changed fails.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type soakSample struct {
	at         time.Duration
	goroutines int
	heap       uint64
}

func soakMeasure(start time.Time) soakSample {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return soakSample{at: time.Since(start).Round(time.Second), goroutines: runtime.NumGoroutine(), heap: ms.HeapAlloc}
}

func medianOf(xs []soakSample, f func(soakSample) float64) float64 {
	v := make([]float64, len(xs))
	for i, x := range xs {
		v[i] = f(x)
	}
	sort.Float64s(v)
	return v[len(v)/2]
}

func TestSoak(t *testing.T) {
	duration := 3 * time.Minute
	if v := os.Getenv("SOAK_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 20*time.Second {
			t.Fatalf("SOAK_DURATION=%q: want a duration of at least 20s", v)
		}
		duration = d
	}
	before := runtime.NumGoroutine()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			return
		}
		time.Sleep(time.Duration(rand.IntN(3)) * time.Millisecond)
		_, _ = io.WriteString(w, "ok")
	}))
	defer backend.Close()

	cfg, err := parseConfig([]string{"-http-addr", "127.0.0.1:0", "-registry-addr", "127.0.0.1:0", "-admin-addr", "127.0.0.1:0",
		"-session-grace", "3s", "-max-conns-per-ip", "1000", "-backend-allow", "127.0.0.0/8"}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var logBuf ftBuffer
	log := slog.New(slog.NewTextHandler(&logBuf, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan listeners, 1)
	served := make(chan error, 1)
	go func() { served <- serve(ctx, cfg, log, ready) }()
	var ls listeners
	select {
	case ls = <-ready:
	case err := <-served:
		t.Fatalf("serve: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not start")
	}
	httpAddr, regAddr := ls.HTTP.String(), ls.Registry.String()

	stable := soakDial(t, regAddr)
	stable.mustPrefix("REGISTER|stable|s1|0|{}", "ACK|")
	stable.mustPrefix("ROUTE_ADD||stable.test|/|"+backend.URL+"|10", "ROUTE_OK|")
	stable.mustPrefix("HEALTH_SET||r1|/health|2s|1s", "HEALTH_OK")
	stable.mustPrefix("CONFIG_APPLY", "OK")

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sent, stableSent, stableFailed, churnSent atomic.Int64
	var statusMu sync.Mutex
	churnStatus := map[string]int{}
	var stableErrs []string
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tr := &http.Transport{MaxIdleConnsPerHost: 2, DisableKeepAlives: w%4 == 3}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-time.After(4 * time.Millisecond):
				}
				host := "stable.test"
				if i%3 == 0 {
					host = fmt.Sprintf("churn%d.test", rand.IntN(6))
				}
				req, _ := http.NewRequest("GET", "http://"+httpAddr+"/x", nil)
				req.Host = host
				resp, err := client.Do(req)
				status := 0
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					status = resp.StatusCode
				}
				sent.Add(1)
				if host == "stable.test" {
					stableSent.Add(1)
					if err != nil || status != 200 {
						stableFailed.Add(1)
						statusMu.Lock()
						if len(stableErrs) < 10 {
							stableErrs = append(stableErrs, fmt.Sprintf("status %d, %v", status, err))
						}
						statusMu.Unlock()
					}
					continue
				}
				churnSent.Add(1)
				key := fmt.Sprint(status)
				if err != nil {
					key = "error: " + ftReason(err, 0)
				}
				statusMu.Lock()
				churnStatus[key]++
				statusMu.Unlock()
			}
		}()
	}

	var cycles, regOps atomic.Int64
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 42))
			sids := map[int]string{}
			for {
				select {
				case <-stop:
					return
				case <-time.After(30 * time.Millisecond):
				}
				k := w*3 + rng.IntN(3)
				c := soakDialQuiet(regAddr)
				if c == nil {
					continue
				}
				ops := c.churn(rng, k, sids, backend.URL)
				regOps.Add(int64(ops))
				cycles.Add(1)
			}
		}()
	}

	start := time.Now()
	warmup := max(duration/4, 10*time.Second)
	var samples []soakSample
	tick := time.NewTicker(5 * time.Second)
	for time.Since(start) < duration {
		<-tick.C
		s := soakMeasure(start)
		samples = append(samples, s)
		t.Logf("t=%v goroutines=%d heap=%.1f MiB requests=%d churn cycles=%d", s.at, s.goroutines, float64(s.heap)/(1<<20), sent.Load(), cycles.Load())
	}
	tick.Stop()
	close(stop)
	wg.Wait()
	stable.close()
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(40 * time.Second):
		t.Fatal("serve did not stop")
	}

	var steady []soakSample
	for _, s := range samples {
		if s.at >= warmup {
			steady = append(steady, s)
		}
	}
	n := max(len(steady)/4, 2)
	early, late := steady[:n], steady[len(steady)-n:]
	g0, g1 := medianOf(early, func(s soakSample) float64 { return float64(s.goroutines) }), medianOf(late, func(s soakSample) float64 { return float64(s.goroutines) })
	h0, h1 := medianOf(early, func(s soakSample) float64 { return float64(s.heap) }), medianOf(late, func(s soakSample) float64 { return float64(s.heap) })
	t.Logf("soak %v: %d requests sent (%d to the stable route, %d failed: %v; %d to churned routes: %v); %d registry churn cycles, %d registry commands",
		duration, sent.Load(), stableSent.Load(), stableFailed.Load(), stableErrs, churnSent.Load(), churnStatus, cycles.Load(), regOps.Load())
	t.Logf("steady state after %v: goroutines %.0f → %.0f, heap %.1f → %.1f MiB", warmup, g0, g1, h0/(1<<20), h1/(1<<20))
	if stableFailed.Load() > 0 {
		t.Errorf("%d requests to the stable route failed: %v", stableFailed.Load(), stableErrs)
	}
	if g1 > g0*1.25+25 {
		t.Errorf("goroutines grew from %.0f to %.0f", g0, g1)
	}
	if h1 > h0*1.5+16<<20 {
		t.Errorf("heap grew from %.1f to %.1f MiB", h0/(1<<20), h1/(1<<20))
	}
	if strings.Contains(logBuf.String(), "panic") {
		t.Errorf("a panic was logged:\n%s", logBuf.String())
	}
	// After shutdown, only idle keep-alive pools may linger for a while.
	deadline := time.Now().Add(20 * time.Second)
	for runtime.NumGoroutine() > before+30 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("goroutines: %d before start, %d after shutdown", before, runtime.NumGoroutine())
	if g := runtime.NumGoroutine(); g > before+30 {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines left after shutdown (%d before):\n%s", g, before, buf[:runtime.Stack(buf, true)])
	}
}

type soakConn struct {
	t  *testing.T
	c  net.Conn
	rd *bufio.Reader
}

func soakDial(t *testing.T, addr string) *soakConn {
	c := soakDialQuiet(addr)
	if c == nil {
		t.Fatal("cannot reach the registry")
	}
	c.t = t
	return c
}

func soakDialQuiet(addr string) *soakConn {
	c, err := net.DialTimeout("tcp4", addr, 5*time.Second)
	if err != nil {
		return nil
	}
	return &soakConn{c: c, rd: bufio.NewReader(c)}
}

func (s *soakConn) say(line string) (string, error) {
	_ = s.c.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := io.WriteString(s.c, line+"\n"); err != nil {
		return "", err
	}
	for {
		l, err := s.rd.ReadString('\n')
		if err != nil {
			return "", err
		}
		if !strings.HasPrefix(l, "EVENT|") {
			return strings.TrimSuffix(l, "\n"), nil
		}
	}
}

func (s *soakConn) mustPrefix(line, prefix string) string {
	got, err := s.say(line)
	if err != nil || !strings.HasPrefix(got, prefix) {
		s.t.Fatalf("%s: %q %v", line, got, err)
	}
	return got
}

func (s *soakConn) close() { _ = s.c.Close() }

// churn runs one session life on a fresh connection and returns how many
// commands it sent: resume or register, routes with health checks,
// options, apply, queries, sometimes a probe, then a clean shutdown, an
// abrupt drop into grace, or a drop to be resumed later.
func (s *soakConn) churn(rng *rand.Rand, k int, sids map[int]string, backend string) int {
	defer s.close()
	ops := 0
	do := func(line string) string {
		ops++
		got, _ := s.say(line)
		return got
	}
	resumed := false
	if sid, ok := sids[k]; ok && rng.IntN(2) == 0 {
		resumed = do("RECONNECT|"+sid) == "OK"
	}
	if !resumed {
		ack := do(fmt.Sprintf("REGISTER|churn|c%d|0|{\"k\":%d}", k, k))
		if !strings.HasPrefix(ack, "ACK|") {
			return ops
		}
		sids[k] = strings.TrimPrefix(ack, "ACK|")
		do("SUBSCRIBE||*")
		rid := strings.TrimPrefix(do(fmt.Sprintf("ROUTE_ADD||churn%d.test|/|%s|10", k, backend)), "ROUTE_OK|")
		do("HEALTH_SET||" + rid + "|/health|1s|500ms")
		do("OPTIONS_SET||ALL|timeout|5s")
		do("RATELIMIT_SET||" + rid + "|1000|1s")
		do("CONFIG_APPLY")
	}
	for i := rng.IntN(4); i > 0; i-- {
		do([]string{"PING", "SESSION_INFO", "ROUTE_LIST", "STATS_GET", "CONFIG_DIFF", "MAINT_STATUS"}[rng.IntN(6)])
	}
	if rng.IntN(10) == 0 {
		do("BACKEND_TEST||" + backend + "/")
	}
	switch rng.IntN(3) {
	case 0:
		do("CLIENT_SHUTDOWN")
		delete(sids, k)
	case 1:
		if tc, ok := s.c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // an abrupt drop: the session enters grace
		}
	}
	return ops
}
