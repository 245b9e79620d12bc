package routing

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

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
	// Local delivers to the box itself (`local default dev lo`): the transparency table.
	Local
)

// loopbackIndex is the interface index of lo in every network namespace (the kernel's
// LOOPBACK_IFINDEX).
const loopbackIndex = 1

// Rule is one policy-routing rule: traffic from Src (with the packet mark Mark under Mask, when
// Mask is not 0) looks up Table.
type Rule struct {
	Priority int
	Table    int
	Src      netip.Prefix // the VIP as /32 or /128; "from all" (0.0.0.0/0, ::/0) for a mark rule
	Mark     uint32
	Mask     uint32 // 0: the rule does not match the mark
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

// Transparency is the nftables part of the state that brings the replies of transparent virtual
// services back to pairlb (see the package comment). The rule and route it needs are in the
// plan's Rules and Routes.
type Transparency struct {
	// Links are the names of the interfaces facing the transparent services' real servers,
	// sorted: replies are marked only when they arrive there.
	Links []string
	// Services are the transparent virtual services, for display.
	Services []string
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
	// Transparency is nil when no virtual service is transparent.
	Transparency *Transparency
	// Units are the parts of the plan, each installed and reported on its own (see Unit);
	// Problems are those the box's links cannot carry now, with the reason. The objects above
	// hold what can be installed, of the units with a problem too (see BuildPlan).
	Units    []Unit
	Problems []Problem
	// Missing are the interfaces the file names (its pair networks') that the box does not
	// have, with the units of Problems that wait for them: on a box being built, the plan is
	// complete but for them.
	Missing []MissingInterface
}

// MissingInterface is an interface a pair network names that the box lacks.
type MissingInterface struct {
	Name    string       // the interface, as the file names it
	Network string       // the pair network
	Prefix  netip.Prefix // the network's prefix
	// Gateways and VIPs are those of Problems on the network's prefix, in plan order; Services
	// are the virtual services that need them, in file order.
	Gateways []netip.Addr
	VIPs     []netip.Addr
	Services []string
}

// String is the interface as `pairlb routes show` reports it: `interface eth1 (pair network
// internal, 10.11.0.0/16), for gateway 10.11.0.1, virtual services "fe-sip", "fe-web"`.
func (m MissingInterface) String() string {
	s := fmt.Sprintf("interface %s (pair network %s, %s)", m.Name, m.Network, m.Prefix)
	var what []string
	if len(m.Gateways) > 0 {
		what = append(what, plural("gateway", len(m.Gateways))+" "+joinAddrs(m.Gateways))
	}
	if len(m.VIPs) > 0 {
		what = append(what, plural("VIP", len(m.VIPs))+" "+joinAddrs(m.VIPs))
	}
	if len(m.Services) > 0 {
		what = append(what, servicesPhrase(m.Services))
	}
	if len(what) == 0 {
		return s + ", which no part of the routing plan needs"
	}
	return s + ", for " + strings.Join(what, ", ")
}

func plural(word string, n int) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

func joinAddrs(as []netip.Addr) string {
	q := make([]string, len(as))
	for i, a := range as {
		q[i] = a.String()
	}
	return strings.Join(q, ", ")
}

// missingInterfaces lists the pair networks' interfaces that links lack, with the problems
// (gateway and VIP address units) whose address is on each network's prefix.
func missingInterfaces(cfg *config.Config, links []Link, problems []Problem) []MissingInterface {
	if cfg.Pair == nil {
		return nil
	}
	var out []MissingInterface
	for _, n := range cfg.Pair.Networks {
		if slices.ContainsFunc(links, func(l Link) bool { return l.Name == n.Interface }) {
			continue
		}
		m := MissingInterface{Name: n.Interface, Network: n.Name, Prefix: n.Prefix}
		for _, pr := range problems {
			if !pr.Addr.IsValid() || !n.Prefix.Contains(pr.Addr) {
				continue
			}
			switch pr.Kind {
			case UnitGateway:
				m.Gateways = append(m.Gateways, pr.Addr)
			case UnitAddress:
				m.VIPs = append(m.VIPs, pr.Addr)
			default:
				continue
			}
			for _, s := range pr.Services {
				if !slices.Contains(m.Services, s) {
					m.Services = append(m.Services, s)
				}
			}
		}
		// File order, as everywhere else.
		slices.SortStableFunc(m.Services, func(a, b string) int { return cmp.Compare(serviceIndex(cfg, a), serviceIndex(cfg, b)) })
		out = append(out, m)
	}
	return out
}

func serviceIndex(cfg *config.Config, name string) int {
	return slices.IndexFunc(cfg.VirtualServices, func(vs config.VirtualService) bool { return vs.Name == name })
}

// Family is an IP address family, as the status and metrics name it.
type Family string

// The families.
const (
	IPv4 Family = "ipv4"
	IPv6 Family = "ipv6"
)

func familyOf(a netip.Addr) Family {
	if a.Is4() {
		return IPv4
	}
	return IPv6
}

// UnitKind is the kind of a Unit.
type UnitKind string

// The kinds of units.
const (
	// UnitGateway is one default gateway's table and the `from VIP` rules of the VIPs that use
	// it (a gateway has one family).
	UnitGateway UnitKind = "gateway"
	// UnitAddress is one VIP address pairlb adds (Global.ManageAddresses).
	UnitAddress UnitKind = "address"
	// UnitTransparency is, per family, the mark rule and the local route of the transparent
	// services, with their interfaces in the nftables table.
	UnitTransparency UnitKind = "transparency"
	// UnitCleanup is the removal of pairlb's objects that no unit holds any more; it only ever
	// appears in a Problem, when a removal failed.
	UnitCleanup UnitKind = "cleanup"
)

// UnitID identifies a unit from one plan to the next (table ids may change, a gateway does
// not).
type UnitID struct {
	Kind UnitKind
	// Addr is the gateway (UnitGateway) or the VIP (UnitAddress); invalid otherwise.
	Addr   netip.Addr
	Family Family // empty for the cleanup of the nftables table, which serves both
}

// String names the unit as logs and errors do: "gateway 198.18.1.1", "VIP address
// 2001:db8::10", "ipv4 transparency".
func (u UnitID) String() string {
	switch u.Kind {
	case UnitGateway:
		return "gateway " + u.Addr.String()
	case UnitAddress:
		return "VIP address " + u.Addr.String()
	}
	if u.Family == "" {
		return string(u.Kind)
	}
	return string(u.Family) + " " + string(u.Kind)
}

// Unit is one part of a plan that is installed on its own, so that what one gateway's link
// cannot carry (its subnet's address gone, its link down) never keeps another gateway's table,
// or a VIP's address, from being installed or repaired.
type Unit struct {
	UnitID
	// Table is the gateway's table (UnitGateway) or TransparentTable (UnitTransparency).
	Table int
	// Services are the virtual services that need the unit, in file order. In a Problem of a
	// transparency unit, only those whose real servers cause it.
	Services []string
}

// Problem is a unit that is not installed in full, and why.
type Problem struct {
	Unit
	Reason string
	// Since is when a Manager first saw the problem; zero in a Plan.
	Since time.Time
}

// String is the problem as one line: `gateway 198.18.1.1 of virtual service "fe-web": the
// gateway is on no connected subnet of this box`.
func (p Problem) String() string {
	s := p.UnitID.String()
	if len(p.Services) > 0 {
		s += " of " + servicesPhrase(p.Services)
	}
	return s + ": " + p.Reason
}

func servicesPhrase(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = strconv.Quote(n)
	}
	if len(q) == 1 {
		return "virtual service " + q[0]
	}
	return "virtual services " + strings.Join(q, ", ")
}

// PartialError is what Manager.Set returns when some units could not be installed: everything
// else is, and Run retries these when links or addresses change (and on a timer while any
// remains). It is not a rejection of the configuration.
type PartialError struct {
	Problems []Problem
}

func (e *PartialError) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	n := "1 part"
	if len(lines) != 1 {
		n = fmt.Sprintf("%d parts", len(lines))
	}
	return n + " of the routing plan not installed (the rest is): " + strings.Join(lines, "; ")
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
// gateway follows that gateway too; two different gateways on one VIP are an error).
//
// The error is for what no state of the links can change (a VIP and its gateway of different
// families, two gateways on one VIP, more gateways than tables, a transparent service's real
// server of the other family): nothing of such a configuration can be applied. What depends
// on the links is planned per Unit instead: a unit the links cannot carry now is listed in
// Problems, and the plan holds everything else. A gateway on no connected subnet of the box,
// or whose link is down, keeps its rules and, with UseDefaultRouteOnly, its `unreachable
// default`: those need no link, and they keep the VIP's replies from leaking through the main
// table until the gateway can be reached (a Manager re-applies when links and addresses
// change). A managed VIP on no connected subnet is not added; a transparent service's real
// server that is on no connected subnet, or where clients reach it directly, marks nothing.
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
	problem := func(u Unit, reason string) { p.Problems = append(p.Problems, Problem{Unit: u, Reason: reason}) }
	tableOf := map[netip.Addr]int{}
	for i, gw := range gateways {
		id := TableFirst + i
		tableOf[gw] = id
		unit := Unit{UnitID: UnitID{Kind: UnitGateway, Addr: gw, Family: familyOf(gw)}, Table: id, Services: gwServices[gw]}
		p.Units = append(p.Units, unit)

		var routes []Route
		link, own, ok := connectedOn(links, gw, vips)
		switch {
		case !ok:
			problem(unit, "the gateway is on no connected subnet of this box")
		case !link.Up:
			problem(unit, "its link "+link.Name+" is down")
		default:
			routes = append(routes,
				Route{Table: id, Dst: own.Masked(), Link: link.Index, LinkName: link.Name, Src: own.Addr(), Metric: RouteMetric},
				Route{Table: id, Dst: defaultDst(gw), Gw: gw, Link: link.Index, LinkName: link.Name, Metric: RouteMetric})
		}
		if ok {
			p.Tables = append(p.Tables, Table{ID: id, Gateway: gw, Link: link.Index, LinkName: link.Name, Services: gwServices[gw]})
		}
		if !cfg.Global.UseDefaultRouteOnly {
			seen := map[netip.Prefix]bool{}
			if ok {
				seen[own.Masked()] = true
			}
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

	if tp, units, probs, terrs := planTransparency(cfg, links, vips); len(terrs) > 0 {
		errs = append(errs, terrs...)
	} else if tp != nil {
		p.Transparency = tp
		p.Units = append(p.Units, units...)
		p.Problems = append(p.Problems, probs...)
		// The rule and the route need no link: they are there for every family with a
		// transparent service, whatever its real servers' subnets.
		for _, u := range units {
			all := defaultDst(netip.IPv4Unspecified())
			if u.Family == IPv6 {
				all = defaultDst(netip.IPv6Unspecified())
			}
			p.Rules = append(p.Rules, Rule{Priority: TransparentPriority, Table: TransparentTable, Src: all, Mark: Mark, Mask: MarkMask})
			p.Routes = append(p.Routes, Route{Table: TransparentTable, Type: Local, Dst: all, Link: loopbackIndex, LinkName: "lo", Metric: RouteMetric})
		}
		sortRoutes(p.Routes)
	}

	for _, vip := range vipOrder {
		id := tableOf[vipGW[vip].gw]
		p.Rules = append(p.Rules, Rule{Priority: id, Table: id, Src: netip.PrefixFrom(vip, vip.BitLen())})
	}
	sortRules(p.Rules)

	if cfg.Global.ManageAddresses {
		services := map[netip.Addr][]string{}
		var order []netip.Addr
		for _, vs := range cfg.VirtualServices {
			vip := vs.VIP.Unmap()
			if !vip.IsValid() {
				continue
			}
			if _, seen := services[vip]; !seen {
				order = append(order, vip)
			}
			services[vip] = append(services[vip], vs.Name)
		}
		var addrUnits []Unit
		for _, vip := range order {
			if ownAddress(links, vip) {
				continue // the box's own or keepalived's address: not pairlb's to add
			}
			unit := Unit{UnitID: UnitID{Kind: UnitAddress, Addr: vip, Family: familyOf(vip)}, Services: services[vip]}
			addrUnits = append(addrUnits, unit)
			link, _, ok := connectedOn(links, vip, nil)
			if !ok {
				problem(unit, "the VIP is on no connected subnet of this box")
				continue
			}
			p.Addrs = append(p.Addrs, Addr{Link: link.Index, LinkName: link.Name, Prefix: netip.PrefixFrom(vip, vip.BitLen())})
		}
		p.Units = append(p.Units, addrUnits...)
		slices.SortFunc(p.Addrs, compareAddrs)
	}

	if len(errs) > 0 {
		return Plan{}, errors.Join(errs...)
	}
	sortUnits(p.Units)
	slices.SortStableFunc(p.Problems, func(a, b Problem) int { return compareUnits(a.UnitID, b.UnitID) })
	p.Missing = missingInterfaces(cfg, links, p.Problems)
	return p, nil
}

// sortUnits orders units as a plan lists them: gateways (in table order), transparency, then
// addresses, each family and address in order.
func sortUnits(us []Unit) {
	slices.SortStableFunc(us, func(a, b Unit) int { return compareUnits(a.UnitID, b.UnitID) })
}

func compareUnits(a, b UnitID) int {
	rank := func(k UnitKind) int {
		return slices.Index([]UnitKind{UnitGateway, UnitTransparency, UnitAddress, UnitCleanup}, k)
	}
	return cmp.Or(cmp.Compare(rank(a.Kind), rank(b.Kind)), a.Addr.Compare(b.Addr), cmp.Compare(a.Family, b.Family))
}

// keepsRoute reports whether an installed route that the plan does not hold must stay
// nonetheless: it is in the table of a gateway with a problem and goes via that gateway (or
// is the gateway's connected route). The plan cannot say what such a table should hold, and
// the routes still there are the kernel's judgement of what still works: a link going down
// takes its routes with it (IPv4 routes are flushed, IPv6 ones deleted), while a route that
// outlives a lost address (an IPv6 default via the router, reached through the link-local
// addresses) still carries the VIP's replies, and removing it would cut service the box can
// still give. The rule and the `unreachable default` are in the plan and stay anyway, so the
// VIP's traffic never falls through to the main table. Routes of another gateway that a
// renumbering left in the table are not kept.
func (p Plan) keepsRoute(r Route) bool {
	for _, pr := range p.Problems {
		if pr.Kind != UnitGateway || pr.Table != r.Table {
			continue
		}
		if r.Gw == pr.Addr || r.Type == Unicast && !r.Gw.IsValid() && r.Dst.Contains(pr.Addr) {
			return true
		}
	}
	return false
}

// keepsAddr reports whether an address pairlb added must stay although the plan does not hold
// it: the VIP's unit has a problem (its subnet is gone from the box for now), and listeners
// bound to it, and keepalived's view of the box, are better served by leaving it where it is.
func (p Plan) keepsAddr(a Addr) bool {
	return slices.ContainsFunc(p.Problems, func(pr Problem) bool {
		return pr.Kind == UnitAddress && pr.Addr == a.Prefix.Addr()
	})
}

// keepsNFTLinks reports whether the interfaces installed in the nftables table stay in it
// beside the plan's: a transparency unit has a problem, so the plan may be missing an
// interface whose real servers are only unreachable for now. Marking replies on an extra
// interface is harmless (only pairlb's own transparent sockets match).
func (p Plan) keepsNFTLinks() bool {
	return slices.ContainsFunc(p.Problems, func(pr Problem) bool { return pr.Kind == UnitTransparency })
}

// planTransparency checks the transparent services and returns the nftables part of their
// state, their units (one per family) and the problems of those units; nil when no service is
// transparent. errs are the faults no state of the links can mend.
//
// A transparent service connects to its real servers from the client's address, so the real
// servers must send their replies to the client through the box. That can only work when every
// real server (and the sorry server) of the service:
//   - is of the VIP's address family (the connection leaves from the client's address);
//   - is on a subnet the box is directly connected to, or it could not use the box as its
//     gateway;
//   - is not on a subnet where clients reach the VIP directly: not on the VIP's own subnet
//     unless the service's default gateway is there too (then clients come through that
//     gateway, a "one-arm" setup in which the real servers' default gateway must be the box),
//     and not on any subnet the service's access list allows clients from: a real server
//     answers a client on its own subnet directly, and the client drops the reply.
//
// The last two depend on the box's addresses, so they are problems of the family's unit: the
// interfaces of the other real servers are marked all the same.
func planTransparency(cfg *config.Config, links []Link, vips map[netip.Addr]bool) (tp *Transparency, units []Unit, problems []Problem, errs []error) {
	ifaces := map[string]bool{}
	var services []string
	byFamily := map[Family][]string{} // transparent services per family
	failing := map[Family][]string{}  // those with a problem
	reasons := map[Family][]string{}  // and the problems
	for _, vs := range cfg.VirtualServices {
		vip := vs.VIP.Unmap()
		if !vs.Transparent || !vip.IsValid() {
			continue
		}
		services = append(services, vs.Name)
		fam := familyOf(vip)
		byFamily[fam] = append(byFamily[fam], vs.Name)
		type target struct {
			what string
			addr netip.Addr
		}
		var targets []target
		for _, rs := range vs.RealServers {
			targets = append(targets, target{"real server " + rs.Key(), rs.Address.Unmap()})
		}
		if vs.HasSorryServer() {
			targets = append(targets, target{"sorry server " + vs.SorryServer.Addr().String(), vs.SorryServer.Addr().Unmap()})
		}
		gw := vs.DefaultGateway.Unmap()
		for _, t := range targets {
			msg := func(format string, args ...any) string {
				return fmt.Sprintf("virtual service %q is transparent, but its %s "+format, append([]any{vs.Name, t.what}, args...)...)
			}
			fail := func(format string, args ...any) {
				reasons[fam] = append(reasons[fam], msg(format, args...))
				if !slices.Contains(failing[fam], vs.Name) {
					failing[fam] = append(failing[fam], vs.Name)
				}
			}
			if t.addr.Is4() != vip.Is4() {
				errs = append(errs, errors.New(msg("is not of the VIP's address family: connections to it leave from the client's address")))
				continue
			}
			link, own, ok := connectedOn(links, t.addr, vips)
			if !ok {
				fail("is on no subnet this box is directly connected to: it could not route its replies to clients back through the box")
				continue
			}
			subnet := own.Masked()
			if subnet.Contains(vip) && !(gw.IsValid() && subnet.Contains(gw)) {
				fail("is on the VIP's subnet %s: clients there would get its replies directly, not through the box", subnet)
				continue
			}
			if i := slices.IndexFunc(vs.Access.Allow, subnet.Overlaps); i >= 0 {
				fail("is on %s, where the service allows clients (%s): it would answer them directly, not through the box", subnet, vs.Access.Allow[i])
				continue
			}
			ifaces[link.Name] = true
		}
	}
	if len(services) == 0 || len(errs) > 0 {
		return nil, nil, nil, errs
	}
	tp = &Transparency{Services: services}
	for name := range ifaces {
		tp.Links = append(tp.Links, name)
	}
	slices.Sort(tp.Links)
	for _, fam := range []Family{IPv4, IPv6} {
		if len(byFamily[fam]) == 0 {
			continue
		}
		u := Unit{UnitID: UnitID{Kind: UnitTransparency, Family: fam}, Table: TransparentTable, Services: byFamily[fam]}
		units = append(units, u)
		if len(reasons[fam]) > 0 {
			pu := u
			pu.Services = failing[fam]
			problems = append(problems, Problem{Unit: pu, Reason: strings.Join(reasons[fam], "; ")})
		}
	}
	return tp, units, problems, nil
}

// Sources are the box's connected subnets with its own address on each, prepared once for a
// configuration and a snapshot of the links: Lookup gives the source the appliance's "Subnet
// Originating Requests" uses for connections to a real server, on every new connection.
type Sources []Source

// Source is one connected subnet of the box and the box's own address on it.
type Source struct {
	Subnet netip.Prefix
	Own    netip.Addr
}

// NewSources lists the box's connected subnets in link order, leaving out VIPs and host
// prefixes.
func NewSources(cfg *config.Config, links []Link) Sources {
	vips := map[netip.Addr]bool{}
	if cfg != nil {
		for _, vs := range cfg.VirtualServices {
			vips[vs.VIP.Unmap()] = true
		}
	}
	links = slices.Clone(links)
	slices.SortFunc(links, func(a, b Link) int { return cmp.Compare(a.Index, b.Index) })
	var out Sources
	for _, l := range links {
		for _, a := range l.Addrs {
			if connected(a, vips) {
				out = append(out, Source{Subnet: a.Masked(), Own: a.Addr()})
			}
		}
	}
	return out
}

// Lookup returns the box's own address on the first subnet that holds dst; it is false when dst
// is on no connected subnet of the box. The VIPs of the configuration and host prefixes are
// never returned, even when keepalived added a VIP with the subnet's prefix.
func (s Sources) Lookup(dst netip.Addr) (netip.Addr, bool) {
	dst = dst.Unmap()
	for _, src := range s {
		if src.Own != dst && src.Subnet.Contains(dst) {
			return src.Own, true
		}
	}
	return netip.Addr{}, false
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

// Lines renders the plan as equivalent iproute2 and nft commands, addresses first, then routes,
// then rules, then the nftables table: the order a Manager adds them in.
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
	if p.Transparency != nil {
		out = append(out, p.Transparency.Lines()...)
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
	sel := "from " + r.Src.String()
	if r.Mask != 0 {
		mark := fmt.Sprintf("fwmark %#x/%#x", r.Mark, r.Mask)
		if r.Src.Bits() == 0 {
			sel = mark
		} else {
			sel += " " + mark
		}
	}
	return fmt.Sprintf("%s rule add %s lookup %d priority %d protocol %d",
		ipCmd(r.Src.Addr().Is6()), sel, r.Table, r.Priority, Protocol)
}

// nftComment marks each of pairlb's nftables rules; a rule without it makes the chain foreign
// and the Manager replaces the table.
const nftComment = "pairlb: replies to transparent sockets"

// Lines renders the nftables state as nft commands.
func (t *Transparency) Lines() []string {
	out := []string{
		"nft add table inet " + NFTable,
		fmt.Sprintf("nft add chain inet %s %s '{ type filter hook prerouting priority mangle; policy accept; }'", NFTable, NFChain),
	}
	for _, l := range t.Links {
		out = append(out, fmt.Sprintf("nft add rule inet %s %s iifname %q socket transparent 1 counter meta mark set meta mark and %#08x or %#x comment %q",
			NFTable, NFChain, l, ^uint32(MarkMask), Mark, nftComment))
	}
	return out
}

// Line renders the route as an `ip route add` command.
func (r Route) Line() string {
	var b strings.Builder
	b.WriteString(ipCmd(r.Dst.Addr().Is6()))
	b.WriteString(" route add ")
	switch r.Type {
	case Unreachable:
		b.WriteString("unreachable ")
	case Local:
		b.WriteString("local ")
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
