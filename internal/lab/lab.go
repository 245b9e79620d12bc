// Package lab is `pairlb lab`: it builds the deployment guide's single-pair topology in network
// namespaces of its own, runs pairlb in it with the Lync 2013 example mapped onto lab addresses,
// sends traffic to every port of every virtual service and checks both the answers and the path
// the replies took.
//
//	cli-int 198.19.1.10          cli-dmz 198.19.2.10              cli-ext 198.19.3.10
//	     │                            │                                │
//	   r-int ── dmz leg .254        r-dmz                            r-ext
//	198.18.0.1      │            198.51.100.1                     203.0.113.1
//	══ internal ══  │  ══════ DMZ 198.51.100.0/24 ══════    ══ external 203.0.113.0/24 ══
//	198.18.0.0/16   └─ cli-dmzsub .50 (the box's own DMZ subnet)
//	FE, Director,      Edge internal, OWA                     Edge external (default route
//	Mediation                                                   via the box: transparency)
//	     └──────────────── box .2 on each network: pairlb run ─────────────────┘
//
// Each network is a bridge in a switch namespace; each router is a stateful nftables firewall
// (ct state invalid drop) that counts the replies it forwards from every VIP and port. The
// DMZ-subnet client reaches internal VIPs through the internal router, the case "Use Default
// Route Only" exists for. Real servers and clients are `pairlb lab-agent` processes (Agent).
//
// Addresses: the guide's networks map onto 198.18.0.0/16, 198.51.100.0/24 and 203.0.113.0/24
// (MapConfig), the clients' networks are in 198.19.0.0/16; nothing else is ever used, and no
// namespace is linked to the host's interfaces. What a lab made is recorded in a state file under
// /run/pairlb-lab so that `pairlb lab --clean` removes exactly that.
//
// It is not a test of pairlb's internals (those live with their packages) nor a benchmark.
package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pairlb/pairlb/config"
	"github.com/pairlb/pairlb/internal/netns"
)

// ExampleName is the example the lab runs.
const ExampleName = "lync2013-single-pair.yaml"

// labDrainTimeout bounds global.drain_timeout in the lab.
const labDrainTimeout = 2 * time.Second

// Options configure a lab run.
type Options struct {
	// Binary is the pairlb binary run inside the lab (`run` in the box, `lab-agent` for the
	// servers and clients): normally os.Executable().
	Binary string
	// Keep leaves the lab running after the checks, for exploring; `--clean` removes it.
	Keep bool
	// StateDir is where the lab records itself; DefaultStateDir when empty.
	StateDir string
	// Requests is how many requests each client address sends to each port; 2 when zero.
	Requests int
	// Progress receives one line per step; nil for none.
	Progress io.Writer

	// For tests: a change to the mapped configuration, and a shorter probe timeout.
	change       func(*config.Config)
	probeTimeout time.Duration
}

// Report is the outcome of a run.
type Report struct {
	Prefix     string
	Rows       []*Row
	Invalid    map[string]uint64 // router: packets its firewall dropped as invalid
	HealthDown []string          // health targets not up when the traffic started
	Status     *StatusCheck      // `pairlb status` in the box after the traffic
	PairlbExit string            // how pairlb ended ("" while it runs: --keep)
	Elapsed    time.Duration
	Kept       bool
	Dir        string // the lab's files (configuration, logs) when kept
	Namespaces []string
	Clients    []ClientInfo
}

// ClientInfo describes a client for the --keep instructions.
type ClientInfo struct {
	Namespace string
	Desc      string
	Addr      netip.Addr
}

// Pass reports whether every row passed, `pairlb status` matched and pairlb ended cleanly.
func (r *Report) Pass() bool {
	if len(r.Rows) == 0 || !r.Status.OK() {
		return false
	}
	for _, row := range r.Rows {
		if !row.Pass() {
			return false
		}
	}
	return r.Kept || r.PairlbExit == "exit status 0"
}

// MappedExample loads the Lync example, maps it onto the lab's networks and renders it. The
// returned configuration is the rendered file parsed again, so it is exactly what pairlb runs.
func MappedExample() (*config.Config, []byte, error) { return mappedExample(nil) }

// mappedExample is MappedExample with a change applied to the mapped configuration before it is
// rendered (tests break the lab on purpose with it).
func mappedExample(change func(*config.Config)) (*config.Config, []byte, error) {
	data, err := fs.ReadFile(config.Examples, "examples/"+ExampleName)
	if err != nil {
		return nil, nil, err
	}
	guide, err := config.Parse(ExampleName, data)
	if err != nil {
		return nil, nil, err
	}
	mapped, err := MapConfig(guide)
	if err != nil {
		return nil, nil, err
	}
	// pairlb drains UDP sessions like connections on SIGTERM, and the STUN probes' sessions stay
	// until their 60s idle timeout: the lab's shutdown would wait the whole drain timeout.
	mapped.Global.DrainTimeout = min(mapped.Global.DrainTimeout, labDrainTimeout)
	if change != nil {
		change(mapped)
	}
	var header strings.Builder
	header.WriteString("Generated by `pairlb lab` from config/examples/" + ExampleName + ":\n")
	header.WriteString("every service, port, persistence and health setting kept, addresses moved by network\n")
	for _, n := range Networks {
		fmt.Fprintf(&header, "  %-8s %-16s -> %s\n", n.Name, n.Guide, n.Lab)
	}
	header.WriteString("manage_addresses and use_default_route_only on; the pair section left out: the lab\n")
	header.WriteString("runs one box, which adds the VIPs itself (no keepalived).\n")
	fmt.Fprintf(&header, "drain_timeout at most %s, so that the lab stops quickly.\n", dur(labDrainTimeout))
	text := Render(mapped, header.String())
	cfg, err := config.Parse("lab.yaml", text)
	if err != nil {
		return nil, text, fmt.Errorf("the rendered lab configuration does not load: %w", err)
	}
	return cfg, text, nil
}

// Run builds the lab, runs the checks and, unless o.Keep, removes everything it made. It
// returns a report even when rows fail; an error means the lab itself could not run.
func Run(ctx context.Context, o Options) (rep *Report, err error) {
	begin := time.Now()
	if o.StateDir == "" {
		o.StateDir = DefaultStateDir
	}
	if o.Requests <= 0 {
		o.Requests = 2
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if !netns.Available() {
		return nil, errors.New("the lab needs root (network namespaces)")
	}
	for _, tool := range []string{"ip", "nft", "sh"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("the lab needs %s (Debian: iproute2, nftables): %w", tool, err)
		}
	}
	if st, err := os.Stat(o.Binary); err != nil || st.IsDir() {
		return nil, fmt.Errorf("pairlb binary %q: not a file", o.Binary)
	}

	cfg, text, err := mappedExample(o.change)
	if err != nil {
		return nil, err
	}
	plan, err := BuildPlan(cfg)
	if err != nil {
		return nil, err
	}
	if err := checkPlacement(cfg); err != nil {
		return nil, err
	}

	l := netns.New()
	st, err := newStateFile(o.StateDir, l.Prefix())
	if err != nil {
		return nil, err
	}
	r := &run{begin: begin, o: o, cfg: cfg, plan: plan, l: l, state: st, dir: st.st.Dir, ns: map[string]*netns.NS{}}
	rep = &Report{Prefix: l.Prefix(), Rows: plan.Rows, Dir: r.dir}
	defer func() {
		if o.Keep && err == nil {
			rep.Kept = true
			err = st.update(func(s *State) { s.Kept = true })
			rep.Namespaces = slices.Clone(st.st.Namespaces)
			return
		}
		r.progress("removing the lab")
		if terr := r.teardown(); terr != nil {
			err = errors.Join(err, fmt.Errorf("removing the lab: %w", terr))
		}
		rep.Elapsed = time.Since(begin)
	}()

	r.progress("building the lab in namespaces %s*", l.Prefix())
	if err := r.build(ctx); err != nil {
		return rep, err
	}
	r.progress("starting %d real servers", len(plan.Servers))
	if err := r.startServers(ctx); err != nil {
		return rep, err
	}
	cfgPath := filepath.Join(r.dir, "pairlb.yaml")
	if err := os.WriteFile(cfgPath, text, 0o600); err != nil {
		return rep, err
	}
	r.progress("starting pairlb in the box: %s run -c %s", o.Binary, cfgPath)
	if r.pairlb, err = r.start(r.ns[nsBox], "pairlb", o.Binary, "run", "-c", cfgPath); err != nil {
		return rep, err
	}
	if rep.HealthDown, err = r.waitHealthy(ctx); err != nil {
		return rep, err
	}
	r.progress("sending traffic from %d clients", len(clients()))
	if err := r.traffic(ctx); err != nil {
		return rep, err
	}
	r.progress("reading the routers' and clients' counters")
	if rep.Invalid, err = r.checkPaths(ctx); err != nil {
		return rep, err
	}
	r.progress("running pairlb status in the box (-admin %s)", cfg.Global.Admin)
	rep.Status = r.status(ctx, cfgPath)
	for _, c := range clients() {
		rep.Clients = append(rep.Clients, ClientInfo{Namespace: r.ns[c.name].Name(), Desc: c.desc, Addr: c.addrs[0].Addr()})
	}
	if !o.Keep {
		r.progress("stopping pairlb (SIGTERM)")
		rep.PairlbExit = r.stopPairlb()
	}
	rep.Elapsed = time.Since(begin)
	return rep, nil
}

// run is one lab being built and checked.
type run struct {
	o     Options
	cfg   *config.Config
	plan  *Plan
	l     *netns.Lab
	state *stateFile
	dir   string

	begin  time.Time
	ns     map[string]*netns.NS // by short name
	procs  []*proc
	pairlb *proc
}

// proc is a process the lab started inside a namespace, its output going to a log file.
type proc struct {
	what string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed when the process has been waited for
}

func (r *run) progress(format string, args ...any) {
	fmt.Fprintf(r.o.Progress, "lab %5.1fs: %s\n", time.Since(r.begin).Seconds(), fmt.Sprintf(format, args...))
}

// namespace creates a namespace of the lab and records it.
func (r *run) namespace(short string) (*netns.NS, error) {
	ns, err := r.l.Namespace(short)
	if err != nil {
		return nil, err
	}
	r.ns[short] = ns
	return ns, r.state.update(func(s *State) { s.Namespaces = append(s.Namespaces, ns.Name()) })
}

// start runs a command in a namespace with its output appended to <dir>/<what>.log, and
// records its PID and start time.
func (r *run) start(ns *netns.NS, what string, args ...string) (*proc, error) {
	log := filepath.Join(r.dir, what+".log")
	// sh execs the command, so the PID recorded is the command's own; the output goes to a file
	// so that a kept lab outlives this process without a broken pipe.
	cmd, err := ns.Start("sh", append([]string{"-c", `exec "$@" >>"$0" 2>&1 </dev/null`, log}, args...)...)
	if err != nil {
		return nil, err
	}
	p := &proc{what: what, cmd: cmd, log: log, done: make(chan struct{})}
	r.procs = append(r.procs, p)
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	id, err := procOf(cmd.Process.Pid)
	if err != nil {
		id = Proc{PID: cmd.Process.Pid}
	}
	return p, r.state.update(func(s *State) { s.Processes = append(s.Processes, StateProc{Proc: id, What: what}) })
}

// stop ends one process: SIGTERM to its process group, SIGKILL after grace.
func (p *proc) stop(grace time.Duration) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	pid := p.cmd.Process.Pid
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	select {
	case <-p.done:
		return nil
	case <-time.After(5 * time.Second):
		return fmt.Errorf("%s (process %d) did not exit", p.what, pid)
	}
}

func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return strings.Join(lines, "\n")
}

// stopPairlb stops pairlb as an operator would (SIGTERM) and says how it ended.
func (r *run) stopPairlb() string {
	p := r.pairlb
	if p == nil {
		return "not started"
	}
	select {
	case <-p.done:
		return "exited early: " + p.cmd.ProcessState.String()
	default:
	}
	_ = syscall.Kill(p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
		return p.cmd.ProcessState.String()
	case <-time.After(r.cfg.Global.DrainTimeout + 5*time.Second):
		return "did not stop within the drain timeout after SIGTERM"
	}
}

// teardown stops every process (pairlb first, so it removes its own kernel state), deletes the
// namespaces and the lab's files and state.
func (r *run) teardown() error {
	var errs []error
	if r.pairlb != nil {
		errs = append(errs, r.pairlb.stop(5*time.Second))
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, p := range r.procs {
		wg.Go(func() {
			if err := p.stop(3 * time.Second); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	errs = append(errs, r.l.Cleanup())
	if left, err := Leftovers(r.l.Prefix()); err != nil {
		errs = append(errs, err)
	} else if len(left) > 0 {
		errs = append(errs, fmt.Errorf("namespaces left after cleanup: %v", left))
	}
	if err := errors.Join(errs...); err != nil {
		return err // keep the state file: --clean can finish the job
	}
	return r.state.remove()
}

// build creates the namespaces, links, addresses, routes and firewalls.
func (r *run) build(ctx context.Context) error {
	shorts := []string{nsSwitch, nsBox}
	for _, s := range segments {
		shorts = append(shorts, s.router)
	}
	for _, c := range clients() {
		shorts = append(shorts, c.name)
	}
	for _, h := range r.plan.Servers {
		shorts = append(shorts, serverNS(h.Addr))
	}
	for _, s := range shorts {
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := r.namespace(s); err != nil {
			return err
		}
	}
	sw, box := r.ns[nsSwitch], r.ns[nsBox]

	// The box: loose reverse-path filtering (a DMZ-subnet client's packets arrive on int0),
	// no ARP answers for one interface's addresses on another, no forwarding.
	for _, kv := range [][2]string{
		{"net.ipv4.conf.all.rp_filter", "2"}, {"net.ipv4.conf.default.rp_filter", "2"},
		{"net.ipv4.conf.all.arp_ignore", "1"}, {"net.ipv4.conf.all.arp_announce", "2"},
		{"net.ipv4.ip_forward", "0"},
	} {
		if err := box.Sysctl(kv[0], kv[1]); err != nil {
			return err
		}
	}

	attach := map[string]func(string) error{}
	for _, s := range segments {
		a, err := sw.Bridge(s.bridge)
		if err != nil {
			return err
		}
		attach[s.Name] = a
	}
	// port links a namespace's interface to a segment's bridge.
	ports := map[string]int{}
	port := func(seg segment, ns *netns.NS, ifname string) error {
		ports[seg.Name]++
		swName := fmt.Sprintf("%s-%d", seg.letter, ports[seg.Name])
		if err := r.l.Veth(ns, ifname, sw, swName); err != nil {
			return err
		}
		return attach[seg.Name](swName)
	}

	for _, s := range segments {
		rt := r.ns[s.router]
		if err := port(s, box, s.boxIf); err != nil {
			return err
		}
		if err := box.AddAddr(s.boxIf, s.prefix(s.box)); err != nil {
			return err
		}
		if err := port(s, rt, s.boxIf); err != nil {
			return err
		}
		if err := rt.AddAddr(s.boxIf, s.prefix(s.routerIP)); err != nil {
			return err
		}
		if err := rt.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
			return err
		}
	}
	// The box's own default route (not the VIPs'): towards the Internet.
	if err := box.AddRoute(netip.MustParsePrefix("0.0.0.0/0"), segmentOf("external").routerIP); err != nil {
		return err
	}
	// The internal router's leg on the DMZ.
	dmz := segmentOf("dmz")
	rint := r.ns[segmentOf("internal").router]
	if err := port(dmz, rint, "dmz0"); err != nil {
		return err
	}
	if err := rint.AddAddr("dmz0", dmz.prefix(intRouterOnDMZ)); err != nil {
		return err
	}

	for _, c := range clients() {
		cn := r.ns[c.name]
		if c.on != "" {
			if err := port(segmentOf(c.on), cn, "eth0"); err != nil {
				return err
			}
		} else {
			rt := r.ns[c.router]
			if err := r.l.Veth(rt, "cli0", cn, "eth0"); err != nil {
				return err
			}
			if err := rt.AddAddr("cli0", netip.PrefixFrom(c.gateway, c.addrs[0].Bits())); err != nil {
				return err
			}
		}
		if err := cn.AddAddr("eth0", c.addrs...); err != nil {
			return err
		}
		for _, rt := range c.routes {
			if err := cn.AddRoute(rt.dst, rt.via); err != nil {
				return err
			}
		}
		if err := cn.AddRoute(netip.MustParsePrefix("0.0.0.0/0"), c.gateway); err != nil {
			return err
		}
	}

	for _, h := range r.plan.Servers {
		seg := segmentOf(h.Network)
		sn := r.ns[serverNS(h.Addr)]
		if err := port(seg, sn, "eth0"); err != nil {
			return err
		}
		if err := sn.AddAddr("eth0", seg.prefix(h.Addr)); err != nil {
			return err
		}
		gw := seg.routerIP
		if h.ViaBox {
			gw = seg.box // transparency: replies to the client's address go back through the box
		}
		if err := sn.AddRoute(netip.MustParsePrefix("0.0.0.0/0"), gw); err != nil {
			return err
		}
	}

	// Firewalls: the routers count what they forward, the clients what they receive.
	for _, s := range segments {
		if err := installRuleset(ctx, r.ns[s.router], r.dir, routerRuleset(r.plan.Rows)); err != nil {
			return err
		}
	}
	boxDMZ, err := box.Link(dmz.boxIf)
	if err != nil {
		return err
	}
	for _, c := range clients() {
		var mac = boxDMZ.Attrs().HardwareAddr
		if c.on == "" {
			mac = nil
		}
		if err := installRuleset(ctx, r.ns[c.name], r.dir, clientRuleset(r.plan.Rows, mac)); err != nil {
			return err
		}
	}
	return nil
}

// startServers starts one lab-agent per real server and waits until each listens.
func (r *run) startServers(ctx context.Context) error {
	var started []*proc
	for _, h := range r.plan.Servers {
		args := []string{r.o.Binary, "lab-agent", "serve", "-name", h.Addr.String()}
		for _, l := range h.Listen {
			args = append(args, "-l", l.Flag(h.Addr))
		}
		p, err := r.start(r.ns[serverNS(h.Addr)], serverNS(h.Addr), args...)
		if err != nil {
			return err
		}
		started = append(started, p)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, p := range started {
		for {
			b, _ := os.ReadFile(p.log)
			if strings.Contains(string(b), "ready\n") {
				break
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-p.done:
				return fmt.Errorf("real server %s exited: %s", p.what, p.tail())
			case <-time.After(20 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("real server %s not ready after 10s: %s", p.what, p.tail())
			}
		}
	}
	return nil
}

var healthLine = regexp.MustCompile(`msg="health state" service=(\S+) server=(\S+) .*? state=(up|down)`)

// waitHealthy waits until pairlb's health monitor reports every real server up (the first
// probe of each waits a fixed point within its interval), or the longest interval plus a
// margin has passed; it returns the targets still not up.
func (r *run) waitHealthy(ctx context.Context) ([]string, error) {
	want := map[string]bool{}
	var longest time.Duration
	for _, vs := range r.cfg.VirtualServices {
		if vs.Redirect != "" {
			continue
		}
		longest = max(longest, vs.Health.Interval+vs.Health.Timeout)
		for _, rs := range vs.RealServers {
			if rs.Enabled {
				want[vs.Name+" "+rs.Key()] = false
			}
		}
	}
	wait := min(longest+3*time.Second, 45*time.Second)
	r.progress("waiting for pairlb's health checks to find %d real-server targets up (at most %s)", len(want), wait.Round(time.Second))
	deadline := time.Now().Add(wait)
	for {
		b, _ := os.ReadFile(r.pairlb.log)
		for _, m := range healthLine.FindAllStringSubmatch(string(b), -1) {
			if _, ok := want[m[1]+" "+m[2]]; ok {
				want[m[1]+" "+m[2]] = m[3] == "up"
			}
		}
		var down []string
		for k, up := range want {
			if !up {
				down = append(down, k)
			}
		}
		slices.Sort(down)
		if len(down) == 0 {
			return nil, nil
		}
		select {
		case <-ctx.Done():
			return down, ctx.Err()
		case <-r.pairlb.done:
			return down, fmt.Errorf("pairlb exited: %s", r.pairlb.tail())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			r.progress("still down after %s: %s", wait.Round(time.Second), strings.Join(down, ", "))
			return down, nil
		}
	}
}

// traffic runs every client's probes (one lab-agent per client, all clients at once) and
// records the results in the rows.
func (r *run) traffic(ctx context.Context) error {
	type batch struct {
		c       clientHost
		probes  []Probe
		results []Result
		err     error
	}
	var batches []*batch
	for _, c := range clients() {
		b := &batch{c: c}
		for i, row := range r.plan.Rows {
			if !slices.Contains(row.Clients, c.name) {
				continue
			}
			for _, a := range c.addrs {
				for n := range r.o.Requests {
					b.probes = append(b.probes, Probe{
						Row: i, Kind: row.Kind, Target: netip.AddrPortFrom(row.VIP, row.Port.Listen).String(),
						Source: a.Addr().String(), Host: defaultHTTPHost,
						Path: fmt.Sprintf("/lab/%s?n=%d", row.Service, n),
					})
				}
			}
		}
		batches = append(batches, b)
	}
	var wg sync.WaitGroup
	for _, b := range batches {
		wg.Go(func() {
			plan := filepath.Join(r.dir, b.c.name+".plan.json")
			out := filepath.Join(r.dir, b.c.name+".results.json")
			data, err := json.Marshal(b.probes)
			if err == nil {
				err = os.WriteFile(plan, data, 0o600)
			}
			if err == nil {
				cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
				args := []string{"lab-agent", "client", "-plan", plan, "-out", out}
				if r.o.probeTimeout > 0 {
					args = append(args, "-timeout", r.o.probeTimeout.String())
				}
				_, err = r.ns[b.c.name].Run(cctx, r.o.Binary, args...)
				cancel()
			}
			if err == nil {
				data, err = os.ReadFile(out)
			}
			if err == nil {
				err = json.Unmarshal(data, &b.results)
			}
			b.err = err
		})
	}
	wg.Wait()
	var errs []error
	for _, b := range batches {
		if b.err != nil {
			errs = append(errs, fmt.Errorf("client %s: %w", b.c.name, b.err))
			continue
		}
		for _, res := range b.results {
			if res.Row < 0 || res.Row >= len(r.plan.Rows) {
				continue
			}
			judge(r.plan.Rows[res.Row], b.c.name, res, r.boxAddrs())
		}
	}
	for _, row := range r.plan.Rows {
		finishRow(row)
	}
	return errors.Join(errs...)
}

func (r *run) boxAddrs() []netip.Addr {
	var out []netip.Addr
	for _, s := range segments {
		out = append(out, s.box)
	}
	return out
}

// checkPaths reads the counters (clients first, then routers, so that a router's count can
// only have grown since the clients' were read) and decides each row's reply path.
func (r *run) checkPaths(ctx context.Context) (map[string]uint64, error) {
	// Let the last FIN/ACK exchanges settle.
	time.Sleep(300 * time.Millisecond)
	received := map[string]map[string]uint64{}
	for _, c := range clients() {
		m, err := counters(ctx, r.ns[c.name])
		if err != nil {
			return nil, err
		}
		received[c.name] = m
	}
	forwarded := map[string]map[string]uint64{}
	invalid := map[string]uint64{}
	for _, s := range segments {
		m, err := counters(ctx, r.ns[s.router])
		if err != nil {
			return nil, err
		}
		forwarded[s.router] = m
		invalid[s.router] = m[commentInvalid]
	}
	for _, row := range r.plan.Rows {
		row.Path = pathCheck(row, forwarded, received)
	}
	return invalid, nil
}
