package lab

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/pairlb/pairlb/internal/netns"
)

// The lab's nftables table, the same name in every namespace that has one.
const nftTable = "plblab"

// Counter comments. A router counts, per listener, the replies from it that it forwarded; a
// client counts the replies from it that it received, and the DMZ-subnet client also those that
// reached it straight from the box (a reply that skipped the VIP's gateway).
const (
	commentInvalid = "invalid"
	prefixFrom     = "from "
	prefixRecv     = "recv "
	prefixDirect   = "direct "
)

// match is the nft expression selecting packets sent from a row's listener.
func match(r *Row) string {
	return fmt.Sprintf("ip saddr %s meta l4proto %s th sport %d", r.VIP, r.Port.Proto, r.Port.Listen)
}

// routerRuleset is a router's stateful firewall: it drops what conntrack finds invalid (half of
// an asymmetric conversation) and counts forwarded replies per listener.
func routerRuleset(rows []*Row) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n\tchain forward {\n", nftTable)
	b.WriteString("\t\ttype filter hook forward priority filter; policy accept;\n")
	fmt.Fprintf(&b, "\t\tct state invalid counter drop comment %q\n", commentInvalid)
	for _, r := range rows {
		fmt.Fprintf(&b, "\t\t%s counter comment %q\n", match(r), prefixFrom+r.Key())
	}
	b.WriteString("\t}\n}\n")
	return b.String()
}

// clientRuleset counts, on a client, the replies it receives per listener; with boxMAC set
// (a client on one of the box's subnets) also those whose last hop was the box itself.
func clientRuleset(rows []*Row, boxMAC net.HardwareAddr) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n\tchain prerouting {\n", nftTable)
	b.WriteString("\t\ttype filter hook prerouting priority filter; policy accept;\n")
	for _, r := range rows {
		if boxMAC != nil {
			fmt.Fprintf(&b, "\t\tether saddr %s %s counter comment %q\n", boxMAC, match(r), prefixDirect+r.Key())
		}
		fmt.Fprintf(&b, "\t\t%s counter comment %q\n", match(r), prefixRecv+r.Key())
	}
	b.WriteString("\t}\n}\n")
	return b.String()
}

// installRuleset loads a ruleset into a namespace with `nft -f`.
func installRuleset(ctx context.Context, ns *netns.NS, dir, ruleset string) error {
	f := filepath.Join(dir, ns.Name()+".nft")
	if err := os.WriteFile(f, []byte(ruleset), 0o600); err != nil {
		return err
	}
	if _, err := ns.Run(ctx, "nft", "-f", f); err != nil {
		return fmt.Errorf("installing the firewall of %s: %w", ns.Name(), err)
	}
	return nil
}

// counters reads the packet counters of the lab's table in a namespace, by rule comment.
func counters(ctx context.Context, ns *netns.NS) (map[string]uint64, error) {
	return ns.NFTCounters(ctx, "inet", nftTable)
}
