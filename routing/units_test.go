package routing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	plbns "github.com/pairlb/pairlb/internal/netns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestOneGatewayDoesNotBlockTheOthers is the field report in the lab: the box loses its IPv6
// address on int0 (a flap without keep_addr_on_down takes it), then int0 flaps, which empties
// the IPv4 table. The IPv4 gateway, on the same link, must be restored while the IPv6 gateway
// is reported; the IPv6 unit must come back with the address. Before units, the re-apply
// failed as a whole ("gateway ... is on no connected subnet") and the IPv4 table stayed empty.
func TestOneGatewayDoesNotBlockTheOthers(t *testing.T) {
	l := newLab(t)
	h := l.box.Handle()
	l.echo(t)
	logger, logged := teeLogger(t)
	m := New(h, logger, WithNamespace(l.box.NsHandle()))
	m.debounce = 50 * time.Millisecond
	cfg := labConfig(true)
	if err := m.Set(cfg); err != nil {
		t.Fatal(err)
	}
	full, err := m.Plan(cfg)
	if err != nil || len(full.Problems) != 0 {
		t.Fatalf("plan with every address: %v, problems %v", err, full.Problems)
	}
	table4, table6 := full.Units[0].Table, full.Units[1].Table
	if full.Units[0].Addr != gw4 || full.Units[1].Addr != gw6 {
		t.Fatalf("units %v: want the IPv4 gateway's first", full.Units)
	}
	t.Cleanup(func() { // after Run has stopped
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	runManager(t, m)
	for _, vip := range []netip.Addr{vip4, vip6} {
		if err := retrySession(l, vip); err != nil {
			t.Fatalf("session to %s before the fault: %v", vip, err)
		}
	}

	// The box's own IPv6 address on int0 goes: the IPv6 gateway is on no connected subnet.
	own6 := netip.MustParsePrefix("2001:db8:1::2/64")
	if err := delAddr(l.box, "int0", own6); err != nil {
		t.Fatal(err)
	}
	until(t, 5*time.Second, "the IPv6 gateway reported", func() error {
		if !hasProblem(m.Problems(), UnitGateway, gw6) {
			return fmt.Errorf("problems %v", m.Problems())
		}
		return nil
	})
	// What the kernel kept of the IPv6 table still carries the VIP's replies (the router is
	// reached through the link-local addresses): pairlb must not remove it.
	if err := retrySession(l, vip6); err != nil {
		t.Errorf("session to %s after the box's IPv6 address went: %v; the routes still there were removed", vip6, err)
	}
	// A re-apply while the problem remains writes nothing: it retries only what is missing.
	if n := len(eventsDuring(t, l.box, "dmz0", pairlbsChange, func() { m.reapply() })); n != 0 {
		t.Errorf("a re-apply with the IPv6 gateway still unreachable wrote %d changes; want 0", n)
	}
	// ... and logs nothing again: a problem is logged when it appears, not on every retry.
	appeared := `msg="routing: part of the plan not installed; retrying when links or addresses change" unit="gateway 2001:db8:1::1"`
	if n := logged(appeared); n != 1 {
		t.Errorf("the IPv6 gateway's problem was logged %d times after a retry, want once", n)
	}

	// int0 flaps: the kernel empties the IPv4 table (and the IPv6 one) through the link.
	if err := l.box.SetLink("int0", false); err != nil {
		t.Fatal(err)
	}
	if _, routes, err := m.Installed(); err != nil || slices.ContainsFunc(routes, func(r Route) bool { return r.Gw == gw4 }) {
		t.Fatalf("the route via %s survived int0 going down (%v): the lab does not reproduce the flap", gw4, err)
	}
	if err := l.box.SetLink("int0", true); err != nil {
		t.Fatal(err)
	}
	want4 := slices.DeleteFunc(slices.Clone(full.Routes), func(r Route) bool { return r.Table != table4 })
	until(t, 5*time.Second, "the IPv4 table restored", func() error {
		_, routes, err := m.Installed()
		if err != nil {
			return err
		}
		got := slices.DeleteFunc(routes, func(r Route) bool { return r.Table != table4 })
		if d := Diff(Plan{Routes: want4}, Plan{Routes: got}); len(d) != 0 {
			return fmt.Errorf("table %d differs: %q", table4, d)
		}
		return nil
	})
	if err := retrySession(l, vip4); err != nil {
		t.Errorf("session to %s after the flap: %v", vip4, err)
	}
	if !hasProblem(m.Problems(), UnitGateway, gw6) {
		t.Errorf("the IPv6 gateway is not reported while its subnet is gone: %v", m.Problems())
	}
	for _, p := range m.Problems() {
		if p.Family != IPv6 || p.Since.IsZero() {
			t.Errorf("problem %s: want only IPv6 problems, each with a time", p)
		}
	}
	// The IPv6 VIP keeps its rule and its unreachable default: its replies never take the main
	// table while the gateway cannot be reached.
	rules, routes, err := m.Installed()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(rules, Rule{Priority: table6, Table: table6, Src: netip.PrefixFrom(vip6, 128)}) {
		t.Errorf("the rule from %s is gone: %v", vip6, rules)
	}
	if !slices.ContainsFunc(routes, func(r Route) bool { return r.Table == table6 && r.Type == Unreachable }) {
		t.Errorf("table %d has no unreachable default: %v", table6, routes)
	}

	// The address comes back: the IPv6 unit is installed again and nothing is reported.
	if err := l.box.AddAddr("int0", own6); err != nil {
		t.Fatal(err)
	}
	until(t, 5*time.Second, "everything installed again", func() error {
		if d, err := m.pending(cfg); err != nil || len(d) != 0 {
			return fmt.Errorf("diff %q, %v", d, err)
		}
		if p := m.Problems(); len(p) != 0 {
			return fmt.Errorf("problems %v", p)
		}
		return nil
	})
	if err := retrySession(l, vip6); err != nil {
		t.Errorf("session to %s with the address back: %v", vip6, err)
	}
	if n := logged(`msg="routing: part of the plan installed" unit="gateway 2001:db8:1::1"`); n != 1 {
		t.Errorf("the IPv6 gateway's repair was logged %d times, want once", n)
	}
	if n := logged(appeared); n != 1 {
		t.Errorf("the IPv6 gateway's problem was logged %d times, want once", n)
	}
}

// teeLogger logs to the test and counts lines: count(s) is how many lines so far contain s.
func teeLogger(t *testing.T) (*slog.Logger, func(string) int) {
	var mu sync.Mutex
	var lines []string
	w := writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		lines = append(lines, string(p))
		mu.Unlock()
		t.Log(strings.TrimSuffix(string(p), "\n"))
		return len(p), nil
	})
	count := func(s string) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, l := range lines {
			if strings.Contains(l, s) {
				n++
			}
		}
		return n
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})), count
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// until polls cond every 20 ms until it returns nil, and fails the test with its last error
// once the deadline has passed.
func until(t *testing.T, limit time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, limit, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func hasProblem(ps []Problem, kind UnitKind, a netip.Addr) bool {
	return slices.ContainsFunc(ps, func(p Problem) bool { return p.Kind == kind && p.Addr == a })
}

// retrySession opens a session to vip, three times at most: the first SYN may wait for
// neighbour discovery on a fresh link.
func retrySession(l *lab, vip netip.Addr) error {
	var err error
	for range 3 {
		if err = l.session(vip); err == nil {
			return nil
		}
	}
	return err
}

// runManager runs m.Run until the test ends (or stop is called) and returns once Run watches
// the namespace: a change made from then on is seen.
func runManager(t *testing.T, m *Manager) (stop func()) {
	t.Helper()
	watching := make(chan struct{}, 1)
	m.watching = func() {
		select {
		case watching <- struct{}{}:
		default:
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- m.Run(ctx) }()
	stop = sync.OnceFunc(func() {
		cancel()
		if err := <-runDone; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	t.Cleanup(stop)
	select {
	case <-watching:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not watch within 10s")
	}
	return stop
}

// An event filter of eventsDuring: route is nil for an address event and addr nil for a route
// event.
type eventFilter func(route *netlink.RouteUpdate, addr netip.Addr) bool

// anyEvent counts every route and address notification.
func anyEvent(*netlink.RouteUpdate, netip.Addr) bool { return true }

// pairlbsChange counts the changes to pairlb's tables and to global addresses.
func pairlbsChange(r *netlink.RouteUpdate, a netip.Addr) bool {
	if r != nil {
		return ownsTable(r.Table)
	}
	return !a.IsLinkLocalUnicast()
}

// eventsDuring lists the route and address notifications in n that count while f runs. The
// list is exact, not a sleep: after f, a marker route (in a table of no one's) and a marker
// address are added on link, and the events are listed up to the markers' (each socket
// receives its events in order).
func eventsDuring(t *testing.T, n *plbns.NS, link string, count eventFilter, f func()) []string {
	t.Helper()
	ns := n.NsHandle()
	done := make(chan struct{})
	routes := make(chan netlink.RouteUpdate, 256)
	addrs := make(chan netlink.AddrUpdate, 256)
	if err := netlink.RouteSubscribeWithOptions(routes, done, netlink.RouteSubscribeOptions{Namespace: &ns}); err != nil {
		t.Fatal(err)
	}
	if err := netlink.AddrSubscribeWithOptions(addrs, done, netlink.AddrSubscribeOptions{Namespace: &ns}); err != nil {
		close(done)
		t.Fatal(err)
	}
	const markerTable = 99
	markerDst := netip.MustParsePrefix("198.18.99.0/24")
	markerAddr := netip.MustParsePrefix("198.18.99.1/32")
	var (
		wg                  sync.WaitGroup
		mu                  sync.Mutex
		seen                []string
		routeMark, addrMark = make(chan struct{}), make(chan struct{})
	)
	note := func(s string) {
		mu.Lock()
		seen = append(seen, s)
		mu.Unlock()
	}
	// Each goroutine stops counting at its marker; what follows (the marker address's own
	// local route, say) is after f.
	wg.Go(func() {
		marked := false
		for u := range addrs {
			a, _ := netip.AddrFromSlice(u.LinkAddress.IP)
			switch a = a.Unmap(); {
			case marked:
			case a == markerAddr.Addr():
				marked = true
				close(addrMark)
			case count(nil, a):
				note(fmt.Sprintf("address %v new=%v", a, u.NewAddr))
			}
		}
	})
	wg.Go(func() {
		marked := false
		for u := range routes {
			switch {
			case marked:
			case u.Table == markerTable:
				marked = true
				close(routeMark)
			case count(&u, netip.Addr{}):
				note(fmt.Sprintf("route table %d dst %v type %d", u.Table, u.Dst, u.Type))
			}
		}
	})

	// The subscriptions end however f ends (t.Fatal in f included).
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			close(done)
			wg.Wait()
		}
	}
	defer stop()
	f()
	l, err := n.Link(link)
	if err == nil {
		err = n.Handle().RouteAdd(&netlink.Route{Table: markerTable, LinkIndex: l.Attrs().Index, Scope: netlink.SCOPE_LINK, Dst: ipNet(markerDst)})
	}
	if err == nil {
		err = n.AddAddr(link, markerAddr)
	}
	if err == nil {
		for _, ch := range []chan struct{}{routeMark, addrMark} {
			select {
			case <-ch:
			case <-time.After(5 * time.Second):
				err = errors.New("a marker's notification did not arrive within 5s")
			}
		}
	}
	stop()
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Handle().RouteDel(&netlink.Route{Table: markerTable, LinkIndex: l.Attrs().Index, Scope: netlink.SCOPE_LINK, Dst: ipNet(markerDst)}); err != nil {
		t.Error(err)
	}
	if err := delAddr(n, link, markerAddr); err != nil {
		t.Error(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) > 0 {
		t.Logf("changes: %q", seen)
	}
	return seen
}

// One route the kernel refuses is a problem of its unit alone: every other object of the plan
// is installed, and the error names the route and the kernel's answer.
func TestApplyRefusedRouteIsItsUnitsProblem(t *testing.T) {
	l := newLab(t)
	m := New(l.box.Handle(), testLogger(t), WithNamespace(l.box.NsHandle()))
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Error(err)
		}
	})
	cfg := labConfig(true)
	links, err := m.Links()
	if err != nil {
		t.Fatal(err)
	}
	p, err := BuildPlan(cfg, links)
	if err != nil || len(p.Problems) != 0 {
		t.Fatalf("plan: %v, %v", err, p.Problems)
	}
	// A route via a gateway on no subnet of the box, first in the IPv4 table: ENETUNREACH.
	bad := Route{Table: p.Units[0].Table, Dst: pfx("198.18.77.0/24"), Gw: addr("198.18.76.1"), Link: links[0].Index, Metric: RouteMetric}
	p.Routes = append([]Route{bad}, p.Routes...)
	m.mu.Lock()
	probs, err := m.apply(p, links)
	m.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if len(probs) != 1 || probs[0].UnitID != p.Units[0].UnitID || !strings.Contains(probs[0].Reason, bad.Line()) ||
		!strings.Contains(probs[0].Reason, unix.ENETUNREACH.Error()) {
		t.Errorf("problems = %v; want one, of %s, naming %q and %q", probs, p.Units[0].UnitID, bad.Line(), unix.ENETUNREACH.Error())
	}
	p.Routes = p.Routes[1:]
	rules, routes, err := m.Installed()
	if err != nil {
		t.Fatal(err)
	}
	if d := Diff(p, Plan{Rules: rules, Routes: routes}); len(d) != 0 {
		t.Errorf("the rest of the plan is not installed: %q", d)
	}
}
