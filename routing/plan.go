package routing

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/pairlb/pairlb/config"
)

// Link is one interface of the box as a snapshot saw it.
type Link struct {
	Index int
	Name  string
	// Up is the administrative state (IFF_UP). The kernel refuses routes through a link that
	// is down and flushes the IPv4 ones when it goes down.
	Up bool
	// Addrs are the box's usable addresses on the link with their prefix length
	// ("198.18.1.2/24"). Tentative (DAD in progress) and link-local addresses are left out.
	Addrs []netip.Prefix
}

// RouteType is the kind of a route in a pairlb table.
type RouteType uint8

// The route types pairlb installs.
const (
	Unicast RouteType = iota
	Unreachable
)

// Rule is one policy-routing rule: traffic from Src looks up Table.
type Rule struct {
	Priority int
	Table    int
	Src      netip.Prefix // the VIP as /32 or /128
}

// Route is one route in a pairlb table. A unicast route without a gateway is a connected route
// (scope link) through Link; an Unreachable route has neither gateway nor link.
type Route struct {
	Table    int
	Type     RouteType
	Dst      netip.Prefix
	Gw       netip.Addr
	Link     int // interface index, 0 for unreachable
	LinkName string
	Src      netip.Addr // preferred source, the box's own address; invalid when none
	Metric   uint32
}

// Addr is a VIP address pairlb adds to an interface (Global.ManageAddresses).
type Addr struct {
	Link     int
	LinkName string
	Prefix   netip.Prefix // /32 or /128
}

// Table is one per-gateway table of a plan, for display.
type Table struct {
	ID       int
	Gateway  netip.Addr
	Link     int
	LinkName string
	Services []string // virtual services whose VIP uses it
}

// Plan is the kernel state a configuration calls for. The zero Plan holds nothing: applying it
// removes everything pairlb made.
type Plan struct {
	Tables []Table
	Rules  []Rule
	Routes []Route // in the order they are added: connected, default, unreachable per table
	Addrs  []Addr
}

// BuildPlan computes the kernel state for cfg on a box with the given links. It is pure: the
// same inputs give the same plan, with tables and priorities assigned in gateway order.
//
// Per distinct default gateway it makes one table holding the gateway's connected route (with
// the box's own address on it as source), `default via GW`, and, with
// Global.UseDefaultRouteOnly, an `unreachable default` with the highest metric. Without
// UseDefaultRouteOnly the table also holds copies of all the box's connected routes. Each VIP
// of a service with a gateway gets `from VIP lookup TABLE`; services without one get nothing
// (but a rule matches the address, so a gateway-less service sharing a VIP with one that has a
// gateway follows that gateway too; two different gateways on one VIP are an error). A
// gateway whose link is down gets no routes through it (the kernel would refuse them); a
// Manager re-applies when the link comes back.
//
// Table ids follow the sorted gateways, so adding a gateway that sorts before existing ones
// renumbers the tables after it; a Manager handles that like any other change (new routes and
// rules first, old ones removed after), with a moment in which both sets are installed.
func BuildPlan(cfg *config.Config, links []Link) (Plan, error) {
	if cfg == nil {
		return Plan{}, errors.New("building routing plan: no configuration")
	}
	links = slices.Clone(links)
	slices.SortFunc(links, func(a, b Link) int { return cmp.Compare(a.Index, b.Index) })

	vips := map[netip.Addr]bool{}
	for _, vs := range cfg.VirtualServices {
		vips[vs.VIP.Unmap()] = true
	}

	var errs []error
	// Which gateway each VIP uses, and which services use each gateway.
	type vipUse struct {
		gw      netip.Addr
		service string
	}
	vipGW := map[netip.Addr]vipUse{}
	gwServices := map[netip.Addr][]string{}
	var vipOrder []netip.Addr
	for _, vs := range cfg.VirtualServices {
		vip, gw := vs.VIP.Unmap(), vs.DefaultGateway.Unmap()
		if !vip.IsValid() {
			errs = append(errs, fmt.Errorf("virtual service %q: no VIP", vs.Name))
			continue
		}
		if !gw.IsValid() {
			continue
		}
		if gw.Is4() != vip.Is4() {
			errs = append(errs, fmt.Errorf("virtual service %q: gateway %s and VIP %s are of different address families", vs.Name, gw, vip))
			continue
		}
		if prev, ok := vipGW[vip]; ok {
			if prev.gw != gw {
				errs = append(errs, fmt.Errorf("VIP %s: virtual service %q uses gateway %s but %q uses %s; a VIP has one gateway",
					vip, prev.service, prev.gw, vs.Name, gw))
			}
		} else {
			vipGW[vip] = vipUse{gw: gw, service: vs.Name}
			vipOrder = append(vipOrder, vip)
		}
		if !slices.Contains(gwServices[gw], vs.Name) {
			gwServices[gw] = append(gwServices[gw], vs.Name)
		}
	}

	gateways := make([]netip.Addr, 0, len(gwServices))
	for gw := range gwServices {
		gateways = append(gateways, gw)
	}
	slices.SortFunc(gateways, netip.Addr.Compare)
	if len(gateways) > TableCount {
		errs = append(errs, fmt.Errorf("%d distinct default gateways: pairlb's table range %d-%d holds %d",
			len(gateways), TableFirst, TableLast, TableCount))
		return Plan{}, errors.Join(errs...)
	}

	var p Plan
	tableOf := map[netip.Addr]int{}
	for i, gw := range gateways {
		id := TableFirst + i
		tableOf[gw] = id
		link, own, ok := connectedOn(links, gw, vips)
		if !ok {
			errs = append(errs, fmt.Errorf("gateway %s of virtual service %q is on no connected subnet of this box",
				gw, gwServices[gw][0]))
			continue
		}
		p.Tables = append(p.Tables, Table{ID: id, Gateway: gw, Link: link.Index, LinkName: link.Name, Services: gwServices[gw]})

		var routes []Route
		if link.Up {
			routes = append(routes,
				Route{Table: id, Dst: own.Masked(), Link: link.Index, LinkName: link.Name, Src: own.Addr(), Metric: RouteMetric},
				Route{Table: id, Dst: defaultDst(gw), Gw: gw, Link: link.Index, LinkName: link.Name, Metric: RouteMetric})
		}
		if !cfg.Global.UseDefaultRouteOnly {
			seen := map[netip.Prefix]bool{own.Masked(): true}
			for _, l := range links {
				if !l.Up {
					continue
				}
				for _, a := range l.Addrs {
					if a.Addr().Is4() != gw.Is4() || !connected(a, vips) || seen[a.Masked()] {
						continue
					}
					seen[a.Masked()] = true
					routes = append(routes, Route{Table: id, Dst: a.Masked(), Link: l.Index, LinkName: l.Name, Src: a.Addr(), Metric: RouteMetric})
				}
			}
		} else {
			routes = append(routes, Route{Table: id, Type: Unreachable, Dst: defaultDst(gw), Metric: UnreachableMetric})
		}
		sortRoutes(routes)
		p.Routes = append(p.Routes, routes...)
	}

	for _, vip := range vipOrder {
		id, ok := tableOf[vipGW[vip].gw]
		if !ok {
			continue
		}
		p.Rules = append(p.Rules, Rule{Priority: id, Table: id, Src: netip.PrefixFrom(vip, vip.BitLen())})
	}
	sortRules(p.Rules)

	if cfg.Global.ManageAddresses {
		seen := map[netip.Addr]bool{}
		for _, vs := range cfg.VirtualServices {
			vip := vs.VIP.Unmap()
			if !vip.IsValid() || seen[vip] {
				continue
			}
			seen[vip] = true
			if ownAddress(links, vip) {
				continue // the box's own or keepalived's address: not pairlb's to add
			}
			link, _, ok := connectedOn(links, vip, nil)
			if !ok {
				errs = append(errs, fmt.Errorf("VIP %s of virtual service %q is on no connected subnet of this box", vip, vs.Name))
				continue
			}
			p.Addrs = append(p.Addrs, Addr{Link: link.Index, LinkName: link.Name, Prefix: netip.PrefixFrom(vip, vip.BitLen())})
		}
		slices.SortFunc(p.Addrs, func(a, b Addr) int {
			return cmp.Or(cmp.Compare(a.Link, b.Link), a.Prefix.Addr().Compare(b.Prefix.Addr()))
		})
	}

	if len(errs) > 0 {
		return Plan{}, errors.Join(errs...)
	}
	return p, nil
}

// connected reports whether a is one of the box's own addresses with a connected subnet: not
// a host prefix and not a VIP.
func connected(a netip.Prefix, vips map[netip.Addr]bool) bool {
	return a.IsValid() && a.Bits() < a.Addr().BitLen() && !vips[a.Addr().Unmap()]
}

// connectedOn finds the first link (by index) with an own address whose subnet contains ip.
func connectedOn(links []Link, ip netip.Addr, vips map[netip.Addr]bool) (Link, netip.Prefix, bool) {
	for _, l := range links {
		for _, a := range l.Addrs {
			if connected(a, vips) && a.Addr() != ip && a.Masked().Contains(ip) {
				return l, a, true
			}
		}
	}
	return Link{}, netip.Prefix{}, false
}

// ownAddress reports whether ip is already an address of the box with a subnet (not a host
// prefix pairlb would have added).
func ownAddress(links []Link, ip netip.Addr) bool {
	for _, l := range links {
		for _, a := range l.Addrs {
			if a.Addr() == ip && a.Bits() < ip.BitLen() {
				return true
			}
		}
	}
	return false
}

func defaultDst(a netip.Addr) netip.Prefix {
	if a.Is4() {
		return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	return netip.PrefixFrom(netip.IPv6Unspecified(), 0)
}

func sortRules(rs []Rule) {
	slices.SortFunc(rs, func(a, b Rule) int {
		return cmp.Or(cmp.Compare(a.Priority, b.Priority), a.Src.Addr().Compare(b.Src.Addr()), cmp.Compare(a.Src.Bits(), b.Src.Bits()))
	})
}

// sortRoutes orders routes as they must be added: per table, connected routes first (a gateway
// must be reachable when its route is added), then routes via a gateway, then unreachable.
func sortRoutes(rs []Route) {
	kind := func(r Route) int {
		switch {
		case r.Type == Unreachable:
			return 2
		case r.Gw.IsValid():
			return 1
		}
		return 0
	}
	slices.SortFunc(rs, func(a, b Route) int {
		return cmp.Or(
			cmp.Compare(a.Table, b.Table),
			cmp.Compare(kind(a), kind(b)),
			a.Dst.Addr().Compare(b.Dst.Addr()),
			cmp.Compare(a.Dst.Bits(), b.Dst.Bits()),
			a.Gw.Compare(b.Gw),
			cmp.Compare(a.Link, b.Link),
			a.Src.Compare(b.Src),
			cmp.Compare(a.Metric, b.Metric),
		)
	})
}

// routeKey is what identifies a route when the kernel's state is compared with a plan (the
// link's name is display only).
type routeKey struct {
	table  int
	typ    RouteType
	dst    netip.Prefix
	gw     netip.Addr
	link   int
	src    netip.Addr
	metric uint32
}

func (r Route) key() routeKey {
	return routeKey{r.Table, r.Type, r.Dst, r.Gw, r.Link, r.Src, r.Metric}
}

func (a Addr) key() Addr { return Addr{Link: a.Link, Prefix: a.Prefix} }

// Lines renders the plan as equivalent iproute2 commands, addresses first, then routes, then
// rules: the order a Manager adds them in.
func (p Plan) Lines() []string {
	var out []string
	for _, a := range p.Addrs {
		out = append(out, a.Line())
	}
	for _, r := range p.Routes {
		out = append(out, r.Line())
	}
	for _, r := range p.Rules {
		out = append(out, r.Line())
	}
	return out
}

func ipCmd(v6 bool) string {
	if v6 {
		return "ip -6"
	}
	return "ip"
}

// Line renders the rule as an `ip rule add` command.
func (r Rule) Line() string {
	return fmt.Sprintf("%s rule add from %s lookup %d priority %d protocol %d",
		ipCmd(r.Src.Addr().Is6()), r.Src, r.Table, r.Priority, Protocol)
}

// Line renders the route as an `ip route add` command.
func (r Route) Line() string {
	var b strings.Builder
	b.WriteString(ipCmd(r.Dst.Addr().Is6()))
	b.WriteString(" route add ")
	if r.Type == Unreachable {
		b.WriteString("unreachable ")
	}
	if r.Dst.Bits() == 0 {
		b.WriteString("default")
	} else {
		b.WriteString(r.Dst.String())
	}
	if r.Gw.IsValid() {
		b.WriteString(" via " + r.Gw.String())
	}
	if r.Type != Unreachable {
		b.WriteString(" dev " + linkName(r.LinkName, r.Link))
	}
	b.WriteString(" proto " + strconv.Itoa(Protocol))
	if r.Type == Unicast && !r.Gw.IsValid() {
		b.WriteString(" scope link")
	}
	if r.Src.IsValid() {
		b.WriteString(" src " + r.Src.String())
	}
	fmt.Fprintf(&b, " metric %d table %d", r.Metric, r.Table)
	return b.String()
}

// Line renders the address as an `ip addr add` command.
func (a Addr) Line() string {
	name := linkName(a.LinkName, a.Link)
	if a.Prefix.Addr().Is6() {
		return fmt.Sprintf("ip -6 addr add %s dev %s nodad", a.Prefix, name)
	}
	s := fmt.Sprintf("ip addr add %s dev %s", a.Prefix, name)
	if l := addrLabel(a.LinkName); l != "" {
		s += " label " + l
	}
	return s
}

func linkName(name string, index int) string {
	if name != "" {
		return name
	}
	return "if" + strconv.Itoa(index)
}

// addrLabel is the IPv4 label that marks a VIP address as pairlb's, or "" when the interface
// name leaves no room for it (IFNAMSIZ).
func addrLabel(ifname string) string {
	if ifname == "" || len(ifname)+len(addrLabelSuffix) > 15 {
		return ""
	}
	return ifname + addrLabelSuffix
}

// DiffLines compares a plan with what is installed (Manager.Installed) and renders the
// difference as iproute2 commands: "+ " for what is missing, "- " for what is extra. It is
// empty when the kernel matches the plan.
func DiffLines(want Plan, rules []Rule, routes []Route) []string {
	var out []string
	haveRules := map[Rule]bool{}
	for _, r := range rules {
		haveRules[r] = true
	}
	wantRules := map[Rule]bool{}
	for _, r := range want.Rules {
		wantRules[r] = true
	}
	haveRoutes := map[routeKey]bool{}
	for _, r := range routes {
		haveRoutes[r.key()] = true
	}
	wantRoutes := map[routeKey]bool{}
	for _, r := range want.Routes {
		wantRoutes[r.key()] = true
	}
	for _, r := range want.Routes {
		if !haveRoutes[r.key()] {
			out = append(out, "+ "+r.Line())
		}
	}
	for _, r := range want.Rules {
		if !haveRules[r] {
			out = append(out, "+ "+r.Line())
		}
	}
	for _, r := range routes {
		if !wantRoutes[r.key()] {
			out = append(out, "- "+delLine(r.Line()))
		}
	}
	for _, r := range rules {
		if !wantRules[r] {
			out = append(out, "- "+delLine(r.Line()))
		}
	}
	return out
}

// delLine turns an `ip ... add` command into the matching `ip ... del`.
func delLine(add string) string { return strings.Replace(add, " add ", " del ", 1) }
