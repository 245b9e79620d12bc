package health

import (
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/pairlb/pairlb/config"
)

// Target is one real server of one virtual service, as the Monitor probes it. The caller
// resolves everything: Addr already carries Health.Port or the service's target port.
type Target struct {
	Service string         // virtual service name
	Server  string         // real server key (config.RealServer.Key())
	Addr    netip.AddrPort // where to probe
	Source  netip.Addr     // optional local address probes leave from
	Check   config.Health
}

// Change is an up/down transition of a target, or its initial state.
type Change struct {
	Service, Server string
	Up              bool
	Reason          string
}

// TargetStatus is a target's health as Status reports it.
type TargetStatus struct {
	Service      string
	Server       string
	Addr         netip.AddrPort
	Check        config.HealthType
	Up           bool
	Since        time.Time     // last transition, or when the target was added
	LastCheck    time.Time     // start of the last completed check; zero before the first
	LastError    string        // reason of the last check's failure; "" when it passed
	LastDuration time.Duration // how long the last check took
}

// Options configures a Monitor.
type Options struct {
	Logger *slog.Logger // nil: discard
	// OnChange is called on every up/down transition, and once with a target's initial state
	// when its probe loop first starts. Calls for one target never overlap and come in order;
	// calls for different targets may run concurrently. It runs on the target's probe loop, so
	// it delays only that target's next probe, and it must not call Set (Set waits for the loops
	// it stops). After Set has returned, no call comes for a target that Set removed.
	OnChange func(Change)
	// OnProbe, optional, is called after every completed probe, for a duration histogram or a
	// failure counter. The same concurrency rules as OnChange apply.
	OnProbe func(t Target, d time.Duration, err error)
	// RootCAs verifies certificates of tls and https checks with Verify set. Nil means the
	// system roots.
	RootCAs *x509.CertPool
}

// Monitor probes a set of targets, one loop per target, and keeps each one's up/down state.
//
// Each loop runs one probe at a time: probe (bounded by Check.Timeout), then wait out the rest of
// Check.Interval measured from the probe's start. A probe that overruns the interval is followed
// at once by the next, never by a second one in parallel, and one target's slow or hanging probe
// cannot delay another target. The first probe of a loop waits a fixed offset within the interval
// derived from the target's identity, so that after a start or reload the probes are spread out.
//
// A target starts down (up with Check.InitialUp, always up with type none) and a target that has
// never been up comes up on its first passed check. From then on it goes down after Check.Fall
// consecutive failed checks and comes back after Check.Rise consecutive passed ones. Every
// transition, and each target's initial state, is one "health state" log line with the service,
// server, state and reason, and one OnChange call.
type Monitor struct {
	opts Options
	log  *slog.Logger

	setMu sync.Mutex // serialises Set

	mu      sync.Mutex
	targets map[targetKey]*entry
	runCtx  context.Context // set while Run runs
	ran     bool
	wg      sync.WaitGroup // probe loops
}

type targetKey struct{ service, server string }

// entry is one target with its checker, its probe loop and its health. The loop fields are set
// under Monitor.mu; the health fields are guarded by Monitor.mu.
type entry struct {
	target  Target
	checker Checker

	cancel context.CancelFunc // stops the loop; nil when none was started
	done   chan struct{}      // closed when the loop has ended

	st        status
	announced bool // the initial state went to OnChange
	since     time.Time
	lastCheck time.Time
	lastErr   string
	lastDur   time.Duration
}

// NewMonitor returns a Monitor without targets; give it some with Set and start it with Run.
func NewMonitor(o Options) *Monitor {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Monitor{opts: o, log: log, targets: map[targetKey]*entry{}}
}

// Set makes targets the monitored set. New targets are added with their initial state; removed
// ones are stopped; a target whose Service, Server, Addr, Source and Check are all unchanged keeps
// its loop and state. A target whose Addr, Source or Check changed is restarted with its current
// up/down state kept (the consecutive counts start again). When a target appears twice, the
// first wins.
//
// Set may be called before Run (loops start when Run does), while it runs, and after it has
// returned (the set is recorded; nothing is probed). When Set returns, the loops of removed and
// restarted targets have ended; that takes no longer than their probes take to notice
// cancellation (immediately for every checker here). While Set waits, Status leaves out the
// targets being restarted.
func (m *Monitor) Set(targets []Target) {
	m.setMu.Lock()
	defer m.setMu.Unlock()

	want := make(map[targetKey]Target, len(targets))
	var order []targetKey
	for _, t := range targets {
		k := targetKey{t.Service, t.Server}
		if _, dup := want[k]; dup {
			m.log.Warn("health target listed twice; keeping the first", "service", t.Service, "server", t.Server)
			continue
		}
		want[k] = t
		order = append(order, k)
	}

	// Take out what is removed or changed and stop its loop.
	m.mu.Lock()
	var stopped []*entry
	changed := map[targetKey]*entry{}
	for k, e := range m.targets {
		t, keep := want[k]
		if keep && sameTarget(t, e.target) {
			continue
		}
		if keep {
			changed[k] = e
		}
		delete(m.targets, k)
		if e.cancel != nil {
			e.cancel()
			stopped = append(stopped, e)
		}
	}
	m.mu.Unlock()
	for _, e := range stopped {
		<-e.done
	}

	// Put in what is new or changed.
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	for _, k := range order {
		if _, ok := m.targets[k]; ok {
			continue
		}
		t := want[k]
		e := &entry{target: t, checker: m.checker(t)}
		if old, ok := changed[k]; ok {
			e.st = status{Up: old.st.Up, EverUp: old.st.EverUp}
			e.announced = old.announced
			e.since = old.since
		} else {
			e.st = initialStatus(t.Check.InitialUp || isNone(t.Check))
			e.since = now
		}
		m.targets[k] = e
		if m.runCtx != nil {
			m.start(e)
		}
	}
}

// Run probes the targets until ctx ends. When it returns every probe loop has ended. Run may be
// called once.
func (m *Monitor) Run(ctx context.Context) error {
	m.mu.Lock()
	if m.ran {
		m.mu.Unlock()
		return errors.New("health monitor: Run called more than once")
	}
	m.ran = true
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	m.runCtx = runCtx
	for _, e := range m.targets {
		m.start(e)
	}
	m.mu.Unlock()

	<-ctx.Done()

	m.mu.Lock()
	m.runCtx = nil // no loop starts after this
	m.mu.Unlock()
	cancel()
	m.wg.Wait()
	return nil
}

// Status returns every target's health, ordered by service and server.
func (m *Monitor) Status() []TargetStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]TargetStatus, 0, len(m.targets))
	for _, e := range m.targets {
		out = append(out, TargetStatus{
			Service:      e.target.Service,
			Server:       e.target.Server,
			Addr:         e.target.Addr,
			Check:        e.target.Check.Type,
			Up:           e.st.Up,
			Since:        e.since,
			LastCheck:    e.lastCheck,
			LastError:    e.lastErr,
			LastDuration: e.lastDur,
		})
	}
	slices.SortFunc(out, func(a, b TargetStatus) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.Server, b.Server))
	})
	return out
}

// start launches e's probe loop; m.mu is held and m.runCtx is set.
func (m *Monitor) start(e *entry) {
	ctx, cancel := context.WithCancel(m.runCtx)
	e.cancel = cancel
	e.done = make(chan struct{})
	m.wg.Add(1)
	go m.probeLoop(ctx, e)
}

func (m *Monitor) checker(t Target) Checker {
	c, err := NewChecker(t.Check, CheckerOptions{RootCAs: m.opts.RootCAs})
	if err != nil {
		m.log.Error("health check not usable; target stays down", "service", t.Service, "server", t.Server, "err", err)
		return brokenChecker{reason: "unsupported check type " + strconv.Quote(string(t.Check.Type))}
	}
	return c
}

// brokenChecker stands in for a check that could not be built: it always fails.
type brokenChecker struct{ reason string }

func (c brokenChecker) Check(_ context.Context, addr netip.AddrPort, _ netip.Addr) error {
	return failedReason("health check", addr, c.reason)
}

// probeLoop is a target's loop: it owns the target's probes until ctx ends.
func (m *Monitor) probeLoop(ctx context.Context, e *entry) {
	defer m.wg.Done()
	defer close(e.done)

	t := e.target
	m.announce(e)
	if isNone(t.Check) {
		m.observe(ctx, e, time.Now(), 0, nil, 1, 1, false)
		return
	}
	interval, timeout, rise, fall := params(t.Check)
	timer := time.NewTimer(stagger(t, interval))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		start := time.Now()
		pctx, cancel := context.WithTimeout(ctx, timeout)
		err := e.checker.Check(pctx, t.Addr, t.Source)
		cancel()
		d := time.Since(start)
		if ctx.Err() != nil {
			return // stopped mid-probe: the result says nothing about the server
		}
		m.observe(ctx, e, start, d, err, rise, fall, true)
		timer.Reset(max(interval-d, 0))
	}
}

// announce reports e's initial state once in its lifetime.
func (m *Monitor) announce(e *entry) {
	m.mu.Lock()
	already := e.announced
	e.announced = true
	up := e.st.Up
	m.mu.Unlock()
	if already {
		return
	}
	reason := "initial state: down until the first passed check"
	switch {
	case isNone(e.target.Check):
		reason = "initial state: no health check"
	case up:
		reason = "initial state: initial_up"
	}
	m.report(e.target, up, reason, nil, 0)
}

// observe records one probe result and reports a transition if there is one.
func (m *Monitor) observe(ctx context.Context, e *entry, start time.Time, d time.Duration, err error, rise, fall int, probed bool) {
	m.mu.Lock()
	before := e.st
	e.st = next(e.st, err == nil, rise, fall)
	after := e.st
	e.lastCheck, e.lastDur, e.lastErr = start, d, ""
	if err != nil {
		e.lastErr = err.Error()
	}
	if before.Up != after.Up {
		e.since = start
	}
	m.mu.Unlock()

	if probed {
		if m.opts.OnProbe != nil {
			m.opts.OnProbe(e.target, d, err)
		}
		if err != nil {
			m.log.Debug("health check failed", "service", e.target.Service, "server", e.target.Server,
				"addr", e.target.Addr, "reason", err.Error(), "detail", detail(err))
		}
	}
	if before.Up == after.Up || ctx.Err() != nil {
		return
	}
	var reason string
	switch {
	case !probed:
		reason = "no health check"
	case after.Up && after.Successes == 1:
		reason = "check passed"
	case after.Up:
		reason = fmt.Sprintf("%d checks passed", after.Successes)
	default:
		reason = err.Error()
	}
	var count int
	if after.Up {
		count = after.Successes
	} else {
		count = after.Failures
	}
	m.report(e.target, after.Up, reason, err, count)
}

// report logs a state as one line and hands it to OnChange.
func (m *Monitor) report(t Target, up bool, reason string, err error, count int) {
	state := "down"
	if up {
		state = "up"
	}
	attrs := []any{"service", t.Service, "server", t.Server, "addr", t.Addr, "check", string(t.Check.Type),
		"state", state, "reason", reason}
	if count > 0 {
		attrs = append(attrs, "consecutive", count)
	}
	if err != nil {
		attrs = append(attrs, "detail", detail(err))
	}
	m.log.Info("health state", attrs...)
	if m.opts.OnChange != nil {
		m.opts.OnChange(Change{Service: t.Service, Server: t.Server, Up: up, Reason: reason})
	}
}

func detail(err error) string {
	var pe *ProbeError
	if errors.As(err, &pe) {
		return pe.Detail()
	}
	return err.Error()
}

func isNone(h config.Health) bool { return h.Type == config.HealthNone || h.Type == "" }

// params returns the check's timing with config's defaults for unset values.
func params(h config.Health) (interval, timeout time.Duration, rise, fall int) {
	interval, timeout, rise, fall = h.Interval, h.Timeout, h.Rise, h.Fall
	if interval <= 0 {
		interval = config.DefaultHealthInterval
	}
	if timeout <= 0 {
		timeout = config.DefaultHealthTimeout
	}
	if rise < 1 {
		rise = config.DefaultHealthRise
	}
	if fall < 1 {
		fall = config.DefaultHealthFall
	}
	return interval, timeout, rise, fall
}

// stagger is the delay before a target's first probe: a fixed point in [0, interval) derived
// from the target's identity, so that a reload spreads probes over the interval instead of firing
// them all at once, and the same target lands on the same point every time.
func stagger(t Target, interval time.Duration) time.Duration {
	h := fnv.New64a()
	h.Write([]byte(t.Service))
	h.Write([]byte{0})
	h.Write([]byte(t.Server))
	return time.Duration(h.Sum64() % uint64(interval))
}

// sameTarget reports whether a and b (same Service and Server) are probed identically.
func sameTarget(a, b Target) bool {
	ha, hb := a.Check, b.Check
	if !slices.Equal(ha.Expect, hb.Expect) {
		return false
	}
	ha.Expect, hb.Expect = nil, nil // nil and empty mean the same
	return a.Addr == b.Addr && a.Source == b.Source && reflect.DeepEqual(ha, hb)
}
