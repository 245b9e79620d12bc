// Package daemon is the running pairlb of `pairlb run`: the configuration in force, kept in one
// place (Daemon.Running), and the one path that applies a configuration to every part, in an
// order written down in apply (reload.go): the kernel (routing), the balancer (lb), the health
// monitor (health), the admin API (admin) and the pair watcher (pair). The first configuration,
// every reload (SIGHUP, POST /api/v1/reload) and every re-apply (POST /api/v1/reapply, which
// keepalived's notify script sends on MASTER) go through it.
//
// It is where those packages are wired together; they never import each other. It has no
// flags or signals of its own: cmd/pairlb gives it those.
package daemon

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"

	"github.com/pairlb/pairlb/admin"
	"github.com/pairlb/pairlb/config"
	"github.com/pairlb/pairlb/health"
	"github.com/pairlb/pairlb/internal/buildinfo"
	"github.com/pairlb/pairlb/internal/capability"
	"github.com/pairlb/pairlb/lb"
	"github.com/pairlb/pairlb/pair"
	"github.com/pairlb/pairlb/routing"
)

// Options say what a Daemon serves.
type Options struct {
	Log     *slog.Logger
	Path    string // the configuration file
	Version string // pairlb's version as the status shows it (buildinfo.Info.String)
	// Build labels pairlb_build_info (version, revision, commit time); zero, the version label
	// is Version.
	Build buildinfo.Info
	// Stderr is where connection_log: {to: stderr} writes; os.Stderr when nil.
	Stderr io.Writer
}

// Daemon wires the packages together for `pairlb run`.
type Daemon struct {
	log     *slog.Logger
	path    string
	version string
	stderr  io.Writer

	lb     *lb.Balancer
	health *health.Monitor
	routes *routing.Manager // nil when routing is off (no privilege and nothing to route)
	// linkReader only reads the box's links when routing is off.
	linkReader *routing.Manager
	box        box // the box's own addresses: box.go
	admin      *admin.Server
	pair       *pair.Watcher

	reg     *prometheus.Registry // everything /metrics exports; see metrics.go
	metrics *metrics

	mu      sync.Mutex // serialises Reload and Reapply
	running atomic.Pointer[config.Config]
	last    atomic.Pointer[admin.Reload] // the verdict on the last reading of the file
	disk    diskCheck                    // the file on disk against running: disk.go
}

var errNeedsNetAdmin = errors.New("the configuration sets default gateways, transparent services or manage_addresses, which need CAP_NET_ADMIN; run as root or with that capability")

// New loads opt.Path and applies it: the admin listeners are open (a taken admin address fails
// here, naming it, before any VIP listener is), and so are the balancer's listeners, which queue
// connections in the kernel until Run starts the balancer.
func New(opt Options) (*Daemon, error) {
	log := opt.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg, _, err := load(log, opt.Path)
	if err != nil {
		return nil, err
	}
	d := &Daemon{log: log, path: opt.Path, version: opt.Version, stderr: cmp.Or[io.Writer](opt.Stderr, os.Stderr), lb: lb.New(log), reg: prometheus.NewRegistry()}
	d.metrics = newMetrics(d.reg, d.lb, opt.Version, opt.Build)
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
	switch {
	case capability.NetAdmin():
		// Every links snapshot the manager takes (each Set, and each re-apply after a link or
		// address change) rebuilds the box's address tables.
		d.routes = routing.New(h, log, routing.WithLinksHook(d.box.setLinks))
		d.reg.MustRegister(newRoutingCollector(d.routes))
	case needsRouting(cfg):
		h.Close()
		return nil, errNeedsNetAdmin
	default:
		// Without the privilege pairlb changes no kernel state, but it still reads the box's
		// addresses for subnet_originating and the loop guard.
		d.linkReader = routing.New(h, log)
		log.Info("routing off: no CAP_NET_ADMIN and no virtual service that needs it")
	}
	d.lb.SetSourceFunc(d.box.source)
	// What the forwarding plane sees of a failing server (ICMP port unreachable on a UDP
	// session, a refused or timed-out connect) makes its health checks come sooner; the checks
	// still decide. Suspect never blocks, as the balancer's loops need.
	d.lb.SetEvidenceFunc(d.health.Suspect)
	d.lb.SetLocalFunc(d.box.local)
	d.pair = pair.NewWatcher(log, "")
	d.reg.MustRegister(d.pair)
	d.admin = admin.New(admin.Options{Log: log, Daemon: adminView{d}, Version: opt.Version, Metrics: d.reg})

	if err := d.admin.Listen(cfg, pair.AdminAddr(cfg)); err != nil { // before any VIP listener
		d.closeRoutes()
		return nil, err
	}
	if err := d.apply(cfg); err != nil {
		d.admin.Close()
		d.closeRoutes()
		return nil, err
	}
	d.metrics.loaded(cfg)
	d.last.Store(admin.Applied(time.Now(), admin.TriggerStart, nil, cfg, nil))
	log.Info("configuration loaded", "file", opt.Path, "hash", cfg.Hash, "virtual_services", len(cfg.VirtualServices))
	return d, nil
}

func (d *Daemon) closeRoutes() {
	if d.routes != nil {
		_ = d.routes.Close()
	}
}

// Running is the configuration in force: the one the last successful apply gave every part.
func (d *Daemon) Running() *config.Config { return d.running.Load() }

// Run serves until ctx ends, then stops gracefully and removes the kernel state it made. The
// balancer starts accepting once the first round of health checks is done (see
// health.Monitor.FirstRound), and /readyz says ready from then on. The admin server runs until
// the balancer has drained. A daemon whose admin listener is not open (Run called twice) stops
// at once and returns that error: it could be neither watched nor steered.
func (d *Daemon) Run(ctx context.Context) error {
	stopAdmin, adminErr := d.admin.Serve(ctx)
	if adminErr != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		cancel()
	}
	var wg sync.WaitGroup
	start := func(name string, f func(context.Context) error) {
		wg.Go(func() {
			if err := f(ctx); err != nil && !errors.Is(err, context.Canceled) {
				d.log.Error("stopped with error", "part", name, "err", err)
			}
		})
	}
	start("health", d.health.Run)
	start("pair", d.pair.Run)
	if d.routes != nil {
		start("routing", d.routes.Run)
	}
	// No server takes a connection before it has passed a check, so until the first round of
	// checks is done every client would be refused. The listeners are open already (apply
	// opened them): connections that arrive meanwhile wait in the kernel's accept queue, and
	// datagrams in the socket's buffer, until the balancer's loops start. The round is bounded
	// by the checks' timeouts; a stop ends the wait at once.
	select {
	case <-d.health.FirstRound():
	case <-ctx.Done():
	}
	d.admin.FirstChecksDone()
	d.lb.Run(ctx)
	wg.Wait()
	var err error
	if d.routes != nil {
		if cerr := d.routes.Close(); cerr != nil {
			d.log.Error("removing routing state", "err", cerr)
			err = errors.Join(err, cerr)
		}
	}
	stopAdmin()
	return errors.Join(adminErr, err)
}

// adminView is what the admin API sees of the daemon (admin.Daemon).
type adminView struct{ *Daemon }

func (v adminView) Services() []lb.ServiceStatus  { return v.lb.Status() }
func (v adminView) Health() []health.TargetStatus { return v.health.Status() }
func (v adminView) SetServerState(vs, rs string, st lb.State) error {
	return v.lb.SetServerState(vs, rs, st)
}
func (v adminView) SetServerStateByAddr(a lb.ServerAddr, st lb.State) ([]lb.ServerChange, error) {
	return v.lb.SetServerStateByAddr(a, st)
}

func (v adminView) Routing() ([]routing.Unit, []routing.Problem, bool) {
	if v.routes == nil {
		return nil, nil, false
	}
	return v.routes.Units(), v.routes.Problems(), true
}
