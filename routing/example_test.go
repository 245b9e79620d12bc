package routing

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/pairlb/pairlb/config"
)

// TestBuildPlanLyncExample plans the shipped Lync example on a box with one leg in each of the
// guide's three networks. Pure logic: the guide's addresses are never sent to.
func TestBuildPlanLyncExample(t *testing.T) {
	const name = "examples/lync2013-single-pair.yaml"
	data, err := config.Examples.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(name, data)
	if err != nil {
		t.Fatal(err)
	}
	links := []Link{
		{Index: 2, Name: "int0", Up: true, Addrs: []netip.Prefix{pfx("10.11.0.5/16")}},
		{Index: 3, Name: "dmz0", Up: true, Addrs: []netip.Prefix{pfx("192.168.100.5/24")}},
		{Index: 4, Name: "ext0", Up: true, Addrs: []netip.Prefix{pfx("201.44.53.5/24")}},
	}
	p, err := BuildPlan(cfg, links)
	if err != nil {
		t.Fatal(err)
	}
	// The Edge A/V services are transparent: their real servers share the external subnet with
	// the VIP, behind the same gateway (one arm), so replies arriving on ext0 are marked.
	want := []string{
		"ip route add local default dev lo proto 112 metric 1024 table 20099",
		"ip route add 10.11.0.0/16 dev int0 proto 112 scope link src 10.11.0.5 metric 1024 table 20100",
		"ip route add default via 10.11.0.1 dev int0 proto 112 metric 1024 table 20100",
		"ip route add unreachable default proto 112 metric 4294967295 table 20100",
		"ip route add 192.168.100.0/24 dev dmz0 proto 112 scope link src 192.168.100.5 metric 1024 table 20101",
		"ip route add default via 192.168.100.1 dev dmz0 proto 112 metric 1024 table 20101",
		"ip route add unreachable default proto 112 metric 4294967295 table 20101",
		"ip route add 201.44.53.0/24 dev ext0 proto 112 scope link src 201.44.53.5 metric 1024 table 20102",
		"ip route add default via 201.44.53.1 dev ext0 proto 112 metric 1024 table 20102",
		"ip route add unreachable default proto 112 metric 4294967295 table 20102",
		"ip rule add fwmark 0x70/0xff lookup 20099 priority 20099 protocol 112",
		"ip rule add from 10.11.0.20/32 lookup 20100 priority 20100 protocol 112",
		"ip rule add from 10.11.0.21/32 lookup 20100 priority 20100 protocol 112",
		"ip rule add from 10.11.0.30/32 lookup 20100 priority 20100 protocol 112",
		"ip rule add from 10.11.0.31/32 lookup 20100 priority 20100 protocol 112",
		"ip rule add from 10.11.0.32/32 lookup 20100 priority 20100 protocol 112",
		"ip rule add from 10.11.0.40/32 lookup 20100 priority 20100 protocol 112",
		"ip rule add from 192.168.100.10/32 lookup 20101 priority 20101 protocol 112",
		"ip rule add from 192.168.100.20/32 lookup 20101 priority 20101 protocol 112",
		"ip rule add from 192.168.100.30/32 lookup 20101 priority 20101 protocol 112",
		"ip rule add from 201.44.53.10/32 lookup 20102 priority 20102 protocol 112",
		"ip rule add from 201.44.53.11/32 lookup 20102 priority 20102 protocol 112",
		"ip rule add from 201.44.53.12/32 lookup 20102 priority 20102 protocol 112",
		"nft add table inet pairlb",
		"nft add chain inet pairlb prerouting '{ type filter hook prerouting priority mangle; policy accept; }'",
		`nft add rule inet pairlb prerouting iifname "ext0" socket transparent 1 counter meta mark set meta mark and 0xffffff00 or 0x70 comment "pairlb: replies to transparent sockets"`,
	}
	if d := cmp.Diff(want, p.Lines()); d != "" {
		t.Errorf("plan for %s (-want +got):\n%s", name, d)
	}
	var gws []string
	for _, tb := range p.Tables {
		gws = append(gws, tb.Gateway.String())
	}
	if d := cmp.Diff([]string{"10.11.0.1", "192.168.100.1", "201.44.53.1"}, gws); d != "" {
		t.Errorf("gateways (-want +got):\n%s", d)
	}

	// The box without a leg in the external network: the internal and DMZ tables are planned
	// all the same; the problems name the gateway and its services, and every real server of
	// the transparent services.
	p, err = BuildPlan(cfg, links[:2])
	if err != nil {
		t.Fatalf("BuildPlan without the external leg: %v", err)
	}
	if len(p.Problems) != 2 {
		t.Fatalf("problems without the external leg: %v", p.Problems)
	}
	gw := p.Problems[0]
	if gw.Kind != UnitGateway || gw.Addr.String() != "201.44.53.1" || gw.Reason != "the gateway is on no connected subnet of this box" ||
		!strings.HasPrefix(gw.String(), `gateway 201.44.53.1 of virtual services "edge-ext-sip-access", `) {
		t.Errorf("gateway problem = %s", gw)
	}
	var wantReasons []string
	for _, svc := range []string{"edge-ext-av-tcp", "edge-ext-av-stun"} {
		for _, rs := range []string{"201.44.53.23", "201.44.53.33"} {
			wantReasons = append(wantReasons, `virtual service "`+svc+`" is transparent, but its real server `+rs+
				` is on no subnet this box is directly connected to: it could not route its replies to clients back through the box`)
		}
	}
	tr := p.Problems[1]
	if d := cmp.Diff(wantReasons, strings.Split(tr.Reason, "; ")); d != "" || tr.Kind != UnitTransparency ||
		!cmp.Equal(tr.Services, []string{"edge-ext-av-tcp", "edge-ext-av-stun"}) {
		t.Errorf("transparency problem %s: services %v, reasons (-want +got):\n%s", tr.UnitID, tr.Services, d)
	}
	for _, want := range []string{
		"ip route add default via 10.11.0.1 dev int0 proto 112 metric 1024 table 20100",
		"ip route add default via 192.168.100.1 dev dmz0 proto 112 metric 1024 table 20101",
		"ip route add unreachable default proto 112 metric 4294967295 table 20102",
		"ip rule add from 201.44.53.10/32 lookup 20102 priority 20102 protocol 112",
	} {
		if !slices.Contains(p.Lines(), want) {
			t.Errorf("plan without the external leg lacks %q", want)
		}
	}
}
