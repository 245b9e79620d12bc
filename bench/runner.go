package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Run is one measured run of one workload through one candidate: what results.json holds.
type Run struct {
	Workload    string             `json:"workload"`
	Candidate   string             `json:"candidate"`
	Rep         int                `json:"rep"` // 0 for an extra, profiled run
	Start       time.Time          `json:"start"`
	Seconds     float64            `json:"seconds"`
	Metrics     map[string]float64 `json:"metrics,omitempty"`
	ProxyCPUms  float64            `json:"proxy_cpu_ms,omitempty"`
	CoreBusyPct []float64          `json:"core_busy_pct,omitempty"`
	Profiled    bool               `json:"profiled,omitempty"`
	Notes       []string           `json:"notes,omitempty"`
	// Noisy marks a run during which core 0 was more than noisyPct busy with work other
	// than the proxy's.
	Noisy bool   `json:"noisy,omitempty"`
	Error string `json:"error,omitempty"`
}

// summary is the progress line printed after a run.
func (r *Run) summary(w *workload) string {
	head := fmt.Sprintf("[%s #%d] %-15s", w.name, r.Rep, r.Candidate)
	if r.Error != "" {
		return head + " FAILED: " + r.Error
	}
	var parts []string
	for _, m := range w.metrics {
		if v, ok := r.Metrics[m.key]; ok {
			parts = append(parts, fmt.Sprintf("%s %s", formatNum(v, m.digits), m.label))
		}
	}
	if len(r.CoreBusyPct) >= 2 {
		parts = append(parts, fmt.Sprintf("cores %.0f%%/%.0f%%", r.CoreBusyPct[0], r.CoreBusyPct[1]))
	}
	out := head + " " + strings.Join(parts, ", ")
	for _, n := range r.Notes {
		out += "\n    note: " + n
	}
	return out
}

type runner struct {
	o    *options
	tmp  string
	back *backends
	dirs map[string]string // a temporary directory per candidate
	runs []Run
}

func (r *runner) dir(c *candidate) (string, error) {
	if d, ok := r.dirs[c.name]; ok {
		return d, nil
	}
	d := filepath.Join(r.tmp, c.name)
	if err := os.MkdirAll(d, 0o755); err != nil {
		return "", err
	}
	r.dirs[c.name] = d
	return d, nil
}

// noisyPct is how busy core 0 may be with other work before a run is called noisy.
const noisyPct = 15

// runAll runs every workload through every candidate, interleaved: for each workload,
// repetition after repetition of A B C. With -profile, one extra pairlb run per workload
// fetches profiles; it is kept apart from the counted runs.
func (r *runner) runAll(ctx context.Context, ws []*workload, cands []*candidate) {
	for _, w := range ws {
		fmt.Printf("== %s\n", w.title)
		for rep := 1; rep <= r.o.reps && ctx.Err() == nil; rep++ {
			for _, c := range cands {
				if w.udp && !c.udp || ctx.Err() != nil {
					continue
				}
				run := r.runOne(ctx, w, c, rep, false)
				r.runs = append(r.runs, run)
				fmt.Println("  " + run.summary(w))
			}
		}
		if r.o.profile && ctx.Err() == nil {
			for _, c := range cands {
				if c.name == "pairlb" {
					run := r.runOne(ctx, w, c, 0, true)
					r.runs = append(r.runs, run)
					fmt.Println("  " + run.summary(w) + " (profiled, not counted)")
				}
			}
		}
	}
}

// runOne starts the candidate's proxy, runs the workload through it, measures the proxy's
// CPU, memory and descriptors and every core's busy time, and stops the proxy.
func (r *runner) runOne(ctx context.Context, w *workload, c *candidate, rep int, profile bool) Run {
	run := Run{Workload: w.name, Candidate: c.name, Rep: rep, Start: time.Now(), Profiled: profile}
	fail := func(err error) Run {
		run.Error = err.Error()
		return run
	}
	rc := &runCtx{target: c.target(w.port), duration: r.o.duration, cand: c, back: r.back, opts: r.o}
	var proxy *child
	var logPath string
	stopProxy := func() {}
	if !c.direct() {
		dir, err := r.dir(c)
		if err != nil {
			return fail(err)
		}
		name := fmt.Sprintf("%s-%s-%d.log", w.name, c.name, rep)
		if profile {
			name = fmt.Sprintf("%s-%s-profile.log", w.name, c.name)
		}
		logPath = filepath.Join(r.o.out, "logs", name)
		logf, err := os.Create(logPath)
		if err != nil {
			return fail(err)
		}
		defer logf.Close()
		env := &proxyEnv{dir: dir, log: logf, pairlbBin: r.o.pairlbBin, pin: r.o.pin, maxConns: r.o.idleConns + 200}
		proxy, err = launch(ctx, c, env, w.udp)
		if err != nil {
			collectLogs(dir, logf)
			return fail(fmt.Errorf("%w (log: %s)%s", err, logPath, tail(logPath)))
		}
		rc.proxyPID = proxy.pid
		stopped := false
		stopProxy = func() {
			if stopped {
				return
			}
			stopped = true
			if err := proxy.stop(5 * time.Second); err != nil {
				fmt.Fprintf(os.Stderr, "  %s: %v\n", c.name, err)
			}
			collectLogs(dir, logf)
		}
		defer stopProxy()
	}

	var prof *profiler
	if profile {
		prof = startProfiler(ctx, r.o, w, rc)
		rc.atPeak = prof.heap
	}

	cpu0, _ := readCPUTimes()
	var u0 proxyUsage
	if proxy != nil {
		u0 = measureProxy(proxy.pid, false)
	}
	t0 := time.Now()
	res, err := w.run(ctx, rc)
	run.Seconds = time.Since(t0).Seconds()
	cpu1, _ := readCPUTimes()
	var u1 proxyUsage
	if proxy != nil {
		u1 = measureProxy(proxy.pid, false)
	}
	if prof != nil {
		if rc.atPeak != nil && w.name != "idle" {
			prof.heap()
		}
		prof.wait()
	}
	if proxy != nil && proxy.exited() {
		// A crash during the run: the figures are not the proxy's.
		err = fmt.Errorf("%s exited during the run (%v)%s", c.name, proxy.err, tail(logPath))
	}
	stopProxy()
	if proxy != nil {
		run.Notes = logNotes(logPath)
	}
	if err != nil {
		return fail(err)
	}
	run.Metrics = res.metrics
	run.CoreBusyPct = coreBusy(cpu0, cpu1)
	for i, b := range run.CoreBusyPct {
		if i < 2 {
			run.Metrics[fmt.Sprintf("core%d_busy_pct", i)] = b
		}
	}
	if len(run.CoreBusyPct) > 0 && run.Seconds > 0 {
		// Core 0 is the proxy's: whatever else kept it busy (other work on the machine,
		// interrupts) is a hint at how much to trust the run.
		own := 100 * (u1.cpuMs - u0.cpuMs) / (run.Seconds * 1000)
		run.Metrics["core0_other_pct"] = max(0, run.CoreBusyPct[0]-own)
		run.Noisy = run.Metrics["core0_other_pct"] > noisyPct
	}
	if proxy != nil {
		run.ProxyCPUms = u1.cpuMs - u0.cpuMs
		run.Metrics["proxy_cpu_ms"] = run.ProxyCPUms
		if res.units > 0 {
			run.Metrics[w.cpuKey] = run.ProxyCPUms * res.cpuScale / res.units
		}
	}
	return run
}

// collectLogs moves what a proxy wrote to files in its directory (nginx's error log) to the
// end of the run's log.
func collectLogs(dir string, to io.Writer) {
	files, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil && len(b) > 0 {
			fmt.Fprintf(to, "--- %s\n%s", filepath.Base(f), b)
		}
		_ = os.Remove(f)
	}
}

// logSigns are log lines that explain a poor result, and what they mean.
var logSigns = []struct{ text, note string }{
	{"too many open files", "the proxy ran out of file descriptors (EMFILE in its log)"},
	{"Cannot raise FD limit", "HAProxy could not raise its descriptor limit"},
	{"worker_connections are not enough", "nginx ran out of worker_connections"},
}

// logNotes reads a proxy's log for signs of trouble.
func logNotes(path string) []string {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var notes []string
	for _, s := range logSigns {
		if n := strings.Count(string(b), s.text); n > 0 {
			notes = append(notes, fmt.Sprintf("%s, %d line(s)", s.note, n))
		}
	}
	return notes
}

// tail returns the last lines of a log file, indented, for an error message.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	text := strings.TrimSpace(string(b))
	if i := strings.Index(text, "panic:"); i >= 0 {
		text = text[i:] // a Go panic: its first lines say where
		lines := strings.Split(text, "\n")
		return "\n    " + strings.Join(lines[:min(len(lines), 8)], "\n    ")
	}
	lines := strings.Split(text, "\n")
	if len(lines) > 8 {
		lines = lines[len(lines)-8:]
	}
	return "\n    " + strings.Join(lines, "\n    ")
}

// profiler fetches pairlb's pprof profiles from its admin address during a run.
type profiler struct {
	base, dir, prefix string
	wg                sync.WaitGroup
	once              sync.Once
}

func startProfiler(ctx context.Context, o *options, w *workload, rc *runCtx) *profiler {
	p := &profiler{
		base:   "http://" + pairlbAdmin + "/debug/pprof/",
		dir:    filepath.Join(o.out, "profiles"),
		prefix: w.name + "-" + rc.cand.name,
	}
	_ = os.MkdirAll(p.dir, 0o755)
	if w.name == "idle" {
		return p // nothing to sample on the CPU; the heap while connections are held matters
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.fetch(ctx, fmt.Sprintf("profile?seconds=%d", rc.seconds()), "cpu.pprof", time.Duration(rc.seconds()+10)*time.Second)
	}()
	return p
}

func (p *profiler) heap() {
	p.once.Do(func() { p.fetch(context.Background(), "heap", "heap.pprof", 10*time.Second) })
}

func (p *profiler) wait() { p.wg.Wait() }

// fetch saves one profile, or says why it could not.
func (p *profiler) fetch(ctx context.Context, path, file string, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	url := p.base + path
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	// The admin server may open a moment after the listeners the run waited for.
	for retry := time.Now().Add(2 * time.Second); err != nil && ctx.Err() == nil && time.Now().Before(retry); {
		time.Sleep(100 * time.Millisecond)
		resp, err = http.DefaultClient.Do(req)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "  profile: %s not reachable: %v\n", url, err)
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(os.Stderr, "  profile: %s answered %s (pairlb does not expose net/http/pprof?)\n", url, resp.Status)
		return
	}
	dst := filepath.Join(p.dir, p.prefix+"-"+file)
	f, err := os.Create(dst)
	if err != nil {
		fmt.Fprintf(os.Stderr, "  profile: %v\n", err)
		return
	}
	defer f.Close()
	if _, err := io.Copy(f, resp.Body); err != nil {
		fmt.Fprintf(os.Stderr, "  profile: reading %s: %v\n", url, err)
		return
	}
	fmt.Printf("  profile: wrote %s\n", dst)
}
