package routing

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"
)

// installed is pairlb's part of the kernel's state, as diff compares it with a plan.
type installed struct {
	rules  []Rule
	routes []Route
	// hostAddrs are the /32 and /128 addresses on the box's links, whoever added them; mine
	// are those pairlb may remove (added by this process, or labelled by an earlier one), with
	// their link's name, sorted. labelErr is why the labelled ones could not be listed.
	hostAddrs map[Addr]bool
	mine      []Addr
	labelErr  error
	// nft is pairlb's nftables table, nil when there is none; nftForeign when it is not in the
	// shape pairlb makes. nftErr is why it could not be read (see nftProblem).
	nft        *Transparency
	nftForeign bool
	nftErr     error
	// absent are the families the kernel does not have (IPv6 on a kernel booted with
	// ipv6.disable=1), with the kernel's answer: nothing of theirs is there, or can be added.
	absent map[Family]error
	// failedTables are the tables in which adding a route has just failed: what they still
	// hold stays (the kernel refused part of the plan, so the plan cannot say what the table
	// should hold), and apply fills them in before it asks diff for the deletions.
	failedTables map[int]bool
}

// nftProblem is the error reading the nftables table means for p: none when the kernel has no
// nf_tables at all and p needs none (nothing of pairlb's can be there either).
func (h installed) nftProblem(p Plan) error {
	if h.nftErr == nil || p.Transparency == nil && unsupported(h.nftErr) {
		return nil
	}
	return h.nftErr
}

// changeOp is what a change does; the constants are in the order diff lists changes.
type changeOp uint8

const (
	opAddAddr changeOp = iota
	opAddRoute
	opAddRule
	// opSetNFT installs, replaces or removes the nftables table. It comes after the rule and
	// route it relies on, and before they are removed: a packet is never marked for a table
	// that is not there.
	opSetNFT
	opDelRule
	opDelRoute
	opDelAddr
)

// change is one write that brings the kernel closer to a plan.
type change struct {
	op changeOp
	// units are those the change belongs to, for the problem a failure becomes: one, except
	// for the nftables table, which serves every transparency unit. A removal of what no unit
	// holds any more belongs to the cleanup.
	units []Unit
	rule  Rule
	route Route
	addr  Addr
	// nft is what the table must hold after opSetNFT, nil when it goes; nftHad is whether a
	// table is there now (and is removed first, in the same transaction).
	nft    *Transparency
	nftHad bool
}

func (c change) isAdd() bool { return c.op <= opSetNFT }

// lines renders the change as iproute2 and nft commands, "+ " before what is added and "- "
// before what is removed.
func (c change) lines() []string {
	switch c.op {
	case opAddAddr:
		return []string{"+ " + c.addr.Line()}
	case opAddRoute:
		return []string{"+ " + c.route.Line()}
	case opAddRule:
		return []string{"+ " + c.rule.Line()}
	case opDelRule:
		return []string{"- " + delLine(c.rule.Line())}
	case opDelRoute:
		return []string{"- " + delLine(c.route.Line())}
	case opDelAddr:
		return []string{"- " + delLine(c.addr.Line())}
	}
	var out []string
	if c.nftHad {
		out = append(out, "- nft delete table inet "+NFTable)
	}
	if c.nft != nil {
		for _, l := range c.nft.Lines() {
			out = append(out, "+ "+l)
		}
	}
	return out
}

// diff is what makes the kernel hold p when it holds have: every addition first (addresses,
// then routes in plan order, connected before default, then rules, then the nftables table),
// then every removal (rules, routes, addresses), so that a VIP moving to another table or
// gateway is never without a rule. It is empty when the kernel matches the plan, and it is
// pure: Manager.apply carries it out, and Diff shows it.
//
// It never removes what the plan keeps of its units with a problem (Plan.keepsRoute,
// keepsAddr, keepsNFTLinks), the routes of a table in which an add failed, or, while the
// nftables table is in a state nobody could read or write and no longer wanted, the rule and
// route its marking relies on. It plans nothing of a family the kernel does not have.
func diff(p Plan, have installed) []change {
	units := indexUnits(p)
	present := func(a netip.Addr) bool { _, gone := have.absent[familyOf(a)]; return !gone }
	var out []change

	for _, a := range p.Addrs {
		if present(a.Prefix.Addr()) && !have.hostAddrs[a.key()] {
			out = append(out, change{op: opAddAddr, units: units.addr(a.Prefix.Addr()), addr: a})
		}
	}
	haveRoutes := map[routeKey]bool{}
	for _, r := range have.routes {
		haveRoutes[r.key()] = true
	}
	for _, r := range p.Routes {
		if present(r.Dst.Addr()) && !haveRoutes[r.key()] {
			out = append(out, change{op: opAddRoute, units: units.table(r.Table, familyOf(r.Dst.Addr())), route: r})
		}
	}
	haveRules := map[Rule]bool{}
	for _, r := range have.rules {
		haveRules[r] = true
	}
	for _, r := range p.Rules {
		if present(r.Src.Addr()) && !haveRules[r] {
			out = append(out, change{op: opAddRule, units: units.table(r.Table, familyOf(r.Src.Addr())), rule: r})
		}
	}
	if c, ok := nftChange(p, have); ok {
		c.units = units.nft()
		out = append(out, c)
	}

	// While the marking may still be in place, its rule and route stay.
	keepMarking := have.nftProblem(p) != nil && p.Transparency == nil
	wantRules := map[Rule]bool{}
	for _, r := range p.Rules {
		wantRules[r] = true
	}
	for _, r := range have.rules {
		if !wantRules[r] && !(keepMarking && r.Table == TransparentTable) {
			out = append(out, change{op: opDelRule, units: units.table(r.Table, familyOf(r.Src.Addr())), rule: r})
		}
	}
	wantRoutes := map[routeKey]bool{}
	for _, r := range p.Routes {
		wantRoutes[r.key()] = true
	}
	for _, r := range have.routes {
		if wantRoutes[r.key()] || have.failedTables[r.Table] || p.keepsRoute(r) || keepMarking && r.Table == TransparentTable {
			continue
		}
		out = append(out, change{op: opDelRoute, units: units.table(r.Table, familyOf(r.Dst.Addr())), route: r})
	}
	wantAddrs := map[Addr]bool{}
	for _, a := range p.Addrs {
		wantAddrs[a.key()] = true
	}
	for _, a := range have.mine {
		if !wantAddrs[a.key()] && !p.keepsAddr(a) {
			out = append(out, change{op: opDelAddr, units: units.addr(a.Prefix.Addr()), addr: a})
		}
	}
	return out
}

// nftChange is the write, if any, that makes the nftables table hold p's. When a transparency
// unit has a problem, the interfaces marked now stay beside the plan's (see keepsNFTLinks).
func nftChange(p Plan, have installed) (change, bool) {
	if have.nftProblem(p) != nil {
		return change{}, false
	}
	want, h := p.Transparency, have.nft
	if have.nftErr != nil {
		h = nil // no nf_tables in this kernel, and none needed
	}
	if want == nil {
		return change{op: opSetNFT, nftHad: true}, h != nil
	}
	if h != nil && !have.nftForeign {
		if p.keepsNFTLinks() {
			links := slices.Concat(want.Links, h.Links)
			slices.Sort(links)
			w := *want
			w.Links = slices.Compact(links)
			want = &w
		}
		if slices.Equal(h.Links, want.Links) {
			return change{}, false
		}
	}
	return change{op: opSetNFT, nft: want, nftHad: h != nil}, true
}

// Diff renders what a Manager's Set would change to make the kernel, holding have (as
// Manager.State reports it), hold want: "+ " for what is missing, "- " for what is extra (but not
// what a Manager keeps of a unit with a problem), in the order Set makes the changes. VIP
// addresses are left out (have does not list them). It is empty when the kernel matches.
func Diff(want, have Plan) []string {
	h := installed{rules: have.Rules, routes: have.Routes, nft: have.Transparency}
	if t := have.Transparency; t != nil && slices.Equal(t.Links, []string{foreignLinks}) {
		h.nftForeign = true
	}
	var out []string
	for _, c := range diff(want, h) {
		if c.op != opAddAddr && c.op != opDelAddr {
			out = append(out, c.lines()...)
		}
	}
	return out
}

// foreignLinks is the one link name State reports for an nftables table in a shape pairlb does
// not make.
const foreignLinks = "(foreign content)"

// delLine turns an `ip ... add` command into the matching `ip ... del`.
func delLine(add string) string { return strings.Replace(add, " add ", " del ", 1) }

func compareAddrs(a, b Addr) int {
	return cmp.Or(cmp.Compare(a.Link, b.Link), a.Prefix.Addr().Compare(b.Prefix.Addr()))
}

// unitIndex finds the unit of a plan that an object belongs to.
type unitIndex struct {
	byTable map[int]Unit // gateway tables
	trans   map[Family]Unit
	addrs   map[netip.Addr]Unit
}

func indexUnits(p Plan) unitIndex {
	u := unitIndex{byTable: map[int]Unit{}, trans: map[Family]Unit{}, addrs: map[netip.Addr]Unit{}}
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

func cleanupUnit(fam Family) Unit { return Unit{UnitID: UnitID{Kind: UnitCleanup, Family: fam}} }

// table is the unit a rule or route in table id belongs to: one in a table no unit holds any
// more is the cleanup's.
func (u unitIndex) table(id int, fam Family) []Unit {
	if id == TransparentTable {
		if un, ok := u.trans[fam]; ok {
			return []Unit{un}
		}
	} else if un, ok := u.byTable[id]; ok {
		return []Unit{un}
	}
	return []Unit{cleanupUnit(fam)}
}

func (u unitIndex) addr(a netip.Addr) []Unit {
	if un, ok := u.addrs[a]; ok {
		return []Unit{un}
	}
	return []Unit{cleanupUnit(familyOf(a))}
}

// nft is the units of the nftables table: every transparency unit, or the cleanup (of both
// families) when there is none.
func (u unitIndex) nft() []Unit {
	var out []Unit
	for _, fam := range []Family{IPv4, IPv6} {
		if un, ok := u.trans[fam]; ok {
			out = append(out, un)
		}
	}
	if len(out) == 0 {
		out = []Unit{cleanupUnit("")}
	}
	return out
}
