package target

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// A target whose user-space instructions are counted (Setup.Callgrind)
// runs under valgrind's callgrind, on one thread (valgrind runs a
// process's threads one at a time anyway), with instrumentation off until
// the measured window opens. The count per request is a figure the
// machine's noise does not move, unlike time.

// CallgrindAvailable reports whether valgrind and callgrind_control are
// installed.
func CallgrindAvailable() bool { return Installed("valgrind") && Installed("callgrind_control") }

// underCallgrind returns the command that runs name with args under
// callgrind, writing its counts to out.
func underCallgrind(name string, args []string, out string) (string, []string) {
	return "valgrind", append([]string{"--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=" + out, name}, args...)
}

// startLimit stretches a start-up bound for a process under valgrind,
// which starts it tens of times slower.
func startLimit(s Setup, d time.Duration) time.Duration {
	if s.Callgrind {
		return 6 * d
	}
	return d
}

// Counter counts the user-space instructions of one target process that
// runs under callgrind.
type Counter struct {
	pid int
	out string
}

// On starts counting. Call it while the process is busy: valgrind takes
// commands only while the process runs.
func (c *Counter) On(ctx context.Context) error {
	return c.command(ctx, nil, "-i", "on")
}

// Total writes the counts out and returns the instructions since On. wake
// is called every 100 ms until the process has answered (a request keeps
// an idle process running); it may be nil.
func (c *Counter) Total(ctx context.Context, wake func()) (uint64, error) {
	before, _ := filepath.Glob(c.out + ".*")
	if err := c.command(ctx, wake, "-d"); err != nil {
		return 0, err
	}
	after, _ := filepath.Glob(c.out + ".*")
	dump := newestDump(after, before)
	if dump == "" {
		return 0, fmt.Errorf("callgrind wrote no dump next to %s", c.out)
	}
	return dumpTotal(dump)
}

// command runs callgrind_control with args for the process, calling wake
// while it waits.
func (c *Counter) command(ctx context.Context, wake func(), args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "callgrind_control", append(args, strconv.Itoa(c.pid))...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if err != nil {
				return fmt.Errorf("callgrind_control %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
			}
			return nil
		case <-tick.C:
			if wake != nil {
				wake()
			}
		}
	}
}

// newestDump returns the dump file that is in after but not in before,
// the one with the highest sequence number if several are.
func newestDump(after, before []string) string {
	seen := map[string]bool{}
	for _, f := range before {
		seen[f] = true
	}
	best, bestN := "", -1
	for _, f := range after {
		n, err := strconv.Atoi(f[strings.LastIndexByte(f, '.')+1:])
		if err != nil || seen[f] {
			continue
		}
		if n > bestN {
			best, bestN = f, n
		}
	}
	return best
}

// dumpTotal reads the "totals:" line of a callgrind dump: the instructions
// (Ir, the only event collected) it holds.
func dumpTotal(path string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "totals:"); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				return strconv.ParseUint(f[0], 10, 64)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("no totals line in " + path)
}
