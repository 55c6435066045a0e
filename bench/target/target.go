// Package target starts the things the suite sends load to: the bundled
// backend directly, a go-proxy build with its routes registered over the
// registry protocol, and haproxy or nginx with generated configurations.
// Every process is a child on loopback ports and is stopped after its run.
package target

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
)

// Kinds of target.
const (
	KindDirect    = "direct"
	KindGoProxy   = "go-proxy"
	KindReference = "reference"
)

// Setup is what a scenario needs from a target.
type Setup struct {
	Backend   string   // host:port of the bundled backend
	Domains   []string // the routing table: one route "/" per domain
	Features  bool     // health checks, breaker, rate limit, statistics polling
	WebSocket bool     // allow WebSocket upgrades
	ProbePath string   // a GET path that answers 200 once the target serves
	Dir       string   // scratch directory for configurations and logs
	// Callgrind runs the target's process under callgrind on one thread,
	// to count its instructions (Instance.Counter).
	Callgrind bool
}

// Target is something the suite can send load to.
type Target interface {
	Name() string
	Kind() string
	Start(ctx context.Context, s Setup) (*Instance, error)
}

// Activity is what a background task did during a run.
type Activity struct {
	Name   string   `json:"name"`
	Cycles uint64   `json:"cycles"`
	Errors uint64   `json:"errors"`
	Sample []string `json:"error_samples,omitempty"`
}

// Instance is a started target.
type Instance struct {
	Addr  string // where the load goes
	PID   int    // process tree whose CPU is measured; 0 for none
	Admin string // go-proxy's admin server (metrics, profiler); "" for other targets
	// Background starts the instance's activity during a run (statistics
	// polling, registry churn) and returns the function that stops it.
	Background func(ctx context.Context) (stop func() []Activity)
	// Counter counts the process's instructions when it runs under
	// callgrind (Setup.Callgrind); nil otherwise.
	Counter *Counter
	stop    func() error
}

// Stop stops the instance and releases everything it holds.
func (in *Instance) Stop() error {
	if in.stop == nil {
		return nil
	}
	return in.stop()
}

// Direct sends load straight to the backend.
type Direct struct{}

// Name implements Target.
func (Direct) Name() string { return "direct" }

// Kind implements Target.
func (Direct) Kind() string { return KindDirect }

// Start implements Target.
func (Direct) Start(_ context.Context, s Setup) (*Instance, error) {
	return &Instance{Addr: s.Backend}, nil
}

// FreePort returns a loopback address with a port that was free a moment ago.
func FreePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := ln.Addr().String()
	return addr, ln.Close()
}

// proc is a child process in its own process group, killed with the
// suite (Pdeathsig) and by Stop.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	log  *os.File
}

// startTargetProc starts a target's process, under callgrind when the
// setup asks for it (then with the Counter of its instructions).
func startTargetProc(s Setup, name string, args []string, dir, logName string, drop func(string) bool, extra []string) (*proc, *Counter, error) {
	if !s.Callgrind {
		p, err := startProcEnv(name, args, dir, logName, drop, extra)
		return p, nil, err
	}
	out := filepath.Join(dir, strings.TrimSuffix(logName, ".log")+".callgrind")
	name, args = underCallgrind(name, args, out)
	p, err := startProcEnv(name, args, dir, logName, drop, extra)
	if err != nil {
		return nil, nil, err
	}
	return p, &Counter{pid: p.pid(), out: out}, nil
}

// startProcEnv starts a child process in dir, logging to logName, with the
// environment filtered: variables for which drop returns true are left
// out, and extra is added.
func startProcEnv(name string, args []string, dir, logName string, drop func(string) bool, extra []string) (*proc, error) {
	logf, err := os.Create(filepath.Join(dir, logName))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	if drop != nil {
		for _, kv := range os.Environ() {
			if !drop(kv) {
				cmd.Env = append(cmd.Env, kv)
			}
		}
	}
	if len(extra) > 0 {
		if cmd.Env == nil {
			cmd.Env = os.Environ()
		}
		cmd.Env = append(cmd.Env, extra...)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	p := &proc{cmd: cmd, done: make(chan struct{}), log: logf}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, and SIGKILL after grace.
func (p *proc) stop(grace time.Duration) error {
	defer p.log.Close()
	if p.exited() {
		return nil
	}
	_ = syscall.Kill(-p.pid(), syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
	<-p.done
	return fmt.Errorf("%s did not stop within %v; killed", filepath.Base(p.cmd.Path), grace)
}

// logTail returns the end of the process's log for error messages.
func (p *proc) logTail() string {
	b, err := os.ReadFile(p.log.Name())
	if err != nil {
		return ""
	}
	if len(b) > 600 {
		b = b[len(b)-600:]
	}
	return string(b)
}

// waitListening waits until addr accepts connections or the process exits.
func waitListening(ctx context.Context, p *proc, addr string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			_ = c.Close()
			return nil
		}
		if p.exited() {
			return fmt.Errorf("%s exited: %v: %s", filepath.Base(p.cmd.Path), p.err, p.logTail())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not listening on %s after %v: %s", filepath.Base(p.cmd.Path), addr, limit, p.logTail())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Probe waits until GET path with the given Host answers 200 at addr.
func Probe(ctx context.Context, addr, host, path string, limit time.Duration) error {
	c := &fasthttp.HostClient{Addr: addr, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second}
	defer c.CloseIdleConnections()
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://" + host + path)
	deadline := time.Now().Add(limit)
	var last string
	for {
		err := c.Do(req, resp)
		if err == nil && resp.StatusCode() == fasthttp.StatusOK {
			return nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = "status " + strconv.Itoa(resp.StatusCode())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("probe http://%s%s at %s: %s", host, path, addr, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// firstDomain is the Host of probes.
func firstDomain(s Setup) string {
	if len(s.Domains) == 0 {
		return "bench.test"
	}
	return s.Domains[0]
}

// writeLines writes one line per item.
func writeLines(path string, items []string, format func(string) string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := io.Writer(f)
	buf := make([]byte, 0, 64<<10)
	for _, it := range items {
		buf = append(buf, format(it)...)
		buf = append(buf, '\n')
		if len(buf) > 60<<10 {
			if _, err := w.Write(buf); err != nil {
				f.Close()
				return err
			}
			buf = buf[:0]
		}
	}
	if _, err := w.Write(buf); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// activityLog collects one background task's counts.
type activityLog struct {
	mu sync.Mutex
	a  Activity
}

func (l *activityLog) ok() {
	l.mu.Lock()
	l.a.Cycles++
	l.mu.Unlock()
}

func (l *activityLog) fail(err error) {
	l.mu.Lock()
	l.a.Cycles++
	l.a.Errors++
	if len(l.a.Sample) < 5 {
		l.a.Sample = append(l.a.Sample, err.Error())
	}
	l.mu.Unlock()
}

func (l *activityLog) get() Activity {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.a
}

// readProcState reads a process's state letter, failing once it is gone.
func readProcState(pid int) (string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return "", fmt.Errorf("bad stat")
	}
	if s[i+2] == 'Z' {
		return "", fmt.Errorf("zombie")
	}
	return s[i+2 : i+3], nil
}
