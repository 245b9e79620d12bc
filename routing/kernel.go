package routing

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// kernel is everything a Manager asks of the kernel: the calls of *netlink.Handle it makes for
// links, addresses, rules and routes, and pairlb's nftables table. netlinkKernel is the real
// one; the tests put a fake under the same code (fake_test.go), so that adding before deleting,
// a refused call and a crashed instance's leftovers are tested without root too.
type kernel interface {
	LinkList() ([]netlink.Link, error)
	AddrList(link netlink.Link, family int) ([]netlink.Addr, error)
	AddrAdd(link netlink.Link, addr *netlink.Addr) error
	AddrDel(link netlink.Link, addr *netlink.Addr) error
	RuleList(family int) ([]netlink.Rule, error)
	RuleAdd(rule *netlink.Rule) error
	RuleDel(rule *netlink.Rule) error
	RouteListFiltered(family int, filter *netlink.Route, filterMask uint64) ([]netlink.Route, error)
	RouteReplace(route *netlink.Route) error
	RouteDel(route *netlink.Route) error

	// nftState reads pairlb's nftables table: nil when there is none, foreign when it is not
	// in the shape pairlb makes (edited by hand, or by an older pairlb).
	nftState() (t *Transparency, foreign bool, err error)
	// nftWrite makes the table hold t in one transaction, first removing the one that is
	// there when had is true; with t nil it removes the table.
	nftWrite(t *Transparency, had bool) error
}

// netlinkKernel is the kernel of one network namespace: rtnetlink through the handle, nftables
// through connections opened in ns (the calling thread's namespace when ns is nil).
type netlinkKernel struct {
	*netlink.Handle
	ns *netns.NsHandle
}

// Links takes a snapshot of the namespace's interfaces and usable addresses.
func (m *Manager) Links() ([]Link, error) {
	nlLinks, err := retryDump("links", m.k.LinkList)
	if err != nil {
		return nil, err
	}
	addrs, err := retryDump("addresses", func() ([]netlink.Addr, error) { return m.k.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, err
	}
	byIndex := map[int][]netip.Prefix{}
	for _, a := range addrs {
		if a.IPNet == nil || a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 {
			continue
		}
		p, ok := prefixOf(a.IPNet)
		if !ok || p.Addr().IsLinkLocalUnicast() {
			continue
		}
		byIndex[a.LinkIndex] = append(byIndex[a.LinkIndex], p)
	}
	var out []Link
	for _, l := range nlLinks {
		at := l.Attrs()
		if at.Flags&net.FlagLoopback != 0 {
			continue
		}
		out = append(out, Link{Index: at.Index, Name: at.Name, Up: at.Flags&net.FlagUp != 0, Addrs: byIndex[at.Index]})
	}
	return out, nil
}

// read takes what diff compares a plan with. Its error is for rules and routes that could not
// be listed (nothing can be decided then); what else it could not read is in the result, for
// apply to report against the units it concerns.
func (m *Manager) read(links []Link) (installed, error) {
	rules, routes, absent, err := m.dump(links)
	if err != nil {
		return installed{}, err
	}
	have := installed{rules: rules, routes: routes, absent: absent, hostAddrs: map[Addr]bool{}, failedTables: map[int]bool{}}
	names := map[int]string{}
	for _, l := range links {
		names[l.Index] = l.Name
		for _, a := range l.Addrs {
			if a.Bits() == a.Addr().BitLen() {
				have.hostAddrs[Addr{Link: l.Index, Prefix: a}] = true
			}
		}
	}
	mine := map[Addr]bool{}
	for a := range m.owned {
		mine[a] = true
	}
	labelled, err := m.labelledAddrs()
	have.labelErr = err
	for _, a := range labelled {
		mine[a] = true
	}
	for a := range mine {
		a.LinkName = names[a.Link]
		have.mine = append(have.mine, a)
	}
	slices.SortFunc(have.mine, compareAddrs)
	have.nft, have.nftForeign, have.nftErr = m.k.nftState()
	return have, nil
}

// Installed lists pairlb's rules and routes in the kernel, sorted as a plan's are. A family the
// kernel does not have (IPv6 on a kernel booted with ipv6.disable=1) holds nothing.
func (m *Manager) Installed() ([]Rule, []Route, error) {
	links, err := m.Links()
	if err != nil {
		return nil, nil, err
	}
	rules, routes, _, err := m.dump(links)
	return rules, routes, err
}

// dump lists pairlb's rules and routes. absent are the families whose rules the kernel cannot
// list because it lacks the family (EAFNOSUPPORT): that is not a failure of the other family.
func (m *Manager) dump(links []Link) (rules []Rule, routes []Route, absent map[Family]error, err error) {
	names := map[int]string{loopbackIndex: "lo"}
	for _, l := range links {
		names[l.Index] = l.Name
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := retryDump(string(netlinkFamily(fam))+" rules", func() ([]netlink.Rule, error) { return m.k.RuleList(fam) })
		if errors.Is(err, unix.EAFNOSUPPORT) {
			if absent == nil {
				absent = map[Family]error{}
			}
			absent[netlinkFamily(fam)] = err
			continue
		}
		if err != nil {
			return nil, nil, nil, err
		}
		for i := range rs {
			if r, ok := ruleFromNetlink(&rs[i], fam); ok {
				rules = append(rules, r)
			}
		}
		rts, err := retryDump(string(netlinkFamily(fam))+" routes", func() ([]netlink.Route, error) {
			return m.k.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			return nil, nil, nil, err
		}
		for i := range rts {
			if !ownsRoute(&rts[i]) {
				continue
			}
			if rt, ok := routeFromNetlink(&rts[i], fam); ok {
				rt.LinkName = names[rt.Link]
				routes = append(routes, rt)
			}
		}
	}
	sortRules(rules)
	sortRoutes(routes)
	return rules, routes, absent, nil
}

// labelledAddrs lists the IPv4 host addresses carrying pairlb's label.
func (m *Manager) labelledAddrs() ([]Addr, error) {
	addrs, err := retryDump("addresses", func() ([]netlink.Addr, error) { return m.k.AddrList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return nil, err
	}
	var out []Addr
	for _, a := range addrs {
		if a.IPNet == nil || !strings.HasSuffix(a.Label, addrLabelSuffix) {
			continue
		}
		p, ok := prefixOf(a.IPNet)
		if !ok || p.Bits() != 32 {
			continue
		}
		out = append(out, Addr{Link: a.LinkIndex, Prefix: p})
	}
	return out, nil
}

// ruleFromNetlink converts a dumped rule; ok is false when it is not pairlb's or not of a
// shape pairlb makes.
func ruleFromNetlink(r *netlink.Rule, fam int) (Rule, bool) {
	if !ownsRule(r) {
		return Rule{}, false
	}
	src, ok := allOf(fam), true
	if r.Src != nil {
		src, ok = prefixOf(r.Src)
	}
	if !ok {
		return Rule{}, false
	}
	rule := Rule{Priority: r.Priority, Table: r.Table, Src: src}
	if r.Mask != nil && *r.Mask != 0 {
		rule.Mark, rule.Mask = r.Mark, *r.Mask
	}
	return rule, true
}

// routeFromNetlink converts a dumped route; ok is false for shapes pairlb never makes.
func routeFromNetlink(r *netlink.Route, fam int) (Route, bool) {
	if len(r.MultiPath) > 0 {
		return Route{}, false
	}
	rt := Route{Table: r.Table, Link: r.LinkIndex, Metric: uint32(r.Priority)}
	switch r.Type {
	case unix.RTN_UNICAST:
	case unix.RTN_UNREACHABLE:
		rt.Type, rt.Link = Unreachable, 0 // IPv6 reports unreachable routes on lo
	case unix.RTN_LOCAL:
		rt.Type = Local
	default:
		return Route{}, false
	}
	if r.Dst != nil {
		p, ok := prefixOf(r.Dst)
		if !ok {
			return Route{}, false
		}
		rt.Dst = p
	} else {
		rt.Dst = allOf(fam)
	}
	if a, ok := netip.AddrFromSlice(r.Gw); ok {
		rt.Gw = a.Unmap()
	}
	if a, ok := netip.AddrFromSlice(r.Src); ok {
		rt.Src = a.Unmap()
	}
	return rt, true
}

// allOf is the prefix that holds every address of a netlink family.
func allOf(fam int) netip.Prefix {
	if fam == netlink.FAMILY_V4 {
		return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	return netip.PrefixFrom(netip.IPv6Unspecified(), 0)
}

func netlinkFamily(fam int) Family {
	if fam == netlink.FAMILY_V4 {
		return IPv4
	}
	return IPv6
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	ones, bits := n.Mask.Size()
	if bits != a.BitLen() {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones), true
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func family(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

func linkRef(index int, name string) netlink.Link {
	return &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: index, Name: name}}
}

func toNetlinkRule(r Rule) *netlink.Rule {
	nr := netlink.NewRule()
	nr.Family = family(r.Src.Addr())
	nr.Priority = r.Priority
	nr.Table = r.Table
	if r.Src.Bits() > 0 {
		nr.Src = ipNet(r.Src)
	}
	if r.Mask != 0 {
		mask := r.Mask
		nr.Mark, nr.Mask = r.Mark, &mask
	}
	nr.Protocol = Protocol
	return nr
}

func toNetlinkRoute(r Route) *netlink.Route {
	nr := &netlink.Route{
		Family:    family(r.Dst.Addr()),
		Table:     r.Table,
		Dst:       ipNet(r.Dst),
		LinkIndex: r.Link,
		Protocol:  Protocol,
		Priority:  int(r.Metric),
		Type:      unix.RTN_UNICAST,
		Scope:     netlink.SCOPE_UNIVERSE,
	}
	switch {
	case r.Type == Unreachable:
		nr.Type = unix.RTN_UNREACHABLE
	case r.Type == Local:
		nr.Type, nr.Scope = unix.RTN_LOCAL, netlink.SCOPE_HOST
	case !r.Gw.IsValid():
		nr.Scope = netlink.SCOPE_LINK
	default:
		nr.Gw = r.Gw.AsSlice()
	}
	if r.Src.IsValid() {
		nr.Src = r.Src.AsSlice()
	}
	return nr
}

// infiniteLifetime is the kernel's INFINITY_LIFE_TIME for address lifetimes.
const infiniteLifetime = 0xffffffff

func toNetlinkAddr(a Addr) *netlink.Addr {
	na := &netlink.Addr{IPNet: ipNet(a.Prefix)}
	if a.Prefix.Addr().Is6() {
		// Usable at once (no DAD), and deprecated: valid for ever but preferred for no time,
		// so that the kernel never picks the VIP as the source of a connection the box opens
		// itself (IPv6 source selection would otherwise prefer a /128 VIP sharing more leading
		// bits with the destination than the box's own address). Listeners bound to the VIP,
		// and sockets that bind it explicitly, work as before.
		na.Flags = unix.IFA_F_NODAD
		na.ValidLft, na.PreferedLft = infiniteLifetime, 0
	} else {
		na.Label = addrLabel(a.LinkName)
	}
	return na
}

// maxDumpTries bounds the retries of a netlink dump interrupted by a concurrent change.
const maxDumpTries = 8

// retryDump runs a netlink dump again while the kernel reports it was interrupted.
func retryDump[T any](what string, dump func() (T, error)) (T, error) {
	var (
		v   T
		err error
	)
	for range maxDumpTries {
		v, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return v, fmt.Errorf("listing %s: %w", what, err)
	}
	return v, nil
}
