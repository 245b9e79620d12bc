package routing

import (
	"net/netip"
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
	want := []string{
		"ip route add 10.11.0.0/16 dev int0 proto 112 scope link src 10.11.0.5 metric 1024 table 20100",
		"ip route add default via 10.11.0.1 dev int0 proto 112 metric 1024 table 20100",
		"ip route add unreachable default proto 112 metric 4294967295 table 20100",
		"ip route add 192.168.100.0/24 dev dmz0 proto 112 scope link src 192.168.100.5 metric 1024 table 20101",
		"ip route add default via 192.168.100.1 dev dmz0 proto 112 metric 1024 table 20101",
		"ip route add unreachable default proto 112 metric 4294967295 table 20101",
		"ip route add 201.44.53.0/24 dev ext0 proto 112 scope link src 201.44.53.5 metric 1024 table 20102",
		"ip route add default via 201.44.53.1 dev ext0 proto 112 metric 1024 table 20102",
		"ip route add unreachable default proto 112 metric 4294967295 table 20102",
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

	// The box without a leg in the external network: the error names the gateway and a service.
	_, err = BuildPlan(cfg, links[:2])
	if err == nil {
		t.Fatal("no error for a gateway on no connected subnet")
	}
	if want := `gateway 201.44.53.1 of virtual service "edge-ext-sip-access" is on no connected subnet of this box`; err.Error() != want {
		t.Errorf("error = %q, want %q", err, want)
	}
}
