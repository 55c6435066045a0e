package loadgen

import (
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	line := "4242 (go proxy) (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 100 1000 10 18446744073709551615"
	st, err := parseStat(line)
	if err != nil {
		t.Fatal(err)
	}
	if st.ppid != 1 || st.utime != 250 || st.stime != 75 {
		t.Fatalf("%+v", st)
	}
	if _, err := parseStat("12 (x) S 1"); err == nil {
		t.Fatal("short line accepted")
	}
}

// TestReadTreeUsage: a process tree's CPU, context switches and memory
// include its descendants', and a process's own switches grow as its
// threads sleep and wake.
func TestReadTreeUsage(t *testing.T) {
	// A shell with two children for at most 5 s (killed sooner below):
	// one spins, one sleeps and wakes in a loop.
	cmd := exec.Command("sh", "-c", "timeout --foreground 5 sh -c 'while :; do :; done' & "+
		"timeout --foreground 5 sh -c 'while :; do sleep 0.001; done' & wait")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); _ = cmd.Wait() }()
	time.Sleep(400 * time.Millisecond)
	ownCPU, err := ProcessCPU(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	ownSwitches, ownRSS := readThreads(cmd.Process.Pid)
	tree, err := ReadTreeUsage(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if tree.CPU <= ownCPU || tree.CPU < 50*time.Millisecond {
		t.Errorf("tree CPU %v, the shell's own %v", tree.CPU, ownCPU)
	}
	if ownSwitches == 0 || tree.Switches < ownSwitches+20 {
		t.Errorf("tree %d switches, the shell's own %d: the sleeping descendant is missing", tree.Switches, ownSwitches)
	}
	if ownRSS <= 0 || tree.RSS <= ownRSS {
		t.Errorf("tree RSS %d, the shell's own %d", tree.RSS, ownRSS)
	}

	self, err := ProcessCPU(os.Getpid())
	if err != nil || self <= 0 {
		t.Fatalf("self %v %v", self, err)
	}
	before, err := ReadTreeUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for range 50 {
		time.Sleep(time.Millisecond)
	}
	after, _ := ReadTreeUsage(os.Getpid())
	if after.Switches < before.Switches+25 {
		t.Fatalf("50 sleeps made %d switches", after.Switches-before.Switches)
	}
	if _, err := ReadTreeUsage(1 << 30); err == nil {
		t.Fatal("no error for a process that does not exist")
	}
}

func TestStatusField(t *testing.T) {
	status := "Name:\tgo-proxy\nVmRSS:\t  2048 kB\nvoluntary_ctxt_switches:\t17\nnonvoluntary_ctxt_switches:\t4\n"
	if statusField(status, "VmRSS:") != 2048 || statusField(status, "voluntary_ctxt_switches:") != 17 ||
		statusField(status, "nonvoluntary_ctxt_switches:") != 4 || statusField(status, "Threads:") != 0 {
		t.Fatal("statusField")
	}
}

func TestMachineCPU(t *testing.T) {
	m, err := parseMachineCPU("cpu  100 5 50 800 20 3 7 15 9 0\ncpu0 50 2 25 400 10 1 3 7 4 0\n")
	if err != nil {
		t.Fatal(err)
	}
	if m.Idle != 820 || m.Total != 1000 {
		t.Fatalf("%+v", m)
	}
	for _, bad := range []string{"", "cpu0 1 2 3 4 5 6 7 8", "cpu 1 2 3 x 5 6 7 8", "cpu 1 2 3"} {
		if _, err := parseMachineCPU(bad); err == nil {
			t.Fatalf("accepted %q", bad)
		}
	}
	if got := IdleShare(MachineCPU{Idle: 100, Total: 1000}, MachineCPU{Idle: 150, Total: 1200}); got != 0.25 {
		t.Fatalf("IdleShare %v", got)
	}
	if got := IdleShare(m, m); got != 0 {
		t.Fatalf("IdleShare of no time %v", got)
	}

	// The real machine: a busy loop on one goroutine for 300 ms leaves at
	// most all but one CPU idle, and the counters move.
	a, err := ReadMachineCPU()
	if err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(300 * time.Millisecond); time.Now().Before(end); {
	}
	b, err := ReadMachineCPU()
	if err != nil {
		t.Fatal(err)
	}
	if b.Total <= a.Total {
		t.Fatalf("machine CPU did not move: %+v → %+v", a, b)
	}
	if share := IdleShare(a, b); share < 0 || share >= 1 {
		t.Fatalf("idle share %v with a CPU busy", share)
	}
}
