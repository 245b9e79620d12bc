package routing

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/pairlb/pairlb/config"
	plbns "github.com/pairlb/pairlb/internal/netns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The lab: the guide's failure in miniature, in namespaces of its own.
//
//	client 198.18.2.10 ──┐ DMZ bridge (namespace sw) 198.18.2.0/24, 2001:db8:2::/64
//	box dmz0 198.18.2.2 ─┤
//	router dmz0 .1 ──────┘
//	router int0 198.18.1.1 ── box int0 198.18.1.2 (internal, 198.18.1.0/24, 2001:db8:1::/64)
//
// The VIPs 198.18.1.100 and 2001:db8:1::100 live on the internal network; their gateway is the
// router, a stateful firewall that drops conntrack-invalid packets. The client on the box's own
// DMZ subnet reaches the VIP through the router; without pairlb's rule the box answers straight
// out of dmz0 and the router drops the rest of the handshake.
var (
	vip4   = netip.MustParseAddr("198.18.1.100")
	vip6   = netip.MustParseAddr("2001:db8:1::100")
	gw4    = netip.MustParseAddr("198.18.1.1")
	gw6    = netip.MustParseAddr("2001:db8:1::1")
	client = []netip.Prefix{netip.MustParsePrefix("198.18.2.10/24"), netip.MustParsePrefix("2001:db8:2::10/64")}
)

const echoPort = 8080

type lab struct {
	lab                      *plbns.Lab
	sw, box, router, clientN *plbns.NS
}

func newLab(t *testing.T) *lab {
	t.Helper()
	l := &lab{lab: plbns.ForTest(t)}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	ns := func(name string) *plbns.NS { return l.lab.MustNamespace(t, name) }
	l.sw, l.box, l.router, l.clientN = ns("sw"), ns("box"), ns("rtr"), ns("cli")

	attach, err := l.sw.Bridge("br0")
	must(err)
	must(l.lab.Veth(l.box, "dmz0", l.sw, "p-box"))
	must(l.lab.Veth(l.router, "dmz0", l.sw, "p-rtr"))
	must(l.lab.Veth(l.clientN, "eth0", l.sw, "p-cli"))
	for _, p := range []string{"p-box", "p-rtr", "p-cli"} {
		must(attach(p))
	}
	// keep_addr_on_down before the link exists, so int0 inherits it: a flap must not take the
	// box's IPv6 address (and with it the gateway's subnet) away.
	must(l.box.Sysctl("net.ipv6.conf.default.keep_addr_on_down", "1"))
	must(l.lab.Veth(l.box, "int0", l.router, "int0"))

	must(l.box.AddAddr("dmz0", netip.MustParsePrefix("198.18.2.2/24"), netip.MustParsePrefix("2001:db8:2::2/64")))
	must(l.box.AddAddr("int0", netip.MustParsePrefix("198.18.1.2/24"), netip.MustParsePrefix("2001:db8:1::2/64")))
	must(l.router.AddAddr("dmz0", netip.MustParsePrefix("198.18.2.1/24"), netip.MustParsePrefix("2001:db8:2::1/64")))
	must(l.router.AddAddr("int0", netip.MustParsePrefix("198.18.1.1/24"), netip.MustParsePrefix("2001:db8:1::1/64")))
	must(l.clientN.AddAddr("eth0", client...))
	must(l.clientN.AddRoute(netip.MustParsePrefix("198.18.1.0/24"), netip.MustParseAddr("198.18.2.1")))
	must(l.clientN.AddRoute(netip.MustParsePrefix("2001:db8:1::/64"), netip.MustParseAddr("2001:db8:2::1")))

	must(l.router.Sysctl("net.ipv4.ip_forward", "1"))
	must(l.router.Sysctl("net.ipv6.conf.all.forwarding", "1"))
	for _, k := range []string{"all", "default", "dmz0", "int0"} {
		must(l.box.Sysctl("net.ipv4.conf."+k+".rp_filter", "0"))
	}
	l.firewall(t)
	return l
}

// firewall installs the router's stateful filter: drop ct state invalid, and count forwarded
// replies from each VIP. (It uses the nft CLI, independent of the code under test.)
func (l *lab) firewall(t *testing.T) {
	t.Helper()
	ruleset := fmt.Sprintf(`table inet plbtest {
	chain forward {
		type filter hook forward priority 0; policy accept;
		ct state invalid counter drop comment "invalid"
		ip saddr %s counter comment "from %s"
		ip6 saddr %s counter comment "from %s"
	}
}
`, vip4, vip4, vip6, vip6)
	f := filepath.Join(t.TempDir(), "router.nft")
	if err := os.WriteFile(f, []byte(ruleset), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := l.router.Run(context.Background(), "nft", "-f", f); err != nil {
		t.Fatalf("installing the router's firewall: %v", err)
	}
}

// counter reads the packet counter of the router's rule with the given comment.
func (l *lab) counter(t *testing.T, comment string) uint64 {
	t.Helper()
	m, err := l.router.NFTCounters(context.Background(), "inet", "plbtest")
	if err != nil {
		t.Fatal(err)
	}
	n, ok := m[comment]
	if !ok {
		t.Fatalf("no counter with comment %q on the router: %v", comment, m)
	}
	return n
}

// echo serves a line echo on [::]:echoPort inside the box until the test ends.
func (l *lab) echo(t *testing.T) {
	t.Helper()
	var ln net.Listener
	if err := l.box.Do(func() (err error) { ln, err = net.Listen("tcp", fmt.Sprintf(":%d", echoPort)); return err }); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				line, err := bufio.NewReader(c).ReadString('\n')
				if err == nil {
					_, _ = c.Write([]byte(line))
				}
			})
		}
	})
}

// session opens a TCP session from the client to vip and exchanges a line. Without the rule the
// handshake completes on the client's side (the SYN-ACK arrives directly) but the router drops
// the client's ACK and data as invalid, so the exchange times out.
func (l *lab) session(vip netip.Addr) error {
	return l.clientN.Do(func() error {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(vip, echoPort).String(), 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(1500 * time.Millisecond))
		if _, err := c.Write([]byte("ping\n")); err != nil {
			return err
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err
		}
		if line != "ping\n" {
			return fmt.Errorf("echo returned %q", line)
		}
		return nil
	})
}

// kernelState renders every rule, route and address of a namespace, pairlb's or not, sorted
// (link-local ones, and the kernel's own routes derived from addresses, left out).
func kernelState(t *testing.T, h *netlink.Handle) []string {
	t.Helper()
	var out []string
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rules, err := retryDump("rules", func() ([]netlink.Rule, error) { return h.RuleList(fam) })
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rules {
			out = append(out, fmt.Sprintf("rule fam=%d prio=%d src=%v dst=%v table=%d proto=%d goto=%d",
				fam, r.Priority, r.Src, r.Dst, r.Table, r.Protocol, r.Goto))
		}
		routes, err := retryDump("routes", func() ([]netlink.Route, error) {
			return h.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range routes {
			if r.Protocol == unix.RTPROT_KERNEL {
				// Derived from the addresses (compared below); IPv6 adds them asynchronously.
				continue
			}
			out = append(out, fmt.Sprintf("route fam=%d table=%d type=%d dst=%v gw=%v dev=%d src=%v metric=%d proto=%d scope=%d",
				fam, r.Table, r.Type, r.Dst, r.Gw, r.LinkIndex, r.Src, r.Priority, r.Protocol, r.Scope))
		}
	}
	addrs, err := retryDump("addresses", func() ([]netlink.Addr, error) { return h.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		out = append(out, fmt.Sprintf("addr dev=%d %v label=%q", a.LinkIndex, a.IPNet, a.Label))
	}
	// Link-local addresses and their routes come and go with DAD and link flaps on their own.
	out = slices.DeleteFunc(out, func(s string) bool { return strings.Contains(s, "fe80:") })
	slices.Sort(out)
	return out
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func labConfig(withGateways bool) *config.Config {
	cfg := &config.Config{
		Global: config.Global{UseDefaultRouteOnly: true, ManageAddresses: true},
		VirtualServices: []config.VirtualService{
			{Name: "fe-web", VIP: vip4},
			{Name: "fe-web-v6", VIP: vip6},
		},
	}
	if withGateways {
		cfg.VirtualServices[0].DefaultGateway = gw4
		cfg.VirtualServices[1].DefaultGateway = gw6
	}
	return cfg
}

// plantForeign adds a rule and a route that are not pairlb's: one outside the range, one inside
// the priority range but with another protocol. Neither may ever be touched.
func plantForeign(t *testing.T, h *netlink.Handle) {
	t.Helper()
	r := netlink.NewRule()
	r.Priority, r.Table, r.Family = 100, 100, netlink.FAMILY_V4
	r.Src = &net.IPNet{IP: net.ParseIP("198.18.5.5").To4(), Mask: net.CIDRMask(32, 32)}
	if err := h.RuleAdd(r); err != nil {
		t.Fatalf("planting foreign rule: %v", err)
	}
	r2 := netlink.NewRule()
	r2.Priority, r2.Table, r2.Family, r2.Protocol = 20150, 20150, netlink.FAMILY_V4, unix.RTPROT_STATIC
	r2.Src = &net.IPNet{IP: net.ParseIP("198.18.5.6").To4(), Mask: net.CIDRMask(32, 32)}
	if err := h.RuleAdd(r2); err != nil {
		t.Fatalf("planting foreign rule in the priority range: %v", err)
	}
	// Via dmz0, which the tests never flap: the kernel itself flushes IPv4 routes through a link
	// that goes down, whoever made them.
	rt := &netlink.Route{Table: 100, Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
		Gw: net.ParseIP("198.18.2.1").To4(), Protocol: unix.RTPROT_STATIC}
	if err := h.RouteAdd(rt); err != nil {
		t.Fatalf("planting foreign route: %v", err)
	}
}

func TestUseDefaultRouteOnlyInNamespaces(t *testing.T) {
	l := newLab(t)
	h := l.box.Handle()
	plantForeign(t, h)
	before := kernelState(t, h)
	l.echo(t)

	m := New(h, testLogger(t), WithNamespace(l.box.NsHandle()))

	// The VIPs without gateways: addresses only, the main table answers out of dmz0.
	if err := m.Set(labConfig(false)); err != nil {
		t.Fatal(err)
	}
	for _, vip := range []netip.Addr{vip4, vip6} {
		if err := l.session(vip); err == nil {
			t.Errorf("session to %s worked without pairlb's rule; the lab does not reproduce the asymmetry", vip)
		}
		if n := l.counter(t, "from "+vip.String()); n != 0 {
			t.Errorf("router forwarded %d packets from %s without the rule; want 0", n, vip)
		}
	}
	if l.counter(t, "invalid") == 0 {
		t.Error("router dropped no invalid packets in the asymmetric case")
	}

	// With the gateways: the replies go back through the router and the sessions work.
	cfg := labConfig(true)
	if err := m.Set(cfg); err != nil {
		t.Fatal(err)
	}
	for _, vip := range []netip.Addr{vip4, vip6} {
		if err := l.session(vip); err != nil {
			t.Errorf("session to %s with pairlb's rule: %v", vip, err)
		}
		if n := l.counter(t, "from "+vip.String()); n == 0 {
			t.Errorf("router saw no replies from %s", vip)
		}
	}
	plan, err := m.Plan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rules, routes, err := m.Installed()
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(plan.Rules, rules, netipEqual); d != "" {
		t.Errorf("installed rules (-plan +kernel):\n%s", d)
	}
	if d := cmp.Diff(plan.Routes, routes, netipEqual); d != "" {
		t.Errorf("installed routes (-plan +kernel):\n%s", d)
	}
	t.Logf("plan:\n%s", strings.Join(plan.Lines(), "\n"))

	// A second Set changes nothing, and writes nothing.
	state := kernelState(t, h)
	if ev := eventsDuring(t, l.box, "dmz0", anyEvent, func() {
		if err := m.Set(cfg); err != nil {
			t.Fatal(err)
		}
	}); len(ev) != 0 {
		t.Errorf("second Set caused %d route/address notifications; want 0", len(ev))
	}
	if d := cmp.Diff(state, kernelState(t, h)); d != "" {
		t.Errorf("second Set changed the kernel (-first +second):\n%s", d)
	}
	if d, err := m.pending(cfg); err != nil || len(d) != 0 {
		t.Errorf("Diff after Set = %q, %v; want nothing", d, err)
	}

	// A link flap empties the IPv4 table; Run repairs it within a second.
	stopRun := runManager(t, m)
	if err := l.box.SetLink("int0", false); err != nil {
		t.Fatal(err)
	}
	// Run re-applies while the link is down (and finds both gateways' link down) ...
	until(t, 5*time.Second, "a re-apply with int0 down", func() error {
		for _, gw := range []netip.Addr{gw4, gw6} {
			if !slices.ContainsFunc(m.Problems(), func(p Problem) bool { return p.Addr == gw && p.Reason == "its link int0 is down" }) {
				return fmt.Errorf("problems %v", m.Problems())
			}
		}
		return nil
	})
	// ... and the kernel has emptied the tables.
	if _, routes, _ := m.Installed(); slices.ContainsFunc(routes, func(r Route) bool { return r.Gw.IsValid() }) {
		t.Errorf("routes via the gateways survived int0 going down: %v", routes)
	}
	if err := l.box.SetLink("int0", true); err != nil {
		t.Fatal(err)
	}
	up := time.Now()
	var repaired time.Duration
	for i := 0; i < 100 && repaired == 0; i++ {
		d, err := m.pending(cfg)
		if err == nil && len(d) == 0 {
			repaired = time.Since(up)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if repaired == 0 || repaired > time.Second {
		d, err := m.pending(cfg)
		t.Fatalf("not repaired within a second after the flap: %q, %v", d, err)
	}
	t.Logf("tables repaired %v after int0 came back up", repaired)
	for _, vip := range []netip.Addr{vip4, vip6} {
		var err error
		for range 3 { // the first SYN may wait for neighbour discovery on the fresh link
			if err = l.session(vip); err == nil {
				break
			}
		}
		if err != nil {
			t.Errorf("session to %s after the flap: %v", vip, err)
		}
	}

	// Close leaves nothing of pairlb behind, and the foreign objects untouched.
	stopRun()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(before, kernelState(t, h)); d != "" {
		t.Errorf("kernel after Close differs from before pairlb (-before +after):\n%s", d)
	}
	if err := m.Set(cfg); err == nil {
		t.Error("Set after Close succeeded")
	}
}

func TestCleanupAfterCrash(t *testing.T) {
	l := newLab(t)
	h := l.box.Handle()
	plantForeign(t, h)
	before := kernelState(t, h)
	cfg := labConfig(true)

	// A crashed instance: its objects stay, plus a stale rule and address from an older
	// configuration it never removed.
	crashed := New(h, testLogger(t), WithNamespace(l.box.NsHandle()))
	old := labConfig(true)
	old.VirtualServices = append(old.VirtualServices, config.VirtualService{Name: "retired", VIP: netip.MustParseAddr("198.18.1.200"), DefaultGateway: gw4})
	if err := crashed.Set(old); err != nil {
		t.Fatal(err)
	}
	if err := crashed.Set(cfg); err != nil {
		t.Fatal(err)
	}
	// Put the retired VIP's rule back, as if the crash came between add and delete.
	if err := h.RuleAdd(toNetlinkRule(Rule{Priority: TableFirst, Table: TableFirst, Src: netip.MustParsePrefix("198.18.1.200/32")})); err != nil {
		t.Fatal(err)
	}
	int0, err := l.box.Link("int0")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(int0, toNetlinkAddr(Addr{LinkName: "int0", Prefix: netip.MustParsePrefix("198.18.1.200/32")})); err != nil {
		t.Fatal(err)
	}
	crashedState := kernelState(t, h)

	// A new instance on top, without Cleanup: Set alone converges, no duplicates.
	m := New(h, testLogger(t), WithNamespace(l.box.NsHandle()))
	if err := m.Set(cfg); err != nil {
		t.Fatal(err)
	}
	plan, err := m.Plan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rules, routes, err := m.Installed()
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(plan.Rules, rules, netipEqual); d != "" {
		t.Errorf("rules after Set over a crashed instance (-plan +kernel):\n%s", d)
	}
	if d := cmp.Diff(plan.Routes, routes, netipEqual); d != "" {
		t.Errorf("routes after Set over a crashed instance (-plan +kernel):\n%s", d)
	}
	if slices.ContainsFunc(kernelState(t, h), func(s string) bool { return strings.Contains(s, "198.18.1.200") }) {
		t.Error("the retired VIP's rule or address survived Set")
	}

	// cleanup then Set: the same result; nothing doubled.
	if err := m.cleanup(); err != nil {
		t.Fatal(err)
	}
	// IPv6 addresses carry no mark: cleanup cannot tell a crashed instance's IPv6 VIP from
	// anyone else's, so it stays until a Set that wants it adopts it.
	if d := cmp.Diff(before, withoutAddr(kernelState(t, h), vip6)); d != "" {
		t.Errorf("kernel after cleanup differs from before pairlb (-before +after):\n%s", d)
	}
	if err := m.Set(cfg); err != nil {
		t.Fatal(err)
	}
	after := kernelState(t, h)
	if d := cmp.Diff(withoutRetired(crashedState), after); d != "" {
		t.Errorf("cleanup+Set differs from the crashed instance's state minus the retired VIP (-crashed +now):\n%s", d)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(before, kernelState(t, h)); d != "" {
		t.Errorf("kernel after Close differs from before pairlb (-before +after):\n%s", d)
	}
}

// Without UseDefaultRouteOnly the VIP's table also holds the box's connected routes, so replies
// to a client on a subnet the box reaches directly leave directly, as the appliance does with the
// option off: through this lab's stateful router the session fails, and that is the point of
// the option.
func TestWithoutUseDefaultRouteOnly(t *testing.T) {
	l := newLab(t)
	h := l.box.Handle()
	l.echo(t)
	m := New(h, testLogger(t), WithNamespace(l.box.NsHandle()))
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Error(err)
		}
	})
	cfg := labConfig(true)
	cfg.Global.UseDefaultRouteOnly = false
	if err := m.Set(cfg); err != nil {
		t.Fatal(err)
	}
	_, routes, err := m.Installed()
	if err != nil {
		t.Fatal(err)
	}
	dmz := netip.MustParsePrefix("198.18.2.0/24")
	if !slices.ContainsFunc(routes, func(r Route) bool { return r.Table == TableFirst && r.Dst == dmz && r.LinkName == "dmz0" }) {
		t.Errorf("table %d has no copy of the DMZ's connected route: %v", TableFirst, routes)
	}
	if slices.ContainsFunc(routes, func(r Route) bool { return r.Type == Unreachable }) {
		t.Errorf("unreachable route without UseDefaultRouteOnly: %v", routes)
	}
	if err := l.session(vip4); err == nil {
		t.Error("session from the DMZ client worked although replies leave directly through dmz0")
	}
	if n := l.counter(t, "from "+vip4.String()); n != 0 {
		t.Errorf("router forwarded %d packets from %s; want 0", n, vip4)
	}
}

func withoutRetired(state []string) []string {
	return withoutAddr(state, netip.MustParseAddr("198.18.1.200"))
}

// withoutAddr drops the lines of a kernelState that mention a.
func withoutAddr(state []string, a netip.Addr) []string {
	return slices.DeleteFunc(slices.Clone(state), func(s string) bool {
		return strings.Contains(s, " "+a.String()+"/") || strings.Contains(s, "="+a.String()+"/")
	})
}
