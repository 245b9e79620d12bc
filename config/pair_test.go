package config

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// pairFile is a valid file with a pair; the pair section starts on line 6, networks[0] is on
// line 8 and nodes[0] on line 11.
func pairFile(pair string) string {
	return `virtual_services:
  - {name: in, vip: 198.51.100.10, ports: ["443/tcp"], default_gateway: 198.51.100.1, real_servers: [{address: 198.18.2.11}]}
  - {name: out, vip: 203.0.113.10, ports: ["443/tcp"], real_servers: [{address: 198.18.2.11}]}
  - {name: out2, vip: 203.0.113.11, ports: ["443/tcp"], real_servers: [{address: 198.18.2.11}]}
# the pair
pair:
` + pair
}

const validPair = `  networks:
    - {name: inside, interface: eth1, prefix: 198.51.100.0/24, vrid: 51}
    - {name: outside, interface: eth2, prefix: 203.0.113.0/24, vrid: 52}
  nodes:
    - {name: lb1, priority: 150, addresses: {inside: 198.51.100.2, outside: 203.0.113.2}, admin: 198.51.100.2:9090}
    - {name: lb2, priority: 100, addresses: {inside: 198.51.100.3, outside: 203.0.113.3}}
`

func TestPairParse(t *testing.T) {
	cfg, err := Parse("pair.yaml", []byte(pairFile(validPair+"  preempt: true\n  preempt_delay: 30s\n  auth_secret_file: /etc/pairlb/vrrp.secret\n")))
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddr
	want := &Pair{
		Networks: []PairNetwork{
			{Name: "inside", Interface: "eth1", Prefix: netip.MustParsePrefix("198.51.100.0/24"), VRID: 51},
			{Name: "outside", Interface: "eth2", Prefix: netip.MustParsePrefix("203.0.113.0/24"), VRID: 52},
		},
		Nodes: []PairNode{
			{Name: "lb1", Priority: 150, Addresses: map[string]netip.Addr{"inside": addr("198.51.100.2"), "outside": addr("203.0.113.2")},
				Admin: netip.MustParseAddrPort("198.51.100.2:9090")},
			{Name: "lb2", Priority: 100, Addresses: map[string]netip.Addr{"inside": addr("198.51.100.3"), "outside": addr("203.0.113.3")}},
		},
		VRRPVersion:    2,
		AdvertInterval: time.Second,
		Preempt:        true,
		PreemptDelay:   30 * time.Second,
		AuthSecretFile: "/etc/pairlb/vrrp.secret",
	}
	if diff := cmp.Diff(want, cfg.Pair, netipEqual); diff != "" {
		t.Errorf("pair (-want +got):\n%s", diff)
	}
	if p := cfg.Pair.Peer("lb1"); p == nil || p.Name != "lb2" {
		t.Errorf("Peer(lb1) = %v", p)
	}
	if p := cfg.Pair.Peer("lb3"); p != nil {
		t.Errorf("Peer(lb3) = %v, want nil", p)
	}
	if n := cfg.Pair.NodeOwning([]netip.Addr{addr("127.0.0.1"), addr("203.0.113.3")}); n == nil || n.Name != "lb2" {
		t.Errorf("NodeOwning = %v, want lb2", n)
	}
	if n := cfg.Pair.NodeOwning([]netip.Addr{addr("198.51.100.2"), addr("203.0.113.3")}); n != nil {
		t.Errorf("NodeOwning of both nodes' addresses = %v, want nil", n.Name)
	}

	// Without a pair section there is no pair; defaults apply when the section leaves them out.
	if cfg, err := Parse("single.yaml", []byte(services(web))); err != nil || cfg.Pair != nil {
		t.Errorf("no pair section: %v, %v", cfg, err)
	}
	cfg, err = Parse("v3.yaml", []byte(pairFile(validPair+"  vrrp_version: 3\n  advert_interval: 200ms\n")))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Pair.VRRPVersion != 3 || cfg.Pair.AdvertInterval != 200*time.Millisecond || cfg.Pair.Preempt {
		t.Errorf("v3 pair = %+v", cfg.Pair)
	}
}

// TestPairRejects has one case per rule of the pair section, with the path, value and line.
func TestPairRejects(t *testing.T) {
	nodes := func(a, b string) string {
		return "  networks:\n    - {name: inside, interface: eth1, prefix: 198.51.100.0/24, vrid: 51}\n" +
			"    - {name: outside, interface: eth2, prefix: 203.0.113.0/24, vrid: 52}\n  nodes:\n    - " + a + "\n    - " + b + "\n"
	}
	const lb2 = `{name: lb2, priority: 100, addresses: {inside: 198.51.100.3, outside: 203.0.113.3}}`
	networks := func(a string) string {
		return "  networks:\n    - " + a + "\n    - {name: outside, interface: eth2, prefix: 203.0.113.0/24, vrid: 52}\n" +
			"  nodes:\n    - {name: lb1, priority: 150, addresses: {inside: 198.51.100.2, outside: 203.0.113.2}}\n    - " + lb2 + "\n"
	}
	for _, tc := range []struct {
		name, src, path, value, msg string
		line                        int
	}{
		{"not a mapping", pairFile("  - a\n"), "pair", "", "want a mapping", 7},
		{"unknown key", pairFile(validPair + "  advert_int: 1s\n"), "pair", "advert_int", "unknown key", 13},
		{"no networks", pairFile("  nodes: []\n"), "pair.networks", "", "at least one network", 7},
		{"one node", pairFile("  networks:\n    - {name: inside, interface: eth1, prefix: 198.51.100.0/24, vrid: 51}\n    - {name: outside, interface: eth2, prefix: 203.0.113.0/24, vrid: 52}\n  nodes:\n    - " + lb2 + "\n"),
			"pair.nodes", "", "want exactly 2 nodes, got 1", 11},
		{"three nodes", pairFile(validPair + "    - {name: lb3, priority: 50, addresses: {inside: 198.51.100.4, outside: 203.0.113.4}}\n"),
			"pair.nodes", "", "want exactly 2 nodes, got 3", 11},
		{"vrid zero", pairFile(networks(`{name: inside, interface: eth1, prefix: 198.51.100.0/24, vrid: 0}`)), "pair.networks[0].vrid", "0", "out of range 1-255", 8},
		{"vrid 256", pairFile(networks(`{name: inside, interface: eth1, prefix: 198.51.100.0/24, vrid: 256}`)), "pair.networks[0].vrid", "256", "out of range 1-255", 8},
		{"vrid missing", pairFile(networks(`{name: inside, interface: eth1, prefix: 198.51.100.0/24}`)), "pair.networks[0].vrid", "", "required", 8},
		{"vrid twice", pairFile(networks(`{name: inside, interface: eth1, prefix: 198.51.100.0/24, vrid: 52}`)), "pair.networks[1].vrid", "52", "used twice, first at line 8", 9},
		{"network name twice", pairFile(networks(`{name: outside, interface: eth1, prefix: 198.51.100.0/24, vrid: 51}`)), "pair.networks[1].name", "outside", "duplicate network name", 9},
		{"bad interface", pairFile(networks(`{name: inside, interface: "eth 1", prefix: 198.51.100.0/24, vrid: 51}`)), "pair.networks[0].interface", "eth 1", "interface name", 8},
		{"long interface", pairFile(networks(`{name: inside, interface: abcdefghijklmnop, prefix: 198.51.100.0/24, vrid: 51}`)), "pair.networks[0].interface", "abcdefghijklmnop", "interface name", 8},
		{"prefix without length", pairFile(networks(`{name: inside, interface: eth1, prefix: 198.51.100.0, vrid: 51}`)), "pair.networks[0].prefix", "198.51.100.0", "with its length", 8},
		{"prefix host bits", pairFile(networks(`{name: inside, interface: eth1, prefix: 198.51.100.1/24, vrid: 51}`)), "pair.networks[0].prefix", "198.51.100.1/24", "host bits set", 8},
		{"prefixes overlap", pairFile(networks(`{name: inside, interface: eth1, prefix: 203.0.0.0/8, vrid: 51}`) + ""), "pair.networks[1].prefix", "203.0.113.0/24", "overlaps network inside", 9},
		{"IPv6 with VRRPv2", pairFile(networks(`{name: inside, interface: eth1, prefix: "2001:db8::/64", vrid: 51}`)), "pair.networks[0].prefix", "2001:db8::/64", "needs vrrp_version: 3", 8},
		{"VIP outside every network", pairFile(networks(`{name: inside, interface: eth1, prefix: 198.18.0.0/24, vrid: 51}`)), "virtual_services[0].vip", "198.51.100.10", "not in any network of the pair (inside 198.18.0.0/24, outside 203.0.113.0/24)", 2},
		{"node address missing", pairFile(nodes(`{name: lb1, priority: 150, addresses: {inside: 198.51.100.2}}`, lb2)), "pair.nodes[0].addresses.outside", "", "required: the node's own address in network outside", 11},
		{"node address unknown network", pairFile(nodes(`{name: lb1, priority: 150, addresses: {inside: 198.51.100.2, outside: 203.0.113.2, dmz: 192.0.2.2}}`, lb2)), "pair.nodes[0].addresses", "dmz", "unknown key (want one of inside, outside)", 11},
		{"node address outside its network", pairFile(nodes(`{name: lb1, priority: 150, addresses: {inside: 198.51.100.2, outside: 198.51.100.4}}`, lb2)), "pair.nodes[0].addresses.outside", "198.51.100.4", "outside network outside (203.0.113.0/24)", 11},
		{"node address shared", pairFile(nodes(`{name: lb1, priority: 150, addresses: {inside: 198.51.100.2, outside: 203.0.113.3}}`, lb2)), "pair.nodes[1].addresses.outside", "203.0.113.3", "already given at pair.nodes[0].addresses.outside (line 11)", 12},
		{"node address is a VIP", pairFile(nodes(`{name: lb1, priority: 150, addresses: {inside: 198.51.100.10, outside: 203.0.113.2}}`, lb2)), "pair.nodes[0].addresses.inside", "198.51.100.10", "the VIP of in", 11},
		{"node address is a gateway", pairFile(nodes(`{name: lb1, priority: 150, addresses: {inside: 198.51.100.1, outside: 203.0.113.2}}`, lb2)), "pair.nodes[0].addresses.inside", "198.51.100.1", "the default gateway of in", 11},
		{"node address is the network", pairFile(nodes(`{name: lb1, priority: 150, addresses: {inside: 198.51.100.0, outside: 203.0.113.2}}`, lb2)), "pair.nodes[0].addresses.inside", "198.51.100.0", "the network address", 11},
		{"same priority", pairFile(nodes(`{name: lb1, priority: 100, addresses: {inside: 198.51.100.2, outside: 203.0.113.2}}`, lb2)), "pair.nodes[1].priority", "100", "same priority as the other node (line 11)", 12},
		{"priority 255", pairFile(nodes(`{name: lb1, priority: 255, addresses: {inside: 198.51.100.2, outside: 203.0.113.2}}`, lb2)), "pair.nodes[0].priority", "255", "out of range 1-254", 11},
		{"priority missing", pairFile(nodes(`{name: lb1, addresses: {inside: 198.51.100.2, outside: 203.0.113.2}}`, lb2)), "pair.nodes[0].priority", "", "required", 11},
		{"node name twice", pairFile(nodes(`{name: lb2, priority: 150, addresses: {inside: 198.51.100.2, outside: 203.0.113.2}}`, lb2)), "pair.nodes[1].name", "lb2", "duplicate node name", 12},
		{"admin unspecified", pairFile(nodes(`{name: lb1, priority: 150, addresses: {inside: 198.51.100.2, outside: 203.0.113.2}, admin: "0.0.0.0:9090"}`, lb2)), "pair.nodes[0].admin", "0.0.0.0:9090", "the address the other node reaches", 11},
		{"admin on a VIP", pairFile(nodes(`{name: lb1, priority: 150, addresses: {inside: 198.51.100.2, outside: 203.0.113.2}, admin: "203.0.113.10:9090"}`, lb2)), "pair.nodes[0].admin", "203.0.113.10:9090", "the VIP of out", 11},
		{"sub-second with VRRPv2", pairFile(validPair + "  advert_interval: 200ms\n"), "pair.advert_interval", "200ms", "sub-second intervals need vrrp_version: 3", 13},
		{"VRRPv3 interval not centiseconds", pairFile(validPair + "  vrrp_version: 3\n  advert_interval: 205ms\n"), "pair.advert_interval", "205ms", "multiple of 10ms", 14},
		{"VRRP version 4", pairFile(validPair + "  vrrp_version: 4\n"), "pair.vrrp_version", "4", "out of range 2-3", 13},
		{"preempt_delay without preempt", pairFile(validPair + "  preempt_delay: 10s\n"), "pair.preempt_delay", "10s", "only with preempt: true", 13},
		{"auth with VRRPv3", pairFile(validPair + "  vrrp_version: 3\n  auth_secret_file: /etc/pairlb/vrrp.secret\n"), "pair.auth_secret_file", "/etc/pairlb/vrrp.secret", "VRRPv3 has no authentication", 14},
		{"manage_addresses with a pair", "global:\n  manage_addresses: true\n" + strings.Replace(pairFile(validPair), "virtual_services:", "virtual_services:", 1),
			"global.manage_addresses", "true", "must be false with a pair", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := parseErrors(t, tc.src)
			for _, e := range errs {
				if e.Path == tc.path && e.Value == tc.value && strings.Contains(e.Msg, tc.msg) {
					if tc.line != 0 && e.Line != tc.line {
						t.Errorf("line %d, want %d: %v", e.Line, tc.line, e)
					}
					return
				}
			}
			t.Errorf("no error at %s with value %q and message %q; got:\n%v", tc.path, tc.value, tc.msg, errs)
		})
	}
}

// TestPairErrorsTogether checks the whole report for a file with several pair mistakes: a
// network invalid for one field still counts for the VIP check and for the node addresses'
// keys, so that fixing one mistake does not reveal a new one elsewhere.
func TestPairErrorsTogether(t *testing.T) {
	src := `global: {manage_addresses: true}
virtual_services:
  - {name: web, vip: 198.51.100.10, ports: ["443/tcp"], real_servers: [{address: 198.18.2.11}]}
  - {name: ext, vip: 203.0.113.10, ports: ["443/tcp"], real_servers: [{address: 198.18.2.11}]}
pair:
  networks:
    - {name: inside, interface: eth1, prefix: 198.51.100.0/24, vrid: 51}
    - {name: dmz, interface: eth2, prefix: 192.0.2.0/24, vrid: 51}
  nodes:
    - {name: lb1, priority: 150, addresses: {inside: 198.51.100.10, dmz: 192.0.2.2}}
    - {name: lb2, priority: 150, addresses: {inside: 198.51.100.3, dmz: 192.0.2.3}}
  advert_interval: 200ms
`
	_, err := Parse("pair.yaml", []byte(src))
	want := `pair.yaml:1: global.manage_addresses: "true": must be false with a pair: keepalived moves the VIPs
pair.yaml:4: virtual_services[1].vip: "203.0.113.10": not in any network of the pair (inside 198.51.100.0/24, dmz 192.0.2.0/24): no VRRP instance would carry it
pair.yaml:8: pair.networks[1].vrid: "51": virtual router id used twice, first at line 7
pair.yaml:10: pair.nodes[0].addresses.inside: "198.51.100.10": is the VIP of web: keepalived moves VIPs, a node address stays with its node
pair.yaml:11: pair.nodes[1].priority: "150": same priority as the other node (line 10): give the preferred master the higher one
pair.yaml:12: pair.advert_interval: "200ms": VRRPv2 advertises in whole seconds 1s-255s; sub-second intervals need vrrp_version: 3`
	if err == nil {
		t.Fatal("Parse succeeded")
	}
	if diff := cmp.Diff(want, err.Error()); diff != "" {
		t.Errorf("errors (-want +got):\n%s", diff)
	}
}
