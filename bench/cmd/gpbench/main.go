// Command gpbench is go-proxy's bench suite for throughput regressions.
//
//	gpbench run     [flags]             run the scenarios: direct, go-proxy, haproxy, nginx
//	gpbench compare -base REF [flags]   the build of REF against the work tree, in alternation
//	gpbench agree   [flags]             the Go load generator against wrk, in alternation
//	gpbench instructions [flags]        user-space instructions per request (callgrind)
//	gpbench profile [flags]             the CPU profile the build optimises for (default.pgo)
//	gpbench list                        list the scenarios
//	gpbench backend [-addr A]           run the bundled backend alone
//
// See bench/README.md.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/go-proxy/go-proxy/bench/backend"
	"github.com/go-proxy/go-proxy/bench/loadgen"
	"github.com/go-proxy/go-proxy/bench/report"
	"github.com/go-proxy/go-proxy/bench/scenario"
	"github.com/go-proxy/go-proxy/bench/target"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func usage(w io.Writer) {
	fmt.Fprintln(w, `usage:
  gpbench run     [flags]            run the scenarios (direct, go-proxy, haproxy, nginx)
  gpbench compare -base REF [flags]  compare the build of git ref REF with the work tree
  gpbench agree   [flags]            check that the Go load generator and wrk agree
  gpbench instructions [flags]       count user-space instructions per request (callgrind):
                                     go-proxy against haproxy/nginx, or -base REF against the work tree
  gpbench profile [flags]            write go-proxy's CPU profile under the bench's load, merged over
                                     the scenarios, as the build's cmd/go-proxy/default.pgo
  gpbench list                       list the scenarios
  gpbench backend [-addr ADDR]       run the bundled backend
"gpbench run -h" lists the flags.`)
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "run", "compare", "agree":
		return cmdSuite(args[0], args[1:], stdout, stderr)
	case "instructions":
		return cmdInstructions(args[1:], stdout, stderr)
	case "profile":
		return cmdProfile(args[1:], stdout, stderr)
	case "list":
		for _, s := range scenario.All() {
			fmt.Fprintf(stdout, "%-14s %s\n", s.Name, s.Description)
		}
		return 0
	case "backend":
		return cmdBackend(args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		usage(stdout)
		return 0
	}
	usage(stderr)
	return 2
}

// cmdBackend serves the bundled backend until SIGTERM, SIGINT or the end
// of standard input. The first line on stdout is "listening ADDR".
func cmdBackend(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("gpbench backend", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:0", "listen address (loopback)")
	watchStdin := fs.Bool("stdin", false, "stop when standard input closes")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ln, err := listenLoopback(*addr)
	if err != nil {
		fmt.Fprintln(stderr, "gpbench backend:", err)
		return 1
	}
	srv := backend.NewServer()
	fmt.Fprintf(stdout, "listening %s\n", ln.Addr())
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if *watchStdin {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			stop()
		}()
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
		_ = srv.Shutdown()
		return 0
	case err := <-done:
		fmt.Fprintln(stderr, "gpbench backend:", err)
		return 1
	}
}

type suiteFlags struct {
	duration, warmup, timeout, pause time.Duration
	rounds, wrkThreads, churnRoutes  int
	churnRate, threshold             float64
	scenarios, driver, out, proxy    string
	references, base, wrkBin, dir    string
	keep, direct                     bool
	tolerance                        float64
	proxyEnv, variants               string
}

func cmdSuite(mode string, args []string, stdout, stderr io.Writer) int {
	name := "gpbench " + mode
	compare, agree := mode == "compare", mode == "agree"
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f suiteFlags
	fs.DurationVar(&f.duration, "duration", 5*time.Second, "measured window of each run")
	fs.DurationVar(&f.warmup, "warmup", time.Second, "warm-up before each measured window")
	fs.IntVar(&f.rounds, "rounds", 3, "rounds; each round runs every target once (A B A B …)")
	defScenarios := "all"
	if agree {
		defScenarios = "get-13b,get-4kib"
	}
	fs.StringVar(&f.scenarios, "scenarios", defScenarios, "comma list of scenarios (gpbench list)")
	fs.StringVar(&f.driver, "driver", scenario.DriverLoadgen, "load generator: loadgen or wrk (WebSocket always uses loadgen)")
	fs.StringVar(&f.wrkBin, "wrk", "wrk", "wrk binary")
	fs.IntVar(&f.wrkThreads, "wrk-threads", 2, "wrk threads (-t)")
	fs.StringVar(&f.out, "out", "bench-results.json", "JSON results file; the table is also written next to it as .txt")
	fs.StringVar(&f.proxy, "proxy", "", "go-proxy binary to bench (empty: build the work tree)")
	fs.StringVar(&f.proxyEnv, "proxy-env", "", "comma list of KEY=VALUE added to the environment of the go-proxy under test")
	if mode == "run" {
		fs.StringVar(&f.variants, "variants", "", "extra go-proxy rows of the same build under other environments: "+
			"semicolon list of KEY=VALUE[,KEY=VALUE], each a row named go-proxy[KEY=VALUE,...]")
	}
	fs.DurationVar(&f.timeout, "timeout", 0, "bound for the whole run (0: twice the planned time plus 5 minutes)")
	fs.DurationVar(&f.pause, "pause", 200*time.Millisecond, "pause between runs")
	fs.Float64Var(&f.churnRate, "churn-rate", scenario.DefaultChurn.Rate, "churn sessions per second in the churn scenario")
	fs.IntVar(&f.churnRoutes, "churn-routes", scenario.DefaultChurn.Routes, "routes each churn session applies")
	fs.StringVar(&f.dir, "dir", "", "scratch directory (default: a new temporary directory, removed after)")
	fs.BoolVar(&f.keep, "keep", false, "keep the scratch directory (configurations and logs)")
	if compare {
		fs.StringVar(&f.base, "base", "", "git ref of the base build (required)")
		fs.Float64Var(&f.threshold, "threshold", 0.05, "fail when throughput falls by more than this fraction in every part of the change's confidence interval")
		fs.BoolVar(&f.direct, "direct", false, "also run direct-to-backend rows")
	} else if agree {
		fs.Float64Var(&f.tolerance, "tolerance", 0.10, "largest difference beyond the noise for the drivers to agree")
	} else {
		fs.StringVar(&f.references, "references", "auto", "reference proxies: auto (those installed), none, or a list of haproxy,nginx")
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if compare && f.base == "" {
		fmt.Fprintln(stderr, "gpbench compare: -base is required")
		return 2
	}
	if f.driver != scenario.DriverLoadgen && f.driver != scenario.DriverWrk {
		fmt.Fprintf(stderr, "%s: unknown driver %q\n", name, f.driver)
		return 2
	}
	if agree {
		f.driver = scenario.DriverWrk
	}
	if f.driver == scenario.DriverWrk && !loadgen.WrkAvailable(f.wrkBin) {
		fmt.Fprintf(stderr, "%s: -driver wrk, but %s is not installed (apt-get install -y wrk)\n", name, f.wrkBin)
		return 2
	}
	scens, err := scenario.Select(f.scenarios)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 2
	}
	log := func(format string, a ...any) { fmt.Fprintf(stderr, format+"\n", a...) }
	if f.rounds < 1 || f.duration <= 0 {
		fmt.Fprintf(stderr, "%s: need -rounds >= 1 and a positive -duration\n", name)
		return 2
	}
	if f.rounds < 3 {
		log("note: %d rounds; the suite's results need at least 3 for a usable noise estimate, and 6 for a 95%% confidence interval", f.rounds)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	dir, removeDir, err := scratchDir(f.dir, f.keep, "gpbench-", log)
	if err != nil {
		log("%s: %v", name, err)
		return 1
	}
	defer removeDir()

	// The go-proxy builds.
	root, err := moduleRoot()
	if err != nil && (f.proxy == "" || compare) {
		log("%s: %v", name, err)
		return 1
	}
	var targets []target.Target
	var baseT, newT *target.GoProxy
	host := hostInfo()
	newBin, err := proxyBinary(ctx, f.proxy, dir, log)
	if err != nil {
		log("%s: %v", name, err)
		if f.proxy != "" {
			return 2
		}
		return 1
	}
	host["go-proxy"] = gitDescribe(root)
	if compare {
		baseBin := filepath.Join(dir, "base", "go-proxy")
		log("building go-proxy at %s in a temporary worktree", f.base)
		rev, err := buildRef(ctx, root, f.base, filepath.Join(dir, "base-src"), baseBin)
		if err != nil {
			log("%s: %v", name, err)
			return 1
		}
		host["base"] = f.base + " " + rev
		if f.direct {
			targets = append(targets, target.Direct{})
		}
		baseT = &target.GoProxy{Label: "base", Binary: baseBin, Env: envList(f.proxyEnv)}
		newT = &target.GoProxy{Label: "new", Binary: newBin, Env: envList(f.proxyEnv)}
		targets = append(targets, baseT, newT)
	} else if agree {
		targets = append(targets, target.Direct{}, &target.GoProxy{Label: "go-proxy", Binary: newBin, Env: envList(f.proxyEnv)})
	} else {
		targets = append(targets, target.Direct{}, &target.GoProxy{Label: "go-proxy", Binary: newBin, Env: envList(f.proxyEnv)})
		for _, v := range strings.Split(f.variants, ";") {
			if env := envList(v); len(env) > 0 {
				targets = append(targets, &target.GoProxy{Label: "go-proxy[" + strings.Join(env, ",") + "]", Binary: newBin, Env: env})
			}
		}
		refs, err := references(f.references, host)
		if err != nil {
			log("%s: %v", name, err)
			return 2
		}
		targets = append(targets, refs...)
		if len(refs) == 0 {
			log("no reference proxies (haproxy, nginx) installed or selected: no reference rows")
		}
	}
	if f.driver == scenario.DriverWrk {
		host["wrk"] = target.Version(f.wrkBin, "-v")
	}

	planned := plan(scens, targets, f)
	if agree {
		planned *= 2
	}
	timeout := f.timeout
	if timeout == 0 {
		timeout = 2*planned + 5*time.Minute
	}
	log("%d scenarios × %d rounds, %d targets: about %v planned, bounded at %v", len(scens), f.rounds, len(targets), planned.Round(time.Second), timeout)
	ctx, be, stopBackend, err := boundedBackend(ctx, dir, timeout)
	if err != nil {
		log("%s: backend: %v", name, err)
		return 1
	}
	defer stopBackend()

	rep := newReport(host, map[string]any{
		"duration": f.duration.String(), "warmup": f.warmup.String(), "rounds": f.rounds,
		"driver": f.driver, "wrk_threads": f.wrkThreads, "churn_rate": f.churnRate, "churn_routes": f.churnRoutes,
	})
	if compare {
		rep.Options["base"] = f.base
		rep.Options["threshold"] = f.threshold
	}
	opt := scenario.Options{
		Duration: f.duration, Warmup: f.warmup, Rounds: f.rounds, Driver: f.driver,
		WrkBinary: f.wrkBin, WrkThreads: f.wrkThreads, Backend: be.addr, Targets: targets,
		Churn: target.ChurnConfig{Rate: f.churnRate, Routes: f.churnRoutes},
		Dir:   dir, Progress: stderr, Pause: f.pause,
	}
	if agree {
		return agreeDrivers(ctx, scens, opt, f, rep, stdout, log)
	}
	var runErr error
	for _, s := range scens {
		res, err := scenario.Run(ctx, s, opt)
		if res != nil {
			rep.Scenarios = append(rep.Scenarios, res)
		}
		if err != nil {
			runErr = err
			break
		}
	}
	rep.Finished = time.Now().UTC()

	rep.Pass = runErr == nil
	for _, sc := range rep.Scenarios {
		for _, c := range sc.Checks {
			if compare && !strings.HasPrefix(c.Name, "new") {
				continue // the base build's own errors are not the work tree's fault
			}
			rep.Checks = append(rep.Checks, c)
			if !c.Pass {
				rep.Pass = false
			}
		}
		if compare {
			rep.Changes = append(rep.Changes, changes(sc, baseT, newT, f.rounds, f.threshold)...)
		}
	}
	if report.AnyRegression(rep.Changes) {
		rep.Pass = false
	}

	var table strings.Builder
	fmt.Fprintf(&table, "%s — %s, %d rounds of %v (warm-up %v), driver %s, %s CPUs\n\n",
		name, rep.Started.Format(time.RFC3339), f.rounds, f.duration, f.warmup, f.driver, host["cpus"])
	_ = report.WriteTable(&table, rep.Scenarios)
	if report.AnyVersus(rep.Scenarios) {
		table.WriteString("\ngo-proxy against the reference proxies (ratios are go-proxy over the reference, paired by round: the median ratio [its confidence interval, 95 % from 6 rounds on, the rounds' range below]):\n\n")
		_ = report.WriteVersus(&table, rep.Scenarios)
	}
	if compare {
		table.WriteString("\n")
		_ = report.WriteChanges(&table, rep.Changes)
	}
	if len(rep.Checks) > 0 {
		table.WriteString("\n")
		report.WriteChecks(&table, rep.Checks)
	}
	fmt.Fprint(stdout, table.String())
	if err := writeResults(f.out, rep, table.String(), log); err != nil {
		log("%s: %v", name, err)
		return 1
	}
	if runErr != nil {
		if errors.Is(runErr, context.DeadlineExceeded) {
			log("%s: stopped at the %v bound", name, timeout)
		} else {
			log("%s: %v", name, runErr)
		}
		return 1
	}
	if !rep.Pass {
		if report.AnyRegression(rep.Changes) {
			log("%s: throughput regression beyond the threshold and noise", name)
		} else {
			log("%s: failed checks", name)
		}
		return 1
	}
	return 0
}

// changes compares the base and new rows of a scenario (for churn, quiet
// and under churn separately).
func changes(sc *report.Scenario, baseT, newT *target.GoProxy, rounds int, threshold float64) []report.Change {
	type pair struct{ label, base, new string }
	pairs := []pair{{sc.Name, baseT.Name(), newT.Name()}}
	if sc.Params["churn"] == true {
		c := scenario.DefaultChurn
		pairs = []pair{
			{sc.Name + " (quiet)", baseT.Name(), newT.Name()},
			{sc.Name + " (under churn)", baseT.WithChurn(c).Name(), newT.WithChurn(c).Name()},
		}
	}
	var out []report.Change
	for _, p := range pairs {
		c := report.Compare(p.label, p.base, p.new, sc.RPSSeries(p.base, rounds), sc.RPSSeries(p.new, rounds), threshold)
		if b := sc.Find(p.base); b != nil {
			c.BaseP99, c.BaseCPU = b.Latency.P99, b.CPUPerReqUS
		}
		if n := sc.Find(p.new); n != nil {
			c.NewP99, c.NewCPU = n.Latency.P99, n.CPUPerReqUS
		}
		out = append(out, c)
	}
	return out
}

// plan estimates the run's length.
func plan(scens []scenario.Scenario, targets []target.Target, f suiteFlags) time.Duration {
	var total time.Duration
	per := f.warmup + f.duration + f.pause
	if f.driver == scenario.DriverWrk && f.warmup > 0 {
		per += time.Second // wrk rounds its warm-up up to whole seconds
	}
	for _, s := range scens {
		n := len(scenario.TargetsFor(s, targets, target.ChurnConfig{Rate: 1}))
		setup := time.Second
		if s.Routes >= 10_000 {
			setup = time.Duration(s.Routes/10_000) * time.Second
		}
		total += time.Duration(f.rounds*n) * (per + setup)
	}
	return total
}

// references returns the reference proxies of a -references list and
// records their versions in host.
func references(list string, host map[string]string) ([]target.Target, error) {
	var out []target.Target
	add := func(name string, must bool) error {
		if !target.Installed(name) {
			if must {
				return fmt.Errorf("%s is not installed (apt-get install -y %s)", name, name)
			}
			return nil
		}
		switch name {
		case "haproxy":
			out = append(out, target.HAProxy{})
		case "nginx":
			out = append(out, target.Nginx{})
		default:
			return fmt.Errorf("unknown reference proxy %q", name)
		}
		host[name] = target.Version(name, "-v")
		return nil
	}
	switch list {
	case "none", "":
		return nil, nil
	case "auto":
		_ = add("haproxy", false)
		_ = add("nginx", false)
		return out, nil
	}
	for _, n := range strings.Split(list, ",") {
		if err := add(strings.TrimSpace(n), true); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// backendProc is the bundled backend, run as a child process of its own
// so that its CPU is apart from the load generator's.
type backendProc struct {
	addr  string
	cmd   *exec.Cmd
	stdin io.WriteCloser // closing it stops the backend
	done  chan struct{}
}

func startBackend(ctx context.Context, dir string) (*backendProc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "backend", "-addr", "127.0.0.1:0", "-stdin")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	logf, err := os.Create(filepath.Join(dir, "backend.log"))
	if err != nil {
		return nil, err
	}
	cmd.Stderr = logf
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	// The backend stops when this pipe closes, that is when gpbench exits.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	b := &backendProc{cmd: cmd, stdin: stdin, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); logf.Close(); close(b.done) }()
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			line <- sc.Text()
		}
		close(line)
		_, _ = io.Copy(io.Discard, out)
	}()
	select {
	case l, ok := <-line:
		if !ok || !strings.HasPrefix(l, "listening ") {
			b.stop()
			return nil, fmt.Errorf("backend did not start: %q", l)
		}
		b.addr = strings.TrimPrefix(l, "listening ")
		return b, nil
	case <-time.After(10 * time.Second):
	case <-ctx.Done():
	}
	b.stop()
	return nil, fmt.Errorf("backend did not start")
}

// boundedBackend bounds ctx at timeout and starts the backend under it;
// stop stops the backend and releases the bound.
func boundedBackend(ctx context.Context, dir string, timeout time.Duration) (_ context.Context, _ *backendProc, stop func(), _ error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	be, err := startBackend(ctx, dir)
	if err != nil {
		cancel()
		return nil, nil, nil, err
	}
	return ctx, be, func() { be.stop(); cancel() }, nil
}

func (b *backendProc) stop() {
	_ = b.stdin.Close()
	_ = syscall.Kill(-b.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-b.done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-b.cmd.Process.Pid, syscall.SIGKILL)
		<-b.done
	}
}

// moduleRoot is the directory of go-proxy's go.mod.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the go-proxy module: run from the repository or pass -proxy")
	}
	return filepath.Dir(mod), nil
}

// proxyBinary returns the go-proxy binary to measure: the -proxy flag's
// file as an absolute path (the targets run in other directories), or else
// the work tree built into dir/new.
func proxyBinary(ctx context.Context, flag, dir string, log func(string, ...any)) (string, error) {
	if flag != "" {
		bin, err := filepath.Abs(flag)
		if err == nil {
			_, err = os.Stat(bin)
		}
		if err != nil {
			return "", fmt.Errorf("-proxy: %w", err)
		}
		return bin, nil
	}
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "new", "go-proxy")
	log("building go-proxy from %s", root)
	return bin, goBuild(ctx, root, bin)
}

func goBuild(ctx context.Context, dir, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/go-proxy")
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build in %s: %w: %s", dir, err, b)
	}
	return nil
}

// buildRef builds ref in a temporary git worktree at src, removed after,
// and returns the commit it resolved to.
func buildRef(ctx context.Context, root, ref, src, out string) (string, error) {
	git := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, "git", append([]string{"-C", root}, args...)...)
		b, err := cmd.CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, b)
		}
		return strings.TrimSpace(string(b)), nil
	}
	rev, err := git("rev-parse", "--verify", ref+"^{commit}")
	if err != nil {
		return "", err
	}
	if _, err := git("worktree", "add", "--detach", src, rev); err != nil {
		return "", err
	}
	defer func() {
		_, _ = git("worktree", "remove", "--force", src)
		_, _ = git("worktree", "prune")
	}()
	return rev[:min(12, len(rev))], goBuild(ctx, src, out)
}

func gitDescribe(root string) string {
	if root == "" {
		return ""
	}
	out, err := exec.Command("git", "-C", root, "describe", "--always", "--dirty").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

func hostInfo() map[string]string {
	h := map[string]string{
		"cpus":       fmt.Sprint(runtime.NumCPU()),
		"gomaxprocs": fmt.Sprint(runtime.GOMAXPROCS(0)),
		"go":         runtime.Version(),
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		h["kernel"] = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				h["cpu"] = strings.TrimSpace(v)
				break
			}
		}
	}
	return h
}

// scratchDir returns dir, made if needed, or a new temporary directory,
// with the function that removes the temporary one (unless keep).
func scratchDir(dir string, keep bool, prefix string, log func(string, ...any)) (string, func(), error) {
	if dir != "" {
		return dir, func() {}, os.MkdirAll(dir, 0o755)
	}
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return "", nil, err
	}
	if keep {
		log("scratch directory: %s", dir)
		return dir, func() {}, nil
	}
	return dir, func() { _ = os.RemoveAll(dir) }, nil
}

// newReport starts the report of this invocation.
func newReport(host map[string]string, options map[string]any) *report.Report {
	return &report.Report{
		Command: strings.Join(append([]string{"gpbench"}, os.Args[1:]...), " "),
		Started: time.Now().UTC(), Host: host, Options: options,
	}
}

// writeResults writes the report to out (JSON) and the table next to it
// (.txt); nothing when out is empty.
func writeResults(out string, rep *report.Report, table string, log func(string, ...any)) error {
	if out == "" {
		return nil
	}
	if err := rep.WriteJSON(out); err != nil {
		return err
	}
	txt := strings.TrimSuffix(out, filepath.Ext(out)) + ".txt"
	if err := os.WriteFile(txt, []byte(table), 0o644); err != nil {
		return err
	}
	log("results: %s, %s", out, txt)
	return nil
}

// envList splits a comma list of KEY=VALUE, dropping empty items.
func envList(s string) []string {
	var out []string
	for _, kv := range strings.Split(s, ",") {
		if kv = strings.TrimSpace(kv); kv != "" {
			out = append(out, kv)
		}
	}
	return out
}
