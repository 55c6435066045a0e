package main

// Process-level faults (issue 8), against the real binary built into a
// temporary directory and run on 127.0.0.1: SIGTERM under load, and a
// corrupt or truncated state file at start.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

type ftBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *ftBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *ftBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// ftProc is one running go-proxy binary.
type ftProc struct {
	cmd    *exec.Cmd
	out    *ftBuffer
	exited chan struct{} // closed once the process has exited
	err    error         // its exit error, valid once exited is closed
	http   string
	reg    string
}

func ftFreeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func ftStart(t *testing.T, bin string, args ...string) *ftProc {
	t.Helper()
	p := &ftProc{out: &ftBuffer{}, exited: make(chan struct{}), http: ftFreeAddr(t), reg: ftFreeAddr(t)}
	args = append([]string{"serve", "-http-addr", p.http, "-registry-addr", p.reg, "-admin-addr", "127.0.0.1:0",
		"-log-level", "info"}, args...)
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.exited
	})
	deadline := time.After(20 * time.Second)
	for !strings.Contains(p.out.String(), "go-proxy serving") {
		select {
		case <-p.exited:
			t.Fatalf("go-proxy exited at start: %v\n%s", p.err, p.out)
		case <-deadline:
			t.Fatalf("go-proxy did not start:\n%s", p.out)
		case <-time.After(10 * time.Millisecond):
		}
	}
	return p
}

// stop sends SIGTERM and requires a clean exit within the bound.
func (p *ftProc) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
		if p.err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", p.err, p.out)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("no exit 30 s after SIGTERM:\n%s", p.out)
	}
}

// ftRegister registers a service with one applied route and returns its sid.
func ftRegister(t *testing.T, regAddr, instance, domain, backend string) string {
	t.Helper()
	c, err := net.Dial("tcp4", regAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	rd := bufio.NewReader(c)
	say := func(line string) string {
		fmt.Fprintf(c, "%s\n", line)
		l, err := rd.ReadString('\n')
		if err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		return strings.TrimSuffix(l, "\n")
	}
	ack := say("REGISTER|faults|" + instance + "|0|{}")
	if !strings.HasPrefix(ack, "ACK|") {
		t.Fatal(ack)
	}
	if got := say("ROUTE_ADD||" + domain + "|/|" + backend + "|10"); !strings.HasPrefix(got, "ROUTE_OK|") {
		t.Fatal(got)
	}
	if got := say("CONFIG_APPLY"); got != "OK" {
		t.Fatal(got)
	}
	return strings.TrimPrefix(ack, "ACK|")
}

func ftStatus(addr, host string) (int, error) {
	req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
	req.Host = host
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

func TestBinaryFaults(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("the go tool is not installed (not on PATH): cannot build the binary")
	}
	bin := filepath.Join(t.TempDir(), "go-proxy")
	if out, err := exec.Command(goTool, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	t.Run("sigterm-under-load", func(t *testing.T) { ftSIGTERMUnderLoad(t, bin) })
	t.Run("corrupt-state-file", func(t *testing.T) { ftBadStateFile(t, bin, false) })
	t.Run("truncated-state-file", func(t *testing.T) { ftBadStateFile(t, bin, true) })
}

// ftOutcome is one request of the load.
type ftOutcome struct {
	id      int64
	start   time.Time
	end     time.Time
	status  int
	err     error
	reached time.Time // when the backend received it
}

// ftSIGTERMUnderLoad loads the proxy with 8 workers for about 2 s (every
// request takes the backend 30 ms, so some are always in flight), sends
// SIGTERM, keeps the workers going for 1 s, and counts: no request that
// started before SIGTERM may fail, every request in flight at SIGTERM must
// complete with 200, and the process must exit 0.
func ftSIGTERMUnderLoad(t *testing.T, bin string) {
	var mu sync.Mutex
	reached := map[int64]time.Time{}
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, _ := strconv.ParseInt(r.Header.Get("X-Req-Id"), 10, 64)
		mu.Lock()
		reached[id] = time.Now()
		mu.Unlock()
		time.Sleep(30 * time.Millisecond)
		_, _ = io.WriteString(w, "ok")
	}))
	defer backend.Close()
	p := ftStart(t, bin, "-shutdown-timeout", "10s")
	ftRegister(t, p.reg, "sigterm", "load.test", backend.URL)

	var nextID atomic.Int64
	var outMu sync.Mutex
	var outcomes []ftOutcome
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		tr := &http.Transport{MaxIdleConnsPerHost: 1, DisableKeepAlives: w%2 == 1}
		client := &http.Client{Transport: tr, Timeout: 20 * time.Second}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer tr.CloseIdleConnections()
			for {
				select {
				case <-stop:
					return
				default:
				}
				o := ftOutcome{id: nextID.Add(1)}
				req, _ := http.NewRequest("GET", "http://"+p.http+"/work", nil)
				req.Host = "load.test"
				req.Header.Set("X-Req-Id", strconv.FormatInt(o.id, 10))
				o.start = time.Now()
				resp, err := client.Do(req)
				if err == nil {
					var body []byte
					body, err = io.ReadAll(resp.Body)
					resp.Body.Close()
					o.status = resp.StatusCode
					if err == nil && string(body) != "ok" {
						err = fmt.Errorf("body %q", body)
					}
				}
				o.err, o.end = err, time.Now()
				outMu.Lock()
				outcomes = append(outcomes, o)
				outMu.Unlock()
				if err != nil {
					time.Sleep(10 * time.Millisecond)
				}
			}
		}()
	}
	time.Sleep(2 * time.Second)
	term := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	select {
	case <-p.exited:
		if p.err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", p.err, p.out)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("no exit after SIGTERM:\n%s", p.out)
	}

	var before, failedBefore, inFlight, after, failedAfter int
	reasons := map[string]int{}
	var failures []string
	for i := range outcomes {
		o := &outcomes[i]
		mu.Lock()
		o.reached = reached[o.id]
		mu.Unlock()
		failed := o.err != nil || o.status != 200
		if o.start.Before(term) {
			before++
			if !o.reached.IsZero() && o.reached.Before(term) && o.end.After(term) {
				inFlight++
			}
			if failed {
				failedBefore++
				failures = append(failures, fmt.Sprintf("req %d started %v before SIGTERM: status %d, %v", o.id, term.Sub(o.start), o.status, o.err))
			}
			continue
		}
		after++
		if failed {
			failedAfter++
			reasons[ftReason(o.err, o.status)]++
		}
	}
	t.Logf("SIGTERM under load: %d requests sent; %d started before SIGTERM (%d in flight at the backend at SIGTERM), %d of them failed; "+
		"%d started after SIGTERM, %d failed: %v", len(outcomes), before, inFlight, failedBefore, after, failedAfter, reasons)
	if before < 100 || inFlight == 0 {
		t.Fatalf("the load was too small to show anything: %d before, %d in flight", before, inFlight)
	}
	if failedBefore > 0 {
		sort.Strings(failures)
		t.Fatalf("%d requests that started before SIGTERM failed: %v", failedBefore, failures[:min(5, len(failures))])
	}
	if !strings.Contains(p.out.String(), "go-proxy stopped") {
		t.Fatalf("no clean stop logged:\n%s", p.out)
	}
}

func ftReason(err error, status int) string {
	switch {
	case err == nil:
		return "status " + strconv.Itoa(status)
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused (listener closed)"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, io.EOF) || strings.Contains(err.Error(), "EOF"):
		return "connection closed"
	default:
		return err.Error()
	}
}

// ftBadStateFile starts the binary on a state file that is not JSON or
// was cut short: it starts with a clear log line and an empty state, the
// bad file is kept aside unchanged, and the next state write is good.
func ftBadStateFile(t *testing.T, bin string, truncated bool) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }))
	defer backend.Close()
	state := filepath.Join(t.TempDir(), "state.json")
	bad := []byte("{\"version\":1,\"sessions\":[{\"id\":\x00\xff garbage")
	if truncated {
		p := ftStart(t, bin, "-state-file", state)
		ftRegister(t, p.reg, "first", "old.test", backend.URL)
		p.stop(t)
		good, err := os.ReadFile(state)
		if err != nil || !json.Valid(good) || !strings.Contains(string(good), "old.test") {
			t.Fatalf("first run wrote no good state: %v", err)
		}
		bad = good[:len(good)*2/3]
	}
	if err := os.WriteFile(state, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	p := ftStart(t, bin, "-state-file", state)
	log := p.out.String()
	if !strings.Contains(log, "state file is corrupt; starting with empty state") || !strings.Contains(log, "routes=0") {
		t.Fatalf("start on a bad state file:\n%s", log)
	}
	if code, err := ftStatus(p.http, "old.test"); err != nil || code != 404 {
		t.Fatalf("a route from the bad file serves: %d %v", code, err)
	}
	aside, _ := filepath.Glob(state + ".corrupt-*")
	if len(aside) != 1 {
		t.Fatalf("bad file kept aside as %v", aside)
	}
	if kept, _ := os.ReadFile(aside[0]); !bytes.Equal(kept, bad) {
		t.Fatal("the file kept aside differs from the bad file")
	}
	sid := ftRegister(t, p.reg, "second", "new.test", backend.URL)
	if code, err := ftStatus(p.http, "new.test"); err != nil || code != 200 {
		t.Fatalf("after a bad state file: %d %v", code, err)
	}
	p.stop(t)
	st, err := os.ReadFile(state)
	if err != nil || !json.Valid(st) || !strings.Contains(string(st), sid) {
		t.Fatalf("no good state written after the bad one: %v", err)
	}
	t.Logf("bad state file (%d bytes) kept aside as %s; started empty; the next write is good", len(bad), filepath.Base(aside[0]))
}

// TestConfigHardeningFlags: the hardening settings have flags and
// environment variables, documented in -h, and bad values are refused.
func TestConfigHardeningFlags(t *testing.T) {
	getenv := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	c, err := parseConfig(nil, getenv(nil), io.Discard)
	if err != nil || c.HTTPMaxConns != 0 || c.HTTPMaxHeaders != 100 || c.HTTPMaxHeaderSize != 16384 || c.BackendAllow != "" {
		t.Fatalf("defaults: %+v %v", c, err)
	}
	c, err = parseConfig([]string{"-http-max-conns", "5000"}, getenv(map[string]string{
		"PROXY_BACKEND_ALLOW": "10.0.0.0/8, 192.168.1.7", "PROXY_HTTP_MAX_HEADERS": "50", "PROXY_HTTP_MAX_HEADER_SIZE": "8192",
		"PROXY_HTTP_MAX_CONNS": "10",
	}), io.Discard)
	if err != nil || c.HTTPMaxConns != 5000 || c.HTTPMaxHeaders != 50 || c.HTTPMaxHeaderSize != 8192 {
		t.Fatalf("flags and environment: %+v %v", c, err)
	}
	if p, err := parsePrefixes(c.BackendAllow); err != nil || len(p) != 2 || p[1].String() != "192.168.1.7/32" {
		t.Fatalf("backend allow-list: %v %v", p, err)
	}
	for _, args := range [][]string{{"-backend-allow", "10.0.0.0/33"}, {"-backend-allow", "not-an-ip"},
		{"-http-max-headers", "0"}, {"-http-max-header-size", "100"}, {"-http-max-conns", "-1"}} {
		if _, err := parseConfig(args, getenv(nil), io.Discard); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
	var help bytes.Buffer
	run([]string{"-h"}, getenv(nil), io.Discard, &help)
	for _, s := range []string{"-http-max-conns", "PROXY_HTTP_MAX_CONNS", "-http-max-headers", "PROXY_HTTP_MAX_HEADERS",
		"-http-max-header-size", "PROXY_HTTP_MAX_HEADER_SIZE", "-backend-allow", "PROXY_BACKEND_ALLOW"} {
		if !strings.Contains(help.String(), s) {
			t.Errorf("-h does not document %s", s)
		}
	}
}
