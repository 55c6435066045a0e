package loadgen

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat;
// it is 100 on every Linux architecture Go supports.
const clockTicks = 100

// procStat is the part of /proc/<pid>/stat the suite reads.
type procStat struct {
	ppid         int
	utime, stime uint64 // clock ticks
}

// parseStat parses the content of /proc/<pid>/stat. The command name is in
// parentheses and may itself hold spaces and parentheses, so fields are
// counted from the last ')'.
func parseStat(s string) (procStat, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("proc stat: no command name")
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
	if len(f) < 13 {
		return procStat{}, fmt.Errorf("proc stat: %d fields", len(f))
	}
	ppid, err1 := strconv.Atoi(f[1])
	ut, err2 := strconv.ParseUint(f[11], 10, 64)
	st, err3 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return procStat{}, fmt.Errorf("proc stat: bad number")
	}
	return procStat{ppid: ppid, utime: ut, stime: st}, nil
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	return parseStat(string(b))
}

// ProcessCPU returns the user plus system CPU time of pid.
func ProcessCPU(pid int) (time.Duration, error) {
	st, err := readStat(pid)
	if err != nil {
		return 0, err
	}
	return ticks(st.utime + st.stime), nil
}

// TreeUsage is what a process and its living descendants (nginx's and
// haproxy's workers) have used so far.
type TreeUsage struct {
	CPU time.Duration // user plus system time, from /proc/<pid>/stat
	// Switches are the context switches, voluntary and forced, of every
	// thread: a proxy whose threads sleep and are woken again for each
	// request pays CPU that its own work does not show (the switch, the
	// wake-up call, the caches refilled).
	Switches uint64
	RSS      int64 // resident memory now, in bytes
}

// ReadTreeUsage reads the usage of pid and its living descendants, with
// one walk of /proc.
func ReadTreeUsage(pid int) (TreeUsage, error) {
	pids, stats, err := processTree(pid)
	if err != nil {
		return TreeUsage{}, err
	}
	var u TreeUsage
	var cpu uint64
	for _, p := range pids {
		cpu += stats[p].utime + stats[p].stime
		switches, rss := readThreads(p)
		u.Switches += switches
		u.RSS += rss
	}
	u.CPU = ticks(cpu)
	return u, nil
}

// processTree returns pid and its living descendants (pid first), with
// their /proc/<pid>/stat. Only pid's own stat must be readable.
func processTree(pid int) ([]int, map[int]procStat, error) {
	root, err := readStat(pid)
	if err != nil {
		return nil, nil, err
	}
	stats := map[int]procStat{pid: root}
	pids := []int{pid}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return pids, stats, nil
	}
	children := map[int][]int{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil || p == pid {
			continue
		}
		st, err := readStat(p)
		if err != nil {
			continue
		}
		stats[p] = st
		children[st.ppid] = append(children[st.ppid], p)
	}
	for i := 0; i < len(pids); i++ {
		pids = append(pids, children[pids[i]]...)
	}
	return pids, stats, nil
}

func ticks(n uint64) time.Duration {
	return time.Duration(n) * (time.Second / clockTicks)
}

// readThreads sums the context switches of pid's threads, from each
// thread's /proc/<pid>/task/<tid>/status, and takes the process's
// resident memory from its main thread's.
func readThreads(pid int) (switches uint64, rss int64) {
	main := strconv.Itoa(pid)
	dir := "/proc/" + main + "/task/"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0, 0
	}
	for _, t := range tasks {
		b, err := os.ReadFile(dir + t.Name() + "/status")
		if err != nil {
			continue
		}
		status := string(b)
		switches += uint64(statusField(status, "voluntary_ctxt_switches:") + statusField(status, "nonvoluntary_ctxt_switches:"))
		if t.Name() == main {
			rss = statusField(status, "VmRSS:") << 10
		}
	}
	return switches, rss
}

// statusField returns the number that follows name at the start of a line
// of a /proc status file, or 0.
func statusField(status, name string) int64 {
	for line := range strings.Lines(status) {
		if rest, ok := strings.CutPrefix(line, name); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n
			}
		}
	}
	return 0
}

// MachineCPU is the machine's CPU time, summed over its CPUs, from the
// first line of /proc/stat, in clock ticks.
type MachineCPU struct {
	Idle  uint64 // idle and iowait: no task wanted the CPU
	Total uint64 // every state, steal included
}

// ReadMachineCPU reads the machine's CPU time.
func ReadMachineCPU() (MachineCPU, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return MachineCPU{}, err
	}
	return parseMachineCPU(string(b))
}

// parseMachineCPU parses the "cpu" line: user nice system idle iowait irq
// softirq steal, then guest time, which user and nice already hold.
func parseMachineCPU(s string) (MachineCPU, error) {
	line, _, _ := strings.Cut(s, "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return MachineCPU{}, fmt.Errorf("proc stat: no cpu line")
	}
	var m MachineCPU
	for i, v := range f[1:9] {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return MachineCPU{}, fmt.Errorf("proc stat: bad number %q", v)
		}
		m.Total += n
		if i == 3 || i == 4 {
			m.Idle += n
		}
	}
	return m, nil
}

// IdleShare is the share of the machine's CPU time between a and b that no
// task used. With the generator, the target and the backend on the same
// CPUs and requests always in flight, CPU left idle is time a runnable
// thread waited on a busy CPU while another one stood idle: a loss of
// throughput that CPU per request does not show.
func IdleShare(a, b MachineCPU) float64 {
	if b.Total <= a.Total || b.Idle < a.Idle {
		return 0
	}
	return float64(b.Idle-a.Idle) / float64(b.Total-a.Total)
}
