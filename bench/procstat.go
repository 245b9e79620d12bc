package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of utime/stime in /proc/PID/stat. It is 100 on every Linux
// architecture Go supports; the kernel keeps it fixed for user space.
const clockTicks = 100

// procTree returns pid and every live descendant of it. nginx runs a master and a worker; the
// worker's CPU and memory belong to "the proxy" as much as the master's.
func procTree(pid int) []int {
	children := map[int][]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readStat(p)
		if err != nil {
			continue
		}
		children[st.ppid] = append(children[st.ppid], p)
	}
	tree := []int{pid}
	for i := 0; i < len(tree); i++ {
		tree = append(tree, children[tree[i]]...)
	}
	return tree
}

type procStat struct {
	ppid           int
	utime, stime   uint64 // ticks, all threads of the process
	cutime, cstime uint64 // ticks, children that have exited and been waited for
}

// readStat parses /proc/PID/stat. The command name (field 2) may contain spaces and
// parentheses, so fields are counted from the last ')'.
func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("parsing /proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state)
	if len(f) < 15 {
		return procStat{}, fmt.Errorf("parsing /proc/%d/stat: %d fields", pid, len(f))
	}
	num := func(k int) uint64 { v, _ := strconv.ParseUint(f[k-3], 10, 64); return v }
	return procStat{
		ppid:   int(num(4)),
		utime:  num(14),
		stime:  num(15),
		cutime: num(16),
		cstime: num(17),
	}, nil
}

// proxyUsage is what a proxy's process tree has used so far.
type proxyUsage struct {
	cpuMs  float64 // utime+stime of every process in the tree, plus reaped children
	rssKiB float64 // sum of VmRSS
	fds    int     // sum of open descriptors
	pipes  int     // of which pipes (splice(2) buffers)
}

// measureProxy sums CPU, RSS and descriptors over pid and its descendants; withKinds also
// counts which descriptors are pipes.
func measureProxy(pid int, withKinds bool) proxyUsage {
	var u proxyUsage
	for i, p := range procTree(pid) {
		st, err := readStat(p)
		if err != nil {
			continue
		}
		ticks := st.utime + st.stime
		if i == 0 {
			ticks += st.cutime + st.cstime
		}
		u.cpuMs += float64(ticks) * 1000 / clockTicks
		u.rssKiB += vmRSS(p)
		fdDir := filepath.Join("/proc", strconv.Itoa(p), "fd")
		if ents, err := os.ReadDir(fdDir); err == nil {
			u.fds += len(ents)
			if withKinds {
				for _, e := range ents {
					if t, err := os.Readlink(filepath.Join(fdDir, e.Name())); err == nil && strings.HasPrefix(t, "pipe:") {
						u.pipes++
					}
				}
			}
		}
	}
	return u
}

// vmRSS returns VmRSS of pid in KiB, 0 if unknown.
func vmRSS(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				v, _ := strconv.ParseFloat(f[0], 64)
				return v
			}
		}
	}
	return 0
}

// cpuTimes is one /proc/stat "cpuN" line: total and busy jiffies.
type cpuTimes struct{ total, busy uint64 }

// readCPUTimes returns per-CPU times indexed by CPU number.
func readCPUTimes() ([]cpuTimes, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return nil, err
	}
	var out []cpuTimes
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || !strings.HasPrefix(f[0], "cpu") || f[0] == "cpu" {
			continue
		}
		n, err := strconv.Atoi(f[0][3:])
		if err != nil {
			continue
		}
		var t cpuTimes
		for k, v := range f[1:] {
			x, _ := strconv.ParseUint(v, 10, 64)
			if k >= 8 { // guest and guest_nice are already counted in user and nice
				break
			}
			t.total += x
			if k != 3 && k != 4 { // idle, iowait
				t.busy += x
			}
		}
		for len(out) <= n {
			out = append(out, cpuTimes{})
		}
		out[n] = t
	}
	return out, nil
}

// coreBusy returns, per CPU, the percentage of the interval between a and b it was busy.
func coreBusy(a, b []cpuTimes) []float64 {
	out := make([]float64, min(len(a), len(b)))
	for i := range out {
		dt := float64(b[i].total - a[i].total)
		if dt > 0 {
			out[i] = 100 * float64(b[i].busy-a[i].busy) / dt
		}
	}
	return out
}
