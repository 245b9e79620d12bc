package config

import (
	"cmp"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// The pair: two boxes carrying the same file, with keepalived moving the VIPs between them over
// VRRP. pairlb itself never adds or removes a VIP when a pair is configured; it binds its
// listeners with IP_FREEBIND and serves whatever arrives. This file reads the `pair:` section and
// checks it against the services; keepalived.go renders each node's keepalived.conf from it.

// Limits and defaults of the pair section. VRRPv2 advertises in whole seconds (1-255), VRRPv3 in
// centiseconds (up to 40.95 s); keepalived caps preempt_delay at 1000 s.
const (
	DefaultAdvertInterval = time.Second
	DefaultVRRPVersion    = 2
	minAdvertV3           = 10 * time.Millisecond
	maxAdvertV3           = 4095 * 10 * time.Millisecond
	maxAdvertV2           = 255 * time.Second
	maxPreemptDelay       = 1000 * time.Second
	// PairNodes is how many nodes a pair has.
	PairNodes = 2
	// maxPairNetworks is how many VRRP instances the virtual router ids allow.
	maxPairNetworks = 255
)

var (
	pairKeys        = []string{"networks", "nodes", "vrrp_version", "advert_interval", "preempt", "preempt_delay", "auth_secret_file"}
	pairNetworkKeys = []string{"name", "interface", "prefix", "vrid"}
	pairNodeKeys    = []string{"name", "priority", "addresses", "admin"}
	// validInterface is what Linux accepts as an interface name (IFNAMSIZ-1, no '/', ':' or space).
	validInterface = regexp.MustCompile(`^[A-Za-z0-9._@-]{1,15}$`)
)

// Pair is the `pair:` section: the two nodes and the networks whose VIPs move between them.
type Pair struct {
	Networks       []PairNetwork
	Nodes          []PairNode // exactly PairNodes, in the order of the file
	VRRPVersion    int        // 2 or 3
	AdvertInterval time.Duration
	// Preempt lets the higher priority node take the VIPs back when it returns. Off by default:
	// userspace proxies share no connection state, so every failback cuts the open connections.
	Preempt      bool
	PreemptDelay time.Duration // with Preempt: how long a returning node waits before taking over
	// AuthSecretFile holds the VRRPv2 PASS authentication secret (1-8 characters); empty: none.
	AuthSecretFile string
	// AuthSecret is the secret read from AuthSecretFile by Load ("" after Parse, which reads
	// no file).
	AuthSecret string
}

// PairNetwork is one network the pair serves VIPs on: one VRRP instance.
type PairNetwork struct {
	Name      string
	Interface string
	Prefix    netip.Prefix
	VRID      int // virtual router id, 1-255
}

// PairNode is one of the two boxes.
type PairNode struct {
	Name     string
	Priority int // 1-254; the higher one is master when both start
	// Addresses is the node's own address in every network of the pair, by network name. VRRP
	// advertisements go between these (unicast).
	Addresses map[string]netip.Addr
	// Admin is where the other node reaches this node's admin API (`pairlb pair check`, the
	// peer watcher); invalid when not given. The node's admin server listens there as well as on
	// global.admin, which is shared by both nodes and stays local (127.0.0.1) by default.
	Admin netip.AddrPort
}

// Node returns the node of that name, or nil.
func (p *Pair) Node(name string) *PairNode {
	for i := range p.Nodes {
		if p.Nodes[i].Name == name {
			return &p.Nodes[i]
		}
	}
	return nil
}

// Peer returns the node that is not name, or nil when name is not a node of the pair.
func (p *Pair) Peer(name string) *PairNode {
	if p.Node(name) == nil {
		return nil
	}
	for i := range p.Nodes {
		if p.Nodes[i].Name != name {
			return &p.Nodes[i]
		}
	}
	return nil
}

// NodeNames lists the nodes' names in the order of the file.
func (p *Pair) NodeNames() []string {
	names := make([]string, len(p.Nodes))
	for i, n := range p.Nodes {
		names[i] = n.Name
	}
	return names
}

// NodeOwning returns the node one of whose own addresses is in local (the addresses of the box
// it runs on), or nil when none or both match.
func (p *Pair) NodeOwning(local []netip.Addr) *PairNode {
	var found *PairNode
	for i := range p.Nodes {
		for _, a := range p.Nodes[i].Addresses {
			if slices.Contains(local, a) {
				if found != nil && found != &p.Nodes[i] {
					return nil
				}
				found = &p.Nodes[i]
			}
		}
	}
	return found
}

// Network returns the pair network whose prefix holds a, or nil.
func (p *Pair) Network(a netip.Addr) *PairNetwork {
	for i := range p.Networks {
		if p.Networks[i].Prefix.Contains(a) {
			return &p.Networks[i]
		}
	}
	return nil
}

// pair reads the pair section at n and checks it against the services already read: every VIP
// must sit in one of its networks, and no node address may be a VIP or a gateway.
func (p *parser) pair(n *yaml.Node, top fields, cfg *Config, where []placed) *Pair {
	f, ok := p.mapping(n, "pair", pairKeys...)
	if !ok {
		return nil
	}
	pr := &Pair{
		VRRPVersion: p.integer(f, "vrrp_version", DefaultVRRPVersion, 2, 3),
		Preempt:     p.boolean(f, "preempt", false),
	}
	pr.AdvertInterval = p.advertInterval(f, pr.VRRPVersion)
	pr.PreemptDelay = p.duration(f, "preempt_delay", 0, 0, maxPreemptDelay)
	if n := f.vals["preempt_delay"]; n != nil && !pr.Preempt {
		p.bad(n, f.at("preempt_delay"), "only with preempt: true")
	} else if n != nil && pr.PreemptDelay%time.Millisecond != 0 {
		// keepalived reads at most six decimals and refuses the whole file otherwise.
		p.bad(n, f.at("preempt_delay"), "want whole milliseconds, like 1500ms")
		pr.PreemptDelay = 0
	}
	if n := p.scalar(f, "auth_secret_file"); n != nil && pr.VRRPVersion == 3 {
		p.bad(n, f.at("auth_secret_file"), "VRRPv3 has no authentication: drop it or use vrrp_version: 2")
	} else if n != nil {
		pr.AuthSecretFile = n.Value
		p.namedFile(n, f.at("auth_secret_file"))
		if p.files {
			secret, mode, err := readVRRPSecret(n.Value)
			if err != nil {
				p.bad(n, f.at("auth_secret_file"), "%v", err)
			} else {
				pr.AuthSecret = secret
				p.secretMode(n, f.at("auth_secret_file"), mode)
			}
		}
	}
	seen := p.pairNetworks(f, pr)
	p.pairNodes(f, pr, cfg, seen.names)

	// keepalived owns the VIPs of a pair: pairlb adding them too would hold them on both boxes.
	if cfg.Global.ManageAddresses {
		if g := top.vals["global"]; g != nil {
			if mn := valueOf(g, "manage_addresses"); mn != nil {
				p.bad(mn, "global.manage_addresses", "must be false with a pair: keepalived moves the VIPs")
			}
		}
	}
	// Every VIP moves with one of the pair's VRRP instances. Networks reported for another
	// field still count here; when a prefix itself is missing or invalid a VIP may belong to it.
	if seen.allPrefixes {
		all := &Pair{Networks: seen.prefixes}
		for i := range cfg.VirtualServices {
			vs, at := &cfg.VirtualServices[i], where[i]
			if at.vip == nil {
				continue
			}
			nw := all.Network(vs.VIP)
			switch {
			case nw == nil:
				p.bad(at.vip, index("virtual_services", i)+".vip", "not in any network of the pair (%s): no VRRP instance would carry it", all.networkList())
			case nw.Prefix.Addr().Is4() && nw.Prefix.Bits() < 31 && (vs.VIP == nw.Prefix.Masked().Addr() || vs.VIP == lastOf(nw.Prefix)):
				p.bad(at.vip, index("virtual_services", i)+".vip", "the network or broadcast address of %s (%s): hosts cannot reach a VIP there", cmp.Or(nw.Name, "?"), nw.Prefix)
			}
		}
	}
	return pr
}

// lastOf is the highest address of an IPv4 prefix: its broadcast address.
func lastOf(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := 32 - p.Bits()
	for i := 3; i >= 0 && host > 0; i-- {
		n := min(host, 8)
		b[i] |= byte(1<<n - 1)
		host -= n
	}
	return netip.AddrFrom4(b)
}

func (pr *Pair) networkList() string {
	var s []string
	for _, n := range pr.Networks {
		s = append(s, cmp.Or(n.Name, "?")+" "+n.Prefix.String())
	}
	return strings.Join(s, ", ")
}

// networksSeen is what was written in pair.networks, valid or not: the names that node
// addresses may use, and the prefixes that VIPs are checked against.
type networksSeen struct {
	names       []string
	prefixes    []PairNetwork // name (when valid) and prefix of each entry whose prefix is valid
	allPrefixes bool          // every entry has a valid prefix
}

// valueOf is the value node of key in mapping m, nil when absent.
func valueOf(m *yaml.Node, key string) *yaml.Node {
	m = deref(m)
	if m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if deref(m.Content[i]).Value == key {
			return deref(m.Content[i+1])
		}
	}
	return nil
}

// advertInterval is VRRP's advertisement interval: whole seconds for VRRPv2, centiseconds for v3.
func (p *parser) advertInterval(f fields, version int) time.Duration {
	n := p.scalar(f, "advert_interval")
	if n == nil {
		return DefaultAdvertInterval
	}
	d, ok := p.parseDuration(n, f.at("advert_interval"))
	if !ok {
		return DefaultAdvertInterval
	}
	switch {
	case version == 2 && (d%time.Second != 0 || d < time.Second || d > maxAdvertV2):
		p.bad(n, f.at("advert_interval"), "VRRPv2 advertises in whole seconds 1s-%s; sub-second intervals need vrrp_version: 3", seconds(maxAdvertV2))
	case version == 3 && (d%minAdvertV3 != 0 || d < minAdvertV3 || d > maxAdvertV3):
		p.bad(n, f.at("advert_interval"), "VRRPv3 advertises in hundredths of a second: want a multiple of 10ms, 10ms-%s", maxAdvertV3)
	default:
		return d
	}
	return DefaultAdvertInterval
}

// pairNetworks reads the networks into pr, keeping only the valid ones.
func (p *parser) pairNetworks(f fields, pr *Pair) networksSeen {
	items := p.list(f, "networks")
	if n := f.vals["networks"]; n == nil || (n.Kind == yaml.SequenceNode && len(items) == 0) {
		p.fail(cmp.Or(n, f.node), f.at("networks"), "", "at least one network is required, like {name: internal, interface: eth1, prefix: 10.11.0.0/16, vrid: 51}")
	}
	if len(items) > maxPairNetworks {
		p.fail(f.vals["networks"], f.at("networks"), "", "%d networks, at most %d (one VRRP virtual router id each)", len(items), maxPairNetworks)
		items = items[:maxPairNetworks]
	}
	names := map[string]int{}
	vrids := map[int]int{}
	seen := networksSeen{allPrefixes: len(items) > 0}
	for i, item := range items {
		path := index(f.at("networks"), i)
		nf, ok := p.mapping(item, path, pairNetworkKeys...)
		if !ok {
			seen.allPrefixes = false
			continue
		}
		var nw PairNetwork
		valid := true
		if n := p.required(nf, "name"); n == nil {
			valid = false
		} else if !validName.MatchString(n.Value) {
			p.bad(n, nf.at("name"), "want 1-63 letters, digits, '.', '_' or '-'")
			valid = false
		} else if line := names[n.Value]; line != 0 {
			p.bad(n, nf.at("name"), "duplicate network name, first at line %d", line)
			valid = false
		} else {
			names[n.Value] = n.Line
			nw.Name = n.Value
			seen.names = append(seen.names, n.Value)
		}
		if n := p.required(nf, "interface"); n == nil {
			valid = false
		} else if !validInterface.MatchString(n.Value) {
			p.bad(n, nf.at("interface"), "want an interface name of 1-15 letters, digits, '.', '_', '@' or '-'")
			valid = false
		} else {
			nw.Interface = n.Value
		}
		if pf, ok := p.networkPrefix(nf, pr.VRRPVersion, &seen); ok {
			nw.Prefix = pf
		} else {
			valid = false
		}
		if !nf.has("vrid") {
			p.fail(nf.node, nf.at("vrid"), "", "required: the VRRP virtual router id, 1-255")
			valid = false
		} else if id := p.integer(nf, "vrid", 0, 1, 255); id == 0 {
			valid = false
		} else if line := vrids[id]; line != 0 {
			p.bad(nf.vals["vrid"], nf.at("vrid"), "virtual router id used twice, first at line %d", line)
			valid = false
		} else {
			vrids[id] = nf.vals["vrid"].Line
			nw.VRID = id
		}
		if valid {
			pr.Networks = append(pr.Networks, nw)
		}
	}
	return seen
}

// networkPrefix reads a network's prefix, checking it against the prefixes seen before it.
func (p *parser) networkPrefix(nf fields, version int, seen *networksSeen) (netip.Prefix, bool) {
	n := p.required(nf, "prefix")
	if n == nil {
		seen.allPrefixes = false
		return netip.Prefix{}, false
	}
	pf, err := parsePrefix(n.Value)
	if err == nil && !strings.Contains(n.Value, "/") {
		err = fmt.Errorf("want a network with its length, like %s/24", n.Value)
	}
	if err != nil {
		p.bad(n, nf.at("prefix"), "%v", err)
		seen.allPrefixes = false
		return netip.Prefix{}, false
	}
	name := ""
	if nn := nf.vals["name"]; nn != nil && nn.Kind == yaml.ScalarNode {
		name = nn.Value
	}
	for _, other := range seen.prefixes {
		if other.Prefix.Overlaps(pf) {
			p.bad(n, nf.at("prefix"), "overlaps network %s (%s): a VIP must belong to one network", cmp.Or(other.Name, "?"), other.Prefix)
			return netip.Prefix{}, false
		}
	}
	seen.prefixes = append(seen.prefixes, PairNetwork{Name: name, Prefix: pf})
	if pf.Addr().Is6() && version != 3 {
		p.bad(n, nf.at("prefix"), "an IPv6 network needs vrrp_version: 3")
		return netip.Prefix{}, false
	}
	return pf, true
}

// pairNodes reads the nodes; netNames are the names of every network written, valid or not.
func (p *parser) pairNodes(f fields, pr *Pair, cfg *Config, netNames []string) {
	items := p.list(f, "nodes")
	if n := f.vals["nodes"]; n == nil || (n.Kind == yaml.SequenceNode && len(items) != PairNodes) {
		p.fail(cmp.Or(n, f.node), f.at("nodes"), "", "want exactly %d nodes, got %d", PairNodes, len(items))
	}
	names := map[string]int{}
	priorities := map[int]int{}
	owners := map[netip.Addr]spot{} // a node address to where it was first given
	used := usedAddrs(cfg)
	var adminOf []spot // per node appended, where its admin address was given
	for i, item := range items {
		path := index(f.at("nodes"), i)
		nf, ok := p.mapping(item, path, pairNodeKeys...)
		if !ok {
			continue
		}
		node := PairNode{Addresses: map[string]netip.Addr{}}
		if n := p.required(nf, "name"); n != nil {
			switch {
			case !validName.MatchString(n.Value):
				p.bad(n, nf.at("name"), "want 1-63 letters, digits, '.', '_' or '-'")
			case names[n.Value] != 0:
				p.bad(n, nf.at("name"), "duplicate node name, first at line %d", names[n.Value])
			default:
				names[n.Value] = n.Line
				node.Name = n.Value
			}
		}
		if !nf.has("priority") {
			p.fail(nf.node, nf.at("priority"), "", "required: the VRRP priority, 1-254 (the higher one starts as master)")
		} else if prio := p.integer(nf, "priority", 0, 1, 254); prio != 0 {
			if line := priorities[prio]; line != 0 {
				p.bad(nf.vals["priority"], nf.at("priority"), "same priority as the other node (line %d): give the preferred master the higher one", line)
			} else {
				priorities[prio] = nf.vals["priority"].Line
				node.Priority = prio
			}
		}
		p.nodeAddresses(nf, pr, netNames, &node, owners, used)
		var at spot
		if n := p.scalar(nf, "admin"); n != nil {
			ap, err := parseListen(n.Value)
			switch {
			case err != nil:
				p.bad(n, nf.at("admin"), "%v", err)
			case ap.Addr().IsUnspecified():
				p.bad(n, nf.at("admin"), "want the address the other node reaches this one's admin API at")
			case used[ap.Addr()] != "":
				p.bad(n, nf.at("admin"), "is %s", used[ap.Addr()])
			default:
				node.Admin, at = ap, spot{n, nf.at("admin")}
			}
		}
		pr.Nodes = append(pr.Nodes, node)
		adminOf = append(adminOf, at)
	}
	// Each node's admin address must reach that node: the peer checker and watcher ask the
	// other node there, and with one address for both they would ask a node about itself.
	// Beyond PairNodes nodes (already an error) the comparison would grow with their square.
	nodes := pr.Nodes[:min(len(pr.Nodes), PairNodes)]
	for i := range nodes {
		node, at := &nodes[i], adminOf[i]
		if at.node == nil {
			continue
		}
		for j := range i {
			if other := &nodes[j]; adminOf[j].node != nil && other.Admin == node.Admin {
				p.bad(at.node, at.path, "the same admin address as node %s (line %d): each node's API must be reached at that node's own address", cmp.Or(other.Name, "?"), adminOf[j].node.Line)
			}
		}
		for j := range nodes {
			other := &nodes[j]
			if j == i {
				continue
			}
			for nw, a := range other.Addresses {
				if a == node.Admin.Addr() {
					p.bad(at.node, at.path, "%s is node %s's own address in network %s: the admin address of %s must reach %s", a, cmp.Or(other.Name, "?"), nw, cmp.Or(node.Name, "?"), cmp.Or(node.Name, "?"))
				}
			}
		}
	}
}

// usedAddrs maps each VIP and gateway to what a service uses it as: a node address that is a VIP
// or a gateway would be answered for by the wrong box. The first service using an address names
// it, its VIP before its gateway.
func usedAddrs(cfg *Config) map[netip.Addr]string {
	used := map[netip.Addr]string{}
	for i := len(cfg.VirtualServices) - 1; i >= 0; i-- {
		vs := &cfg.VirtualServices[i]
		if vs.DefaultGateway.IsValid() {
			used[vs.DefaultGateway] = "the default gateway of " + vs.Name
		}
		if vs.VIP.IsValid() {
			used[vs.VIP] = "the VIP of " + vs.Name + ": keepalived moves VIPs, a node address stays with its node"
		}
	}
	return used
}

// nodeAddresses reads a node's own address in every network of the pair.
func (p *parser) nodeAddresses(nf fields, pr *Pair, netNames []string, node *PairNode, owners map[netip.Addr]spot, used map[netip.Addr]string) {
	if len(pr.Networks) == 0 {
		return // the networks are missing or invalid, and reported: addresses cannot be checked
	}
	if !nf.has("addresses") {
		p.fail(nf.node, nf.at("addresses"), "", "required: the node's own address in each network (%s)", strings.Join(netNames, ", "))
		return
	}
	af, ok := p.mapping(nf.vals["addresses"], nf.at("addresses"), netNames...)
	if !ok {
		return
	}
	for _, nw := range pr.Networks {
		n := p.scalar(af, nw.Name)
		if n == nil {
			if !af.has(nw.Name) {
				p.fail(af.node, af.at(nw.Name), "", "required: the node's own address in network %s (%s)", nw.Name, nw.Prefix)
			}
			continue
		}
		a, err := parseAddr(n.Value)
		path := af.at(nw.Name)
		switch {
		case err != nil:
			p.bad(n, path, "%v", err)
		case !nw.Prefix.Contains(a):
			p.bad(n, path, "outside network %s (%s)", nw.Name, nw.Prefix)
		case a == nw.Prefix.Masked().Addr() && nw.Prefix.Bits() < a.BitLen()-1:
			p.bad(n, path, "the network address of %s", nw.Prefix)
		case owners[a].node != nil:
			p.bad(n, path, "already given at %s (line %d): each node needs an address of its own", owners[a].path, owners[a].node.Line)
		case used[a] != "":
			p.bad(n, path, "is %s", used[a])
		default:
			owners[a] = spot{n, path}
			node.Addresses[nw.Name] = a
		}
	}
}
