package routing

import (
	"net/netip"
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
	if d := DiffLines(p, p.Rules, p.Routes); len(d) != 0 {
		t.Errorf("DiffLines of a plan against itself = %q", d)
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
}

func TestBuildPlanErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  *config.Config
		want []string // substrings of the error
	}{
		{"gateway on no subnet", &config.Config{VirtualServices: []config.VirtualService{vs("fe", "10.11.0.50", "10.99.0.1")}},
			[]string{"gateway 10.99.0.1", `"fe"`, "no connected subnet"}},
		{"one VIP two gateways", &config.Config{VirtualServices: []config.VirtualService{
			vs("a", "10.11.0.50", "10.11.0.1"), vs("b", "10.11.0.50", "10.11.0.2")}},
			[]string{"VIP 10.11.0.50", `"a"`, `"b"`, "10.11.0.2"}},
		{"family mismatch", &config.Config{VirtualServices: []config.VirtualService{vs("x", "10.11.0.50", "2001:db8:53::1")}},
			[]string{`"x"`, "different address families"}},
		{"managed VIP on no subnet", &config.Config{Global: config.Global{ManageAddresses: true},
			VirtualServices: []config.VirtualService{vs("y", "198.51.100.7", "")}},
			[]string{"VIP 198.51.100.7", `"y"`}},
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

func TestDiffLines(t *testing.T) {
	p, err := BuildPlan(lyncConfig(true), lyncLinks())
	if err != nil {
		t.Fatal(err)
	}
	stale := Rule{Priority: 20105, Table: 20105, Src: pfx("198.18.7.7/32")}
	got := DiffLines(p, append(p.Rules[1:], stale), p.Routes[1:])
	want := []string{
		"+ " + p.Routes[0].Line(),
		"+ " + p.Rules[0].Line(),
		"- ip rule del from 198.18.7.7/32 lookup 20105 priority 20105 protocol 112",
	}
	if d := cmp.Diff(want, got, netipEqual); d != "" {
		t.Errorf("diff (-want +got):\n%s", d)
	}
}
