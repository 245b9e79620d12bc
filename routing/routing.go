// Package routing owns every kernel object pairlb creates: the per-gateway routing tables, the
// "from VIP lookup TABLE" rules that make each virtual service's traffic leave through its own
// default gateway (the appliance's "Use Default Route Only"), and, when configured, the VIP
// addresses themselves.
//
// It works in two steps. BuildPlan is a pure function from a *config.Config and a snapshot of the
// box's interfaces to a Plan: the rules, routes and addresses the kernel should hold. A Manager
// then makes the kernel match a plan over netlink, idempotently, adding before it deletes, and
// keeps it matching (Run) when links flap and the kernel silently empties a table.
//
// Everything pairlb creates lives in one owned range, declared below and nowhere else: routing
// tables TableFirst..TableLast, rule priorities PriorityFirst..PriorityLast (a rule's priority
// equals its table id), and every route and rule carries the protocol number Protocol. An object
// is pairlb's only when it is in the range AND carries the protocol; nothing else is ever changed
// or removed. IPv4 VIP addresses pairlb adds carry the label "<ifname>:plb" (when the name leaves
// room for it) so a restart after a crash can find them; IPv6 addresses have no such mark, so a
// restarted pairlb adopts an IPv6 VIP it finds only when its configuration still wants it (one
// retired while pairlb was down stays until removed by hand).
//
// Operational notes (see linux-notes.md): each box needs its own permanent address in every
// gateway's subnet; IPv6 needs net.ipv6.conf.IF.keep_addr_on_down=1 or a link flap takes that
// address, and with it the table, away until it is configured again.
//
// It is not the balancer: listeners, source-address selection for connections to real servers
// and transparency belong to package lb; keepalived owns VIPs unless Global.ManageAddresses is
// set. It uses only netlink, never iproute2.
package routing

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
)

// The owned range. Table ids 253-255 (default, main, local) and the rule priorities 0 (local),
// 32766 (main) and 32767 (default) are far outside it.
const (
	// TableFirst and TableLast bound the routing table ids pairlb uses, one per distinct default
	// gateway, assigned in gateway order (IPv4 before IPv6, then numerically).
	TableFirst = 20100
	TableLast  = 20199

	// PriorityFirst and PriorityLast bound the rule priorities pairlb uses. Every rule's
	// priority is the id of the table it points to, so `ip rule` reads "20100: from VIP lookup
	// 20100". The band sits below main (32766) and above the local table's rule (0).
	PriorityFirst = TableFirst
	PriorityLast  = TableLast

	// Protocol is the route and rule protocol number (rtm_protocol / FRA_PROTOCOL) that marks
	// pairlb's objects: 112 (0x70, "p"). It is absent from iproute2's rt_protos and the
	// kernel's RTPROT_* list, and avoids numbers other daemons are known to use (18
	// keepalived, 80 Calico, 99 openr, 186-192 routing daemons). `ip route show proto 112`
	// and `ip rule show protocol 112` list exactly pairlb's objects.
	Protocol = 112

	// RouteMetric is the metric of the default and connected routes in pairlb's tables. It is
	// explicit because the kernel rewrites an IPv6 metric of 0 to 1024, which would make every
	// comparison with the plan fail.
	RouteMetric = 1024

	// UnreachableMetric is the metric of the `unreachable default` route that, with
	// Global.UseDefaultRouteOnly, keeps the table strict while the gateway's link is down:
	// "no route to host" instead of falling through to main.
	UnreachableMetric = 4294967295

	// addrLabelSuffix marks IPv4 VIP addresses pairlb adds ("eth1:plb").
	addrLabelSuffix = ":plb"
)

// TableCount is how many gateways the range can hold.
const TableCount = TableLast - TableFirst + 1

// ownsRule reports whether a rule dumped from the kernel is pairlb's.
func ownsRule(r *netlink.Rule) bool {
	return r.Protocol == Protocol &&
		r.Priority >= PriorityFirst && r.Priority <= PriorityLast &&
		r.Table >= TableFirst && r.Table <= TableLast
}

// ownsRoute reports whether a route dumped from the kernel is pairlb's.
func ownsRoute(r *netlink.Route) bool {
	return r.Protocol == Protocol && r.Table >= TableFirst && r.Table <= TableLast
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
