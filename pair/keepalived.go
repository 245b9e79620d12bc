package pair

import (
	"bytes"
	"fmt"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pairlb/pairlb/admin"
	"github.com/pairlb/pairlb/config"
)

// DefaultBinary is where keepalived finds pairlb for its track and notify scripts unless the
// renderer is told otherwise. It must be owned by root and writable only by root: keepalived
// runs the scripts as root with enable_script_security and refuses any other.
const DefaultBinary = "/usr/local/bin/pairlb"

// maxAdvertisedVIPs is how many addresses one VRRP advertisement carries; keepalived manages
// further ones without advertising them (virtual_ipaddress_excluded).
const maxAdvertisedVIPs = 20

// KeepalivedOptions are the facts about the box that the file does not hold.
type KeepalivedOptions struct {
	// Binary is the absolute path of pairlb on the node; DefaultBinary when empty.
	Binary string
}

// RenderKeepalived renders keepalived.conf for one node of cfg's pair: one VRRP instance per
// network carrying that network's VIPs, all in one sync group, unicast between the nodes' own
// addresses, both nodes starting as BACKUP, a track script that fails while pairlb on the node
// is not ready (`pairlb keepalived check`) and a notify script (`pairlb keepalived notify`) that
// logs every transition and, on MASTER, has pairlb re-apply its running configuration.
func RenderKeepalived(cfg *config.Config, node string, opt KeepalivedOptions) ([]byte, error) {
	pr := cfg.Pair
	if pr == nil {
		return nil, fmt.Errorf("%s: no pair section: keepalived is only for a pair", cfg.Path)
	}
	self, peer := pr.Node(node), pr.Peer(node)
	if self == nil || peer == nil {
		return nil, fmt.Errorf("%s: no node %q in the pair (want one of %s)", cfg.Path, node, strings.Join(pr.NodeNames(), ", "))
	}
	bin := opt.Binary
	if bin == "" {
		bin = DefaultBinary
	}
	if !filepath.IsAbs(bin) || strings.ContainsAny(bin, " \t\"'\\") {
		return nil, fmt.Errorf("pairlb binary %q: want an absolute path without spaces or quotes", bin)
	}
	// The secret was read, with its checks, by config.Load: the file is read once, by the code
	// validate runs too.
	secret := pr.AuthSecret
	if pr.AuthSecretFile != "" && secret == "" {
		return nil, fmt.Errorf("%s: pair.auth_secret_file %s was not read: load the configuration with config.Load", cfg.Path, pr.AuthSecretFile)
	}

	// The scripts run on the node itself: they reach pairlb as every local client does.
	helper := fmt.Sprintf("%s keepalived %%s -admin %s", bin, admin.DialAddr(cfg.Global.Admin))
	if cfg.Global.AdminTokenFile != "" {
		if strings.ContainsAny(cfg.Global.AdminTokenFile, " \t\"'\\") {
			return nil, fmt.Errorf("global.admin_token_file %q: keepalived cannot pass a path with spaces or quotes", cfg.Global.AdminTokenFile)
		}
		helper += " -token-file " + cfg.Global.AdminTokenFile
	}

	w := &confWriter{}
	w.line("# keepalived.conf for node %s of the pairlb pair, rendered from %s", node, cfg.Path)
	w.line("# sha256 %s", cfg.Hash)
	w.line("# Do not edit: change the pairlb file and render again with")
	w.line("#   pairlb keepalived -c %s --node %s", cfg.Path, node)
	if secret != "" {
		w.line("# It holds the VRRP secret: keep it mode 0600.")
	}
	w.line("")
	w.open("global_defs")
	w.line("router_id pairlb-%s", node)
	// The scripts are pairlb itself, owned by root; script security makes keepalived check that.
	w.line("script_user root")
	w.line("enable_script_security")
	if pr.VRRPVersion != 2 {
		w.line("vrrp_version %d", pr.VRRPVersion)
	}
	w.close()
	w.line("")
	w.line("# Fails while pairlb on this node is not ready (configuration loaded, listeners up): the")
	w.line("# node then goes to FAULT and the peer takes the VIPs.")
	w.open("vrrp_script pairlb_ready")
	w.line("script %q", fmt.Sprintf(helper, "check"))
	w.line("interval 1")
	w.line("timeout 2")
	w.line("fall 2")
	w.line("rise 2")
	w.close()

	notify := fmt.Sprintf("notify %q", fmt.Sprintf(helper, "notify"))
	// Only the networks that carry a VIP get an instance; keepalived refuses an empty one.
	vips := map[string][]netip.Addr{}
	var used []config.PairNetwork
	for _, nw := range pr.Networks {
		for _, vs := range cfg.VirtualServices {
			if nw.Prefix.Contains(vs.VIP) && !containsAddr(vips[nw.Name], vs.VIP) {
				vips[nw.Name] = append(vips[nw.Name], vs.VIP)
			}
		}
		if len(vips[nw.Name]) > 0 {
			used = append(used, nw)
		}
	}
	if len(used) == 0 {
		return nil, fmt.Errorf("%s: no VIP in any network of the pair", cfg.Path)
	}
	// One sync group moves every network together: a box that is master on the internal side
	// and backup on the external one would receive requests it cannot answer. keepalived drops
	// a group of one instance, so a single network notifies from its instance instead.
	if len(used) > 1 {
		w.line("")
		w.open("vrrp_sync_group pairlb")
		w.open("group")
		for _, nw := range used {
			w.line("%s", nw.Name)
		}
		w.close()
		w.line("%s", notify)
		w.close()
	}
	for _, nw := range used {
		w.line("")
		w.open("vrrp_instance " + nw.Name)
		// Both start as BACKUP and the priorities elect the master: a node that starts as
		// MASTER would take the VIPs from a running peer even with nopreempt.
		w.line("state BACKUP")
		w.line("interface %s", nw.Interface)
		w.line("virtual_router_id %d", nw.VRID)
		w.line("priority %d", self.Priority)
		w.line("advert_int %s", secondsDecimal(pr.AdvertInterval))
		if pr.Preempt {
			if pr.PreemptDelay > 0 {
				w.line("preempt_delay %s", secondsDecimal(pr.PreemptDelay))
			}
		} else {
			w.line("nopreempt")
		}
		w.line("unicast_src_ip %s", self.Addresses[nw.Name])
		w.open("unicast_peer")
		w.line("%s", peer.Addresses[nw.Name])
		w.close()
		if secret != "" {
			w.open("authentication")
			w.line("auth_type PASS")
			w.line("auth_pass %s", secret)
			w.close()
		}
		addrs := vips[nw.Name]
		w.open("virtual_ipaddress")
		for _, a := range addrs[:min(len(addrs), maxAdvertisedVIPs)] {
			w.line("%s dev %s", netip.PrefixFrom(a, a.BitLen()), nw.Interface)
		}
		w.close()
		if len(addrs) > maxAdvertisedVIPs {
			w.open("virtual_ipaddress_excluded")
			for _, a := range addrs[maxAdvertisedVIPs:] {
				w.line("%s dev %s", netip.PrefixFrom(a, a.BitLen()), nw.Interface)
			}
			w.close()
		}
		w.open("track_script")
		w.line("pairlb_ready")
		w.close()
		if len(used) == 1 {
			w.line("%s", notify)
		}
		w.close()
	}
	return w.buf.Bytes(), nil
}

func containsAddr(list []netip.Addr, a netip.Addr) bool {
	for _, b := range list {
		if a == b {
			return true
		}
	}
	return false
}

// secondsDecimal writes d in seconds as keepalived reads it: "1", "0.2".
func secondsDecimal(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', -1, 64)
}

// confWriter writes keepalived's block syntax with four-space indentation.
type confWriter struct {
	buf   bytes.Buffer
	depth int
}

func (w *confWriter) line(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	if s != "" {
		w.buf.WriteString(strings.Repeat("    ", w.depth))
		w.buf.WriteString(s)
	}
	w.buf.WriteByte('\n')
}

func (w *confWriter) open(name string) {
	w.line("%s {", name)
	w.depth++
}

func (w *confWriter) close() {
	w.depth--
	w.line("}")
}
