package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The restart tests build the real binary and restart it under load on
// loopback: the first process gets SIGTERM, drains and writes its state
// file, the second restores the state and serves on the same ports.

func buildBinary(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("the go tool is not installed (not on PATH): cannot build the binary for the restart test")
	}
	bin := filepath.Join(t.TempDir(), "go-proxy")
	cmd := exec.Command(goTool, "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// proc is one go-proxy process.
type proc struct {
	cmd     *exec.Cmd
	out     *syncBuffer
	done    chan struct{} // closed at exit; err is then set
	exitErr error
}

// startProc starts the binary; with inherited set, fd 3 is that socket
// and the variables of socket activation name it "http" (LISTEN_PID is
// set by the shell that execs the binary, as systemd sets it).
func startProc(t *testing.T, bin string, inherited *os.File, args ...string) *proc {
	t.Helper()
	out := &syncBuffer{}
	var cmd *exec.Cmd
	if inherited != nil {
		script := `LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=http exec "$0" "$@"`
		cmd = exec.Command("/bin/sh", append([]string{"-c", script, bin, "serve"}, args...)...)
		cmd.ExtraFiles = []*os.File{inherited}
	} else {
		cmd = exec.Command(bin, append([]string{"serve"}, args...)...)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, out: out, done: make(chan struct{})}
	go func() { p.exitErr = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
	})
	deadline := time.After(15 * time.Second)
	for !strings.Contains(out.String(), "go-proxy serving") {
		select {
		case <-p.done:
			t.Fatalf("go-proxy exited at start: %v\n%s", p.exitErr, out)
		case <-deadline:
			t.Fatalf("go-proxy did not start:\n%s", out)
		case <-time.After(5 * time.Millisecond):
		}
	}
	return p
}

// term sends SIGTERM and waits for a clean exit.
func (p *proc) term(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
		if p.exitErr != nil {
			t.Fatalf("go-proxy exit: %v\n%s", p.exitErr, p.out)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("go-proxy did not exit after SIGTERM:\n%s", p.out)
	}
}

// result is one request of the load.
type result struct {
	id      int64
	start   time.Time
	latency time.Duration
	status  int
	err     error
}

// loadGen sends GETs with Host app.test from workers until stopped: half
// reuse keep-alive connections, half open a connection per request.
type loadGen struct {
	addr    string
	nextID  atomic.Int64
	mu      sync.Mutex
	results []result
	stop    chan struct{}
	wg      sync.WaitGroup
}

func startLoad(addr string, workers int) *loadGen {
	g := &loadGen{addr: addr, stop: make(chan struct{})}
	for w := 0; w < workers; w++ {
		tr := &http.Transport{MaxIdleConnsPerHost: 1, DisableKeepAlives: w%2 == 1}
		client := &http.Client{Transport: tr, Timeout: 20 * time.Second}
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			defer tr.CloseIdleConnections()
			for {
				select {
				case <-g.stop:
					return
				default:
				}
				id := g.nextID.Add(1)
				req, _ := http.NewRequest("GET", "http://"+addr+"/work", nil)
				req.Host = "app.test"
				req.Header.Set("X-Req-Id", strconv.FormatInt(id, 10))
				r := result{id: id, start: time.Now()}
				resp, err := client.Do(req)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					r.status = resp.StatusCode
				}
				r.err, r.latency = err, time.Since(r.start)
				g.mu.Lock()
				g.results = append(g.results, r)
				g.mu.Unlock()
				if err != nil {
					time.Sleep(5 * time.Millisecond) // refused: do not spin
				}
			}
		}()
	}
	return g
}

func (g *loadGen) finish() []result {
	close(g.stop)
	g.wg.Wait()
	return g.results
}

// slowBackend takes a little time per request, so that requests are in
// flight at SIGTERM, and records when it received each request id.
type slowBackend struct {
	*httptest.Server
	mu       sync.Mutex
	received map[int64]time.Time
}

func newSlowBackend(t *testing.T, delay time.Duration) *slowBackend {
	b := &slowBackend{received: map[int64]time.Time{}}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if id, err := strconv.ParseInt(r.Header.Get("X-Req-Id"), 10, 64); err == nil {
			b.mu.Lock()
			b.received[id] = time.Now()
			b.mu.Unlock()
		}
		time.Sleep(delay)
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(b.Close)
	return b
}

func (b *slowBackend) when(id int64) time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.received[id]
}

// registerOverTCP registers app.test → backend and returns once the apply
// is on disk (the reply follows the state-file write, §2.11).
func registerOverTCP(t *testing.T, regAddr, backend string) {
	t.Helper()
	c := dialRegistry(t, regAddr)
	c.sid = strings.TrimPrefix(c.say("REGISTER|app|a1|0|{}"), "ACK|")
	if got := c.say("ROUTE_ADD|" + c.sid + "|app.test|/|" + backend + "|10"); !strings.HasPrefix(got, "ROUTE_OK|") {
		t.Fatal(got)
	}
	if got := c.say("CONFIG_APPLY"); got != "OK" {
		t.Fatal(got)
	}
}

type restartFigures struct {
	sent, beforeTerm, failedBeforeTerm, inFlightAtTerm, failed, notFound int
	refusedInGap                                                         int
	gap, maxLatency                                                      time.Duration
}

func tally(results []result, b *slowBackend, term, ready time.Time) (f restartFigures, firstErrs []string) {
	f.sent = len(results)
	f.gap = ready.Sub(term)
	for _, r := range results {
		f.maxLatency = max(f.maxLatency, r.latency)
		failed := r.err != nil || r.status != 200
		if failed {
			f.failed++
			if len(firstErrs) < 5 {
				firstErrs = append(firstErrs, fmt.Sprintf("req %d at %+.3fs: status %d err %v", r.id, r.start.Sub(term).Seconds(), r.status, r.err))
			}
		}
		if r.status == 404 {
			f.notFound++
		}
		if r.start.Before(term) {
			f.beforeTerm++
			if failed {
				f.failedBeforeTerm++
			}
			if at := b.when(r.id); !at.IsZero() && at.Before(term) && r.start.Add(r.latency).After(term) {
				f.inFlightAtTerm++
			}
		} else if failed && r.start.Before(ready) && errors.Is(r.err, syscall.ECONNREFUSED) {
			f.refusedInGap++
		}
	}
	return f, firstErrs
}

// TestZeroDowntimeRestart restarts the proxy under bounded load (8
// workers, about 3 s) and counts failed requests.
//
//   - socket-activation: the HTTP socket is inherited, as from systemd
//     (deploy/go-proxy-http.socket); it stays open across the restart, so
//     no request may fail at all, including those sent while no process
//     runs, and none may see 404: the restored routes serve at once.
//   - sequential: each process binds the port itself; no request that
//     reached the proxy before SIGTERM may fail, and every request sent
//     once the new process listens succeeds (no 404); connections
//     attempted while no process listens are refused, and their number is
//     reported.
func TestZeroDowntimeRestart(t *testing.T) {
	bin := buildBinary(t)
	for _, mode := range []string{"socket-activation", "sequential"} {
		t.Run(mode, func(t *testing.T) {
			backend := newSlowBackend(t, 20*time.Millisecond)
			state := filepath.Join(t.TempDir(), "state.json")
			regAddr := freePort(t)
			args := []string{"-registry-addr", regAddr, "-admin-addr", "127.0.0.1:0", "-state-file", state,
				"-shutdown-timeout", "10s", "-log-level", "debug"}
			var inherited *os.File
			var httpAddr string
			if mode == "socket-activation" {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				defer ln.Close()
				if inherited, err = ln.(*net.TCPListener).File(); err != nil {
					t.Fatal(err)
				}
				defer inherited.Close()
				httpAddr = ln.Addr().String()
				args = append(args, "-http-addr", "127.0.0.1:1") // unused: the socket is inherited
			} else {
				httpAddr = freePort(t)
				args = append(args, "-http-addr", httpAddr)
			}

			first := startProc(t, bin, inherited, args...)
			if mode == "socket-activation" && !strings.Contains(first.out.String(), "using an inherited socket") {
				t.Fatalf("socket not inherited:\n%s", first.out)
			}
			registerOverTCP(t, regAddr, backend.URL)

			load := startLoad(httpAddr, 8)
			time.Sleep(time.Second)
			term := time.Now()
			first.term(t)
			exited := time.Now()
			second := startProc(t, bin, inherited, args...)
			if os.Getenv("RESTART_DEBUG") != "" {
				t.Logf("old exited after %v, new ready after %v\nold:\n%s\nnew:\n%s", exited.Sub(term), time.Since(exited), first.out, second.out)
			}
			ready := time.Now()
			if !strings.Contains(second.out.String(), "routes=1") {
				t.Errorf("second process did not restore the route:\n%s", second.out)
			}
			time.Sleep(1500 * time.Millisecond)
			results := load.finish()

			f, errs := tally(results, backend, term, ready)
			t.Logf("%s: sent %d (before SIGTERM %d, in flight at SIGTERM %d), failed %d (before SIGTERM %d, refused while no process listened %d), 404s %d; restart gap %v, max latency %v",
				mode, f.sent, f.beforeTerm, f.inFlightAtTerm, f.failed, f.failedBeforeTerm, f.refusedInGap, f.notFound,
				f.gap.Round(time.Millisecond), f.maxLatency.Round(time.Millisecond))
			if f.sent < 100 || f.inFlightAtTerm == 0 {
				t.Fatalf("load too small to show anything: %+v", f)
			}
			if f.notFound > 0 {
				t.Errorf("%d requests got 404: restored routes must serve from the first request", f.notFound)
			}
			switch mode {
			case "socket-activation":
				if f.failed > 0 {
					t.Errorf("%d requests failed across a socket-activated restart: %v", f.failed, errs)
				}
			case "sequential":
				// Requests the old process had received must complete.
				for _, r := range results {
					if at := backend.when(r.id); !at.IsZero() && at.Before(term) && (r.err != nil || r.status != 200) {
						t.Errorf("request %d reached the backend before SIGTERM and failed: %d %v", r.id, r.status, r.err)
					}
				}
				// Once the new process listens, everything succeeds. (Only
				// connections attempted in the gap fail; a connection still
				// in the old listener's queue when it closes could too, which
				// is what socket activation removes.)
				for _, r := range results {
					if r.start.After(ready) && (r.err != nil || r.status != 200) {
						t.Errorf("request %d sent after the restart failed: %d %v", r.id, r.status, r.err)
					}
				}
			}
			second.term(t)
		})
	}
}
