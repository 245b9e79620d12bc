// Package routing owns every kernel object pairlb creates: the per-gateway routing tables, the
// "from VIP lookup TABLE" rules that make each virtual service's traffic leave through its own
// default gateway (the appliance's "Use Default Route Only"), the state that brings the replies
// of transparent services back to pairlb, and, when configured, the VIP addresses themselves.
//
// It works in steps. BuildPlan is a pure function from a *config.Config and a snapshot of the
// box's interfaces to a Plan: the rules, routes, addresses and nftables rules the kernel should
// hold. diff, pure too, compares a plan with what pairlb has installed and lists the changes,
// every addition before any removal; Diff renders them for `pairlb routes show`. A Manager
// carries them out over netlink (through the small kernel interface, which tests replace with
// a fake), idempotently, and keeps the kernel matching (Run) when links flap and the kernel
// silently empties a table.
//
// A plan is made of units (Unit): each gateway's table with the rules of its VIPs, each VIP
// address pairlb adds, and transparency per address family. What one unit's links cannot carry
// (a gateway whose link is down or has lost its address) is a Problem of that unit alone: the
// others are installed and repaired as usual, and the Manager retries the failing ones when
// links or addresses change. A unit with a problem keeps what needs no link (its rules and
// the `unreachable default`, so a VIP's replies never leak through the main table) and what the
// kernel still holds of it (see Plan.keepsRoute). The units of a family the kernel does not
// have (IPv6 on a kernel booted with ipv6.disable=1, whose IPv6 rules cannot even be listed)
// are problems too, and the other family is installed. Only what no state of the links can
// change (a VIP and its gateway of different families, say) fails the plan as a whole.
//
// Everything pairlb creates lives in one owned range, declared below and nowhere else: routing
// tables TransparentTable and TableFirst..TableLast, rule priorities TransparentPriority and
// PriorityFirst..PriorityLast (a rule's priority equals its table id), and every route and rule
// carries the protocol number Protocol. An object is pairlb's only when it is in the range AND
// carries the protocol; nothing else is ever changed or removed. The nftables table NFTable
// (family inet) is pairlb's as a whole. IPv4 VIP addresses pairlb adds carry the label
// "<ifname>:plb" (when the name leaves room for it) so a restart after a crash can find them;
// IPv6 addresses have no such mark, so a restarted pairlb adopts an IPv6 VIP it finds only when
// its configuration still wants it (one retired while pairlb was down stays until removed by
// hand).
//
// # Transparency
//
// A transparent virtual service (the Edge A/V service) connects to its real servers from the
// client's own address (package lb dials with IP_TRANSPARENT). The real servers route their
// replies, addressed to the client, through the box, which must deliver them locally to those
// sockets and nothing else. pairlb uses the socket-match form of docs/linux-notes.md:
//
//	table inet pairlb { chain prerouting { type filter hook prerouting priority mangle;
//	    iifname "IF" socket transparent 1 meta mark set meta mark & 0xffffff00 | 0x70 } }
//	ip rule add fwmark 0x70/0xff lookup 20099 priority 20099 protocol 112
//	ip route add local default dev lo proto 112 metric 1024 table 20099   (and the same for -6)
//
// Only packets that belong to one of pairlb's own transparent sockets are marked, so everything
// else the real servers send through the box (DNS, directory, pings, direct access to the real
// server's service port) is forwarded as before. The alternatives are worse: a rule `from
// REAL_SUBNET iif IF lookup T` black-holes all of the real servers' other traffic through the
// box, and narrowing it to the service's source ports still breaks direct access to that port.
// The rules match only on the interfaces that face the transparent services' real servers, and
// use one byte of the packet mark (Mark/MarkMask), leaving the others to whoever uses them. The
// state exists only while some service is transparent.
//
// Transparency works only for real servers of the VIP's address family (BuildPlan refuses the
// others), on a subnet the box is directly connected to (they must be able to use the box as
// their gateway) and not where clients reach them directly; the last two depend on the box's
// addresses, so they are problems of the transparency unit (see planTransparency).
//
// IPv6 VIPs pairlb adds are deprecated (preferred_lft 0): IPv6 source selection would otherwise
// pick a /128 VIP that shares more leading bits with a real server than the box's own /64
// address as the source of connections the box opens, which then follow the VIP's rule. IPv4
// never picks a /32 VIP (the connected route's preferred source is the box's primary address).
// Sources gives the box's own address on a real server's subnet (subnet_originating).
//
// Operational notes (see docs/linux-notes.md): each box needs its own permanent address in every
// gateway's subnet; IPv6 needs net.ipv6.conf.IF.keep_addr_on_down=1 or a link flap takes that
// address, and with it the table, away until it is configured again. Transparent services need
// the box to forward the real servers' other traffic (net.ipv4.ip_forward=1,
// net.ipv6.conf.all.forwarding=1), and the real servers' default gateway must be the box. In a
// one-arm setup (real servers on the VIP's subnet, clients beyond its gateway) the box forwards
// their other traffic back out of the interface it came in on and so sends ICMP redirects that
// teach a real server to reach a client directly: set net.ipv4.conf.{all,IF}.send_redirects=0.
//
// It is not the balancer: listeners, source-address selection for connections to real servers
// and the transparent sockets themselves belong to package lb; keepalived owns VIPs unless
// Global.ManageAddresses is set. It uses only netlink (rtnetlink and nftables), never iproute2
// or nft.
package routing

import "github.com/vishvananda/netlink"

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

	// TransparentTable is the table that delivers the marked replies of transparent services
	// locally (`local default dev lo`); TransparentPriority is the priority of its rule
	// `fwmark Mark/MarkMask lookup TransparentTable`, just ahead of the per-gateway rules.
	TransparentTable    = TableFirst - 1
	TransparentPriority = TransparentTable

	// Mark and MarkMask are the packet mark that nftables sets on replies to pairlb's
	// transparent sockets and that the rule matches: 0x70 in the lowest byte, the other bits
	// untouched (other software uses them: kube-proxy 0x4000/0x8000, Calico 0xffff0000,
	// Tailscale 0xff0000, Cilium 0xf00).
	Mark     = 0x70
	MarkMask = 0xff

	// NFTable is the nftables table (family inet) pairlb owns as a whole, and NFChain its one
	// chain, hooked at prerouting with the mangle priority.
	NFTable = "pairlb"
	NFChain = "prerouting"

	// addrLabelSuffix marks IPv4 VIP addresses pairlb adds ("eth1:plb").
	addrLabelSuffix = ":plb"
)

// TableCount is how many gateways the range can hold.
const TableCount = TableLast - TableFirst + 1

// ownsTable reports whether a routing table id is in pairlb's range.
func ownsTable(id int) bool {
	return id == TransparentTable || id >= TableFirst && id <= TableLast
}

// ownsRule reports whether a rule dumped from the kernel is pairlb's.
func ownsRule(r *netlink.Rule) bool {
	inRange := r.Priority == TransparentPriority || r.Priority >= PriorityFirst && r.Priority <= PriorityLast
	return r.Protocol == Protocol && inRange && ownsTable(r.Table)
}

// ownsRoute reports whether a route dumped from the kernel is pairlb's.
func ownsRoute(r *netlink.Route) bool {
	return r.Protocol == Protocol && ownsTable(r.Table)
}
