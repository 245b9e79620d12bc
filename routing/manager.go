package routing

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pairlb/pairlb/config"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// How Run re-applies: it gathers link, address and route events for defaultDebounce, and
// re-applies every defaultResync without an event (rules send no notifications).
const (
	defaultDebounce = 200 * time.Millisecond
	defaultResync   = 30 * time.Second
)

// Manager makes the kernel of one network namespace hold a Plan and keeps it there. Its methods
// are safe for concurrent use.
type Manager struct {
	k        kernel
	log      *slog.Logger
	ns       *netns.NsHandle
	debounce time.Duration
	resync   time.Duration
	onLinks  func([]Link)
	// watching, when set (by tests), is called each time Run has subscribed to the
	// namespace's changes and made its first re-apply: events from then on are seen.
	watching func()

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
// the box's own addresses reach those who need them (NewSources, for subnet_originating) when
// links and addresses change.
func WithLinksHook(f func([]Link)) Option { return func(m *Manager) { m.onLinks = f } }

// New returns a Manager that changes the kernel through h.
func New(h *netlink.Handle, logger *slog.Logger, opts ...Option) *Manager {
	m := newManager(nil, logger, opts...)
	m.k = netlinkKernel{Handle: h, ns: m.ns}
	return m
}

// newManager returns a Manager that changes the kernel through k.
func newManager(k kernel, logger *slog.Logger, opts ...Option) *Manager {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m := &Manager{k: k, log: logger, debounce: defaultDebounce, resync: defaultResync, owned: map[Addr]bool{},
		problems: map[UnitID]Problem{}, now: time.Now}
	for _, o := range opts {
		o(m)
	}
	return m
}

// Plan snapshots the links and builds the plan for cfg without changing anything.
func (m *Manager) Plan(cfg *config.Config) (Plan, error) {
	links, err := m.Links()
	if err != nil {
		return Plan{}, err
	}
	return BuildPlan(cfg, links)
}

// pending renders what Set(cfg) would change of the rules, routes and nftables table, as Diff
// does.
func (m *Manager) pending(cfg *config.Config) ([]string, error) {
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

// State returns what pairlb has installed as a Plan: its rules and routes (as Installed) and its
// nftables table (Transparency, nil when there is none). Tables and Addrs are left empty. A
// table that exists in a shape pairlb does not make (edited by hand) is reported with the single
// link name "(foreign content)", so that it differs from any plan and a Set replaces it.
func (m *Manager) State() (Plan, error) {
	rules, routes, err := m.Installed()
	if err != nil {
		return Plan{}, err
	}
	t, foreign, err := m.k.nftState()
	if err != nil {
		return Plan{}, err
	}
	if foreign {
		t = &Transparency{Links: []string{foreignLinks}}
	}
	return Plan{Rules: rules, Routes: routes, Transparency: t}, nil
}

// Set makes the kernel hold the plan for cfg: it adds what is missing, then removes pairlb's
// objects the plan no longer has, whoever left them (a crashed instance's too). It writes
// nothing when the kernel already matches, so calling it again changes nothing. The
// configuration is kept for Run to re-apply.
//
// The plan is applied unit by unit (see Unit): when some units cannot be installed, because
// the box's links cannot carry them now, the kernel refused one of their objects or lacks
// their address family, Set installs every other unit and returns a *PartialError naming the
// ones it could not. Run retries those when links or addresses change, and Problems lists
// them until they are installed; each is logged once when it appears and once when it
// clears. Any other error means nothing was changed: a configuration that no state of the
// links can make work (see BuildPlan), or a kernel state that could not be read.
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

// cleanup removes every object in pairlb's range, whoever left it, and leaves the Manager
// usable. (Set alone also removes stale objects in the range, after adding the new ones.)
func (m *Manager) cleanup() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.removeAll()
}

// Close removes everything pairlb made, and anything else in its range, and stops later Sets
// and re-applies.
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

// apply makes the kernel hold p by carrying out diff: every addition, then every removal, each
// call made whatever the others answered. A call the kernel refuses (a route's EINVAL or
// ENETUNREACH) is reported against its unit, and the other units are installed all the same;
// EEXIST, ENOENT and ESRCH say the kernel already holds what was asked and are no failure. It
// returns the problems of the units it could not install in full; err is for a kernel state
// it could not read at the start, when it wrote nothing.
//
// The removals are diff's again once the additions are made: against a fresh dump when
// something was added (a replace may change a route in place), and with what the additions
// learned (a table in which an add failed keeps its routes; an nftables table that could not
// be written keeps what its marking relies on).
func (m *Manager) apply(p Plan, links []Link) ([]Problem, error) {
	have, err := m.read(links)
	if err != nil {
		return nil, err
	}
	fails := unitErrors{}
	for _, fam := range []Family{IPv4, IPv6} {
		if err, ok := have.absent[fam]; ok {
			for _, u := range p.Units {
				if u.Family == fam {
					fails.add([]Unit{u}, fmt.Errorf("this kernel has no %s (booted with ipv6.disable=1?): %w", fam, err))
				}
			}
		}
	}
	if err := have.nftProblem(p); err != nil {
		fails.add(indexUnits(p).nft(), err)
	}
	if have.labelErr != nil {
		fails.add([]Unit{cleanupUnit(IPv4)}, have.labelErr)
	}
	for _, a := range p.Addrs {
		if have.hostAddrs[a.key()] {
			// Already there: left by an earlier pairlb (IPv6 addresses carry no mark a
			// restart could find) or added by hand. With ManageAddresses the VIP is
			// pairlb's either way, so it is removed when no longer wanted.
			m.owned[a.key()] = true
		}
	}

	wrote := false
	for _, c := range diff(p, have) {
		if !c.isAdd() {
			break
		}
		if err := m.write(c); err != nil {
			fails.add(c.units, err)
			switch c.op {
			case opAddRoute:
				have.failedTables[c.route.Table] = true
			case opSetNFT:
				have.nftErr = err
			}
			continue
		}
		wrote = wrote || c.op != opSetNFT
	}

	if wrote {
		rules, routes, _, err := m.dump(links)
		if err != nil {
			fails.add([]Unit{cleanupUnit("")}, fmt.Errorf("not removing what the plan no longer holds: %w", err))
			return fails.problems(), nil
		}
		have.rules, have.routes = rules, routes
	}
	for _, c := range diff(p, have) {
		if c.isAdd() {
			continue // made above, or failed and reported
		}
		if err := m.write(c); err != nil {
			fails.add(c.units, err)
		}
	}
	return fails.problems(), nil
}

// write makes one change. Its error names the change and the kernel's answer; an answer that
// says the kernel already holds the result is no error.
func (m *Manager) write(c change) error {
	switch c.op {
	case opAddAddr:
		a := c.addr
		err := m.k.AddrAdd(linkRef(a.Link, a.LinkName), toNetlinkAddr(a))
		switch {
		case err == nil:
			m.owned[a.key()] = true
			m.log.Info("added VIP address", "address", a.Prefix, "link", a.LinkName)
		case errors.Is(err, unix.EEXIST):
		default:
			return fmt.Errorf("adding address %s to %s: %w", a.Prefix, a.LinkName, err)
		}
	case opAddRoute:
		if err := m.k.RouteReplace(toNetlinkRoute(c.route)); err != nil {
			return fmt.Errorf("adding route %q: %w", c.route.Line(), err)
		}
		m.log.Info("added route", "route", c.route.Line())
	case opAddRule:
		err := m.k.RuleAdd(toNetlinkRule(c.rule))
		switch {
		case err == nil:
			m.log.Info("added rule", "rule", c.rule.Line())
		case errors.Is(err, unix.EEXIST):
		default:
			return fmt.Errorf("adding rule %q: %w", c.rule.Line(), err)
		}
	case opSetNFT:
		if err := m.k.nftWrite(c.nft, c.nftHad); err != nil {
			return err
		}
		if c.nft == nil {
			m.log.Info("removed nftables table", "table", "inet "+NFTable)
		} else {
			m.log.Info("installed nftables table", "table", "inet "+NFTable, "links", strings.Join(c.nft.Links, ","))
		}
	case opDelRule:
		err := m.k.RuleDel(toNetlinkRule(c.rule))
		switch {
		case err == nil:
			m.log.Info("removed rule", "rule", delLine(c.rule.Line()))
		case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ESRCH):
		default:
			return fmt.Errorf("removing rule %q: %w", delLine(c.rule.Line()), err)
		}
	case opDelRoute:
		err := m.k.RouteDel(toNetlinkRoute(c.route))
		switch {
		case err == nil:
			m.log.Info("removed route", "route", delLine(c.route.Line()))
		case errors.Is(err, unix.ESRCH), errors.Is(err, unix.ENOENT):
		default:
			return fmt.Errorf("removing route %q: %w", delLine(c.route.Line()), err)
		}
	case opDelAddr:
		a := c.addr
		err := m.k.AddrDel(linkRef(a.Link, a.LinkName), toNetlinkAddr(a))
		switch {
		case err == nil:
			m.log.Info("removed VIP address", "address", a.Prefix, "link", a.LinkName)
		case errors.Is(err, unix.EADDRNOTAVAIL), errors.Is(err, unix.ENODEV), errors.Is(err, unix.ENOENT):
		default:
			return fmt.Errorf("removing address %s from %s: %w", a.Prefix, a.LinkName, err)
		}
		delete(m.owned, a.key())
	}
	return nil
}

// unitErrors gathers what went wrong while applying a plan, per unit, so that one refused call
// is reported against the unit it belongs to and never stops the others.
type unitErrors struct {
	errs  map[UnitID][]error
	units map[UnitID]Unit
}

func (u *unitErrors) add(units []Unit, err error) {
	if u.errs == nil {
		u.errs, u.units = map[UnitID][]error{}, map[UnitID]Unit{}
	}
	for _, un := range units {
		u.units[un.UnitID] = un
		u.errs[un.UnitID] = append(u.errs[un.UnitID], err)
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
