// Package pair is what makes two pairlb boxes one appliance pair: keepalived.conf rendered from
// the pairlb file (VRRP moves the VIPs; pairlb's track and notify scripts tie keepalived to
// pairlb's readiness), which node of the pair this box is, and the comparison of the two
// nodes: `pairlb pair check` once, the Watcher continuously for the pairlb_pair_peer_* metrics.
// The cluster's BIRD rendering belongs beside keepalived's.
//
// It reads the configuration (config) and asks the nodes through the admin API's one client and
// status types (admin); it changes nothing on the box: keepalived and the daemon do.
package pair

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/pairlb/pairlb/config"
)

// LocalNode is the node named, or when name is empty the node that owns one of this box's
// addresses.
func LocalNode(cfg *config.Config, name string) (string, error) {
	if cfg.Pair == nil {
		return "", fmt.Errorf("%s has no pair section", cfg.Path)
	}
	if name != "" {
		if cfg.Pair.Node(name) == nil {
			return "", fmt.Errorf("no node %q in the pair of %s (want one of %s)", name, cfg.Path, strings.Join(cfg.Pair.NodeNames(), ", "))
		}
		return name, nil
	}
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", fmt.Errorf("listing this box's addresses: %w", err)
	}
	var local []netip.Addr
	for _, a := range ifaddrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			local = append(local, p.Addr())
		}
	}
	if n := cfg.Pair.NodeOwning(local); n != nil {
		return n.Name, nil
	}
	return "", fmt.Errorf("this box holds no address of exactly one pair node (%s): name it with --node", strings.Join(cfg.Pair.NodeNames(), ", "))
}

// AdminAddr is where the peer reaches this box's admin API (its node's pair.nodes[].admin); it
// is invalid when cfg has no pair, this box is no node of it, or the node gives no address.
func AdminAddr(cfg *config.Config) netip.AddrPort {
	if cfg == nil || cfg.Pair == nil {
		return netip.AddrPort{}
	}
	name, err := LocalNode(cfg, "")
	if err != nil {
		return netip.AddrPort{}
	}
	return cfg.Pair.Node(name).Admin
}
