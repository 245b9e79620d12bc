package routing

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// fakeKernel is a kernel in memory that answers a Manager's calls as Linux does (EEXIST for a
// rule or address that is there, ESRCH for a route that is not, ENETUNREACH for a gateway on no
// subnet of its link, a link going down taking its routes, and IPv6 addresses unless
// keep_addr_on_down, with it), so that the Manager's own code, conversions to and from netlink
// included, is tested without root. It records every write that took effect, rendered as Diff
// renders changes, and answers what a test injects (answerWith).
type fakeKernel struct {
	mu         sync.Mutex
	links      []*fakeLink
	addrs      []netlink.Addr
	rules      []netlink.Rule
	routes     []netlink.Route
	nft        *Transparency
	nftForeign bool
	// absent are the netlink families the kernel lacks (booted with ipv6.disable=1).
	absent map[int]bool
	// interrupt is how many dumps still end with ErrDumpInterrupted (and half the list).
	interrupt int
	answers   []answer
	writes    []string
}

type fakeLink struct {
	index          int
	name           string
	up             bool
	keepAddrOnDown bool
}

// answer is an answer a test injects: the next calls named call on an object whose line
// contains match get err; with apply the call takes effect all the same (the kernel raced the
// Manager: a rule added by someone else in between gives EEXIST, a route a link flap took
// gives ESRCH). times bounds how often (0: always).
type answer struct {
	call, match string
	err         error
	apply       bool
	times       int
}

func newFakeKernel() *fakeKernel {
	k := &fakeKernel{links: []*fakeLink{{index: loopbackIndex, name: "lo", up: true}}, absent: map[int]bool{}}
	// The kernel's own rules: priority 0 (local), 32766 (main), 32767 (default, IPv4 only).
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		for _, pt := range [][2]int{{0, unix.RT_TABLE_LOCAL}, {32766, unix.RT_TABLE_MAIN}, {32767, unix.RT_TABLE_DEFAULT}} {
			if fam == netlink.FAMILY_V6 && pt[0] == 32767 {
				continue
			}
			r := netlink.NewRule()
			r.Family, r.Priority, r.Table, r.Protocol = fam, pt[0], pt[1], unix.RTPROT_KERNEL
			k.rules = append(k.rules, *r)
		}
	}
	return k
}

// addLink adds an interface with the box's own addresses ("198.18.1.2/24"); it returns its
// index.
func (k *fakeKernel) addLink(name string, up bool, addrs ...string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	idx := k.links[len(k.links)-1].index + 1
	k.links = append(k.links, &fakeLink{index: idx, name: name, up: up})
	for _, a := range addrs {
		k.addrs = append(k.addrs, netlink.Addr{LinkIndex: idx, IPNet: ipNet(netip.MustParsePrefix(a))})
	}
	return idx
}

func (k *fakeKernel) link(name string) *fakeLink {
	for _, l := range k.links {
		if l.name == name {
			return l
		}
	}
	panic("fake kernel: no link " + name)
}

// setLink brings a link up or down. Down, as Linux does, it removes every route through the
// link, in every table, and its IPv6 addresses unless keepAddrOnDown.
func (k *fakeKernel) setLink(name string, up bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	l := k.link(name)
	l.up = up
	if up {
		return
	}
	k.routes = slices.DeleteFunc(k.routes, func(r netlink.Route) bool { return r.LinkIndex == l.index })
	if !l.keepAddrOnDown {
		k.addrs = slices.DeleteFunc(k.addrs, func(a netlink.Addr) bool { return a.LinkIndex == l.index && a.IP.To4() == nil })
	}
}

// addAddr adds an address as someone else would (the box's own, keepalived's, a crashed
// pairlb's with its label).
func (k *fakeKernel) addAddr(name, prefix, label string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.addrs = append(k.addrs, netlink.Addr{LinkIndex: k.link(name).index, IPNet: ipNet(netip.MustParsePrefix(prefix)), Label: label})
}

// plantRule and plantRoute add objects as someone else would, unchecked.
func (k *fakeKernel) plantRule(r *netlink.Rule) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.rules = append(k.rules, *r)
}

func (k *fakeKernel) plantRoute(r *netlink.Route) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.routes = append(k.routes, *r)
}

func (k *fakeKernel) answerWith(a answer) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.answers = append(k.answers, a)
}

func (k *fakeKernel) clearAnswers() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.answers = nil
}

// takeWrites returns the writes recorded so far and forgets them.
func (k *fakeKernel) takeWrites() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	w := k.writes
	k.writes = nil
	return w
}

// state renders everything the kernel holds, whoever made it, sorted.
func (k *fakeKernel) state() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []string
	for _, r := range k.rules {
		out = append(out, fmt.Sprintf("rule fam=%d prio=%d src=%v table=%d mark=%#x/%v proto=%d", r.Family, r.Priority, r.Src, r.Table, r.Mark, maskOf(r.Mask), r.Protocol))
	}
	for _, r := range k.routes {
		out = append(out, fmt.Sprintf("route fam=%d table=%d type=%d dst=%v gw=%v dev=%d src=%v metric=%d proto=%d", r.Family, r.Table, r.Type, r.Dst, r.Gw, r.LinkIndex, r.Src, r.Priority, r.Protocol))
	}
	for _, a := range k.addrs {
		out = append(out, fmt.Sprintf("addr dev=%d %v label=%q", a.LinkIndex, a.IPNet, a.Label))
	}
	if k.nft != nil {
		out = append(out, fmt.Sprintf("nft links=%v foreign=%v", k.nft.Links, k.nftForeign))
	}
	slices.Sort(out)
	return out
}

// answer returns what the test injected for this call, if anything.
func (k *fakeKernel) answer(call, line string) (err error, apply bool) {
	for i := range k.answers {
		a := &k.answers[i]
		if a.call != call || !strings.Contains(line, a.match) || a.times < 0 {
			continue
		}
		if a.times > 0 {
			if a.times--; a.times == 0 {
				a.times = -1
			}
		}
		return a.err, a.apply
	}
	return nil, false
}

func (k *fakeKernel) byIndex(i int) *fakeLink {
	for _, l := range k.links {
		if l.index == i {
			return l
		}
	}
	return nil
}

func (k *fakeKernel) nameOf(i int) string {
	if l := k.byIndex(i); l != nil {
		return l.name
	}
	return ""
}

func (k *fakeKernel) ruleLine(r *netlink.Rule) string {
	src := allOf(r.Family)
	if r.Src != nil {
		src, _ = prefixOf(r.Src)
	}
	return Rule{Priority: r.Priority, Table: r.Table, Src: src, Mark: r.Mark, Mask: maskOf(r.Mask)}.Line()
}

func (k *fakeKernel) routeLine(r *netlink.Route) string {
	rt, ok := routeFromNetlink(r, r.Family)
	if !ok {
		return fmt.Sprintf("route of another shape %+v", r)
	}
	rt.LinkName = k.nameOf(rt.Link)
	return rt.Line()
}

func (k *fakeKernel) addrLine(link netlink.Link, a *netlink.Addr) string {
	p, _ := prefixOf(a.IPNet)
	return Addr{Link: link.Attrs().Index, LinkName: k.nameOf(link.Attrs().Index), Prefix: p}.Line()
}

func maskOf(m *uint32) uint32 {
	if m == nil {
		return 0
	}
	return *m
}

func sameNet(a, b *net.IPNet) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return a.String() == b.String()
}

func familyOfIP(ip net.IP) int {
	if ip.To4() != nil {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

func (k *fakeKernel) LinkList() ([]netlink.Link, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []netlink.Link
	for _, l := range k.links {
		var flags net.Flags
		if l.up {
			flags |= net.FlagUp
		}
		if l.index == loopbackIndex {
			flags |= net.FlagLoopback
		}
		out = append(out, &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: l.index, Name: l.name, Flags: flags}})
	}
	return out, nil
}

func (k *fakeKernel) AddrList(link netlink.Link, fam int) ([]netlink.Addr, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err, _ := k.answer("AddrList", ""); err != nil {
		return nil, err
	}
	var out []netlink.Addr
	for _, a := range k.addrs {
		if (fam == netlink.FAMILY_ALL || familyOfIP(a.IP) == fam) && (link == nil || link.Attrs().Index == a.LinkIndex) {
			out = append(out, a)
		}
	}
	return out, nil
}

func (k *fakeKernel) AddrAdd(link netlink.Link, a *netlink.Addr) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	line := k.addrLine(link, a)
	err, apply := k.answer("AddrAdd", line)
	if err != nil && !apply {
		return err
	}
	var kerr error
	switch {
	case k.absent[familyOfIP(a.IP)]:
		kerr = unix.EAFNOSUPPORT
	case k.byIndex(link.Attrs().Index) == nil:
		kerr = unix.ENODEV
	case slices.ContainsFunc(k.addrs, func(h netlink.Addr) bool { return h.LinkIndex == link.Attrs().Index && h.IP.Equal(a.IP) }):
		kerr = unix.EEXIST
	}
	if kerr != nil {
		return kerr
	}
	na := *a
	na.LinkIndex = link.Attrs().Index
	k.addrs = append(k.addrs, na)
	k.writes = append(k.writes, "+ "+line)
	return err
}

func (k *fakeKernel) AddrDel(link netlink.Link, a *netlink.Addr) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	line := delLine(k.addrLine(link, a))
	err, apply := k.answer("AddrDel", line)
	if err != nil && !apply {
		return err
	}
	i := slices.IndexFunc(k.addrs, func(h netlink.Addr) bool { return h.LinkIndex == link.Attrs().Index && h.IP.Equal(a.IP) })
	if i < 0 {
		return unix.EADDRNOTAVAIL
	}
	k.addrs = slices.Delete(k.addrs, i, i+1)
	k.writes = append(k.writes, "- "+line)
	return err
}

func (k *fakeKernel) RuleList(fam int) ([]netlink.Rule, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.absent[fam] {
		return nil, unix.EAFNOSUPPORT // fib_nl_dumprule finds no rules ops for the family
	}
	var out []netlink.Rule
	for _, r := range k.rules {
		if r.Family == fam {
			out = append(out, r)
		}
	}
	if k.interrupt > 0 {
		k.interrupt--
		return out[:len(out)/2], netlink.ErrDumpInterrupted
	}
	return out, nil
}

func (k *fakeKernel) findRule(r *netlink.Rule, matchProto bool) int {
	return slices.IndexFunc(k.rules, func(h netlink.Rule) bool {
		return h.Family == r.Family && h.Priority == r.Priority && h.Table == r.Table && sameNet(h.Src, r.Src) &&
			h.Mark == r.Mark && maskOf(h.Mask) == maskOf(r.Mask) && (!matchProto || r.Protocol == 0 || h.Protocol == r.Protocol)
	})
}

func (k *fakeKernel) RuleAdd(r *netlink.Rule) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	line := k.ruleLine(r)
	err, apply := k.answer("RuleAdd", line)
	if err != nil && !apply {
		return err
	}
	switch {
	case k.absent[r.Family]:
		return unix.EAFNOSUPPORT
	case r.Priority < 0 || r.Table <= 0:
		return unix.EINVAL // a rule without priority or table: not what pairlb sends
	case k.findRule(r, false) >= 0:
		return unix.EEXIST
	}
	k.rules = append(k.rules, *r)
	k.writes = append(k.writes, "+ "+line)
	return err
}

func (k *fakeKernel) RuleDel(r *netlink.Rule) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	line := delLine(k.ruleLine(r))
	err, apply := k.answer("RuleDel", line)
	if err != nil && !apply {
		return err
	}
	i := k.findRule(r, true)
	if i < 0 {
		return unix.ENOENT
	}
	k.rules = slices.Delete(k.rules, i, i+1)
	k.writes = append(k.writes, "- "+line)
	return err
}

func (k *fakeKernel) RouteListFiltered(fam int, filter *netlink.Route, mask uint64) ([]netlink.Route, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []netlink.Route
	for _, r := range k.routes {
		if r.Family != fam || mask&netlink.RT_FILTER_TABLE != 0 && filter.Table != unix.RT_TABLE_UNSPEC && r.Table != filter.Table {
			continue
		}
		out = append(out, r)
	}
	return out, nil // a family the kernel lacks has none (the dump of every family is filtered)
}

// hasAddr reports whether ip is an address of the box, on link (any when 0).
func (k *fakeKernel) hasAddr(ip net.IP, link int) bool {
	return slices.ContainsFunc(k.addrs, func(a netlink.Addr) bool { return (link == 0 || a.LinkIndex == link) && a.IP.Equal(ip) })
}

// onLink reports whether gw is on a subnet of one of link's addresses.
func (k *fakeKernel) onLink(gw net.IP, link int) bool {
	return slices.ContainsFunc(k.addrs, func(a netlink.Addr) bool { return a.LinkIndex == link && a.IPNet.Contains(gw) })
}

func (k *fakeKernel) RouteReplace(r *netlink.Route) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	line := k.routeLine(r)
	err, apply := k.answer("RouteReplace", line)
	if err != nil && !apply {
		return err
	}
	if k.absent[r.Family] {
		return unix.EAFNOSUPPORT
	}
	stored := *r
	switch r.Type {
	case unix.RTN_UNICAST:
		l := k.byIndex(r.LinkIndex)
		switch {
		case l == nil:
			return unix.ENODEV
		case !l.up:
			return unix.ENETDOWN
		case r.Gw != nil && !k.onLink(r.Gw, r.LinkIndex):
			return unix.ENETUNREACH
		}
	case unix.RTN_UNREACHABLE:
		if r.Family == netlink.FAMILY_V6 {
			stored.LinkIndex = loopbackIndex // as IPv6 reports it
		}
	}
	if r.Src != nil && !k.hasAddr(r.Src, 0) {
		return unix.EINVAL // "invalid prefsrc address"
	}
	i := slices.IndexFunc(k.routes, func(h netlink.Route) bool {
		return h.Family == r.Family && h.Table == r.Table && sameNet(h.Dst, r.Dst) && h.Priority == r.Priority
	})
	if i >= 0 {
		k.routes[i] = stored
	} else {
		k.routes = append(k.routes, stored)
	}
	k.writes = append(k.writes, "+ "+line)
	return err
}

func (k *fakeKernel) RouteDel(r *netlink.Route) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	line := delLine(k.routeLine(r))
	err, apply := k.answer("RouteDel", line)
	if err != nil && !apply {
		return err
	}
	i := slices.IndexFunc(k.routes, func(h netlink.Route) bool {
		return h.Family == r.Family && h.Table == r.Table && sameNet(h.Dst, r.Dst) && h.Priority == r.Priority &&
			h.Type == r.Type && (r.Gw == nil || h.Gw.Equal(r.Gw)) && (r.LinkIndex == 0 || h.LinkIndex == r.LinkIndex) &&
			(r.Protocol == 0 || h.Protocol == r.Protocol) && (r.Src == nil || h.Src.Equal(r.Src))
	})
	if i < 0 {
		return unix.ESRCH
	}
	k.routes = slices.Delete(k.routes, i, i+1)
	k.writes = append(k.writes, "- "+line)
	return err
}

func (k *fakeKernel) nftState() (*Transparency, bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err, _ := k.answer("nftState", ""); err != nil {
		return nil, false, err
	}
	if k.nft == nil {
		return nil, false, nil
	}
	return &Transparency{Links: slices.Clone(k.nft.Links)}, k.nftForeign, nil
}

func (k *fakeKernel) nftWrite(t *Transparency, had bool) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	c := change{op: opSetNFT, nft: t, nftHad: had}
	lines := c.lines()
	err, apply := k.answer("nftWrite", strings.Join(lines, "\n"))
	if err != nil && !apply {
		return err
	}
	if t == nil {
		if k.nft == nil {
			return nil // nftWrite takes the kernel's ENOENT for done
		}
		k.nft, k.nftForeign = nil, false
	} else {
		if k.nft != nil && !had {
			return unix.EEXIST // a table pairlb did not know of: the rules would be doubled
		}
		k.nft, k.nftForeign = &Transparency{Links: slices.Clone(t.Links)}, false
	}
	k.writes = append(k.writes, lines...)
	return err
}

var _ kernel = (*fakeKernel)(nil)

// fakeBox is the lab of manager_test.go in memory: the box's internal leg int0 (198.18.1.2/24,
// 2001:db8:1::2/64, where the VIPs and their gateways are) and its DMZ leg dmz0.
func fakeBox(t *testing.T) (*fakeKernel, *Manager) {
	k := newFakeKernel()
	k.addLink("dmz0", true, "198.18.2.2/24", "2001:db8:2::2/64")
	k.addLink("int0", true, "198.18.1.2/24", "2001:db8:1::2/64")
	return k, newManager(k, testLogger(t))
}
