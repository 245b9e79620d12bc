package routing

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/pairlb/pairlb/config"
)

var (
	pfx  = netip.MustParsePrefix
	addr = netip.MustParseAddr
)

// netipEqual lets cmp compare netip values (their fields are unexported).
var netipEqual = cmp.Options{
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
}

// lyncLinks mirrors the guide's single pair: internal, DMZ and external legs. The guide's example
// addresses are fine here: this is pure logic, nothing is sent.
func lyncLinks() []Link {
	return []Link{
		{Index: 2, Name: "int0", Up: true, Addrs: []netip.Prefix{pfx("10.11.0.10/24")}},
		{Index: 3, Name: "dmz0", Up: true, Addrs: []netip.Prefix{pfx("192.168.100.10/24")}},
		{Index: 4, Name: "ext0", Up: true, Addrs: []netip.Prefix{pfx("201.44.53.10/24"), pfx("2001:db8:53::10/64")}},
	}
}

func vs(name, vip, gw string) config.VirtualService {
	v := config.VirtualService{Name: name, VIP: addr(vip)}
	if gw != "" {
		v.DefaultGateway = addr(gw)
	}
	return v
}

func lyncConfig(strict bool) *config.Config {
	return &config.Config{
		Global: config.Global{UseDefaultRouteOnly: strict},
		VirtualServices: []config.VirtualService{
			vs("edge-ext-sip", "201.44.53.50", "201.44.53.1"),
			vs("edge-ext-sip-redirect", "201.44.53.50", "201.44.53.1"),
			vs("fe-https", "10.11.0.50", "10.11.0.1"),
			vs("fe-sip", "10.11.0.50", "10.11.0.1"),
			vs("edge-int-sip", "192.168.100.50", "192.168.100.1"),
			vs("owa", "192.168.100.60", "192.168.100.1"),
			vs("mediation", "10.11.0.52", ""),
		},
	}
}

func TestBuildPlanLyncStrict(t *testing.T) {
	p, err := BuildPlan(lyncConfig(true), lyncLinks())
	if err != nil {
		t.Fatal(err)
	}
	want := Plan{
		Tables: []Table{
			{ID: 20100, Gateway: addr("10.11.0.1"), Link: 2, LinkName: "int0", Services: []string{"fe-https", "fe-sip"}},
			{ID: 20101, Gateway: addr("192.168.100.1"), Link: 3, LinkName: "dmz0", Services: []string{"edge-int-sip", "owa"}},
			{ID: 20102, Gateway: addr("201.44.53.1"), Link: 4, LinkName: "ext0", Services: []string{"edge-ext-sip", "edge-ext-sip-redirect"}},
		},
		Rules: []Rule{
			{Priority: 20100, Table: 20100, Src: pfx("10.11.0.50/32")},
			{Priority: 20101, Table: 20101, Src: pfx("192.168.100.50/32")},
			{Priority: 20101, Table: 20101, Src: pfx("192.168.100.60/32")},
			{Priority: 20102, Table: 20102, Src: pfx("201.44.53.50/32")},
		},
		Routes: []Route{
			{Table: 20100, Dst: pfx("10.11.0.0/24"), Link: 2, LinkName: "int0", Src: addr("10.11.0.10"), Metric: RouteMetric},
			{Table: 20100, Dst: pfx("0.0.0.0/0"), Gw: addr("10.11.0.1"), Link: 2, LinkName: "int0", Metric: RouteMetric},
			{Table: 20100, Type: Unreachable, Dst: pfx("0.0.0.0/0"), Metric: UnreachableMetric},
			{Table: 20101, Dst: pfx("192.168.100.0/24"), Link: 3, LinkName: "dmz0", Src: addr("192.168.100.10"), Metric: RouteMetric},
			{Table: 20101, Dst: pfx("0.0.0.0/0"), Gw: addr("192.168.100.1"), Link: 3, LinkName: "dmz0", Metric: RouteMetric},
			{Table: 20101, Type: Unreachable, Dst: pfx("0.0.0.0/0"), Metric: UnreachableMetric},
			{Table: 20102, Dst: pfx("201.44.53.0/24"), Link: 4, LinkName: "ext0", Src: addr("201.44.53.10"), Metric: RouteMetric},
			{Table: 20102, Dst: pfx("0.0.0.0/0"), Gw: addr("201.44.53.1"), Link: 4, LinkName: "ext0", Metric: RouteMetric},
			{Table: 20102, Type: Unreachable, Dst: pfx("0.0.0.0/0"), Metric: UnreachableMetric},
		},
		Units: []Unit{
			gwUnit("10.11.0.1", 20100, "fe-https", "fe-sip"),
			gwUnit("192.168.100.1", 20101, "edge-int-sip", "owa"),
			gwUnit("201.44.53.1", 20102, "edge-ext-sip", "edge-ext-sip-redirect"),
		},
	}
	if d := cmp.Diff(want, p, netipEqual); d != "" {
		t.Errorf("plan (-want +got):\n%s", d)
	}

	wantLines := []string{
		"ip route add 10.11.0.0/24 dev int0 proto 112 scope link src 10.11.0.10 metric 1024 table 20100",
		"ip route add default via 10.11.0.1 dev int0 proto 112 metric 1024 table 20100",
		"ip route add unreachable default proto 112 metric 4294967295 table 20100",
		"ip route add 192.168.100.0/24 dev dmz0 proto 112 scope link src 192.168.100.10 metric 1024 table 20101",
		"ip route add default via 192.168.100.1 dev dmz0 proto 112 metric 1024 table 20101",
		"ip route add unreachable default proto 112 metric 4294967295 table 20101",
		"ip route add 201.44.53.0/24 dev ext0 proto 112 scope link src 201.44.53.10 metric 1024 table 20102",
		"ip route add default via 201.44.53.1 dev ext0 proto 112 metric 1024 table 20102",
		"ip route add unreachable default proto 112 metric 4294967295 table 20102",
		"ip rule add from 10.11.0.50/32 lookup 20100 priority 20100 protocol 112",
		"ip rule add from 192.168.100.50/32 lookup 20101 priority 20101 protocol 112",
		"ip rule add from 192.168.100.60/32 lookup 20101 priority 20101 protocol 112",
		"ip rule add from 201.44.53.50/32 lookup 20102 priority 20102 protocol 112",
	}
	if d := cmp.Diff(wantLines, p.Lines(), netipEqual); d != "" {
		t.Errorf("lines (-want +got):\n%s", d)
	}
	if d := Diff(p, Plan{Rules: p.Rules, Routes: p.Routes}); len(d) != 0 {
		t.Errorf("Diff of a plan against itself = %q", d)
	}
}

func TestBuildPlanDeterministic(t *testing.T) {
	cfg := lyncConfig(true)
	p1, err := BuildPlan(cfg, lyncLinks())
	if err != nil {
		t.Fatal(err)
	}
	rev := *cfg
	rev.VirtualServices = nil
	for i := len(cfg.VirtualServices) - 1; i >= 0; i-- {
		rev.VirtualServices = append(rev.VirtualServices, cfg.VirtualServices[i])
	}
	links := lyncLinks()
	links[0], links[2] = links[2], links[0]
	p2, err := BuildPlan(&rev, links)
	if err != nil {
		t.Fatal(err)
	}
	// Services per table are listed in file order; everything the kernel sees is identical.
	if d := cmp.Diff(p1.Lines(), p2.Lines(), netipEqual); d != "" {
		t.Errorf("plans differ with input order (-first +second):\n%s", d)
	}
}

func TestBuildPlanNotStrictCopiesConnected(t *testing.T) {
	cfg := &config.Config{VirtualServices: []config.VirtualService{vs("fe", "10.11.0.50", "10.11.0.1")}}
	links := lyncLinks()
	links = append(links, Link{Index: 5, Name: "down0", Up: false, Addrs: []netip.Prefix{pfx("198.18.9.1/24")}})
	p, err := BuildPlan(cfg, links)
	if err != nil {
		t.Fatal(err)
	}
	want := []Route{
		{Table: 20100, Dst: pfx("10.11.0.0/24"), Link: 2, LinkName: "int0", Src: addr("10.11.0.10"), Metric: RouteMetric},
		{Table: 20100, Dst: pfx("192.168.100.0/24"), Link: 3, LinkName: "dmz0", Src: addr("192.168.100.10"), Metric: RouteMetric},
		{Table: 20100, Dst: pfx("201.44.53.0/24"), Link: 4, LinkName: "ext0", Src: addr("201.44.53.10"), Metric: RouteMetric},
		{Table: 20100, Dst: pfx("0.0.0.0/0"), Gw: addr("10.11.0.1"), Link: 2, LinkName: "int0", Metric: RouteMetric},
	}
	if d := cmp.Diff(want, p.Routes, netipEqual); d != "" {
		t.Errorf("routes (-want +got):\n%s", d)
	}
}

func TestBuildPlanIPv6(t *testing.T) {
	cfg := &config.Config{
		Global: config.Global{UseDefaultRouteOnly: true, ManageAddresses: true},
		VirtualServices: []config.VirtualService{
			vs("v6", "2001:db8:53::50", "2001:db8:53::1"),
			vs("v4", "201.44.53.50", "201.44.53.1"),
		},
	}
	p, err := BuildPlan(cfg, lyncLinks())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"ip addr add 201.44.53.50/32 dev ext0 label ext0:plb",
		"ip -6 addr add 2001:db8:53::50/128 dev ext0 nodad",
		"ip route add 201.44.53.0/24 dev ext0 proto 112 scope link src 201.44.53.10 metric 1024 table 20100",
		"ip route add default via 201.44.53.1 dev ext0 proto 112 metric 1024 table 20100",
		"ip route add unreachable default proto 112 metric 4294967295 table 20100",
		"ip -6 route add 2001:db8:53::/64 dev ext0 proto 112 scope link src 2001:db8:53::10 metric 1024 table 20101",
		"ip -6 route add default via 2001:db8:53::1 dev ext0 proto 112 metric 1024 table 20101",
		"ip -6 route add unreachable default proto 112 metric 4294967295 table 20101",
		"ip rule add from 201.44.53.50/32 lookup 20100 priority 20100 protocol 112",
		"ip -6 rule add from 2001:db8:53::50/128 lookup 20101 priority 20101 protocol 112",
	}
	if d := cmp.Diff(want, p.Lines(), netipEqual); d != "" {
		t.Errorf("lines (-want +got):\n%s", d)
	}
}

func gwUnit(gw string, table int, services ...string) Unit {
	a := addr(gw)
	return Unit{UnitID: UnitID{Kind: UnitGateway, Addr: a, Family: familyOf(a)}, Table: table, Services: services}
}

func TestBuildPlanLinkDown(t *testing.T) {
	links := lyncLinks()
	links[0].Up = false
	cfg := &config.Config{
		Global:          config.Global{UseDefaultRouteOnly: true},
		VirtualServices: []config.VirtualService{vs("fe", "10.11.0.50", "10.11.0.1")},
	}
	p, err := BuildPlan(cfg, links)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"ip route add unreachable default proto 112 metric 4294967295 table 20100",
		"ip rule add from 10.11.0.50/32 lookup 20100 priority 20100 protocol 112",
	}
	if d := cmp.Diff(want, p.Lines(), netipEqual); d != "" {
		t.Errorf("lines with the gateway's link down (-want +got):\n%s", d)
	}
	wantProblems := []Problem{{Unit: gwUnit("10.11.0.1", 20100, "fe"), Reason: "its link int0 is down"}}
	if d := cmp.Diff(wantProblems, p.Problems, netipEqual); d != "" {
		t.Errorf("problems with the gateway's link down (-want +got):\n%s", d)
	}
}

// A link flap took the IPv6 addresses of ext0 away (no keep_addr_on_down): the IPv4 gateway on
// the same link and the gateway on int0 are planned in full, the IPv6 gateway is one problem
// that keeps its rule and its unreachable default, and the IPv6 VIP pairlb manages is another.
// Before units, the whole plan failed and no table could be repaired.
func TestBuildPlanPartialIPv6AddressGone(t *testing.T) {
	cfg := &config.Config{
		Global: config.Global{UseDefaultRouteOnly: true, ManageAddresses: true},
		VirtualServices: []config.VirtualService{
			vs("edge-v6", "2001:db8:53::50", "2001:db8:53::1"),
			vs("edge-v4", "201.44.53.50", "201.44.53.1"),
			vs("fe", "10.11.0.50", "10.11.0.1"),
		},
	}
	links := lyncLinks()
	links[2].Addrs = []netip.Prefix{pfx("201.44.53.10/24")}
	p, err := BuildPlan(cfg, links)
	if err != nil {
		t.Fatalf("BuildPlan with one gateway unreachable: %v", err)
	}
	want := []string{
		"ip addr add 10.11.0.50/32 dev int0 label int0:plb",
		"ip addr add 201.44.53.50/32 dev ext0 label ext0:plb",
		"ip route add 10.11.0.0/24 dev int0 proto 112 scope link src 10.11.0.10 metric 1024 table 20100",
		"ip route add default via 10.11.0.1 dev int0 proto 112 metric 1024 table 20100",
		"ip route add unreachable default proto 112 metric 4294967295 table 20100",
		"ip route add 201.44.53.0/24 dev ext0 proto 112 scope link src 201.44.53.10 metric 1024 table 20101",
		"ip route add default via 201.44.53.1 dev ext0 proto 112 metric 1024 table 20101",
		"ip route add unreachable default proto 112 metric 4294967295 table 20101",
		"ip -6 route add unreachable default proto 112 metric 4294967295 table 20102",
		"ip rule add from 10.11.0.50/32 lookup 20100 priority 20100 protocol 112",
		"ip rule add from 201.44.53.50/32 lookup 20101 priority 20101 protocol 112",
		"ip -6 rule add from 2001:db8:53::50/128 lookup 20102 priority 20102 protocol 112",
	}
	if d := cmp.Diff(want, p.Lines()); d != "" {
		t.Errorf("lines (-want +got):\n%s", d)
	}
	v6 := addr("2001:db8:53::50")
	wantProblems := []Problem{
		{Unit: gwUnit("2001:db8:53::1", 20102, "edge-v6"), Reason: "the gateway is on no connected subnet of this box"},
		{Unit: Unit{UnitID: UnitID{Kind: UnitAddress, Addr: v6, Family: IPv6}, Services: []string{"edge-v6"}},
			Reason: "the VIP is on no connected subnet of this box"},
	}
	if d := cmp.Diff(wantProblems, p.Problems, netipEqual); d != "" {
		t.Errorf("problems (-want +got):\n%s", d)
	}
	if got, want := p.Problems[0].String(), `gateway 2001:db8:53::1 of virtual service "edge-v6": the gateway is on no connected subnet of this box`; got != want {
		t.Errorf("problem = %s\nwant      %s", got, want)
	}
	var units []string
	for _, u := range p.Units {
		units = append(units, u.String())
	}
	if d := cmp.Diff([]string{"gateway 10.11.0.1", "gateway 201.44.53.1", "gateway 2001:db8:53::1",
		"VIP address 10.11.0.50", "VIP address 201.44.53.50", "VIP address 2001:db8:53::50"}, units); d != "" {
		t.Errorf("units (-want +got):\n%s", d)
	}

	// What a Manager keeps of the IPv6 unit that is installed but not planned: the routes via
	// its gateway and its connected route, not another gateway's route left by a renumbering,
	// and the VIP's address.
	for _, c := range []struct {
		r    Route
		keep bool
	}{
		{Route{Table: 20102, Dst: pfx("::/0"), Gw: addr("2001:db8:53::1"), Link: 4, Metric: RouteMetric}, true},
		{Route{Table: 20102, Dst: pfx("2001:db8:53::/64"), Link: 4, Metric: RouteMetric}, true},
		{Route{Table: 20102, Dst: pfx("::/0"), Gw: addr("2001:db8:77::1"), Link: 4, Metric: RouteMetric}, false},
		{Route{Table: 20101, Dst: pfx("0.0.0.0/0"), Gw: addr("201.44.53.254"), Link: 4, Metric: RouteMetric}, false},
	} {
		if got := p.keepsRoute(c.r); got != c.keep {
			t.Errorf("keepsRoute(%s) = %v, want %v", c.r.Line(), got, c.keep)
		}
	}
	if !p.keepsAddr(Addr{Link: 4, Prefix: pfx("2001:db8:53::50/128")}) || p.keepsAddr(Addr{Link: 2, Prefix: pfx("10.11.0.99/32")}) {
		t.Error("keepsAddr keeps the wrong VIP addresses")
	}
	kept := Route{Table: 20102, Dst: pfx("::/0"), Gw: addr("2001:db8:53::1"), Link: 4, Metric: RouteMetric}
	if d := Diff(p, Plan{Rules: p.Rules, Routes: append(slices.Clone(p.Routes), kept)}); len(d) != 0 {
		t.Errorf("Diff lists a route the Manager keeps: %q", d)
	}

	// The address back: the whole plan, no problem.
	p, err = BuildPlan(cfg, lyncLinks())
	if err != nil || len(p.Problems) != 0 {
		t.Errorf("with the address back: %v, problems %v", err, p.Problems)
	}
}

func TestBuildPlanErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  *config.Config
		want []string // substrings of the error
	}{
		{"one VIP two gateways", &config.Config{VirtualServices: []config.VirtualService{
			vs("a", "10.11.0.50", "10.11.0.1"), vs("b", "10.11.0.50", "10.11.0.2")}},
			[]string{"VIP 10.11.0.50", `"a"`, `"b"`, "10.11.0.2"}},
		{"family mismatch", &config.Config{VirtualServices: []config.VirtualService{vs("x", "10.11.0.50", "2001:db8:53::1")}},
			[]string{`"x"`, "different address families"}},
		{"nil config", nil, []string{"no configuration"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := BuildPlan(tt.cfg, lyncLinks())
			if err == nil {
				t.Fatal("no error")
			}
			for _, s := range tt.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %s", err, s)
				}
			}
		})
	}
}

func TestBuildPlanNoGatewayNoRule(t *testing.T) {
	cfg := &config.Config{Global: config.Global{UseDefaultRouteOnly: true},
		VirtualServices: []config.VirtualService{vs("mediation", "10.11.0.52", "")}}
	p, err := BuildPlan(cfg, lyncLinks())
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(Plan{}, p, netipEqual); d != "" {
		t.Errorf("plan for a service without gateway (-want +got):\n%s", d)
	}
}

func TestDiff(t *testing.T) {
	p, err := BuildPlan(lyncConfig(true), lyncLinks())
	if err != nil {
		t.Fatal(err)
	}
	stale := Rule{Priority: 20105, Table: 20105, Src: pfx("198.18.7.7/32")}
	got := Diff(p, Plan{Rules: append(p.Rules[1:], stale), Routes: p.Routes[1:]})
	want := []string{
		"+ " + p.Routes[0].Line(),
		"+ " + p.Rules[0].Line(),
		"- ip rule del from 198.18.7.7/32 lookup 20105 priority 20105 protocol 112",
	}
	if d := cmp.Diff(want, got, netipEqual); d != "" {
		t.Errorf("diff (-want +got):\n%s", d)
	}
}

// transparentVS is a transparent service on vip with the given real servers.
func transparentVS(name, vip, gw string, servers ...string) config.VirtualService {
	v := vs(name, vip, gw)
	v.Transparent = true
	for _, s := range servers {
		v.RealServers = append(v.RealServers, config.RealServer{Address: addr(s), Weight: 1, Enabled: true})
	}
	return v
}

// Two-arm transparency: clients on the DMZ side, real servers on the internal network.
func TestBuildPlanTransparency(t *testing.T) {
	cfg := &config.Config{Global: config.Global{UseDefaultRouteOnly: true}, VirtualServices: []config.VirtualService{
		transparentVS("av", "192.168.100.50", "", "10.11.0.21", "10.11.0.22"),
		transparentVS("av6", "2001:db8:53::50", "2001:db8:53::1", "2001:db8:11::21"),
		vs("web", "192.168.100.60", ""),
	}}
	links := lyncLinks()
	links[0].Addrs = append(links[0].Addrs, pfx("2001:db8:11::10/64"))
	p, err := BuildPlan(cfg, links)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"ip route add local default dev lo proto 112 metric 1024 table 20099",
		"ip -6 route add local default dev lo proto 112 metric 1024 table 20099",
		"ip -6 route add 2001:db8:53::/64 dev ext0 proto 112 scope link src 2001:db8:53::10 metric 1024 table 20100",
		"ip -6 route add default via 2001:db8:53::1 dev ext0 proto 112 metric 1024 table 20100",
		"ip -6 route add unreachable default proto 112 metric 4294967295 table 20100",
		"ip rule add fwmark 0x70/0xff lookup 20099 priority 20099 protocol 112",
		"ip -6 rule add fwmark 0x70/0xff lookup 20099 priority 20099 protocol 112",
		"ip -6 rule add from 2001:db8:53::50/128 lookup 20100 priority 20100 protocol 112",
		"nft add table inet pairlb",
		"nft add chain inet pairlb prerouting '{ type filter hook prerouting priority mangle; policy accept; }'",
		`nft add rule inet pairlb prerouting iifname "int0" socket transparent 1 counter meta mark set meta mark and 0xffffff00 or 0x70 comment "pairlb: replies to transparent sockets"`,
	}
	if d := cmp.Diff(want, p.Lines()); d != "" {
		t.Errorf("lines (-want +got):\n%s", d)
	}
	if d := cmp.Diff(&Transparency{Links: []string{"int0"}, Services: []string{"av", "av6"}}, p.Transparency); d != "" {
		t.Errorf("transparency (-want +got):\n%s", d)
	}
	if d := Diff(p, p); len(d) != 0 {
		t.Errorf("Diff of a plan against itself = %q", d)
	}
	if got := Diff(p, Plan{Rules: p.Rules, Routes: p.Routes}); len(got) != 3 || got[0] != "+ nft add table inet pairlb" {
		t.Errorf("Diff without the nftables table = %q", got)
	}
	other := &Transparency{Links: []string{"dmz0"}}
	if got := Diff(p, Plan{Rules: p.Rules, Routes: p.Routes, Transparency: other}); len(got) != 4 || got[0] != "- nft delete table inet pairlb" {
		t.Errorf("Diff with another nftables table = %q", got)
	}
	if got := Diff(Plan{}, Plan{Transparency: other}); !cmp.Equal(got, []string{"- nft delete table inet pairlb"}) {
		t.Errorf("Diff of a stale nftables table = %q", got)
	}

	// A one-arm service: real servers on the VIP's subnet, clients beyond the VIP's gateway.
	oneArm := &config.Config{VirtualServices: []config.VirtualService{
		transparentVS("edge-av", "201.44.53.12", "201.44.53.1", "201.44.53.23"),
	}}
	p, err = BuildPlan(oneArm, lyncLinks())
	if err != nil {
		t.Fatal(err)
	}
	if p.Transparency == nil || !cmp.Equal(p.Transparency.Links, []string{"ext0"}) {
		t.Errorf("one-arm transparency = %+v, want replies marked on ext0", p.Transparency)
	}
}

// Faults that depend on the box's links are problems of a unit, not errors of the whole plan.
func TestBuildPlanProblems(t *testing.T) {
	tests := []struct {
		name string
		cfg  *config.Config
		want string // the one problem
	}{
		{"gateway on no subnet", &config.Config{VirtualServices: []config.VirtualService{vs("fe", "10.11.0.50", "10.99.0.1")}},
			`gateway 10.99.0.1 of virtual service "fe": the gateway is on no connected subnet of this box`},
		{"managed VIP on no subnet", &config.Config{Global: config.Global{ManageAddresses: true},
			VirtualServices: []config.VirtualService{vs("y", "198.51.100.7", ""), vs("y2", "198.51.100.7", "")}},
			`VIP address 198.51.100.7 of virtual services "y", "y2": the VIP is on no connected subnet of this box`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := BuildPlan(tt.cfg, lyncLinks())
			if err != nil {
				t.Fatal(err)
			}
			if len(p.Problems) != 1 || p.Problems[0].String() != tt.want {
				t.Errorf("problems = %v\nwant      [%s]", p.Problems, tt.want)
			}
		})
	}
}

func TestBuildPlanTransparencyErrors(t *testing.T) {
	withAllow := transparentVS("allow", "192.168.100.50", "", "10.11.0.21")
	withAllow.Access.Allow = []netip.Prefix{pfx("10.0.0.0/8")}
	withSorry := transparentVS("sorry", "192.168.100.50", "", "10.11.0.21")
	withSorry.SorryServer = netip.MustParseAddrPort("198.51.100.9:80")
	tests := []struct {
		name    string
		vs      config.VirtualService
		want    string
		problem bool // a problem of the unit (it depends on the box's subnets), not an error
	}{
		{"server on no connected subnet", transparentVS("far", "192.168.100.50", "", "10.12.0.21"),
			`virtual service "far" is transparent, but its real server 10.12.0.21 is on no subnet this box is directly connected to: it could not route its replies to clients back through the box`, true},
		{"server on the VIP's subnet", transparentVS("same", "10.11.0.50", "", "10.11.0.21"),
			`virtual service "same" is transparent, but its real server 10.11.0.21 is on the VIP's subnet 10.11.0.0/24: clients there would get its replies directly, not through the box`, true},
		{"server where clients are allowed", withAllow,
			`virtual service "allow" is transparent, but its real server 10.11.0.21 is on 10.11.0.0/24, where the service allows clients (10.0.0.0/8): it would answer them directly, not through the box`, true},
		{"server of the other family", transparentVS("fam", "192.168.100.50", "", "2001:db8:53::21"),
			`virtual service "fam" is transparent, but its real server 2001:db8:53::21 is not of the VIP's address family: connections to it leave from the client's address`, false},
		{"sorry server far away", withSorry,
			`virtual service "sorry" is transparent, but its sorry server 198.51.100.9 is on no subnet this box is directly connected to: it could not route its replies to clients back through the box`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := BuildPlan(&config.Config{VirtualServices: []config.VirtualService{tt.vs}}, lyncLinks())
			if !tt.problem {
				if err == nil || err.Error() != tt.want {
					t.Errorf("error = %v\nwant    %s", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := []Problem{{Unit: Unit{UnitID: UnitID{Kind: UnitTransparency, Family: IPv4}, Table: TransparentTable, Services: []string{tt.vs.Name}},
				Reason: tt.want}}
			if d := cmp.Diff(want, p.Problems, netipEqual); d != "" {
				t.Errorf("problems (-want +got):\n%s", d)
			}
			// The mark rule and the local route need no link: they stay planned.
			if len(p.Rules) != 1 || p.Rules[0].Table != TransparentTable || p.Transparency == nil {
				t.Errorf("plan of a transparent service with a problem: rules %v, transparency %+v", p.Rules, p.Transparency)
			}
		})
	}
}

func TestSources(t *testing.T) {
	links := lyncLinks()
	// keepalived's VIP with the subnet's prefix, listed before the box's own address.
	links[1].Addrs = append([]netip.Prefix{pfx("192.168.100.50/24")}, links[1].Addrs...)
	cfg := lyncConfig(true)
	for _, c := range []struct {
		dst, want string
		ok        bool
	}{
		{"10.11.0.99", "10.11.0.10", true},
		{"192.168.100.99", "192.168.100.10", true},
		{"2001:db8:53::99", "2001:db8:53::10", true},
		{"198.51.100.1", "invalid IP", false},
	} {
		got, ok := NewSources(cfg, links).Lookup(addr(c.dst))
		if ok != c.ok || got.String() != c.want {
			t.Errorf("Lookup(%s) = %v, %v; want %s, %v", c.dst, got, ok, c.want, c.ok)
		}
	}
}

// TestBuildPlanMissingInterface: on a box being built, a pair network's interface that is not
// there yet is named with what of the plan waits for it (its gateways, its VIPs, their
// services), and the rest of the plan is whole.
func TestBuildPlanMissingInterface(t *testing.T) {
	cfg := lyncConfig(true)
	cfg.Global.ManageAddresses = true
	cfg.Pair = &config.Pair{Networks: []config.PairNetwork{
		{Name: "internal", Interface: "int0", Prefix: pfx("10.11.0.0/16")},
		{Name: "dmz", Interface: "eth2", Prefix: pfx("192.168.100.0/24")},
		{Name: "spare", Interface: "eth9", Prefix: pfx("198.18.9.0/24")},
	}}
	links := lyncLinks()
	links = slices.DeleteFunc(links, func(l Link) bool { return l.Name == "dmz0" }) // eth2 is not cabled yet
	p, err := BuildPlan(cfg, links)
	if err != nil {
		t.Fatal(err)
	}
	want := []MissingInterface{
		{Name: "eth2", Network: "dmz", Prefix: pfx("192.168.100.0/24"), Gateways: []netip.Addr{addr("192.168.100.1")},
			VIPs: []netip.Addr{addr("192.168.100.50"), addr("192.168.100.60")}, Services: []string{"edge-int-sip", "owa"}},
		{Name: "eth9", Network: "spare", Prefix: pfx("198.18.9.0/24")},
	}
	if d := cmp.Diff(want, p.Missing, netipEqual); d != "" {
		t.Errorf("missing interfaces (-want +got):\n%s", d)
	}
	if got, w := p.Missing[0].String(), `interface eth2 (pair network dmz, 192.168.100.0/24), for gateway 192.168.100.1, VIPs 192.168.100.50, 192.168.100.60, virtual services "edge-int-sip", "owa"`; got != w {
		t.Errorf("String:\n got %s\nwant %s", got, w)
	}
	if got, w := p.Missing[1].String(), "interface eth9 (pair network spare, 198.18.9.0/24), which no part of the routing plan needs"; got != w {
		t.Errorf("String:\n got %s\nwant %s", got, w)
	}
	// The other gateways are planned in full.
	for _, w := range []string{"ip route add default via 10.11.0.1 dev int0", "ip route add default via 201.44.53.1 dev ext0"} {
		if !slices.ContainsFunc(p.Lines(), func(l string) bool { return strings.HasPrefix(l, w) }) {
			t.Errorf("plan lacks %q:\n%s", w, strings.Join(p.Lines(), "\n"))
		}
	}
	// Every interface there: nothing missing.
	cfg.Pair.Networks = cfg.Pair.Networks[:1]
	if p, err := BuildPlan(cfg, lyncLinks()); err != nil || p.Missing != nil {
		t.Errorf("with every interface there: missing %v, %v", p.Missing, err)
	}
}
