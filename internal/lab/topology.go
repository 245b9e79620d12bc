package lab

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/pairlb/pairlb/config"
)

// The lab's fixed hosts, around the box (see the package comment for the picture). The routers
// sit at .1 of each network (where the guide puts its gateways), the box at .2; each router has a
// client network of its own behind it, in 198.19.0.0/16.
const (
	nsSwitch = "sw"
	nsBox    = "box"
)

// segment is one of the box's networks: a bridge in the switch namespace with the box, the
// router and the hosts of that network on it.
type segment struct {
	Network
	letter   string     // short tag in port names: i, d, e
	bridge   string     // bridge name in the switch namespace
	boxIf    string     // the box's interface on it
	box      netip.Addr // the box's own address
	router   string     // the router namespace's short name
	routerIP netip.Addr // the gateway
	// clientNet is the client network behind the router, with its client.
	clientNet netip.Prefix
}

func (s segment) prefix(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, s.Lab.Bits()) }

func hostAddr(p netip.Prefix, host byte) netip.Addr {
	b := p.Masked().Addr().As4()
	b[3] |= host
	return netip.AddrFrom4(b)
}

var segments = func() []segment {
	letters := map[string]string{"internal": "i", "dmz": "d", "external": "e"}
	short := map[string]string{"internal": "int", "dmz": "dmz", "external": "ext"}
	var out []segment
	for i, n := range Networks {
		out = append(out, segment{
			Network:   n,
			letter:    letters[n.Name],
			bridge:    "br-" + short[n.Name],
			boxIf:     short[n.Name] + "0",
			box:       hostAddr(n.Lab, 2),
			router:    "r-" + short[n.Name],
			routerIP:  hostAddr(n.Lab, 1),
			clientNet: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(i + 1), 0}), 24),
		})
	}
	return out
}()

func segmentOf(network string) segment {
	for _, s := range segments {
		if s.Name == network {
			return s
		}
	}
	panic("lab: unknown network " + network)
}

// clientHost is one of the lab's clients.
type clientHost struct {
	name    string
	desc    string
	addrs   []netip.Prefix // first one is the primary; all are used as sources
	gateway netip.Addr     // default route
	routes  []route        // more specific routes
	// on is the segment the client is attached to directly (its bridge), or "" for a client
	// on its router's client network (a veth to the router).
	on      string
	router  string // the router it hangs off, when on == ""
	targets string // network whose VIPs it sends to
}

type route struct {
	dst netip.Prefix
	via netip.Addr
}

// The DMZ-subnet client's addresses, and the internal router's leg on the DMZ through which it
// reaches the internal network (guide 4.1, the reason for Use Default Route Only).
var (
	dmzSubnetClient = []netip.Prefix{netip.MustParsePrefix("198.51.100.50/24"), netip.MustParsePrefix("198.51.100.51/24")}
	intRouterOnDMZ  = netip.MustParseAddr("198.51.100.254")
)

// clients lists the lab's clients, in the order they are reported.
func clients() []clientHost {
	in, dmz, ext := segmentOf("internal"), segmentOf("dmz"), segmentOf("external")
	behind := func(name, desc string, s segment) clientHost {
		return clientHost{
			name: name, desc: desc, router: s.router, targets: s.Name,
			addrs:   []netip.Prefix{netip.PrefixFrom(hostAddr(s.clientNet, 10), 24), netip.PrefixFrom(hostAddr(s.clientNet, 11), 24)},
			gateway: hostAddr(s.clientNet, 1),
		}
	}
	return []clientHost{
		{
			name: "cli-dmzsub", desc: "on the box's DMZ subnet, reaches internal VIPs through the internal router",
			addrs: dmzSubnetClient, gateway: dmz.routerIP, on: "dmz", targets: "internal",
			routes: []route{{in.Lab, intRouterOnDMZ}},
		},
		behind("cli-int", "internal user behind the internal router", in),
		behind("cli-dmz", "DMZ-side client behind the DMZ router", dmz),
		behind("cli-ext", "Internet client behind the external router", ext),
	}
}

// clientsFor names the clients that send to VIPs of a network: internal services from the
// DMZ-subnet client and an internal one, the others from the client behind their router.
func clientsFor(network string) []string {
	var out []string
	for _, c := range clients() {
		if c.targets == network {
			out = append(out, c.name)
		}
	}
	return out
}

// labAddresses lists every address the lab's fixed hosts use.
func labAddresses() []netip.Addr {
	out := []netip.Addr{intRouterOnDMZ}
	for _, s := range segments {
		out = append(out, s.box, s.routerIP, hostAddr(s.clientNet, 1))
	}
	for _, c := range clients() {
		for _, a := range c.addrs {
			out = append(out, a.Addr())
		}
	}
	return out
}

// checkPlacement refuses a configuration with addresses outside the allowed ranges, or whose
// hosts (VIPs, real servers, sorry servers, source addresses) collide with the lab's own, and
// checks that every default gateway is the lab's router of the VIP's network.
func checkPlacement(cfg *config.Config) error {
	var errs []string
	for _, a := range Addresses(cfg) {
		if !InAllowed(a) {
			errs = append(errs, fmt.Sprintf("address %s is outside the lab's ranges", a))
		}
	}
	own := labAddresses()
	for _, vs := range cfg.VirtualServices {
		hosts := []netip.Addr{vs.VIP, vs.SorryServer.Addr()}
		hosts = append(hosts, vs.SourceAddresses...)
		for _, rs := range vs.RealServers {
			hosts = append(hosts, rs.Address)
		}
		for _, a := range hosts {
			if slices.Contains(own, a) {
				errs = append(errs, fmt.Sprintf("%s: address %s is taken by one of the lab's own hosts", vs.Name, a))
			}
		}
		n, ok := networkOf(vs.VIP)
		if !ok {
			errs = append(errs, fmt.Sprintf("%s: VIP %s is in none of the lab's networks", vs.Name, vs.VIP))
			continue
		}
		if gw := segmentOf(n.Name).routerIP; vs.DefaultGateway.IsValid() && vs.DefaultGateway != gw {
			errs = append(errs, fmt.Sprintf("%s: gateway %s, but the lab's router on the %s network is %s", vs.Name, vs.DefaultGateway, n.Name, gw))
		}
	}
	if len(errs) > 0 {
		slices.Sort(errs)
		errs = slices.Compact(errs)
		return fmt.Errorf("configuration does not fit the lab:\n  %s", strings.Join(errs, "\n  "))
	}
	return nil
}

// serverNS is the short namespace name of a real server.
func serverNS(a netip.Addr) string { return "rs-" + a.String() }
