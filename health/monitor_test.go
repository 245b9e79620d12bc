package health

import (
	"bufio"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/pairlb/pairlb/config"
	"github.com/pairlb/pairlb/internal/testenv"
)

type changeEvent struct {
	at time.Time
	Change
}

type probeEvent struct {
	at     time.Time
	server string
	err    error
}

// recorder collects what a Monitor reports.
type recorder struct {
	mu      sync.Mutex
	changes []changeEvent
	probes  []probeEvent
}

func (r *recorder) onChange(c Change) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.changes = append(r.changes, changeEvent{time.Now(), c})
}

func (r *recorder) onProbe(t Target, _ time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.probes = append(r.probes, probeEvent{time.Now(), t.Server, err})
}

func (r *recorder) options() Options {
	return Options{OnChange: r.onChange, OnProbe: r.onProbe}
}

// waitChange waits for the n-th change (1-based) and returns it.
func (r *recorder) waitChange(t *testing.T, n int, limit time.Duration) changeEvent {
	t.Helper()
	eventually(t, limit, "change #"+strconv.Itoa(n), func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.changes) >= n
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changes[n-1]
}

func (r *recorder) changesOf(server string) []Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Change
	for _, c := range r.changes {
		if c.Server == server {
			out = append(out, c.Change)
		}
	}
	return out
}

// probedAfter is the probes of ps that started after t.
func probedAfter(ps []probeEvent, t time.Time) []probeEvent {
	var out []probeEvent
	for _, p := range ps {
		if p.at.After(t) {
			out = append(out, p)
		}
	}
	return out
}

func (r *recorder) probesOf(server string) []probeEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []probeEvent
	for _, p := range r.probes {
		if p.server == server {
			out = append(out, p)
		}
	}
	return out
}

// run starts m.Run and returns a stop function that cancels it and reports how long Run took to
// return. Cleanup stops it too.
func run(t *testing.T, m *Monitor) (stop func() time.Duration) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	var once sync.Once
	var took time.Duration
	stop = func() time.Duration {
		once.Do(func() {
			start := time.Now()
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Run did not return within 5s of its context ending")
			}
			took = time.Since(start)
		})
		return took
	}
	t.Cleanup(func() { stop() })
	return stop
}

// noProbeLoops fails unless every probe loop goroutine is gone within 200ms: a loop whose end
// was waited for may still be returning from its deferred calls.
func noProbeLoops(t *testing.T) {
	t.Helper()
	eventually(t, 200*time.Millisecond, "no probe loop goroutines", func() bool { return probeLoops() == 0 })
}

func tcpCheck(interval, timeout time.Duration, rise, fall int) config.Health {
	return config.Health{Type: config.HealthTCP, Interval: interval, Timeout: timeout, Rise: rise, Fall: fall}
}

func TestMonitorDownAndBack(t *testing.T) {
	const (
		interval = 50 * time.Millisecond
		timeout  = 100 * time.Millisecond
		rise     = 2
		fall     = 3
		slack    = 100 * time.Millisecond // scheduling under -race
	)
	srv := startTCP(t, "127.0.0.1:0", nil)
	addr := srv.Addr(t)
	rec := &recorder{}
	m := NewMonitor(rec.options())
	m.Set([]Target{{Service: "fe-pool", Server: "10.11.1.11", Addr: addr, Check: tcpCheck(interval, timeout, rise, fall)}})
	run(t, m)

	initial := rec.waitChange(t, 1, time.Second)
	up := rec.waitChange(t, 2, time.Second)
	want := []Change{
		{Service: "fe-pool", Server: "10.11.1.11", Up: false, Reason: "initial state: down until the first passed check"},
		{Service: "fe-pool", Server: "10.11.1.11", Up: true, Reason: "check passed"},
	}
	if diff := cmp.Diff(want, []Change{initial.Change, up.Change}); diff != "" {
		t.Fatalf("changes at start (-want +got):\n%s", diff)
	}

	stopped := time.Now()
	srv.Close()
	down := rec.waitChange(t, 3, 2*time.Second)
	if diff := cmp.Diff(Change{Service: "fe-pool", Server: "10.11.1.11", Up: false, Reason: "connection refused"}, down.Change); diff != "" {
		t.Errorf("down change (-want +got):\n%s", diff)
	}
	if took, limit := down.at.Sub(stopped), fall*interval+timeout+slack; took > limit {
		t.Errorf("marked down %s after the server stopped, want within fall x interval + timeout = %s (+%s slack)", took, fall*interval+timeout, slack)
	}
	st := m.Status()
	if len(st) != 1 || st[0].Up || st[0].LastError != "connection refused" || st[0].LastCheck.IsZero() {
		t.Errorf("Status after down: %+v", st)
	}

	startTCP(t, addr.String(), nil) // the server returns on the same address
	back := rec.waitChange(t, 4, 2*time.Second)
	if diff := cmp.Diff(Change{Service: "fe-pool", Server: "10.11.1.11", Up: true, Reason: "2 checks passed"}, back.Change); diff != "" {
		t.Errorf("back-up change (-want +got):\n%s", diff)
	}
	// Exactly rise passed checks between the down and the up change, an interval apart.
	var passed []probeEvent
	for _, p := range rec.probesOf("10.11.1.11") {
		if p.at.After(down.at) && !p.at.After(back.at) && p.err == nil {
			passed = append(passed, p)
		}
	}
	if len(passed) != rise {
		t.Fatalf("%d passed checks between down and up, want rise = %d", len(passed), rise)
	}
	if gap := passed[1].at.Sub(passed[0].at); gap < interval-10*time.Millisecond {
		t.Errorf("passed checks %s apart, want about one interval (%s)", gap, interval)
	}
}

func TestMonitorHangingProbeDoesNotDelayOthers(t *testing.T) {
	hang := startTCP(t, "127.0.0.1:0", holdUntilClosed) // accepts, never answers
	good := startTCP(t, "127.0.0.1:0", nil)
	const interval = 20 * time.Millisecond
	rec := &recorder{}
	m := NewMonitor(rec.options())
	m.Set([]Target{
		{Service: "web", Server: "hang", Addr: hang.Addr(t), Check: config.Health{Type: config.HealthHTTP, Interval: interval, Timeout: 10 * time.Second, Rise: 1, Fall: 1}},
		{Service: "web", Server: "good", Addr: good.Addr(t), Check: tcpCheck(interval, time.Second, 1, 1)},
	})
	stop := run(t, m)
	// Ten probes of the good target take about 200 ms; the hanging probe's timeout is 10 s, so
	// within the wait the hanging one cannot have completed, and it must not have held the
	// good one back.
	eventually(t, 5*time.Second, "10 probes of the good target while the other hangs", func() bool {
		return len(rec.probesOf("good")) >= 10
	})
	if n := len(rec.probesOf("hang")); n != 0 {
		t.Errorf("hanging target completed %d probes, want 0 within its 10s timeout", n)
	}
	if n := hang.total.Load(); n != 1 {
		t.Errorf("hanging server got %d connections, want 1: probes piled up", n)
	}
	// Removing the hanging target does not wait for its probe's timeout either.
	setStart := time.Now()
	m.Set([]Target{{Service: "web", Server: "good", Addr: good.Addr(t), Check: tcpCheck(interval, time.Second, 1, 1)}})
	if took := time.Since(setStart); took > time.Second {
		t.Errorf("Set removing the hanging target took %s", took)
	}
	eventually(t, time.Second, "the hanging connection closed", func() bool { return hang.cur.Load() == 0 })
	// Stopping does not wait for a probe's timeout.
	if took := stop(); took > time.Second {
		t.Errorf("Run took %s to return with a probe hanging", took)
	}
	noProbeLoops(t)
}

func TestMonitorSlowCheckDoesNotPileUp(t *testing.T) {
	var inFlight, peak, served atomic.Int64
	slow := startTCP(t, "127.0.0.1:0", func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		n := inFlight.Add(1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		time.Sleep(150 * time.Millisecond)
		inFlight.Add(-1)
		served.Add(1)
		_, _ = c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
	})
	rec := &recorder{}
	m := NewMonitor(rec.options())
	m.Set([]Target{{Service: "web", Server: "slow", Addr: slow.Addr(t),
		Check: config.Health{Type: config.HealthHTTP, Interval: 20 * time.Millisecond, Timeout: time.Second, Rise: 1, Fall: 1}}})
	stop := run(t, m)
	// Each check takes 150 ms at a 20 ms interval: had they overlapped, three would have
	// piled up on the server by the time three completed.
	eventually(t, 5*time.Second, "3 probes of 150 ms checks completed", func() bool {
		return len(rec.probesOf("slow")) >= 3
	})
	stop()

	if p := peak.Load(); p != 1 {
		t.Errorf("peak of %d requests in flight at once, want 1", p)
	}
	probes := rec.probesOf("slow")
	for _, p := range probes {
		if p.err != nil {
			t.Errorf("probe failed: %v", p.err)
		}
	}
}

func TestMonitorSetReconcile(t *testing.T) {
	live := startTCP(t, "127.0.0.1:0", nil).Addr(t)
	dead := closedPort(t)
	hc := tcpCheck(30*time.Millisecond, 100*time.Millisecond, 2, 2)
	target := func(server string, addr netip.AddrPort, h config.Health) Target {
		return Target{Service: "fe", Server: server, Addr: addr, Check: h}
	}
	rec := &recorder{}
	m := NewMonitor(rec.options())
	m.Set([]Target{target("a", live, hc), target("b", live, hc), target("c", live, hc)})
	if n := probeLoops(); n != 0 {
		t.Fatalf("%d probe loops before Run, want 0", n)
	}
	run(t, m)
	eventually(t, 2*time.Second, "a, b and c up", func() bool {
		st := m.Status()
		return len(st) == 3 && st[0].Up && st[1].Up && st[2].Up
	})
	if n := probeLoops(); n != 3 {
		t.Fatalf("%d probe loops, want 3", n)
	}
	sinceA := m.Status()[0].Since
	m.mu.Lock()
	oldA, oldC := m.targets[targetKey{"fe", "a"}], m.targets[targetKey{"fe", "c"}]
	m.mu.Unlock()

	changedCheck := hc
	changedCheck.Interval = 40 * time.Millisecond
	changedCheck.Expect = []int{200} // irrelevant to tcp, but a change all the same
	m.Set([]Target{target("a", live, changedCheck), target("b", live, hc), target("d", dead, hc)})
	setReturned := time.Now()

	for name, e := range map[string]*entry{"a (restarted)": oldA, "c (removed)": oldC} {
		select {
		case <-e.done:
		default:
			t.Errorf("the old loop of %s had not ended when Set returned", name)
		}
	}
	eventually(t, time.Second, "3 probe loops (a restarted, b kept, c stopped, d new)", func() bool { return probeLoops() == 3 })
	st := m.Status()
	got := make([]string, len(st))
	for i, s := range st {
		got[i] = s.Server + "=" + strconv.FormatBool(s.Up)
	}
	if diff := cmp.Diff([]string{"a=true", "b=true", "d=false"}, got); diff != "" {
		t.Errorf("Status right after Set (-want +got):\n%s", diff)
	}
	if !st[0].Since.Equal(sinceA) {
		t.Errorf("a's Since changed from %v to %v on a restart", sinceA, st[0].Since)
	}
	// Long enough for a wrong change to show: the restarted a and the new d have each been
	// probed (d twice, its fall) since Set returned.
	eventually(t, 5*time.Second, "a probed once and d twice after the Set", func() bool {
		return len(probedAfter(rec.probesOf("a"), setReturned)) >= 1 && len(probedAfter(rec.probesOf("d"), setReturned)) >= 2
	})

	if diff := cmp.Diff([]Change{
		{Service: "fe", Server: "a", Up: false, Reason: "initial state: down until the first passed check"},
		{Service: "fe", Server: "a", Up: true, Reason: "check passed"},
	}, rec.changesOf("a")); diff != "" {
		t.Errorf("changes of a, restarted with its state kept (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]Change{
		{Service: "fe", Server: "d", Up: false, Reason: "initial state: down until the first passed check"},
	}, rec.changesOf("d")); diff != "" {
		t.Errorf("changes of d (-want +got):\n%s", diff)
	}
	for _, p := range rec.probesOf("c") {
		if p.at.After(setReturned) {
			t.Errorf("c probed at %v, after the Set that removed it returned at %v", p.at, setReturned)
		}
	}

	// Unchanged Set: nothing restarts (the loops are the same goroutines: no initial change,
	// and the changes list stays as it is).
	before := len(rec.changesOf("b"))
	m.Set([]Target{target("a", live, changedCheck), target("b", live, hc), target("d", dead, hc)})
	if n := len(rec.changesOf("b")); n != before {
		t.Errorf("an identical Set produced changes for b")
	}

	m.Set(nil)
	noProbeLoops(t)
	if st := m.Status(); len(st) != 0 {
		t.Errorf("Status after Set(nil): %+v", st)
	}
}

func TestMonitorSetOutsideRun(t *testing.T) {
	live := startTCP(t, "127.0.0.1:0", nil).Addr(t)
	rec := &recorder{}
	m := NewMonitor(rec.options())
	up := tcpCheck(20*time.Millisecond, 100*time.Millisecond, 1, 1)
	up.InitialUp = true
	m.Set([]Target{{Service: "s", Server: "x", Addr: live, Check: up}})
	if st := m.Status(); len(st) != 1 || !st[0].Up {
		t.Fatalf("Status before Run: %+v, want x up (initial_up)", st)
	}
	stop := run(t, m)
	eventually(t, time.Second, "a probe", func() bool { return len(rec.probesOf("x")) > 0 })
	stop()
	noProbeLoops(t)
	m.Set([]Target{{Service: "s", Server: "y", Addr: live, Check: up}})
	// Nothing may start: a short wait for a loop that must not appear (an absence has no
	// event to wait for).
	time.Sleep(50 * time.Millisecond)
	if n := probeLoops(); n != 0 {
		t.Errorf("%d probe loops after a Set following Run's end, want 0", n)
	}
	if len(rec.probesOf("y")) != 0 {
		t.Error("y probed after Run ended")
	}
	if err := m.Run(context.Background()); err == nil {
		t.Error("second Run returned nil, want an error")
	}
	if diff := cmp.Diff([]Change{{Service: "s", Server: "x", Up: true, Reason: "initial state: initial_up"}}, rec.changesOf("x")); diff != "" {
		t.Errorf("changes of x (-want +got):\n%s", diff)
	}
}

func TestMonitorNone(t *testing.T) {
	rec := &recorder{}
	m := NewMonitor(rec.options())
	dead := closedPort(t)
	m.Set([]Target{
		{Service: "s", Server: "none", Addr: dead, Check: config.Health{Type: config.HealthNone}},
		{Service: "s", Server: "tcp", Addr: dead, Check: tcpCheck(20*time.Millisecond, 100*time.Millisecond, 1, 1)},
	})
	run(t, m)
	eventually(t, time.Second, "tcp probed", func() bool { return len(rec.probesOf("tcp")) > 0 })
	m.Set([]Target{
		{Service: "s", Server: "none", Addr: dead, Check: config.Health{Type: config.HealthNone}},
		{Service: "s", Server: "tcp", Addr: dead, Check: config.Health{Type: config.HealthNone}},
	})
	eventually(t, time.Second, "tcp up", func() bool { return len(rec.changesOf("tcp")) == 2 })
	if diff := cmp.Diff([]Change{{Service: "s", Server: "none", Up: true, Reason: "initial state: no health check"}}, rec.changesOf("none")); diff != "" {
		t.Errorf("changes of none (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]Change{
		{Service: "s", Server: "tcp", Up: false, Reason: "initial state: down until the first passed check"},
		{Service: "s", Server: "tcp", Up: true, Reason: "no health check"},
	}, rec.changesOf("tcp")); diff != "" {
		t.Errorf("changes of tcp turned none (-want +got):\n%s", diff)
	}
	if n := len(rec.probesOf("none")); n != 0 {
		t.Errorf("a none target was probed %d times", n)
	}
	eventually(t, time.Second, "none loops ended", func() bool { return probeLoops() == 0 })
}

func TestMonitorUnsupportedCheck(t *testing.T) {
	rec := &recorder{}
	m := NewMonitor(rec.options())
	m.Set([]Target{{Service: "s", Server: "x", Addr: closedPort(t),
		Check: config.Health{Type: "icmp", Interval: 20 * time.Millisecond, Timeout: 50 * time.Millisecond}}})
	run(t, m)
	eventually(t, time.Second, "a probe", func() bool { return len(rec.probesOf("x")) > 0 })
	if st := m.Status(); st[0].Up || st[0].LastError != `unsupported check type "icmp"` {
		t.Errorf("Status: %+v", st[0])
	}
}

// fakeChecker is a checker the test controls: it records when each check starts, fails while
// fail is set, and while hold is set waits for release (or its context, unless deaf is set:
// a checker that ignores its deadline, the defect FirstRound's backstop is for).
type fakeChecker struct {
	fail, hold, deaf atomic.Bool
	release          chan struct{}

	mu     sync.Mutex
	starts []time.Time
	active int // checks running now
	peak   int
}

func newFakeChecker() *fakeChecker { return &fakeChecker{release: make(chan struct{})} }

func (f *fakeChecker) Check(ctx context.Context, addr netip.AddrPort, _ netip.Addr) error {
	f.mu.Lock()
	f.starts = append(f.starts, time.Now())
	f.active++
	f.peak = max(f.peak, f.active)
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.active--
		f.mu.Unlock()
	}()
	if f.hold.Load() {
		if f.deaf.Load() {
			<-f.release
		} else {
			select {
			case <-f.release:
			case <-ctx.Done():
				return failed("fake", addr, ctx.Err())
			}
		}
	}
	if f.fail.Load() {
		return failedReason("fake", addr, "fake failure")
	}
	return nil
}

// checks returns the start times of the checks so far.
func (f *fakeChecker) checks() []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.starts)
}

// fakeMonitor returns a Monitor whose targets are checked by the fakes, one per server name,
// made on first use.
func fakeMonitor(rec *recorder, opts Options) (*Monitor, func(server string) *fakeChecker) {
	var mu sync.Mutex
	fakes := map[string]*fakeChecker{}
	get := func(server string) *fakeChecker {
		mu.Lock()
		defer mu.Unlock()
		f := fakes[server]
		if f == nil {
			f = newFakeChecker()
			fakes[server] = f
		}
		return f
	}
	if rec != nil {
		opts.OnChange, opts.OnProbe = rec.onChange, rec.onProbe
	}
	m := NewMonitor(opts)
	m.newChecker = func(t Target) Checker { return get(t.Server) }
	return m, get
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// TestMonitorFirstRoundStartsAtOnce: with the default 9 s interval the first probes used to
// wait up to an interval, and a fresh box refused every client meanwhile. With an interval of an
// hour, a target whose first probe waited for its place in the interval would not be probed for
// minutes.
func TestMonitorFirstRoundStartsAtOnce(t *testing.T) {
	live := startTCP(t, "127.0.0.1:0", nil).Addr(t)
	rec := &recorder{}
	m := NewMonitor(rec.options())
	hc := tcpCheck(time.Hour, time.Second, 2, 3)
	var targets []Target
	for i := range 20 {
		targets = append(targets, Target{Service: "fe", Server: "10.11.1." + strconv.Itoa(i), Addr: live, Check: hc})
	}
	m.Set(targets)
	if isClosed(m.FirstRound()) {
		t.Fatal("FirstRound closed before Run")
	}
	started := time.Now()
	run(t, m)
	select {
	case <-m.FirstRound():
	case <-time.After(5 * time.Second):
		t.Fatalf("the first round was not done 5s after the start; %d of %d targets probed", len(rec.probes), len(targets))
	}
	took := time.Since(started)
	for _, tg := range targets {
		ps := rec.probesOf(tg.Server)
		if len(ps) != 1 || ps[0].err != nil {
			t.Errorf("%s: %d probes by the end of the first round (%v), want 1 passed", tg.Server, len(ps), ps)
		}
		if ch := rec.changesOf(tg.Server); len(ch) != 2 || !ch[1].Up {
			t.Errorf("%s: changes %v by the end of the first round, want initial down then up", tg.Server, ch)
		}
	}
	t.Logf("first round of %d targets done %s after the start", len(targets), took)

	// A target added by a reload is probed at once too, not an interval later.
	added := time.Now()
	m.Set(append(targets, Target{Service: "fe", Server: "10.11.1.99", Addr: live, Check: hc}))
	eventually(t, 5*time.Second, "the added target probed", func() bool { return len(rec.probesOf("10.11.1.99")) == 1 })
	t.Logf("added target probed %s after Set", time.Since(added))
}

func TestFirstDelayIsWithinTheWindow(t *testing.T) {
	seen := map[time.Duration]bool{}
	lo, hi := firstRoundWindow, time.Duration(0)
	for i := range 100 {
		tg := Target{Service: "fe", Server: "10.11.1." + strconv.Itoa(i)}
		d := firstDelay(tg, config.DefaultHealthInterval)
		if d < 0 || d >= firstRoundWindow {
			t.Fatalf("%s: first probe after %s, want within the window [0, %s)", tg.Server, d, firstRoundWindow)
		}
		seen[d] = true
		lo, hi = min(lo, d), max(hi, d)
		if short := firstDelay(tg, 50*time.Millisecond); short >= 50*time.Millisecond {
			t.Fatalf("%s: first probe after %s with a 50ms interval, want within the interval", tg.Server, short)
		}
	}
	if len(seen) < 95 || hi-lo < firstRoundWindow/2 {
		t.Errorf("first probes poorly spread over the window: %d distinct, range %s-%s", len(seen), lo, hi)
	}
}

func TestMonitorFirstRound(t *testing.T) {
	hc := tcpCheck(time.Hour, 5*time.Second, 1, 1)
	target := func(server string, h config.Health) Target {
		return Target{Service: "fe", Server: server, Addr: netip.MustParseAddrPort("127.0.0.1:9"), Check: h}
	}

	t.Run("waits for every target's verdict", func(t *testing.T) {
		rec := &recorder{}
		m, fake := fakeMonitor(rec, Options{})
		fake("slow").hold.Store(true)
		m.Set([]Target{target("a", hc), target("b", hc), target("slow", hc), target("none", config.Health{Type: config.HealthNone})})
		run(t, m)
		eventually(t, 5*time.Second, "a and b probed, slow probing", func() bool {
			return len(rec.probesOf("a")) == 1 && len(rec.probesOf("b")) == 1 && len(fake("slow").checks()) == 1
		})
		if isClosed(m.FirstRound()) {
			t.Fatal("FirstRound closed while slow's first probe runs")
		}
		close(fake("slow").release)
		select {
		case <-m.FirstRound():
		case <-time.After(5 * time.Second):
			t.Fatal("FirstRound still open 5s after the last first probe ended")
		}
		// Closed after OnChange had the verdict: the daemon may use the servers at once.
		if ch := rec.changesOf("slow"); len(ch) != 2 || !ch[1].Up {
			t.Errorf("changes of slow when FirstRound closed: %v, want initial down then up", ch)
		}
	})

	t.Run("none only: done at once", func(t *testing.T) {
		m, _ := fakeMonitor(nil, Options{})
		m.Set([]Target{target("none", config.Health{Type: config.HealthNone})})
		run(t, m)
		eventually(t, time.Second, "FirstRound closed", func() bool { return isClosed(m.FirstRound()) })
	})

	t.Run("a removed target is not waited for", func(t *testing.T) {
		m, fake := fakeMonitor(nil, Options{})
		fake("gone").hold.Store(true)
		m.Set([]Target{target("a", hc), target("gone", hc)})
		run(t, m)
		eventually(t, 5*time.Second, "gone probing", func() bool { return len(fake("gone").checks()) == 1 })
		m.Set([]Target{target("a", hc)})
		eventually(t, 5*time.Second, "FirstRound closed", func() bool { return isClosed(m.FirstRound()) })
	})

	t.Run("closed when Run returns", func(t *testing.T) {
		m, fake := fakeMonitor(nil, Options{})
		fake("a").hold.Store(true)
		m.Set([]Target{target("a", hc)})
		stop := run(t, m)
		eventually(t, 5*time.Second, "a probing", func() bool { return len(fake("a").checks()) == 1 })
		stop()
		if !isClosed(m.FirstRound()) {
			t.Error("FirstRound open after Run returned")
		}
	})

	t.Run("bounded even if a check ignores its timeout", func(t *testing.T) {
		var logs testenv.Buffer
		m, fake := fakeMonitor(nil, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		deaf := fake("deaf")
		deaf.hold.Store(true)
		deaf.deaf.Store(true)
		const timeout = 100 * time.Millisecond
		m.Set([]Target{target("deaf", tcpCheck(time.Hour, timeout, 1, 1))})
		started := time.Now()
		run(t, m)
		t.Cleanup(func() { close(deaf.release) }) // runs before run's cleanup, which waits for the loop
		select {
		case <-m.FirstRound():
		case <-time.After(10 * time.Second):
			t.Fatal("FirstRound still open 10s after the start with a check that never returns")
		}
		bound := firstRoundWindow + timeout + firstRoundGrace
		if took := time.Since(started); took < bound-50*time.Millisecond {
			t.Errorf("FirstRound closed %s after the start, before its bound %s", took, bound)
		}
		if !strings.Contains(logs.String(), "first round of checks not finished") || !strings.Contains(logs.String(), "fe/deaf") {
			t.Errorf("no warning naming the pending target:\n%s", logs.String())
		}
	})
}

func TestStagger(t *testing.T) {
	const interval = 9 * time.Second
	a := Target{Service: "fe", Server: "10.11.1.11"}
	b := a // same identity, other probe settings
	b.Addr = netip.MustParseAddrPort("10.11.1.11:5061")
	b.Check.Type = config.HealthTLS
	if stagger(a, interval) != stagger(b, interval) {
		t.Fatal("stagger depends on more than the target's identity")
	}
	lo, hi := interval, time.Duration(0)
	seen := map[time.Duration]bool{}
	for i := range 100 {
		off := stagger(Target{Service: "fe", Server: "10.11.1." + strconv.Itoa(i)}, interval)
		if off < 0 || off >= interval {
			t.Fatalf("offset %s outside [0, %s)", off, interval)
		}
		seen[off] = true
		lo, hi = min(lo, off), max(hi, off)
	}
	if len(seen) < 95 || hi-lo < interval/2 {
		t.Errorf("offsets poorly spread: %d distinct, range %s-%s", len(seen), lo, hi)
	}
}

func TestMonitorLogsOneLinePerChange(t *testing.T) {
	var buf testenv.Buffer
	rec := &recorder{}
	opts := rec.options()
	opts.Logger = slog.New(slog.NewJSONHandler(&buf, nil))
	m := NewMonitor(opts)
	h := tcpCheck(20*time.Millisecond, 100*time.Millisecond, 1, 2)
	h.InitialUp = true
	m.Set([]Target{{Service: "edge-ext", Server: "203.0.113.7", Addr: closedPort(t), Check: h}})
	stop := run(t, m)
	rec.waitChange(t, 2, time.Second)
	stop()

	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		if rec["msg"] == "health state" {
			lines = append(lines, rec)
		}
	}
	if len(lines) != 2 {
		t.Fatalf("%d state lines, want 2 (initial, down):\n%s", len(lines), buf.String())
	}
	for _, k := range []string{"service", "server", "state", "reason"} {
		if _, ok := lines[1][k]; !ok {
			t.Errorf("state line lacks %q: %v", k, lines[1])
		}
	}
	if lines[1]["service"] != "edge-ext" || lines[1]["server"] != "203.0.113.7" ||
		lines[1]["state"] != "down" || lines[1]["reason"] != "connection refused" {
		t.Errorf("down line: %v", lines[1])
	}
	if lines[0]["state"] != "up" {
		t.Errorf("initial line: %v", lines[0])
	}
}
