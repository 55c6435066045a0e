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

func TestTreeCPUCountsChildren(t *testing.T) {
	// A shell whose child spins for at most 5 s (killed sooner below).
	cmd := exec.Command("sh", "-c", "timeout --foreground 5 sh -c 'while :; do :; done' & wait")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); _ = cmd.Wait() }()
	time.Sleep(400 * time.Millisecond)
	own, err := ProcessCPU(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	tree, err := TreeCPU(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if tree <= own || tree < 50*time.Millisecond {
		t.Fatalf("tree %v, own %v", tree, own)
	}
	self, err := ProcessCPU(os.Getpid())
	if err != nil || self <= 0 {
		t.Fatalf("self %v %v", self, err)
	}
}
