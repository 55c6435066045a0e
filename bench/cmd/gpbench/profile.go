package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/go-proxy/go-proxy/bench/loadgen"
	"github.com/go-proxy/go-proxy/bench/scenario"
	"github.com/go-proxy/go-proxy/bench/target"
)

// cmdProfile writes the CPU profile that the go-proxy build optimises for
// (profile-guided optimisation, cmd/go-proxy/default.pgo): go-proxy's own
// profiler (/debug/pprof/profile on its admin server) across the measured
// window of each scenario, merged by go tool pprof.
func cmdProfile(args []string, _, stderr io.Writer) int {
	const name = "gpbench profile"
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	scenarios := fs.String("scenarios", "features-13b,features-4kib", "comma list of scenarios (gpbench list) whose load is profiled")
	proxy := fs.String("proxy", "", "go-proxy binary (empty: build the work tree)")
	duration := fs.Duration("duration", 15*time.Second, "profiled window of each scenario (whole seconds)")
	warmup := fs.Duration("warmup", 2*time.Second, "warm-up before each window")
	driver := fs.String("driver", "auto", "load generator: loadgen, wrk, or auto (wrk when installed)")
	out := fs.String("out", "cmd/go-proxy/default.pgo", "merged profile to write")
	dirFlag := fs.String("dir", "", "scratch directory (default: a new temporary directory, removed after)")
	keep := fs.Bool("keep", false, "keep the scratch directory (each scenario's profile, logs)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log := func(format string, a ...any) { fmt.Fprintf(stderr, format+"\n", a...) }
	scens, err := scenario.Select(*scenarios)
	if err != nil || *duration < time.Second {
		log("%s: need known scenarios and a -duration of at least 1s (%v)", name, err)
		return 2
	}
	switch *driver {
	case "auto":
		*driver = scenario.DriverLoadgen
		if loadgen.WrkAvailable("wrk") {
			*driver = scenario.DriverWrk
		}
	case scenario.DriverLoadgen, scenario.DriverWrk:
	default:
		log("%s: -driver is loadgen, wrk or auto", name)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	dir, removeDir, err := scratchDir(*dirFlag, *keep, "gpbench-profile-", log)
	if err != nil {
		log("%s: %v", name, err)
		return 1
	}
	defer removeDir()
	bin, err := proxyBinary(ctx, *proxy, dir, log)
	if err != nil {
		log("%s: %v", name, err)
		return 1
	}

	timeout := time.Duration(len(scens))*(*duration+*warmup+15*time.Second) + 2*time.Minute
	ctx, be, stopBackend, err := boundedBackend(ctx, dir, timeout)
	if err != nil {
		log("%s: backend: %v", name, err)
		return 1
	}
	defer stopBackend()

	seconds := int(math.Ceil(duration.Seconds()))
	var files []string
	for _, s := range scens {
		file := filepath.Join(dir, s.Name+".pprof")
		take := &profileTake{seconds: seconds, file: file}
		opt := scenario.Options{
			Duration: time.Duration(seconds) * time.Second, Warmup: *warmup, Rounds: 1, Driver: *driver,
			WrkBinary: "wrk", WrkThreads: 2, Backend: be.addr, Dir: dir,
			Targets:  []target.Target{&target.GoProxy{Label: "go-proxy", Binary: bin}},
			OnWindow: take.window,
		}
		res, err := scenario.Run(ctx, s, opt)
		if err == nil && len(res.Runs) == 1 && res.Runs[0].Failure != "" {
			err = errors.New(res.Runs[0].Failure)
		}
		if err == nil {
			err = take.err
		}
		if err != nil {
			log("%s: %s: %v", name, s.Name, err)
			return 1
		}
		log("[%s] profiled %ds at %.0f req/s", s.Name, seconds, res.Runs[0].RPS)
		files = append(files, file)
	}
	merged, err := mergeProfiles(ctx, files)
	if err != nil {
		log("%s: %v", name, err)
		return 1
	}
	if err := os.WriteFile(*out, merged, 0o644); err != nil {
		log("%s: %v", name, err)
		return 1
	}
	log("wrote %s (%d bytes, %d scenarios)", *out, len(merged), len(files))
	return 0
}

// profileTake fetches one CPU profile across a measured window.
type profileTake struct {
	seconds int
	file    string
	done    chan struct{}
	err     error
}

func (p *profileTake) window(inst *target.Instance, begin bool) {
	if begin {
		p.done = make(chan struct{})
		go func() {
			defer close(p.done)
			p.err = fetchProfile(inst.Admin, p.seconds, p.file)
		}()
		return
	}
	if p.done != nil {
		<-p.done
	}
}

// fetchProfile saves go-proxy's CPU profile over the next seconds.
func fetchProfile(admin string, seconds int, file string) error {
	if admin == "" {
		return errors.New("the target has no admin server to profile")
	}
	c := &http.Client{Timeout: time.Duration(seconds)*time.Second + 30*time.Second}
	resp, err := c.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", admin, seconds))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || !bytes.HasPrefix(body, []byte{0x1f, 0x8b}) {
		return fmt.Errorf("profile: %s: %.200s", resp.Status, body)
	}
	return os.WriteFile(file, body, 0o644)
}

// mergeProfiles merges pprof files into one with go tool pprof.
func mergeProfiles(ctx context.Context, files []string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "go", append([]string{"tool", "pprof", "-proto"}, files...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("go tool pprof: %w: %s", err, stderr.String())
	}
	if stdout.Len() == 0 {
		return nil, errors.New("go tool pprof wrote an empty profile")
	}
	return stdout.Bytes(), nil
}
