package routing

// Tests of Manager.apply on the fake kernel (fake_test.go): no root, the same code path as in
// the namespace tests, which prove the real kernel answers the same.

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/pairlb/pairlb/config"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// installedMatches fails the test unless the kernel holds p's rules and routes exactly.
func installedMatches(t *testing.T, m *Manager, p Plan) {
	t.Helper()
	rules, routes, err := m.Installed()
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(p.Rules, rules, netipEqual); d != "" {
		t.Errorf("installed rules (-plan +kernel):\n%s", d)
	}
	if d := cmp.Diff(p.Routes, routes, netipEqual); d != "" {
		t.Errorf("installed routes (-plan +kernel):\n%s", d)
	}
}

func partial(t *testing.T, err error) []Problem {
	t.Helper()
	var pe *PartialError
	if !errors.As(err, &pe) {
		t.Fatalf("Set = %v; want a *PartialError", err)
	}
	return pe.Problems
}

func withoutAddrLines(lines []string) []string {
	return slices.DeleteFunc(slices.Clone(lines), func(s string) bool { return strings.Contains(s, " addr ") })
}

// Set writes exactly what Diff showed before it, in that order (plus the VIP addresses, which
// Diff leaves out), a second Set writes nothing, and Close leaves the kernel as it was.
func TestFakeSetWritesWhatDiffShows(t *testing.T) {
	k, m := fakeBox(t)
	before := k.state()
	cfg := labConfig(true)
	shown, err := m.pending(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Set(cfg); err != nil {
		t.Fatal(err)
	}
	writes := k.takeWrites()
	if d := cmp.Diff(shown, withoutAddrLines(writes)); d != "" {
		t.Errorf("Set's writes differ from what Diff showed (-shown +written):\n%s", d)
	}
	wantAddrs := []string{"+ ip addr add 198.18.1.100/32 dev int0 label int0:plb", "+ ip -6 addr add 2001:db8:1::100/128 dev int0 nodad"}
	if d := cmp.Diff(wantAddrs, writes[:2]); d != "" {
		t.Errorf("addresses first (-want +got):\n%s", d)
	}
	p, err := m.Plan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	installedMatches(t, m, p)

	if err := m.Set(cfg); err != nil {
		t.Fatal(err)
	}
	if w := k.takeWrites(); len(w) != 0 {
		t.Errorf("a second Set wrote %q; want nothing", w)
	}
	if d, err := m.pending(cfg); err != nil || len(d) != 0 {
		t.Errorf("Diff after Set = %q, %v; want nothing", d, err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(before, k.state()); d != "" {
		t.Errorf("kernel after Close (-before +after):\n%s", d)
	}
}

// A change that renumbers every table (a gateway that sorts first), moves a VIP to the new
// gateway and retires one: everything is added before anything is removed, so no VIP is ever
// without a rule, and each table's connected route comes before the default via its gateway.
func TestFakeAddsBeforeDeletes(t *testing.T) {
	k, m := fakeBox(t)
	k.addLink("ext0", true, "198.18.0.2/24")
	retired := config.VirtualService{Name: "retired", VIP: netip.MustParseAddr("198.18.1.200"), DefaultGateway: gw4}
	moving := config.VirtualService{Name: "moving", VIP: netip.MustParseAddr("198.18.1.150"), DefaultGateway: gw4}
	old := labConfig(true)
	old.VirtualServices = append(old.VirtualServices, retired, moving)
	if err := m.Set(old); err != nil {
		t.Fatal(err)
	}
	k.takeWrites()

	cfg := labConfig(true)
	moving.DefaultGateway = netip.MustParseAddr("198.18.0.1")
	cfg.VirtualServices = append(cfg.VirtualServices, moving)
	if err := m.Set(cfg); err != nil {
		t.Fatal(err)
	}
	w := k.takeWrites()
	t.Logf("writes:\n%s", strings.Join(w, "\n"))
	lastAdd := slices.IndexFunc(w, func(s string) bool { return strings.HasPrefix(s, "- ") }) - 1
	if lastAdd < 0 || slices.ContainsFunc(w[lastAdd+1:], func(s string) bool { return strings.HasPrefix(s, "+ ") }) {
		t.Errorf("an addition after a removal:\n%s", strings.Join(w, "\n"))
	}
	for _, want := range [][2]string{
		// The VIP that stays on its gateway, whose table is now 20101.
		{"+ ip rule add from 198.18.1.100/32 lookup 20101 priority 20101 protocol 112",
			"- ip rule del from 198.18.1.100/32 lookup 20100 priority 20100 protocol 112"},
		{"+ ip route add 198.18.1.0/24 dev int0 proto 112 scope link src 198.18.1.2 metric 1024 table 20101",
			"+ ip route add default via 198.18.1.1 dev int0 proto 112 metric 1024 table 20101"},
		{"+ ip route add 198.18.0.0/24 dev ext0 proto 112 scope link src 198.18.0.2 metric 1024 table 20100",
			"+ ip route add default via 198.18.0.1 dev ext0 proto 112 metric 1024 table 20100"},
		// The retired VIP: its rule first, then its address, last of all.
		{"- ip rule del from 198.18.1.200/32 lookup 20100 priority 20100 protocol 112",
			"- ip addr del 198.18.1.200/32 dev int0 label int0:plb"},
	} {
		i, j := slices.Index(w, want[0]), slices.Index(w, want[1])
		if i < 0 || j < 0 || i > j {
			t.Errorf("want %q (at %d) before %q (at %d)", want[0], i, want[1], j)
		}
	}
	// The VIP that moves to the new gateway keeps its rule into table 20100, whose default
	// route is replaced in place: the removals, computed from a fresh dump, do not try to
	// remove the old one again.
	for _, s := range w {
		if strings.Contains(s, "198.18.1.150") || strings.HasPrefix(s, "- ip route del default via 198.18.1.1") {
			t.Errorf("write %q: the moving VIP's rule and its table's default route are replaced, not removed", s)
		}
	}
	if w[len(w)-1] != "- ip addr del 198.18.1.200/32 dev int0 label int0:plb" {
		t.Errorf("last write %q; want the retired VIP's address", w[len(w)-1])
	}
	p, err := m.Plan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	installedMatches(t, m, p)
}

// transparentBox is the transparency lab of transparency_test.go in memory.
func transparentBox(t *testing.T) (*fakeKernel, *Manager) {
	k := newFakeKernel()
	k.addLink("cli0", true, "198.18.10.1/24", "2001:db8:10::1/64")
	k.addLink("srv0", true, "198.18.20.1/24", "2001:db8:20::1/64")
	return k, newManager(k, testLogger(t))
}

// The nftables table comes after the rule and route it relies on, and goes before them.
func TestFakeNFTAfterWhatItNeeds(t *testing.T) {
	k, m := transparentBox(t)
	if err := m.Set(transparentConfig(true)); err != nil {
		t.Fatal(err)
	}
	w := k.takeWrites()
	nft := slices.Index(w, "+ nft add table inet pairlb")
	for _, need := range []string{
		"+ ip rule add fwmark 0x70/0xff lookup 20099 priority 20099 protocol 112",
		"+ ip route add local default dev lo proto 112 metric 1024 table 20099",
		"+ ip -6 rule add fwmark 0x70/0xff lookup 20099 priority 20099 protocol 112",
	} {
		if i := slices.Index(w, need); i < 0 || nft < 0 || i > nft {
			t.Errorf("%q at %d, the nftables table at %d: want it before:\n%s", need, i, nft, strings.Join(w, "\n"))
		}
	}
	if err := m.Set(transparentConfig(false)); err != nil {
		t.Fatal(err)
	}
	w = k.takeWrites()
	del := slices.Index(w, "- nft delete table inet pairlb")
	for _, need := range []string{
		"- ip rule del fwmark 0x70/0xff lookup 20099 priority 20099 protocol 112",
		"- ip route del local default dev lo proto 112 metric 1024 table 20099",
	} {
		if i := slices.Index(w, need); i < 0 || del < 0 || i < del {
			t.Errorf("%q at %d, the nftables table's removal at %d: want it after:\n%s", need, i, del, strings.Join(w, "\n"))
		}
	}

	// A table that cannot be removed keeps the rule and the route its marking relies on.
	if err := m.Set(transparentConfig(true)); err != nil {
		t.Fatal(err)
	}
	k.answerWith(answer{call: "nftWrite", err: unix.EBUSY})
	probs := partial(t, m.Set(transparentConfig(false)))
	if len(probs) != 1 || probs[0].Kind != UnitCleanup || !strings.Contains(probs[0].Reason, unix.EBUSY.Error()) {
		t.Errorf("problems = %v; want the cleanup's, with the kernel's answer", probs)
	}
	rules, routes, err := m.Installed()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(rules, func(r Rule) bool { return r.Table == TransparentTable }) ||
		!slices.ContainsFunc(routes, func(r Route) bool { return r.Table == TransparentTable }) {
		t.Errorf("the marking's rule or route went while the table stayed: %v %v", rules, routes)
	}
	k.clearAnswers()
	if !m.reapply() {
		t.Errorf("re-apply with the table removable: problems %v", m.Problems())
	}
	if st, err := m.State(); err != nil || st.Transparency != nil || len(st.Rules)+len(st.Routes) != 0 {
		t.Errorf("state = %+v, %v; want nothing", st, err)
	}
}

// One route the kernel refuses is its unit's problem alone: the other gateway is installed in
// full, the refused table keeps what it holds, and a re-apply installs it once the kernel
// accepts.
func TestFakeRefusedRoute(t *testing.T) {
	k, m := fakeBox(t)
	logger, logged := teeLogger(t)
	m.log = logger
	cfg := labConfig(true)
	// A crashed instance's route in the IPv4 table: removed only once the table is complete.
	stale := Route{Table: TableFirst, Dst: pfx("198.18.9.0/24"), Link: k.link("int0").index, LinkName: "int0", Metric: RouteMetric}
	k.plantRoute(toNetlinkRoute(stale))
	k.answerWith(answer{call: "RouteReplace", match: "via 198.18.1.1", err: unix.EINVAL})

	probs := partial(t, m.Set(cfg))
	const refused = "ip route add default via 198.18.1.1 dev int0 proto 112 metric 1024 table 20100"
	if len(probs) != 1 || probs[0].Kind != UnitGateway || probs[0].Addr != gw4 ||
		!strings.Contains(probs[0].Reason, refused) || !strings.Contains(probs[0].Reason, unix.EINVAL.Error()) {
		t.Fatalf("problems = %v; want one, of gateway %s, naming %q and %q", probs, gw4, refused, unix.EINVAL)
	}
	if got := probs[0].String(); !strings.HasPrefix(got, `gateway 198.18.1.1 of virtual service "fe-web": adding route "`+refused+`": `) {
		t.Errorf("problem = %s", got)
	}
	p, err := m.Plan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	st, err := m.State()
	if err != nil {
		t.Fatal(err)
	}
	left := Diff(p, st)
	if d := cmp.Diff([]string{"+ " + refused, "- " + delLine(stale.Line())}, left); d != "" {
		t.Errorf("what is left to do (-want +got):\n%s", d)
	}

	k.clearAnswers()
	if !m.reapply() {
		t.Fatalf("re-apply once the kernel accepts: %v", m.Problems())
	}
	installedMatches(t, m, p)
	if n := logged(`msg="routing: part of the plan installed" unit="gateway 198.18.1.1"`); n != 1 {
		t.Errorf("the repair was logged %d times, want once", n)
	}
}

// A flap of int0 without keep_addr_on_down takes the box's IPv6 address and both tables'
// routes: the re-apply restores the IPv4 table, reports the IPv6 gateway and VIP, keeps the
// IPv6 VIP's rule and unreachable default, and installs everything again when the address
// is back.
func TestFakeFamilyGoneAfterFlap(t *testing.T) {
	k, m := fakeBox(t)
	cfg := labConfig(true)
	if err := m.Set(cfg); err != nil {
		t.Fatal(err)
	}
	full, err := m.Plan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	k.setLink("int0", false)
	k.setLink("int0", true)
	if _, routes, _ := m.Installed(); slices.ContainsFunc(routes, func(r Route) bool { return r.Gw.IsValid() }) {
		t.Fatalf("the fake kept routes through a link that went down: %v", routes)
	}
	if m.reapply() {
		t.Fatal("re-apply with the IPv6 address gone reports everything installed")
	}
	var units []string
	for _, p := range m.Problems() {
		units = append(units, p.UnitID.String())
		if p.Family != IPv6 {
			t.Errorf("problem %s: want only IPv6 problems", p)
		}
	}
	if d := cmp.Diff([]string{"gateway 2001:db8:1::1", "VIP address 2001:db8:1::100"}, units); d != "" {
		t.Errorf("units with a problem (-want +got):\n%s", d)
	}
	rules, routes, err := m.Installed()
	if err != nil {
		t.Fatal(err)
	}
	table4, table6 := full.Units[0].Table, full.Units[1].Table
	want4 := slices.DeleteFunc(slices.Clone(full.Routes), func(r Route) bool { return r.Table != table4 })
	got4 := slices.DeleteFunc(slices.Clone(routes), func(r Route) bool { return r.Table != table4 })
	if d := cmp.Diff(want4, got4, netipEqual); d != "" {
		t.Errorf("IPv4 table after the flap (-plan +kernel):\n%s", d)
	}
	if !slices.Contains(rules, Rule{Priority: table6, Table: table6, Src: netip.PrefixFrom(vip6, 128)}) ||
		!slices.ContainsFunc(routes, func(r Route) bool { return r.Table == table6 && r.Type == Unreachable }) {
		t.Errorf("the IPv6 VIP lost its rule or unreachable default: %v %v", rules, routes)
	}

	k.addAddr("int0", "2001:db8:1::2/64", "")
	if !m.reapply() {
		t.Fatalf("re-apply with the address back: %v", m.Problems())
	}
	installedMatches(t, m, full)
}

// EEXIST, ENOENT, ESRCH and EADDRNOTAVAIL say the kernel already holds what was asked (another
// writer, or a link flap, got there first): no problem, and the kernel ends as planned. A
// removal refused for another reason is the cleanup's problem, and the rest is done.
func TestFakeExpectedAnswers(t *testing.T) {
	k, m := fakeBox(t)
	for _, a := range []answer{
		{call: "RuleAdd", match: "from 198.18.1.100/32", err: unix.EEXIST, apply: true},
		{call: "AddrAdd", match: "2001:db8:1::100", err: unix.EEXIST, apply: true},
	} {
		k.answerWith(a)
	}
	cfg := labConfig(true)
	if err := m.Set(cfg); err != nil {
		t.Fatalf("Set with EEXIST answers: %v", err)
	}
	p, err := m.Plan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	installedMatches(t, m, p)
	k.clearAnswers()
	for _, a := range []answer{
		{call: "RuleDel", match: "from 198.18.1.100/32", err: unix.ENOENT, apply: true},
		{call: "RouteDel", match: "via 198.18.1.1", err: unix.ESRCH, apply: true},
		{call: "AddrDel", match: "198.18.1.100", err: unix.EADDRNOTAVAIL, apply: true},
		{call: "RouteDel", match: "unreachable default", err: unix.EPERM},
	} {
		k.answerWith(a)
	}
	probs := partial(t, m.Set(labConfig(false)))
	if len(probs) != 2 {
		t.Fatalf("problems = %v; want the cleanup of each family, for the refused removals", probs)
	}
	for i, fam := range []Family{IPv4, IPv6} {
		if pr := probs[i]; pr.Kind != UnitCleanup || pr.Family != fam || !strings.Contains(pr.Reason, "removing route \"ip") ||
			!strings.Contains(pr.Reason, "unreachable default") || !strings.Contains(pr.Reason, unix.EPERM.Error()) {
			t.Errorf("problem %d = %s", i, pr)
		}
	}
	rules, routes, err := m.Installed()
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) != 0 || len(routes) != 2 {
		t.Errorf("left: %v %v; want only the two refused unreachable routes", rules, routes)
	}
	k.clearAnswers()
	if !m.reapply() {
		t.Errorf("re-apply: %v", m.Problems())
	}
	if _, routes, _ := m.Installed(); len(routes) != 0 {
		t.Errorf("routes left: %v", routes)
	}
}

// A new instance over a crashed one: Set alone removes the stale objects in pairlb's range and
// adopts the IPv6 VIP still wanted; foreign objects, in the range or not, are never touched;
// cleanup leaves only the IPv6 VIP (it carries no mark); Close leaves the kernel as before.
func TestFakeCrashRecovery(t *testing.T) {
	k, _ := fakeBox(t)
	int0 := k.link("int0").index
	// Foreign: a rule and a route outside the range, a rule and a route in it with another
	// protocol, an address with another label, an nftables table of another name is not
	// modelled (the fake holds pairlb's only).
	foreignRule := netlink.NewRule()
	foreignRule.Priority, foreignRule.Table, foreignRule.Family = 100, 100, netlink.FAMILY_V4
	foreignRule.Src = ipNet(pfx("198.18.5.5/32"))
	k.plantRule(foreignRule)
	inRange := netlink.NewRule()
	inRange.Priority, inRange.Table, inRange.Family, inRange.Protocol = 20150, 20150, netlink.FAMILY_V4, unix.RTPROT_STATIC
	inRange.Src = ipNet(pfx("198.18.5.6/32"))
	k.plantRule(inRange)
	k.plantRoute(&netlink.Route{Family: netlink.FAMILY_V4, Table: 100, Dst: ipNet(pfx("0.0.0.0/0")), Gw: net.ParseIP("198.18.2.1").To4(),
		LinkIndex: k.link("dmz0").index, Protocol: unix.RTPROT_STATIC, Type: unix.RTN_UNICAST})
	k.plantRoute(&netlink.Route{Family: netlink.FAMILY_V4, Table: 20150, Dst: ipNet(pfx("198.18.6.0/24")), LinkIndex: int0,
		Protocol: unix.RTPROT_STATIC, Type: unix.RTN_UNICAST, Scope: netlink.SCOPE_LINK})
	k.addAddr("int0", "198.18.1.201/32", "int0:other")
	before := k.state()

	// What the crashed instance left: its state for an older configuration, a rule and an
	// address it never removed, and an nftables table edited by hand.
	crashed := newManager(k, testLogger(t))
	old := labConfig(true)
	old.VirtualServices = append(old.VirtualServices, config.VirtualService{Name: "retired", VIP: netip.MustParseAddr("198.18.1.200"), DefaultGateway: gw4})
	if err := crashed.Set(old); err != nil {
		t.Fatal(err)
	}
	k.plantRule(toNetlinkRule(Rule{Priority: TableLast, Table: TableLast, Src: pfx("198.18.1.250/32")}))
	k.plantRoute(toNetlinkRoute(Route{Table: TableLast, Type: Unreachable, Dst: pfx("0.0.0.0/0"), Metric: UnreachableMetric}))
	k.nft, k.nftForeign = &Transparency{}, true

	m := newManager(k, testLogger(t))
	cfg := labConfig(true)
	if err := m.Set(cfg); err != nil {
		t.Fatal(err)
	}
	p, err := m.Plan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	installedMatches(t, m, p)
	for _, s := range k.state() {
		if strings.Contains(s, "198.18.1.200") || strings.Contains(s, "198.18.1.250") || strings.HasPrefix(s, "nft ") {
			t.Errorf("stale object survived Set: %s", s)
		}
	}
	for _, s := range before {
		if !slices.Contains(k.state(), s) {
			t.Errorf("foreign object gone: %s", s)
		}
	}

	if err := m.cleanup(); err != nil {
		t.Fatal(err)
	}
	afterCleanup := slices.DeleteFunc(k.state(), func(s string) bool { return strings.Contains(s, "2001:db8:1::100/128") })
	if d := cmp.Diff(before, afterCleanup); d != "" {
		t.Errorf("kernel after cleanup, but for the IPv6 VIP (-before +after):\n%s", d)
	}
	if err := m.Set(cfg); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(before, k.state()); d != "" {
		t.Errorf("kernel after Close (-before +after):\n%s", d)
	}
}

// On a kernel booted with ipv6.disable=1 the IPv6 rules cannot even be listed (EAFNOSUPPORT):
// the IPv6 units are problems, and the IPv4 ones are installed. Before, Set failed as a whole
// and installed nothing.
func TestFakeKernelWithoutIPv6(t *testing.T) {
	k := newFakeKernel()
	k.absent[netlink.FAMILY_V6] = true
	k.addLink("dmz0", true, "198.18.2.2/24")
	k.addLink("int0", true, "198.18.1.2/24")
	m := newManager(k, testLogger(t))
	cfg := labConfig(true)
	probs := partial(t, m.Set(cfg))
	var units []string
	for _, p := range probs {
		units = append(units, p.UnitID.String())
		if !strings.Contains(p.Reason, "this kernel has no ipv6") || !strings.Contains(p.Reason, unix.EAFNOSUPPORT.Error()) {
			t.Errorf("problem %s: want the missing family named", p)
		}
	}
	if d := cmp.Diff([]string{"gateway 2001:db8:1::1", "VIP address 2001:db8:1::100"}, units); d != "" {
		t.Errorf("units with a problem (-want +got):\n%s", d)
	}
	p, err := m.Plan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	v4 := Plan{
		Rules:  slices.DeleteFunc(slices.Clone(p.Rules), func(r Rule) bool { return r.Src.Addr().Is6() }),
		Routes: slices.DeleteFunc(slices.Clone(p.Routes), func(r Route) bool { return r.Dst.Addr().Is6() }),
	}
	installedMatches(t, m, v4)
	if !slices.Contains(k.state(), `addr dev=3 198.18.1.100/32 label="int0:plb"`) {
		t.Errorf("the IPv4 VIP's address is not installed: %v", k.state())
	}
	if err := m.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if rules, routes, err := m.Installed(); err != nil || len(rules)+len(routes) != 0 {
		t.Errorf("after Close: %v %v %v", rules, routes, err)
	}
}

// A dump the kernel interrupts (a concurrent change) is taken again.
func TestFakeDumpInterrupted(t *testing.T) {
	k, m := fakeBox(t)
	k.interrupt = 3
	cfg := labConfig(true)
	if err := m.Set(cfg); err != nil {
		t.Fatal(err)
	}
	p, err := m.Plan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	installedMatches(t, m, p)
	k.interrupt = maxDumpTries
	if _, _, err := m.Installed(); !errors.Is(err, netlink.ErrDumpInterrupted) {
		t.Errorf("Installed after %d interrupted dumps = %v; want the interruption", maxDumpTries, err)
	}
}

// The box's IPv4 address on int0 goes between the links snapshot and the writes: the kernel
// refuses the IPv4 table's routes (the preferred source is gone, the gateway unreachable), and
// that is the IPv4 gateway's problem alone; the IPv6 table and both rules are installed.
func TestFakeGatewayUnreachable(t *testing.T) {
	k, m := fakeBox(t)
	links, err := m.Links()
	if err != nil {
		t.Fatal(err)
	}
	p, err := BuildPlan(labConfig(true), links)
	if err != nil || len(p.Problems) != 0 {
		t.Fatalf("plan: %v, %v", err, p.Problems)
	}
	k.mu.Lock()
	k.addrs = slices.DeleteFunc(k.addrs, func(a netlink.Addr) bool { return a.IP.Equal(net.ParseIP("198.18.1.2")) })
	k.mu.Unlock()
	m.mu.Lock()
	probs, err := m.apply(p, links)
	m.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if len(probs) != 1 || probs[0].UnitID != p.Units[0].UnitID || probs[0].Addr != gw4 ||
		!strings.Contains(probs[0].Reason, "default via 198.18.1.1") || !strings.Contains(probs[0].Reason, unix.ENETUNREACH.Error()) {
		t.Fatalf("problems = %v; want one, of gateway %s, with the kernel's %q", probs, gw4, unix.ENETUNREACH)
	}
	rules, routes, err := m.Installed()
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(p.Rules, rules, netipEqual); d != "" {
		t.Errorf("rules (-plan +kernel):\n%s", d)
	}
	for _, r := range p.Routes {
		if has := slices.Contains(routes, r); has != (r.Table != p.Units[0].Table || r.Type == Unreachable) {
			t.Errorf("route %q installed: %v", r.Line(), has)
		}
	}
}
