package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/pairlb/pairlb/config"
	"github.com/pairlb/pairlb/health"
	"github.com/pairlb/pairlb/lb"
	"github.com/pairlb/pairlb/routing"
)

const defaultConfig = "/etc/pairlb/pairlb.yaml"

func cmdRun(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("c", defaultConfig, "configuration file")
	debug := fs.Bool("debug", false, "log debug events")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	d, err := newDaemon(log, *path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	// The SIGHUP loop ends with run, whether a signal or run itself (an admin listener that
	// cannot open) ends it.
	hupCtx, hupDone := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-hupCtx.Done():
				return
			case <-hup:
				_ = d.reload()
			}
		}
	}()
	err = d.run(ctx)
	hupDone()
	wg.Wait()
	if err != nil {
		log.Error("stopped with error", "err", err)
		return 1
	}
	return 0
}

// daemon wires the packages together for `pairlb run`.
type daemon struct {
	log    *slog.Logger
	path   string
	lb     *lb.Balancer
	health *health.Monitor
	routes *routing.Manager // nil when routing is off (no privilege and nothing to route)
	// linkReader only reads the box's links when routing is off; links is the latest snapshot,
	// sources the subnet_originating table made from it.
	linkReader *routing.Manager
	links      atomic.Pointer[[]routing.Link]
	sources    atomic.Pointer[routing.Sources]

	reg     *prometheus.Registry // everything /metrics exports; see admin_metrics.go
	metrics *daemonMetrics
	admin   adminState // token, readiness, listener address; see admin.go

	mu  sync.Mutex // serialises reloads
	cfg *config.Config
}

func newDaemon(log *slog.Logger, path string) (*daemon, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	logWarnings(log, cfg)
	token, err := readAdminToken(cfg)
	if err != nil {
		return nil, err
	}
	d := &daemon{log: log, path: path, lb: lb.New(log), cfg: cfg, reg: prometheus.NewRegistry()}
	d.metrics = newDaemonMetrics(d.reg, d.lb)
	d.setAdminToken(cfg, token)
	d.health = health.NewMonitor(health.Options{
		Logger:  log,
		OnProbe: d.metrics.observeProbe,
		OnChange: func(c health.Change) {
			// A target removed by a reload may report once more before Set returns.
			_ = d.lb.SetServerHealth(c.Service, c.Server, c.Up)
		},
	})
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("opening netlink: %w", err)
	}
	keepLinks := routing.WithLinksHook(func(l []routing.Link) {
		d.links.Store(&l)
		if cfg := d.lb.Config(); cfg != nil { // nil during the first apply, which updates itself
			d.updateSources(cfg)
		}
	})
	if netAdmin() {
		d.routes = routing.New(h, log, keepLinks)
		d.reg.MustRegister(newRoutingCollector(d.routes))
	} else if needsRouting(cfg) {
		return nil, errNeedsNetAdmin
	} else {
		// Without the privilege pairlb changes no kernel state, but it still reads the box's
		// addresses for subnet_originating.
		d.linkReader = routing.New(h, log)
		log.Info("routing off: no CAP_NET_ADMIN and no virtual service that needs it")
	}
	d.lb.SetSourceFunc(d.subnetSource)
	// What the forwarding plane sees of a failing server (ICMP port unreachable on a UDP
	// session, a refused or timed-out connect) makes its health checks come sooner; the checks
	// still decide. Suspect never blocks, as the balancer's loops need.
	d.lb.SetEvidenceFunc(d.health.Suspect)
	d.lb.SetLocalFunc(d.localAddr)
	if err := d.listenAdmin(); err != nil { // before any VIP listener: see listenAdmin
		if d.routes != nil {
			_ = d.routes.Close()
		}
		return nil, err
	}
	if err := d.apply(cfg); err != nil {
		d.closeAdmin()
		if d.routes != nil {
			_ = d.routes.Close()
		}
		return nil, err
	}
	d.metrics.loaded(cfg)
	log.Info("configuration loaded", "file", path, "hash", cfg.Hash, "virtual_services", len(cfg.VirtualServices))
	return d, nil
}

// apply hands cfg to every part. Routing comes first so that replies of the first connections
// already leave through their VIP's gateway; the balancer applies atomically, so a failure there
// leaves it on the old configuration, and routing is put back to match it.
//
// A part of the routing plan the box's links cannot carry now (a gateway whose link is down or
// has lost its address) does not stop the configuration: the rest is installed, the manager
// logs it and retries it when links change, and the status and metrics show it. A box that
// boots with its DMZ link down still serves its internal VIPs. Only what no link state can mend
// (a VIP and its gateway of different families, say) rejects the file.
func (d *daemon) apply(cfg *config.Config) error {
	if d.routes != nil {
		var partial *routing.PartialError
		if err := d.routes.Set(cfg); err != nil && !errors.As(err, &partial) {
			d.restoreRoutes()
			return fmt.Errorf("routing: %w", err)
		}
	}
	if d.linkReader != nil {
		if l, err := d.linkReader.Links(); err == nil {
			d.links.Store(&l)
		}
	}
	if err := d.lb.Apply(cfg); err != nil {
		d.restoreRoutes()
		return err
	}
	d.updateSources(cfg)
	targets := healthTargets(cfg, d.subnetSource)
	d.health.Set(targets)
	d.metrics.setTargets(targets)
	return nil
}

func (d *daemon) restoreRoutes() {
	if d.routes == nil || d.lb.Config() == nil {
		return
	}
	var partial *routing.PartialError // logged by the manager, retried and shown
	if err := d.routes.Set(d.lb.Config()); err != nil && !errors.As(err, &partial) {
		d.log.Error("restoring routing for the running configuration", "err", err)
	}
}

// run serves until ctx ends, then stops gracefully and removes the kernel state it made. The
// balancer starts accepting once the first round of health checks is done (see
// health.Monitor.FirstRound), and /readyz says ready from then on. The admin server runs until
// the balancer has drained. A daemon whose admin listener cannot open (newDaemon opens it, so
// only when run is given a daemon that did not) stops at once and returns that error: it could
// be neither watched nor steered.
func (d *daemon) run(ctx context.Context) error {
	stopAdmin, adminErr := d.startAdmin(ctx)
	if adminErr != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		cancel()
	}
	var wg sync.WaitGroup
	start := func(name string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil && !errors.Is(err, context.Canceled) {
				d.log.Error("stopped with error", "part", name, "err", err)
			}
		}()
	}
	start("health", d.health.Run)
	if pw := newPairWatcher(d.lb.Config(), "", d.log); pw != nil {
		d.reg.MustRegister(pw)
		start("pair", pw.Run)
	}
	if d.routes != nil {
		start("routing", d.routes.Run)
	}
	// No server takes a connection before it has passed a check, so until the first round of
	// checks is done every client would be refused. The listeners are open already (Apply
	// opened them): connections that arrive meanwhile wait in the kernel's accept queue, and
	// datagrams in the socket's buffer, until the balancer's loops start. The round is bounded
	// by the checks' timeouts; a stop ends the wait at once.
	select {
	case <-d.health.FirstRound():
	case <-ctx.Done():
	}
	d.admin.checked.Store(true)
	d.lb.Run(ctx)
	var err error
	wg.Wait()
	if d.routes != nil {
		if cerr := d.routes.Close(); cerr != nil {
			d.log.Error("removing routing state", "err", cerr)
			err = errors.Join(err, cerr)
		}
	}
	stopAdmin()
	return errors.Join(adminErr, err)
}

// reload reads the file again. On any error the running configuration stays and every error is
// logged; on success only the difference is applied.
func (d *daemon) reload() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	cfg, err := config.Load(d.path)
	if err == nil {
		logWarnings(d.log, cfg)
	}
	if err == nil && d.routes == nil && needsRouting(cfg) {
		err = errNeedsNetAdmin
	}
	var token []byte
	if err == nil {
		token, err = readAdminToken(cfg)
	}
	if err == nil {
		err = d.apply(cfg)
	}
	d.metrics.reloaded(cfg, err)
	if err != nil {
		// One line per problem: an operator greps the log for the field or the line number.
		var errs config.Errors
		if !errors.As(err, &errs) {
			errs = config.Errors{{File: d.path, Msg: err.Error()}}
		}
		for _, e := range errs {
			d.log.Error("reload rejected", "err", e)
		}
		d.log.Error("keeping the running configuration", "file", d.path, "errors", len(errs))
		return err
	}
	d.cfg = cfg
	d.setAdminToken(cfg, token)
	d.log.Info("configuration reloaded", "file", d.path, "hash", cfg.Hash, "virtual_services", len(cfg.VirtualServices))
	return nil
}

// logWarnings logs each warning of the configuration on a line of its own, as validate prints it.
func logWarnings(log *slog.Logger, cfg *config.Config) {
	for _, w := range cfg.Warnings {
		log.Warn("configuration warning", "warning", w.Error())
	}
}

// healthTargets resolves every enabled real server into what the monitor probes: the health
// port when the service sets one, else the target port of the service's first port, from the
// source address forwarded connections use.
func healthTargets(cfg *config.Config, subnetSource lb.SourceFunc) []health.Target {
	var out []health.Target
	for i := range cfg.VirtualServices {
		vs := &cfg.VirtualServices[i]
		if vs.Redirect != "" || len(vs.Ports) == 0 {
			continue
		}
		for _, rs := range vs.RealServers {
			addr := rs.AddrPort(vs.Ports[0].Target)
			if vs.Health.Port != 0 {
				addr = netip.AddrPortFrom(rs.Address, vs.Health.Port)
			}
			var src netip.Addr
			switch {
			case len(vs.SourceAddresses) > 0:
				src = vs.SourceAddresses[0]
			case vs.SubnetOriginating:
				src, _ = subnetSource(rs.Address)
			}
			out = append(out, health.Target{Service: vs.Name, Server: rs.Key(), Addr: addr, Source: src, Check: vs.Health})
		}
	}
	return out
}

var errNeedsNetAdmin = errors.New("the configuration sets default gateways, transparent services or manage_addresses, which need CAP_NET_ADMIN; run as root or with that capability")

// updateSources rebuilds the subnet_originating table from the latest links and cfg.
func (d *daemon) updateSources(cfg *config.Config) {
	if l := d.links.Load(); l != nil {
		src := routing.NewSources(cfg, *l)
		d.sources.Store(&src)
	}
}

// localAddr reports whether a is one of the box's addresses, by the latest links snapshot
// (the balancer's loop guard asks it for every new connection; loopback and the VIPs it
// knows itself).
func (d *daemon) localAddr(a netip.Addr) bool {
	l := d.links.Load()
	if l == nil {
		return false
	}
	for _, link := range *l {
		for _, p := range link.Addrs {
			if p.Addr().Unmap() == a {
				return true
			}
		}
	}
	return false
}

// subnetSource is the box's own address on dst's subnet (subnet_originating). It runs for
// every new connection of such a service, so it only reads the prepared table.
func (d *daemon) subnetSource(dst netip.Addr) (netip.Addr, bool) {
	if s := d.sources.Load(); s != nil {
		return s.Lookup(dst)
	}
	return netip.Addr{}, false
}

func needsRouting(cfg *config.Config) bool {
	if cfg.Global.ManageAddresses {
		return true
	}
	for _, vs := range cfg.VirtualServices {
		if vs.DefaultGateway.IsValid() || vs.Transparent {
			return true
		}
	}
	return false
}

// netAdmin reports whether the process holds CAP_NET_ADMIN in its effective set.
func netAdmin() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if hex, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
			return err == nil && caps&(1<<unix.CAP_NET_ADMIN) != 0
		}
	}
	return false
}
