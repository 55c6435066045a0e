package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// WrkConfig drives wrk (https://github.com/wg/wrk) instead of the Go
// generator. wrk has no warm-up, so a first wrk run of Warmup (rounded up to
// whole seconds) is thrown away.
type WrkConfig struct {
	Binary    string // "wrk" when empty
	Addr      string
	Hosts     []string
	Path      string
	Method    string
	Body      []byte
	Conns     int
	Threads   int
	Warmup    time.Duration
	Duration  time.Duration
	Timeout   time.Duration
	Dir       string // for the generated Lua script
	OnMeasure func(start bool)
}

// WrkAvailable reports whether the wrk binary can be found.
func WrkAvailable(bin string) bool {
	if bin == "" {
		bin = "wrk"
	}
	_, err := exec.LookPath(bin)
	return err == nil
}

const wrkMarker = "GPBENCH_WRK"

// wrkScript returns the Lua script: request set-up, and a done() that
// prints the summary and percentiles on one marked line.
func wrkScript(cfg WrkConfig) string {
	var b strings.Builder
	method := cfg.Method
	if method == "" {
		method = "GET"
	}
	fmt.Fprintf(&b, "wrk.method = %q\n", method)
	if len(cfg.Body) > 0 {
		// The body's bytes do not matter to the backend, only its length.
		fmt.Fprintf(&b, "wrk.body = string.rep(\"x\", %d)\n", len(cfg.Body))
	}
	switch len(cfg.Hosts) {
	case 0:
		b.WriteString("wrk.headers[\"Host\"] = \"bench.test\"\n")
	case 1:
		fmt.Fprintf(&b, "wrk.headers[\"Host\"] = %q\n", cfg.Hosts[0])
	default:
		// Pre-format one request per host, visited with the same stride
		// as the Go generator.
		b.WriteString("local hosts = {\n")
		for _, h := range cfg.Hosts {
			fmt.Fprintf(&b, "%q,\n", h)
		}
		b.WriteString("}\n")
		fmt.Fprintf(&b, `local reqs = {}
local n = #hosts
local stride = %d
local idx = 0
init = function(args)
  for i = 1, n do
    reqs[i] = wrk.format(nil, %q, {Host = hosts[i]})
  end
  idx = math.random(n) - 1
end
request = function()
  idx = (idx + stride) %% n
  return reqs[idx + 1]
end
`, coprimeStride(len(cfg.Hosts)), cfg.Path)
	}
	fmt.Fprintf(&b, `done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("%s %%.0f %%.0f %%.0f %%.0f %%.0f %%.0f %%.0f %%.0f %%.0f %%.0f %%.0f %%.0f %%.3f\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
`, wrkMarker)
	return b.String()
}

// parseWrk reads the marked line of wrk's output.
func parseWrk(out []byte) (*Result, error) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 14 || f[0] != wrkMarker {
			continue
		}
		v := make([]float64, 13)
		for i := range v {
			x, err := strconv.ParseFloat(f[i+1], 64)
			if err != nil {
				return nil, fmt.Errorf("wrk output %q: %w", sc.Text(), err)
			}
			v[i] = x
		}
		reqs, durUS := v[0], v[1]
		errs := v[2] + v[3] + v[4] + v[5] + v[6]
		r := &Result{
			Driver:   "wrk",
			Requests: uint64(reqs),
			Errors:   uint64(errs),
			Elapsed:  time.Duration(durUS) * time.Microsecond,
			Latency:  Latency{P50: v[7], P90: v[8], P99: v[9], P999: v[10], Max: v[11], Mean: v[12]},
		}
		if durUS > 0 {
			r.RPS = math.Max(0, reqs-v[5]) / (durUS / 1e6)
		}
		if errs > 0 {
			r.ErrorSamples = []string{fmt.Sprintf("wrk errors: connect %.0f, read %.0f, write %.0f, status %.0f, timeout %.0f",
				v[2], v[3], v[4], v[5], v[6])}
		}
		return r, nil
	}
	return nil, fmt.Errorf("wrk printed no %s line: %s", wrkMarker, tail(out))
}

func tail(b []byte) string {
	if len(b) > 400 {
		b = b[len(b)-400:]
	}
	return strings.TrimSpace(string(b))
}

// wrkSeconds formats d as whole seconds, at least 1, for wrk's -d.
func wrkSeconds(d time.Duration) string {
	s := int(math.Ceil(d.Seconds()))
	if s < 1 {
		s = 1
	}
	return strconv.Itoa(s) + "s"
}

// RunWrk runs wrk (a warm-up run, then the measured run).
func RunWrk(ctx context.Context, cfg WrkConfig) (*Result, error) {
	if cfg.Binary == "" {
		cfg.Binary = "wrk"
	}
	if cfg.Threads <= 0 {
		cfg.Threads = 2
	}
	if cfg.Conns < cfg.Threads {
		cfg.Threads = cfg.Conns
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	dir := cfg.Dir
	if dir == "" {
		dir = os.TempDir()
	}
	f, err := os.CreateTemp(dir, "gpbench-*.lua")
	if err != nil {
		return nil, err
	}
	script := f.Name()
	defer os.Remove(script)
	if _, err := f.WriteString(wrkScript(cfg)); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	url := "http://" + cfg.Addr + cfg.Path
	var genCPU time.Duration
	run := func(d time.Duration) ([]byte, error) {
		// wrk stops by itself after -d; the context bounds it anyway.
		rctx, cancel := context.WithTimeout(ctx, d+cfg.Timeout+10*time.Second)
		defer cancel()
		cmd := exec.CommandContext(rctx, cfg.Binary, "-t", strconv.Itoa(cfg.Threads), "-c", strconv.Itoa(cfg.Conns),
			"-d", wrkSeconds(d), "--timeout", wrkSeconds(cfg.Timeout), "-s", filepath.Clean(script), url)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		out, err := cmd.CombinedOutput()
		if cmd.ProcessState != nil {
			genCPU = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		}
		if err != nil {
			return out, fmt.Errorf("wrk: %w: %s", err, tail(out))
		}
		return out, nil
	}
	if cfg.Warmup > 0 {
		if _, err := run(cfg.Warmup); err != nil {
			return nil, err
		}
	}
	if cfg.OnMeasure != nil {
		cfg.OnMeasure(true)
	}
	out, err := run(cfg.Duration)
	if cfg.OnMeasure != nil {
		cfg.OnMeasure(false)
	}
	if err != nil {
		return nil, err
	}
	res, err := parseWrk(out)
	if err != nil {
		return nil, err
	}
	res.GenCPU = genCPU
	return res, nil
}
