package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

// Machine describes where and how the results were measured.
type Machine struct {
	Date     string `json:"date"`
	CPUModel string `json:"cpu_model"`
	Cores    int    `json:"cores"`
	MemMiB   int    `json:"mem_mib"`
	Kernel   string `json:"kernel"`
	Pinning  string `json:"pinning"`
	Command  string `json:"command"`
	Settings string `json:"settings"`
	FDLimit  int    `json:"fd_limit"`
	Elapsed  string `json:"elapsed"`
	// Background is how busy each core was in the second before the first run: other
	// work on the machine that the runs share it with.
	Background []float64 `json:"background_busy_pct"`
	Versions   []Version `json:"versions"`
}

// Version is one program's version line.
type Version struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

// cpuCount is the number of CPUs the machine has (not the number this process may use).
func cpuCount() int {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return runtime.NumCPU()
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "processor") {
			n++
		}
	}
	return max(n, 1)
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}

func memMiB() int {
	b, _ := os.ReadFile("/proc/meminfo")
	var kb int
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			fmt.Sscan(rest, &kb)
		}
	}
	return kb / 1024
}

func describeMachine(o *options, root string) *Machine {
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	m := &Machine{
		Date:     time.Now().UTC().Format("2006-01-02 15:04 MST"),
		CPUModel: cpuModel(),
		Cores:    cpuCount(),
		MemMiB:   memMiB(),
		Kernel:   strings.TrimSpace(string(kernel)),
		Command:  "go run ./bench " + shellJoin(o.args),
		Settings: fmt.Sprintf("%v per run, %d repetition(s) with the candidates interleaved, %d idle connections, UDP %d flows × %d in flight",
			o.duration, o.reps, o.idleConns, o.udpFlows, o.udpWindow),
		FDLimit: fdLimit,
	}
	if o.pin {
		m.Pinning = "pinning: proxy on core 0 (taskset -c 0); harness, load generators (iperf3, wrk, Go clients) and backends on core 1 (taskset -c 1)"
	} else {
		m.Pinning = "pinning: none (fewer than 2 CPUs or -pin=false)"
	}
	add := func(name string, argv ...string) {
		m.Versions = append(m.Versions, Version{name, commandVersion(argv...)})
	}
	add("go", "go", "version")
	m.Versions = append(m.Versions, Version{"harness runtime", runtime.Version()})
	pairlbDone := false
	for _, c := range o.proxies {
		switch c {
		case "pairlb", "pairlb-connlog":
			if !pairlbDone {
				pairlbDone = true
				m.Versions = append(m.Versions, Version{"pairlb", pairlbVersion(o, root)})
			}
		case "haproxy":
			add("haproxy", "haproxy", "-v")
		case "nginx":
			add("nginx", "nginx", "-v")
		}
	}
	add("iperf3", "iperf3", "--version")
	add("wrk", "wrk", "-v")
	add("taskset", "taskset", "--version")
	m.Versions = append(m.Versions, Version{"kernel", m.Kernel})
	return m
}

// commandVersion runs a version command and returns its first non-empty line.
func commandVersion(argv ...string) string {
	if _, err := exec.LookPath(argv[0]); err != nil {
		return "not installed"
	}
	out, _ := exec.Command(argv[0], argv[1:]...).CombinedOutput() // wrk -v exits 1
	for _, line := range strings.Split(string(out), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			return line
		}
	}
	return "unknown"
}

func pairlbVersion(o *options, root string) string {
	if root == "" {
		return o.pairlbBin
	}
	rev, err := exec.Command("git", "-C", root, "rev-parse", "--short", "HEAD").Output()
	desc := "working tree, no commit yet"
	if err == nil {
		desc = "commit " + strings.TrimSpace(string(rev))
		if st, _ := exec.Command("git", "-C", root, "status", "--porcelain", "--untracked-files=no").Output(); len(bytes.TrimSpace(st)) > 0 {
			desc += " + uncommitted changes"
		}
	}
	return desc + " (" + o.pairlbBin + ")"
}

func shellJoin(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t'\"$*?;&|<>()") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		out[i] = a
	}
	return strings.TrimSpace(strings.Join(out, " "))
}

// backgroundLoad samples every core's busy time over one second before anything starts.
func backgroundLoad() []float64 {
	a, err := readCPUTimes()
	if err != nil {
		return nil
	}
	time.Sleep(time.Second)
	b, err := readCPUTimes()
	if err != nil {
		return nil
	}
	return coreBusy(a, b)
}

// quietNote says whether the machine was quiet before the runs.
func (m *Machine) quietNote() string {
	busy := false
	var parts []string
	for i, b := range m.Background {
		parts = append(parts, fmt.Sprintf("core %d %.0f%%", i, b))
		busy = busy || b > 10
	}
	s := "background load before the runs: " + strings.Join(parts, ", ")
	if busy {
		s += " — the machine was not quiet; other work shares the cores and the figures are noisy"
	}
	return s
}
