package routing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pairlb/pairlb/config"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Defaults of a Manager's watcher.
const (
	DefaultDebounce = 200 * time.Millisecond
	DefaultResync   = 30 * time.Second
)

// Manager makes the kernel of one network namespace hold a Plan and keeps it there. Its methods
// are safe for concurrent use.
type Manager struct {
	h        *netlink.Handle
	log      *slog.Logger
	ns       *netns.NsHandle
	debounce time.Duration
	resync   time.Duration
	onLinks  func([]Link)

	mu     sync.Mutex
	cfg    *config.Config // last configuration Set successfully planned; nil before
	owned  map[Addr]bool  // VIP addresses this process added (key form: no link name)
	closed bool
	// units are those of the plan last applied; problems those of its units not installed in
	// full, with when each was first seen; lastErr the last re-apply failure already logged.
	units    []Unit
	problems map[UnitID]Problem
	lastErr  string
	now      func() time.Time
}

// Option adjusts a Manager.
type Option func(*Manager)

// WithNamespace names the network namespace h works in, so that Run watches the same one and
// the nftables table is kept there too. Without it Run and nftables use the namespace of the
// calling thread.
func WithNamespace(ns netns.NsHandle) Option {
	return func(m *Manager) { m.ns = &ns }
}

// WithLinksHook makes the Manager call f with the snapshot of the links every Set and re-apply
// planned with, whether or not the plan could be applied; f must not call the Manager. It is how
// the box's own addresses reach those who need them (SourceFor, for subnet_originating) when
// links and addresses change.
func WithLinksHook(f func([]Link)) Option { return func(m *Manager) { m.onLinks = f } }

// WithDebounce sets how long Run gathers link, address and route events before re-applying.
func WithDebounce(d time.Duration) Option { return func(m *Manager) { m.debounce = d } }

// WithResync sets how often Run re-applies without an event (rules have no notifications).
func WithResync(d time.Duration) Option { return func(m *Manager) { m.resync = d } }

// New returns a Manager that changes the kernel through h.
func New(h *netlink.Handle, logger *slog.Logger, opts ...Option) *Manager {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m := &Manager{h: h, log: logger, debounce: DefaultDebounce, resync: DefaultResync, owned: map[Addr]bool{},
		problems: map[UnitID]Problem{}, now: time.Now}
	for _, o := range opts {
		o(m)
	}
	return m
}

// Links takes a snapshot of the namespace's interfaces and usable addresses.
func (m *Manager) Links() ([]Link, error) {
	nlLinks, err := retryDump("links", m.h.LinkList)
	if err != nil {
		return nil, err
	}
	addrs, err := retryDump("addresses", func() ([]netlink.Addr, error) { return m.h.AddrList(nil, netlink.FAMILY_ALL) })
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

// Plan snapshots the links and builds the plan for cfg without changing anything.
func (m *Manager) Plan(cfg *config.Config) (Plan, error) {
	links, err := m.Links()
	if err != nil {
		return Plan{}, err
	}
	return BuildPlan(cfg, links)
}

// Diff renders what Set(cfg) would change, as the package's Diff does.
func (m *Manager) Diff(cfg *config.Config) ([]string, error) {
	p, err := m.Plan(cfg)
	if err != nil {
		return nil, err
	}
	have, err := m.State()
	if err != nil {
		return nil, err
	}
	return Diff(p, have), nil
}

// foreignLinks is the one link name State reports for an nftables table in a shape pairlb does
// not make.
const foreignLinks = "(foreign content)"

// State returns what pairlb has installed as a Plan: its rules and routes (as Installed) and its
// nftables table (Transparency, nil when there is none). Tables and Addrs are left empty. A
// table that exists in a shape pairlb does not make (edited by hand) is reported with the single
// link name "(foreign content)", so that it differs from any plan and a Set replaces it.
func (m *Manager) State() (Plan, error) {
	rules, routes, err := m.Installed()
	if err != nil {
		return Plan{}, err
	}
	c, err := m.nftConn()
	if err != nil {
		return Plan{}, err
	}
	t, foreign, err := nftState(c)
	if err != nil {
		return Plan{}, err
	}
	if foreign {
		t = &Transparency{Links: []string{foreignLinks}}
	}
	return Plan{Rules: rules, Routes: routes, Transparency: t}, nil
}

// Set makes the kernel hold the plan for cfg: it adds what is missing, then removes pairlb's
// objects the plan no longer has. It writes nothing when the kernel already matches, so calling
// it again changes nothing. The configuration is kept for Run to re-apply.
//
// The plan is applied unit by unit (see Unit): when some units cannot be installed, because
// the box's links cannot carry them now or the kernel refused one of their objects, Set
// installs every other unit and returns a *PartialError naming the ones it could not. Run
// retries those when links or addresses change, and Problems lists them until they are
// installed; each is logged once when it appears and once when it clears. Any other error
// means nothing was changed: a configuration that no state of the links can make work (see
// BuildPlan), or a kernel state that could not be read.
func (m *Manager) Set(cfg *config.Config) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return errors.New("routing manager is closed")
	}
	links, err := m.Links()
	if err != nil {
		return err
	}
	m.linksChanged(links)
	p, err := BuildPlan(cfg, links)
	if err != nil {
		return err
	}
	m.cfg = cfg
	m.lastErr = ""
	probs, err := m.applyUnits(p, links)
	if err != nil {
		return err
	}
	if len(probs) > 0 {
		return &PartialError{Problems: probs}
	}
	return nil
}

// applyUnits applies p and records its problems, the plan's and the kernel's together.
func (m *Manager) applyUnits(p Plan, links []Link) ([]Problem, error) {
	applied, err := m.apply(p, links)
	if err != nil {
		return nil, err
	}
	return m.record(p.Units, mergeProblems(p.Problems, applied)), nil
}

// record makes probs the current problems, logging each when it appears, when its reason
// changes and when it clears, and returns them with the time each was first seen.
func (m *Manager) record(units []Unit, probs []Problem) []Problem {
	now := m.now()
	next := make(map[UnitID]Problem, len(probs))
	for i, p := range probs {
		old, seen := m.problems[p.UnitID]
		p.Since = now
		if seen {
			p.Since = old.Since
		}
		if !seen || old.Reason != p.Reason {
			msg := "routing: part of the plan not installed; retrying when links or addresses change"
			if seen {
				msg = "routing: part of the plan still not installed, for another reason"
			}
			m.log.Warn(msg, "unit", p.UnitID.String(), "family", string(p.Family),
				"virtual_services", strings.Join(p.Services, ","), "reason", p.Reason)
		}
		next[p.UnitID] = p
		probs[i] = p
	}
	planned := map[UnitID]bool{}
	for _, u := range units {
		planned[u.UnitID] = true
	}
	for id, old := range m.problems {
		if _, still := next[id]; still {
			continue
		}
		if planned[id] || id.Kind == UnitCleanup {
			m.log.Info("routing: part of the plan installed", "unit", id.String(), "family", string(id.Family),
				"after", now.Sub(old.Since).Round(time.Millisecond).String())
		} else {
			m.log.Info("routing: part of the plan with a problem is no longer configured", "unit", id.String(), "family", string(id.Family))
		}
	}
	m.units, m.problems = units, next
	return probs
}

// Problems returns the units of the plan last applied (by Set or a re-apply) that are not
// installed in full, in plan order, with the reason and since when.
func (m *Manager) Problems() []Problem {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Problem, 0, len(m.problems))
	for _, p := range m.problems {
		p.Services = slices.Clone(p.Services)
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b Problem) int { return compareUnits(a.UnitID, b.UnitID) })
	return out
}

// Units returns every unit of the plan last applied, whether installed or not (see Problems).
func (m *Manager) Units() []Unit {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := slices.Clone(m.units)
	for i := range out {
		out[i].Services = slices.Clone(out[i].Services)
	}
	return out
}

// Cleanup removes every object in pairlb's range, whoever left it: call it at start, before the
// first Set, to clear what a crashed instance left behind. (Set alone also removes stale
// objects in the range, after adding the new ones.)
func (m *Manager) Cleanup() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.removeAll()
}

// Close removes everything pairlb made and stops later Sets and re-applies.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	m.cfg = nil
	m.units, m.problems = nil, map[UnitID]Problem{}
	return m.removeAll()
}

func (m *Manager) removeAll() error {
	links, err := m.Links()
	if err != nil {
		return err
	}
	probs, err := m.apply(Plan{}, links)
	if err == nil && len(probs) > 0 {
		err = &PartialError{Problems: probs}
	}
	return err
}

// Installed lists pairlb's rules and routes in the kernel, sorted as a plan's are.
func (m *Manager) Installed() ([]Rule, []Route, error) {
	links, err := m.Links()
	if err != nil {
		return nil, nil, err
	}
	return m.installed(links)
}

func (m *Manager) installed(links []Link) ([]Rule, []Route, error) {
	names := map[int]string{loopbackIndex: "lo"}
	for _, l := range links {
		names[l.Index] = l.Name
	}
	var rules []Rule
	var routes []Route
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := retryDump("rules", func() ([]netlink.Rule, error) { return m.h.RuleList(fam) })
		if err != nil {
			return nil, nil, err
		}
		for i := range rs {
			r := &rs[i]
			if !ownsRule(r) {
				continue
			}
			src, ok := allOf(fam), true
			if r.Src != nil {
				src, ok = prefixOf(r.Src)
			}
			if !ok {
				continue
			}
			rule := Rule{Priority: r.Priority, Table: r.Table, Src: src}
			if r.Mask != nil && *r.Mask != 0 {
				rule.Mark, rule.Mask = r.Mark, *r.Mask
			}
			rules = append(rules, rule)
		}
		rts, err := retryDump("routes", func() ([]netlink.Route, error) {
			return m.h.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			return nil, nil, err
		}
		for i := range rts {
			r := &rts[i]
			if !ownsRoute(r) {
				continue
			}
			rt, ok := fromNetlink(r, fam)
			if !ok {
				continue
			}
			rt.LinkName = names[rt.Link]
			routes = append(routes, rt)
		}
	}
	sortRules(rules)
	sortRoutes(routes)
	return rules, routes, nil
}

// fromNetlink converts a dumped route; ok is false for shapes pairlb never makes.
func fromNetlink(r *netlink.Route, fam int) (Route, bool) {
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

// unitErrors gathers what went wrong while applying a plan, per unit, so that one refused
// call is reported against the unit it belongs to and never stops the others.
type unitErrors struct {
	byTable map[int]Unit // gateway tables
	trans   map[Family]Unit
	addrs   map[netip.Addr]Unit
	errs    map[UnitID][]error
	units   map[UnitID]Unit
}

func newUnitErrors(p Plan) *unitErrors {
	u := &unitErrors{byTable: map[int]Unit{}, trans: map[Family]Unit{}, addrs: map[netip.Addr]Unit{},
		errs: map[UnitID][]error{}, units: map[UnitID]Unit{}}
	for _, un := range p.Units {
		switch un.Kind {
		case UnitGateway:
			u.byTable[un.Table] = un
		case UnitTransparency:
			u.trans[un.Family] = un
		case UnitAddress:
			u.addrs[un.Addr] = un
		}
	}
	return u
}

func (u *unitErrors) add(un Unit, err error) {
	u.units[un.UnitID] = un
	u.errs[un.UnitID] = append(u.errs[un.UnitID], err)
}

func cleanupUnit(fam Family) Unit { return Unit{UnitID: UnitID{Kind: UnitCleanup, Family: fam}} }

// table is the unit a rule or route in table id belongs to: a removal in a table no unit
// holds any more is the cleanup's.
func (u *unitErrors) table(id int, fam Family) Unit {
	if id == TransparentTable {
		if un, ok := u.trans[fam]; ok {
			return un
		}
	} else if un, ok := u.byTable[id]; ok {
		return un
	}
	return cleanupUnit(fam)
}

func (u *unitErrors) addr(a netip.Addr) Unit {
	if un, ok := u.addrs[a]; ok {
		return un
	}
	return cleanupUnit(familyOf(a))
}

// nft is the unit of the nftables table: every transparency unit of the plan, or the cleanup
// when there is none.
func (u *unitErrors) nft(err error) {
	if len(u.trans) == 0 {
		u.add(cleanupUnit(""), err)
		return
	}
	for _, fam := range []Family{IPv4, IPv6} {
		if un, ok := u.trans[fam]; ok {
			u.add(un, err)
		}
	}
}

func (u *unitErrors) problems() []Problem {
	var out []Problem
	for id, errs := range u.errs {
		out = append(out, Problem{Unit: u.units[id], Reason: joinReasons(errs)})
	}
	slices.SortFunc(out, func(a, b Problem) int { return compareUnits(a.UnitID, b.UnitID) })
	return out
}

func joinReasons(errs []error) string {
	s := make([]string, len(errs))
	for i, e := range errs {
		s[i] = e.Error()
	}
	return strings.Join(s, "; ")
}

// mergeProblems puts the problems of the same unit together (the plan's and those of
// applying it).
func mergeProblems(lists ...[]Problem) []Problem {
	var out []Problem
	at := map[UnitID]int{}
	for _, l := range lists {
		for _, p := range l {
			if i, ok := at[p.UnitID]; ok {
				out[i].Reason += "; " + p.Reason
				continue
			}
			at[p.UnitID] = len(out)
			out = append(out, p)
		}
	}
	slices.SortStableFunc(out, func(a, b Problem) int { return compareUnits(a.UnitID, b.UnitID) })
	return out
}

// apply makes the kernel hold p. It adds first and removes after, and every call is made
// whatever the others answered: a route the kernel refuses (EINVAL, ENETUNREACH) is reported
// against its unit, and the other units are installed all the same. It returns the problems
// of the units it could not install in full; err is for a kernel state it could not read at
// the start, when it wrote nothing.
//
// What p keeps of its units with a problem (keepsRoute, keepsAddr, keepsNFTLinks) is not
// removed, nor are the other routes of a table in which an add failed.
func (m *Manager) apply(p Plan, links []Link) ([]Problem, error) {
	rules, routes, err := m.installed(links)
	if err != nil {
		return nil, err
	}
	fails := newUnitErrors(p)
	changed := false

	// Addresses.
	present := map[Addr]bool{}
	for _, l := range links {
		for _, a := range l.Addrs {
			if a.Bits() == a.Addr().BitLen() {
				present[Addr{Link: l.Index, Prefix: a}] = true
			}
		}
	}
	wantAddrs := map[Addr]bool{}
	for _, a := range p.Addrs {
		wantAddrs[a.key()] = true
		if present[a.key()] {
			// Already there: left by an earlier pairlb (IPv6 addresses carry no mark a
			// restart could find) or added by hand. With ManageAddresses the VIP is
			// pairlb's either way, so it is removed when no longer wanted.
			m.owned[a.key()] = true
			continue
		}
		err := m.h.AddrAdd(linkRef(a.Link, a.LinkName), toNetlinkAddr(a))
		switch {
		case err == nil:
			m.owned[a.key()] = true
			changed = true
			m.log.Info("added VIP address", "address", a.Prefix, "link", a.LinkName)
		case errors.Is(err, unix.EEXIST):
		default:
			fails.add(fails.addr(a.Prefix.Addr()), fmt.Errorf("adding address %s to %s: %w", a.Prefix, a.LinkName, err))
		}
	}

	// Routes, in plan order (connected before default).
	haveRoutes := map[routeKey]bool{}
	for _, r := range routes {
		haveRoutes[r.key()] = true
	}
	failedTables := map[int]bool{}
	for _, r := range p.Routes {
		if haveRoutes[r.key()] {
			continue
		}
		if err := m.h.RouteReplace(toNetlinkRoute(r)); err != nil {
			failedTables[r.Table] = true
			fails.add(fails.table(r.Table, familyOf(r.Dst.Addr())), fmt.Errorf("adding route %q: %w", r.Line(), err))
			continue
		}
		changed = true
		m.log.Info("added route", "route", r.Line())
	}

	// Rules.
	haveRules := map[Rule]bool{}
	for _, r := range rules {
		haveRules[r] = true
	}
	for _, r := range p.Rules {
		if haveRules[r] {
			continue
		}
		err := m.h.RuleAdd(toNetlinkRule(r))
		switch {
		case err == nil:
			changed = true
			m.log.Info("added rule", "rule", r.Line())
		case errors.Is(err, unix.EEXIST):
		default:
			fails.add(fails.table(r.Table, familyOf(r.Src.Addr())), fmt.Errorf("adding rule %q: %w", r.Line(), err))
		}
	}

	// The nftables table comes after the rule and route it relies on, and goes before them:
	// a packet is never marked for a table that is not there.
	if _, err := m.syncNFT(p.Transparency, p.keepsNFTLinks()); err != nil {
		fails.nft(err)
		if p.Transparency == nil {
			// The marking may still be in place: keep the rule and route it needs.
			for _, r := range rules {
				if r.Table == TransparentTable {
					p.Rules = append(p.Rules, r)
				}
			}
			for _, r := range routes {
				if r.Table == TransparentTable {
					p.Routes = append(p.Routes, r)
				}
			}
		}
	}

	// Deletions, against a fresh dump when something was added (a replace may have changed a
	// route in place).
	if changed {
		if rules, routes, err = m.installed(links); err != nil {
			fails.add(cleanupUnit(""), fmt.Errorf("not removing what the plan no longer holds: %w", err))
			return fails.problems(), nil
		}
	}
	wantRules := map[Rule]bool{}
	for _, r := range p.Rules {
		wantRules[r] = true
	}
	for _, r := range rules {
		if wantRules[r] {
			continue
		}
		err := m.h.RuleDel(toNetlinkRule(r))
		switch {
		case err == nil:
			m.log.Info("removed rule", "rule", delLine(r.Line()))
		case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ESRCH):
		default:
			fails.add(fails.table(r.Table, familyOf(r.Src.Addr())), fmt.Errorf("removing rule %q: %w", delLine(r.Line()), err))
		}
	}
	wantRoutes := map[routeKey]bool{}
	for _, r := range p.Routes {
		wantRoutes[r.key()] = true
	}
	for _, r := range routes {
		if wantRoutes[r.key()] || failedTables[r.Table] || p.keepsRoute(r) {
			continue
		}
		err := m.h.RouteDel(toNetlinkRoute(r))
		switch {
		case err == nil:
			m.log.Info("removed route", "route", delLine(r.Line()))
		case errors.Is(err, unix.ESRCH), errors.Is(err, unix.ENOENT):
		default:
			fails.add(fails.table(r.Table, familyOf(r.Dst.Addr())), fmt.Errorf("removing route %q: %w", delLine(r.Line()), err))
		}
	}

	// Addresses pairlb added (this process, or labelled by an earlier one) and no longer wants.
	mine := map[Addr]string{}
	for a := range m.owned {
		mine[a] = ""
	}
	labelled, err := m.labelledAddrs()
	if err != nil {
		fails.add(cleanupUnit(IPv4), err)
	}
	for a, label := range labelled {
		mine[a] = label
	}
	names := map[int]string{}
	for _, l := range links {
		names[l.Index] = l.Name
	}
	for a := range mine {
		if wantAddrs[a] || p.keepsAddr(a) {
			continue
		}
		a.LinkName = names[a.Link]
		err := m.h.AddrDel(linkRef(a.Link, a.LinkName), toNetlinkAddr(a))
		switch {
		case err == nil:
			m.log.Info("removed VIP address", "address", a.Prefix, "link", a.LinkName)
		case errors.Is(err, unix.EADDRNOTAVAIL), errors.Is(err, unix.ENODEV), errors.Is(err, unix.ENOENT):
		default:
			fails.add(fails.addr(a.Prefix.Addr()), fmt.Errorf("removing address %s from %s: %w", a.Prefix, a.LinkName, err))
			continue
		}
		delete(m.owned, a.key())
	}
	return fails.problems(), nil
}

// labelledAddrs lists the IPv4 host addresses carrying pairlb's label.
func (m *Manager) labelledAddrs() (map[Addr]string, error) {
	addrs, err := retryDump("addresses", func() ([]netlink.Addr, error) { return m.h.AddrList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return nil, err
	}
	out := map[Addr]string{}
	for _, a := range addrs {
		if a.IPNet == nil || !strings.HasSuffix(a.Label, addrLabelSuffix) {
			continue
		}
		p, ok := prefixOf(a.IPNet)
		if !ok || p.Bits() != 32 {
			continue
		}
		out[Addr{Link: a.LinkIndex, Prefix: p}] = a.Label
	}
	return out, nil
}

// allOf is the prefix that holds every address of a netlink family.
func allOf(fam int) netip.Prefix {
	if fam == netlink.FAMILY_V4 {
		return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	return netip.PrefixFrom(netip.IPv6Unspecified(), 0)
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

// Run keeps the kernel matching the last configuration given to Set: it watches link, address
// and route changes in the Manager's namespace and re-applies, debounced, after any of them
// (a link going down and up silently empties a table's IPv4 routes), and every resync
// interval. It returns when ctx ends.
func (m *Manager) Run(ctx context.Context) error {
	backoff := time.Second
	for {
		err := m.watch(ctx)
		if ctx.Err() != nil {
			return nil
		}
		m.log.Warn("routing watch ended; subscribing again", "error", err, "after", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}

// watch subscribes to the namespace's changes and re-applies until ctx ends or a subscription
// breaks. It waits for the subscriptions' goroutines before returning.
func (m *Manager) watch(ctx context.Context) error {
	done := make(chan struct{})
	linkCh := make(chan netlink.LinkUpdate, 64)
	addrCh := make(chan netlink.AddrUpdate, 64)
	routeCh := make(chan netlink.RouteUpdate, 256)
	subErr := make(chan error, 3)
	onErr := func(err error) {
		select {
		case subErr <- err:
		default:
		}
	}
	var subscribed []func()
	defer func() {
		close(done)
		for _, wait := range subscribed {
			wait()
		}
	}()
	if err := netlink.LinkSubscribeWithOptions(linkCh, done, netlink.LinkSubscribeOptions{Namespace: m.ns, ErrorCallback: onErr}); err != nil {
		return fmt.Errorf("subscribing to link changes: %w", err)
	}
	subscribed = append(subscribed, drainer(linkCh))
	if err := netlink.AddrSubscribeWithOptions(addrCh, done, netlink.AddrSubscribeOptions{Namespace: m.ns, ErrorCallback: onErr}); err != nil {
		return fmt.Errorf("subscribing to address changes: %w", err)
	}
	subscribed = append(subscribed, drainer(addrCh))
	if err := netlink.RouteSubscribeWithOptions(routeCh, done, netlink.RouteSubscribeOptions{Namespace: m.ns, ErrorCallback: onErr}); err != nil {
		return fmt.Errorf("subscribing to route changes: %w", err)
	}
	subscribed = append(subscribed, drainer(routeCh))

	// The debounce timer is armed by the first event and not pushed back by later ones, so a
	// storm of events still gets a re-apply within one debounce interval.
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	armed := false
	arm := func() {
		if !armed {
			timer.Reset(m.debounce)
			armed = true
		}
	}
	resync := time.NewTicker(m.resync)
	defer resync.Stop()
	// While a unit is not installed, a timer re-applies too (a refusal need not come with an
	// event), backing off from a second to the resync interval. A re-apply writes nothing for
	// the units already installed, so it only ever retries the failing ones.
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	retryIn, retrying := time.Second, false
	applied := func(ok bool) {
		switch {
		case ok:
			retry.Stop()
			retryIn, retrying = time.Second, false
		case !retrying:
			retry.Reset(retryIn)
			retrying = true
		}
	}

	// Anything may have changed while nobody watched.
	applied(m.reapply())

	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-subErr:
			// Possibly a lost event (the receive buffer overflowed): re-apply to be sure. A
			// subscription that ended also closes its channel, handled below.
			m.log.Warn("routing watch", "error", err)
			arm()
		case _, ok := <-linkCh:
			if !ok {
				return errors.New("link subscription closed")
			}
			arm()
		case _, ok := <-addrCh:
			if !ok {
				return errors.New("address subscription closed")
			}
			arm()
		case u, ok := <-routeCh:
			if !ok {
				return errors.New("route subscription closed")
			}
			// Only pairlb's tables matter: the plan is built from links and addresses. A
			// re-apply that finds the kernel matching writes nothing, so pairlb's own changes
			// do not loop.
			if ownsTable(u.Table) {
				arm()
			}
		case <-timer.C:
			armed = false
			applied(m.reapply())
		case <-retry.C:
			retrying = false
			retryIn = min(2*retryIn, max(m.resync, time.Second))
			applied(m.reapply())
		case <-resync.C:
			applied(m.reapply())
		}
	}
}

// drainer returns a function that waits, briefly, for a subscription to close its channel: the
// netlink library closes it when its goroutine ends.
func drainer[T any](ch <-chan T) func() {
	return func() {
		deadline := time.After(2 * time.Second)
		for {
			select {
			case _, ok := <-ch:
				if !ok {
					return
				}
			case <-deadline:
				return
			}
		}
	}
}

func (m *Manager) linksChanged(links []Link) {
	if m.onLinks != nil {
		m.onLinks(slices.Clone(links))
	}
}

// reapply applies the last configuration again; it reports whether every unit is installed.
// The problems of units are logged by record when they change; a failure to read the kernel's
// state is logged once until it changes or clears.
func (m *Manager) reapply() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || m.cfg == nil {
		return true
	}
	links, err := m.Links()
	if err == nil {
		m.linksChanged(links)
		var p Plan
		// The configuration planned without error when Set took it, and what makes a plan
		// fail outright does not depend on the links.
		if p, err = BuildPlan(m.cfg, links); err == nil {
			var probs []Problem
			if probs, err = m.applyUnits(p, links); err == nil {
				if m.lastErr != "" {
					m.log.Info("re-applying routing plan: the kernel's state is readable again")
					m.lastErr = ""
				}
				return len(probs) == 0
			}
		}
	}
	if msg := err.Error(); msg != m.lastErr {
		m.log.Warn("re-applying routing plan", "error", err)
		m.lastErr = msg
	}
	return false
}
