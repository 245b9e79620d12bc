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
	"strings"
	"sync"
	"sync/atomic"
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

	// Data-plane evidence (Suspect): how many reports since the target was added, the latest
	// recorded one (recorded at most every evidenceRecordEvery) and whether the target is
	// being probed at the fast interval because of it.
	Evidence       uint64
	LastEvidence   string
	LastEvidenceAt time.Time // zero without evidence
	Suspect        bool
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
// cannot delay another target. The first probe of a loop, at Run's start or when Set adds or
// changes a target, starts at once: within firstRoundWindow (or the interval, if shorter), at a
// fixed offset derived from the target's identity, so that a start or reload spreads its probes
// over the window rather than firing them all in the same instant. A server is used only once it
// has passed a check, so waiting longer before the first one would only refuse clients. From then
// on each target keeps its interval; the targets' probes stay spread over the window.
//
// Data-plane evidence (Suspect) never changes a state by itself, but it makes the target's next
// probe run at once and the following ones come at the fast interval until the state settles
// (the target goes down or passes a probe); FirstRound tells when the first round is done.
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

	// table is a copy of targets for Suspect, which must not wait for mu; it is replaced
	// (under mu) whenever targets changes.
	table atomic.Pointer[map[targetKey]*entry]

	// The first round (FirstRound): firstPending holds the targets whose first probe Run still
	// waits for; under mu. firstDone is closed once, when it empties or the bound passes.
	firstDone    chan struct{}
	firstPending map[targetKey]bool
	firstClosed  bool
	firstStarted time.Time
	firstCount   int // targets waited for

	// newChecker builds a target's checker; nil means NewChecker. Tests replace it.
	newChecker func(Target) Checker
}

type targetKey struct{ service, server string }

// entry is one target with its checker, its probe loop and its health. The loop fields are set
// under Monitor.mu; the health fields are guarded by Monitor.mu.
type entry struct {
	target  Target
	checker Checker

	cancel context.CancelFunc // stops the loop; nil when none was started
	done   chan struct{}      // closed when the loop has ended

	// Evidence from Suspect, which may run on any goroutine at any rate: atomics only. kick
	// (capacity 1) asks the loop for an early probe; suspect is set by the loop while it probes
	// at the fast interval.
	kick          chan struct{}
	evidenceCount atomic.Uint64
	evidenceAt    atomic.Int64 // unix nanoseconds of the latest recorded evidence
	lastEvidence  atomic.Pointer[evidence]
	suspect       atomic.Bool

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
	return &Monitor{opts: o, log: log, targets: map[targetKey]*entry{}, firstDone: make(chan struct{})}
}

// evidence is one recorded report of Suspect.
type evidence struct {
	at     time.Time
	reason string
}

const (
	// firstRoundWindow spreads the first probes of a start or reload: a hundred targets take
	// one connection every 2.5 ms, and readiness comes a quarter of a second after the start.
	firstRoundWindow = 250 * time.Millisecond
	// firstRoundGrace is added to the window and the longest timeout to bound FirstRound, as a
	// backstop: a probe ends at its timeout, so only a defect can need it.
	firstRoundGrace = time.Second
	// fastInterval is the probe interval of a target under suspicion (HAProxy's fastinter):
	// a dead server is marked down in about fall seconds instead of fall intervals.
	fastInterval = time.Second
	// evidenceRecordEvery bounds how often a target's evidence is recorded (an allocation) and
	// passed to its loop: a flood of reports costs a counter increment each.
	evidenceRecordEvery = 100 * time.Millisecond
	// evidenceNoteEvery bounds the Info lines about evidence against one server.
	evidenceNoteEvery = time.Minute
)

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
		if !keep {
			m.firstProbed(k) // a removed target is no longer waited for
		}
		if e.cancel != nil {
			e.cancel()
			stopped = append(stopped, e)
		}
	}
	m.publish()
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
		e := &entry{target: t, checker: m.checker(t), kick: make(chan struct{}, 1)}
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
	m.publish()
}

// publish makes the current targets what Suspect sees; m.mu is held.
func (m *Monitor) publish() {
	tab := make(map[targetKey]*entry, len(m.targets))
	for k, e := range m.targets {
		tab[k] = e
	}
	m.table.Store(&tab)
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
	m.firstStarted = time.Now()
	m.firstPending = map[targetKey]bool{}
	var longest time.Duration
	for k, e := range m.targets {
		if !isNone(e.target.Check) {
			m.firstPending[k] = true
			interval, timeout, _, _ := params(e.target.Check)
			longest = max(longest, min(firstRoundWindow, interval)+timeout)
		}
	}
	m.firstCount = len(m.firstPending)
	m.endFirstRound("") // if nothing is waited for
	for _, e := range m.targets {
		m.start(e)
	}
	m.mu.Unlock()
	if m.firstCount > 0 {
		m.log.Info("health: first round of checks started", "targets", m.firstCount, "window", firstRoundWindow)
		backstop := time.AfterFunc(longest+firstRoundGrace, func() {
			m.mu.Lock()
			defer m.mu.Unlock()
			m.endFirstRound(firstBound)
		})
		defer backstop.Stop()
	}

	<-ctx.Done()

	m.mu.Lock()
	m.runCtx = nil // no loop starts after this
	m.endFirstRound(firstStop)
	m.mu.Unlock()
	cancel()
	m.wg.Wait()
	return nil
}

// FirstRound returns a channel that is closed when the first round of checks is done: every
// target present when Run started has completed its first probe, with its result already
// handed to OnChange, or has been removed by Set since (a target that Set changed is waited for
// on its new settings). Targets of type none count as done at once; targets that Set adds
// later are not waited for. The first probes start within firstRoundWindow of Run's start and
// each ends at its timeout at the latest, so the round takes no longer than the window plus
// the longest timeout; as a backstop the channel is closed anyway firstRoundGrace after that,
// with a warning naming the targets still pending. It is also closed when Run returns, and
// stays open until Run is called.
//
// The daemon waits for it before it accepts connections and reports ready: until then no
// server has passed a check, and every client would be refused.
func (m *Monitor) FirstRound() <-chan struct{} { return m.firstDone }

// firstProbed records that k's first probe is done (or that k is gone); m.mu is held.
func (m *Monitor) firstProbed(k targetKey) {
	if m.firstPending == nil || !m.firstPending[k] {
		return
	}
	delete(m.firstPending, k)
	m.endFirstRound("")
}

// endFirstRound closes the first round when nothing is pending; with end set it closes it in
// any case, for that reason (firstBound or firstStop). m.mu is held.
func (m *Monitor) endFirstRound(end string) {
	if m.firstClosed || (end == "" && len(m.firstPending) > 0) {
		return
	}
	switch {
	case end == firstBound && len(m.firstPending) > 0:
		var names []string
		for k := range m.firstPending {
			names = append(names, k.service+"/"+k.server)
		}
		slices.Sort(names)
		m.log.Warn("health: first round of checks not finished within its bound; going ahead without it",
			"pending", len(names), "targets", strings.Join(names[:min(len(names), 5)], ", "))
	case end == "" && m.firstCount > 0:
		m.log.Info("health: first round of checks done", "targets", m.firstCount,
			"took", time.Since(m.firstStarted).Round(time.Millisecond))
	}
	m.firstClosed = true
	m.firstPending = nil
	close(m.firstDone)
}

// Why a first round ends before every target was probed.
const (
	firstBound = "bound" // the backstop passed
	firstStop  = "stop"  // Run returns
)

// Suspect reports data-plane evidence that a target is failing, such as an ICMP port
// unreachable on a UDP session towards it or a refused connection; reason says which, briefly.
// Evidence never marks a target down by itself (a forged ICMP message must not take a server
// out of its pool): it makes the target's next probe run now and the following ones come at
// the fast interval (one second, or the interval if shorter) until its state settles, that is
// until it goes down or passes a probe. A failing server is then marked down after about
// fall x fastInterval rather than fall intervals (HAProxy's observe layer4 with on-error
// fastinter).
//
// Suspect is made for the balancer's event loops: it never blocks and takes none of the
// monitor's locks (it reads a copy of the target table), and when reports come faster than one
// per evidenceRecordEvery it costs an atomic increment; however many come, a target gets at most
// one early probe per fast interval. Unknown targets are ignored; evidence against a target
// without checks (type none) is counted in its status and changes nothing else.
func (m *Monitor) Suspect(service, server, reason string) {
	tab := m.table.Load()
	if tab == nil {
		return
	}
	e := (*tab)[targetKey{service, server}]
	if e == nil {
		return
	}
	e.evidenceCount.Add(1)
	now := time.Now()
	last := e.evidenceAt.Load()
	if now.UnixNano()-last < int64(evidenceRecordEvery) || !e.evidenceAt.CompareAndSwap(last, now.UnixNano()) {
		return
	}
	e.lastEvidence.Store(&evidence{at: now, reason: reason})
	select {
	case e.kick <- struct{}{}:
	default: // one is pending already
	}
}

// Status returns every target's health, ordered by service and server.
func (m *Monitor) Status() []TargetStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]TargetStatus, 0, len(m.targets))
	for _, e := range m.targets {
		ts := TargetStatus{
			Service:      e.target.Service,
			Server:       e.target.Server,
			Addr:         e.target.Addr,
			Check:        e.target.Check.Type,
			Up:           e.st.Up,
			Since:        e.since,
			LastCheck:    e.lastCheck,
			LastError:    e.lastErr,
			LastDuration: e.lastDur,
			Evidence:     e.evidenceCount.Load(),
			Suspect:      e.suspect.Load(),
		}
		if ev := e.lastEvidence.Load(); ev != nil {
			ts.LastEvidence, ts.LastEvidenceAt = ev.reason, ev.at
		}
		out = append(out, ts)
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
	if m.newChecker != nil {
		return m.newChecker(t)
	}
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
	fast := min(fastInterval, interval)
	due := time.Now().Add(firstDelay(t, interval))
	timer := time.NewTimer(time.Until(due))
	defer timer.Stop()
	// Start of the last probe run under suspicion. Evidence brings a probe forward only a fast
	// interval after it, so that however much evidence comes the probes follow the fast interval.
	var lastSuspect time.Time
	var noted time.Time // when evidence was last logged at Info
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-e.kick:
			m.suspected(e, &noted)
			if next := lastSuspect.Add(fast); time.Now().Before(next) {
				if next.Before(due) {
					due = next
					timer.Reset(time.Until(due))
				}
				continue
			}
			timer.Stop()
		}
		start := time.Now()
		if e.suspect.Load() {
			lastSuspect = start
		}
		pctx, cancel := context.WithTimeout(ctx, timeout)
		err := e.checker.Check(pctx, t.Addr, t.Source)
		cancel()
		d := time.Since(start)
		if ctx.Err() != nil {
			return // stopped mid-probe: the result says nothing about the server
		}
		up := m.observe(ctx, e, start, d, err, rise, fall, true)
		m.mu.Lock()
		m.firstProbed(targetKey{t.Service, t.Server})
		m.mu.Unlock()

		// Suspicion ends when the state is settled: the target is down, or it passed. Evidence
		// that came during this probe calls for another look all the same.
		suspect := e.suspect.Load() && err != nil && up
		select {
		case <-e.kick:
			suspect = true
		default:
		}
		e.suspect.Store(suspect)
		next := interval
		if suspect {
			next = fast
		}
		due = start.Add(next)
		timer.Reset(max(time.Until(due), 0))
	}
}

// suspected puts e under suspicion after evidence; it runs on e's loop. noted is when the loop
// last logged evidence at Info.
func (m *Monitor) suspected(e *entry, noted *time.Time) {
	if e.suspect.Swap(true) {
		return
	}
	m.mu.Lock()
	up := e.st.Up
	m.mu.Unlock()
	var reason string
	if ev := e.lastEvidence.Load(); ev != nil {
		reason = ev.reason
	}
	// Evidence against a server in use is news, once in a while: forged evidence against a
	// healthy server comes back every second, and is counted in the status.
	level := slog.LevelDebug
	if now := time.Now(); up && now.Sub(*noted) >= evidenceNoteEvery {
		level, *noted = slog.LevelInfo, now
	}
	m.log.Log(context.Background(), level, "health evidence: probing now and at the fast interval until the state settles",
		"service", e.target.Service, "server", e.target.Server, "evidence", reason, "up", up)
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

// observe records one probe result and reports a transition if there is one. It returns whether
// the target is up now.
func (m *Monitor) observe(ctx context.Context, e *entry, start time.Time, d time.Duration, err error, rise, fall int, probed bool) bool {
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
		return after.Up
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
	return after.Up
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

// firstDelay is the delay before a target's first probe: a point of the first-round window.
func firstDelay(t Target, interval time.Duration) time.Duration {
	return stagger(t, min(firstRoundWindow, interval))
}

// stagger is a fixed point in [0, span) derived from the target's identity, so that targets
// started together spread over span instead of firing at once, and the same target lands on the
// same point every time.
func stagger(t Target, span time.Duration) time.Duration {
	h := fnv.New64a()
	h.Write([]byte(t.Service))
	h.Write([]byte{0})
	h.Write([]byte(t.Server))
	return time.Duration(h.Sum64() % uint64(span))
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
