// Command bench measures pairlb against the direct path, HAProxy and nginx on one machine.
//
// It starts backends it owns on loopback, runs each workload through each candidate in turn
// (A B C A B C ...), repeats every run, and writes results.md, results.json, chart.png and the
// versions of everything it used to an output directory. The proxy under test is pinned to
// core 0, the load generators and backends to core 1.
//
// It is not a test: it asserts nothing about speed. It never installs anything; it says what
// is missing. Run it from the repository: go run ./bench [-short].
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pairlb/pairlb/internal/testenv"
)

// options are the settings of one invocation.
type options struct {
	duration  time.Duration
	reps      int
	workloads []string
	proxies   []string
	out       string
	short     bool
	profile   bool
	readme    string
	idleConns int
	udpFlows  int
	udpWindow int
	pairlbBin string
	pin       bool
	args      []string // as given, for the reproduce line
}

// fdLimit is the harness's RLIMIT_NOFILE after raising it; children inherit it.
var fdLimit = 1024

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func parseFlags() (*options, error) {
	o := &options{args: os.Args[1:]}
	var workloads, proxies string
	fs := flag.CommandLine
	fs.DurationVar(&o.duration, "duration", 4*time.Second, "duration of one run (bulk and wrk round it to whole seconds)")
	fs.IntVar(&o.reps, "reps", 3, "repetitions of every (workload, candidate) run")
	fs.StringVar(&workloads, "workloads", "all", "comma-separated workloads: bulk1,bulk8,connrate,persistent,udp,idle")
	fs.StringVar(&proxies, "proxies", "direct,pairlb,haproxy,haproxy-splice,nginx", "comma-separated candidates: direct,pairlb,pairlb-connlog,haproxy,haproxy-splice,nginx")
	fs.StringVar(&o.out, "out", "", "output directory (default bench/out in the repository, else a temporary directory)")
	fs.BoolVar(&o.short, "short", false, "smoke run: 1s runs, 1 repetition, 1000 idle connections, no forced-splice HAProxy")
	fs.BoolVar(&o.profile, "profile", false, "fetch CPU and heap profiles from pairlb's admin address in one extra pairlb run per workload")
	fs.StringVar(&o.readme, "readme", "", "README file whose <!-- bench:begin --> ... <!-- bench:end --> block is replaced by the results")
	fs.IntVar(&o.idleConns, "idle-conns", 9000, "connections held open by the idle workload")
	fs.IntVar(&o.udpFlows, "udp-flows", 8, "UDP flows (client sockets)")
	fs.IntVar(&o.udpWindow, "udp-window", 16, "UDP datagrams in flight per flow")
	fs.StringVar(&o.pairlbBin, "pairlb", "", "use this pairlb binary instead of building ./cmd/pairlb")
	fs.BoolVar(&o.pin, "pin", true, "pin the proxy to core 0 and the harness, load generators and backends to core 1")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: go run ./bench [flags]\n\n"+
			"Needs: haproxy, nginx-light + libnginx-mod-stream, iperf3, wrk, taskset (util-linux), Go.\n\n")
		fs.PrintDefaults()
	}
	flag.Parse()
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.short {
		if !set["duration"] {
			o.duration = time.Second
		}
		if !set["reps"] {
			o.reps = 1
		}
		if !set["idle-conns"] {
			o.idleConns = 1000
		}
		if !set["proxies"] {
			proxies = "direct,pairlb,haproxy,nginx"
		}
	}
	if o.pairlbBin != "" {
		// The proxy runs in a directory of its own: a relative path would not reach it.
		abs, err := filepath.Abs(o.pairlbBin)
		if err != nil {
			return nil, err
		}
		o.pairlbBin = abs
	}
	if o.reps < 1 || o.duration <= 0 || o.idleConns < 1 || o.udpFlows < 1 || o.udpWindow < 1 {
		return nil, errors.New("-reps, -duration, -idle-conns, -udp-flows and -udp-window must be positive")
	}
	for _, p := range splitList(proxies) {
		if findCandidate(p) == nil {
			return nil, fmt.Errorf("unknown candidate %q in -proxies", p)
		}
		o.proxies = append(o.proxies, p)
	}
	if workloads == "all" {
		workloads = ""
		for _, w := range allWorkloads() {
			workloads += w.name + ","
		}
	}
	known := map[string]bool{}
	for _, w := range allWorkloads() {
		known[w.name] = true
	}
	for _, w := range splitList(workloads) {
		if !known[w] {
			return nil, fmt.Errorf("unknown workload %q in -workloads", w)
		}
		o.workloads = append(o.workloads, w)
	}
	if len(o.proxies) == 0 || len(o.workloads) == 0 {
		return nil, errors.New("nothing to run: -proxies and -workloads must name at least one")
	}
	return o, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// pinnedEnv marks the process that has already been re-executed under "taskset -c 1".
const pinnedEnv = "PAIRLB_BENCH_PINNED"

func run() error {
	o, err := parseFlags()
	if err != nil {
		return err
	}
	cpus := cpuCount()
	if o.pin && cpus < 2 {
		fmt.Fprintf(os.Stderr, "bench: only %d CPU: running unpinned\n", cpus)
		o.pin = false
	}
	var ws []*workload
	for _, w := range allWorkloads() {
		for _, name := range o.workloads {
			if w.name == name {
				ws = append(ws, w)
			}
		}
	}
	var cands []*candidate
	for _, name := range o.proxies {
		cands = append(cands, findCandidate(name))
	}
	if err := checkRequirements(o, ws, cands); err != nil {
		return err
	}
	if err := checkPorts(); err != nil {
		return err
	}
	if o.readme != "" { // fail now rather than after the runs
		if _, _, err := readmeBlock(o.readme); err != nil {
			return err
		}
	}
	if o.pin && os.Getenv(pinnedEnv) == "" {
		return reexecPinned()
	}
	raiseFDLimit()
	// The harness holds both ends of every idle connection (client and backend).
	if most := (fdLimit - 300) / 2; o.idleConns > most {
		fmt.Fprintf(os.Stderr, "bench: descriptor limit %d allows %d idle connections, not %d\n", fdLimit, most, o.idleConns)
		o.idleConns = most
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	root := moduleRoot()
	if o.out == "" {
		if root != "" {
			o.out = filepath.Join(root, "bench", "out")
		} else if o.out, err = os.MkdirTemp("", "pairlb-bench-out-"); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Join(o.out, "logs"), 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "pairlb-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	for _, c := range cands {
		if c.pairlb() && o.pairlbBin == "" {
			if o.pairlbBin, err = buildPairlb(root, tmp); err != nil {
				return err
			}
		}
	}

	machine := describeMachine(o, root)
	machine.Background = backgroundLoad()
	fmt.Printf("pairlb bench: %s, %d cores, kernel %s\n", machine.CPUModel, machine.Cores, machine.Kernel)
	fmt.Println(machine.Pinning)
	fmt.Println(machine.quietNote())
	fmt.Printf("runs: %v each, %d repetition(s), candidates %s, output %s\n",
		o.duration, o.reps, strings.Join(o.proxies, ","), o.out)

	back, err := startBackends(ctx, ws, io.Discard)
	if err != nil {
		return err
	}
	defer back.close()

	r := &runner{o: o, tmp: tmp, back: back, dirs: map[string]string{}}
	started := time.Now()
	r.runAll(ctx, ws, cands)
	machine.Elapsed = time.Since(started).Round(time.Second).String()
	if ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "bench: interrupted; writing what was measured")
	}
	rep := newReport(o, machine, ws, cands, r.runs)
	if err := rep.write(o.out); err != nil {
		return err
	}
	fmt.Printf("\n%s\nwrote %s\n", rep.markdownTable(), strings.Join(rep.files, ", "))
	if o.readme != "" {
		if err := rep.updateReadme(o.readme); err != nil {
			return err
		}
		fmt.Println("updated", o.readme)
	}
	failed := 0
	for _, run := range r.runs {
		if run.Error != "" {
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d runs failed (see results.md)", failed, len(r.runs))
	}
	if ctx.Err() != nil {
		return errors.New("interrupted")
	}
	return nil
}

// reexecPinned runs this program again under "taskset -c 1", so that every thread of the
// harness and every load generator it starts (iperf3, wrk) stays on core 1.
func reexecPinned() error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	taskset, err := exec.LookPath("taskset")
	if err != nil {
		return err
	}
	env := append(os.Environ(), pinnedEnv+"=1")
	return syscall.Exec(taskset, append([]string{"taskset", "-c", "1", self}, os.Args[1:]...), env)
}

// raiseFDLimit raises RLIMIT_NOFILE as far as the process may: to fs.nr_open if it can raise
// the hard limit, else to the hard limit. Setting it explicitly also makes the children
// (proxies) inherit the raised limit.
func raiseFDLimit() {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return
	}
	if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
		var nrOpen uint64
		if _, err := fmt.Sscan(string(b), &nrOpen); err == nil && nrOpen > lim.Max {
			if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: nrOpen, Max: nrOpen}) == nil {
				fdLimit = int(nrOpen)
				return
			}
		}
	}
	lim.Cur = lim.Max
	_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	fdLimit = int(lim.Cur)
}

// moduleRoot is the directory of pairlb's go.mod, or "" when not run from the repository.
func moduleRoot() string {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return ""
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return ""
	}
	b, err := os.ReadFile(gomod)
	if err != nil || !strings.Contains(string(b), "module github.com/pairlb/pairlb") {
		return ""
	}
	return filepath.Dir(gomod)
}

func buildPairlb(root, tmp string) (string, error) {
	if root == "" {
		return "", errors.New("pairlb: not in the pairlb repository, so cannot build ./cmd/pairlb; pass -pairlb BIN or leave pairlb out of -proxies")
	}
	bin, err := testenv.BuildPairlb(filepath.Join(tmp, "bin"))
	if err != nil {
		return "", fmt.Errorf("%w\nleave it out with -proxies direct,haproxy,nginx or pass -pairlb BIN", err)
	}
	fmt.Println("built pairlb:", bin)
	return bin, nil
}

// requirement is an external program (or file) a run needs, and where it comes from.
type requirement struct {
	what, pkg string
	path      string // a file instead of a command
}

func checkRequirements(o *options, ws []*workload, cands []*candidate) error {
	var reqs []requirement
	if o.pin {
		reqs = append(reqs, requirement{what: "taskset", pkg: "util-linux"})
	}
	for _, w := range ws {
		for _, t := range w.tools {
			reqs = append(reqs, requirement{what: t, pkg: t})
		}
	}
	for _, c := range cands {
		switch {
		case strings.HasPrefix(c.name, "haproxy"):
			reqs = append(reqs, requirement{what: "haproxy", pkg: "haproxy"})
		case c.name == "nginx":
			reqs = append(reqs, requirement{what: "nginx", pkg: "nginx-light"},
				requirement{what: "nginx stream module", pkg: "libnginx-mod-stream", path: nginxStreamModule})
		case c.pairlb() && o.pairlbBin == "":
			reqs = append(reqs, requirement{what: "go", pkg: "Go toolchain (to build ./cmd/pairlb)"})
		case c.pairlb():
			reqs = append(reqs, requirement{what: "pairlb binary", pkg: "-pairlb " + o.pairlbBin, path: o.pairlbBin})
		}
	}
	seen := map[string]bool{}
	var missing []string
	for _, r := range reqs {
		if seen[r.what] {
			continue
		}
		seen[r.what] = true
		var err error
		if r.path != "" {
			_, err = os.Stat(r.path)
		} else {
			_, err = exec.LookPath(r.what)
		}
		if err != nil {
			missing = append(missing, fmt.Sprintf("  %-20s from %s", r.what, r.pkg))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing what the selected runs need (bench installs nothing itself):\n%s\n"+
			"on Debian/Ubuntu: apt-get install haproxy nginx-light libnginx-mod-stream iperf3 wrk\n"+
			"or narrow the run with -proxies and -workloads", strings.Join(missing, "\n"))
	}
	return nil
}

// checkPorts fails at once, naming the port, when one of the fixed loopback ports the runs
// use is taken: otherwise every run of the candidate that needs it fails, one after another.
func checkPorts() error {
	var busy []string
	tcp := []int{portBulk, portHTTP, portIdle}
	for _, p := range tcp {
		tcp = append(tcp, p+backendOffset)
	}
	_, admin, _ := strings.Cut(pairlbAdmin, ":")
	if p, err := strconv.Atoi(admin); err == nil {
		tcp = append(tcp, p)
	}
	for _, p := range tcp {
		if ln, err := net.Listen("tcp", net.JoinHostPort(loopback, strconv.Itoa(p))); err != nil {
			busy = append(busy, fmt.Sprintf("%d/tcp", p))
		} else {
			ln.Close()
		}
	}
	for _, p := range []int{portUDP, portUDP + backendOffset} {
		if c, err := net.ListenPacket("udp", net.JoinHostPort(loopback, strconv.Itoa(p))); err != nil {
			busy = append(busy, fmt.Sprintf("%d/udp", p))
		} else {
			c.Close()
		}
	}
	if len(busy) > 0 {
		return fmt.Errorf("ports in use on %s: %s (another bench run, or a pairlb, HAProxy or nginx left running?)", loopback, strings.Join(busy, ", "))
	}
	return nil
}
