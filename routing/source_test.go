package routing

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/pairlb/pairlb/config"
	plbns "github.com/pairlb/pairlb/internal/netns"
	"github.com/vishvananda/netlink"
)

// TestSourceAddressTowardsRealServers checks which source the kernel gives a connection the box
// opens to a real server without binding it (what lb does without source_addresses), when VIPs
// sit on the real servers' own subnet.
//
// IPv4 takes the connected route's preferred source, the box's primary address: never a /32
// VIP, nor a VIP added with the subnet's prefix (a secondary). IPv6 source selection (RFC 6724)
// prefers the longest matching prefix, counted up to each address's prefix length: a /128 VIP
// that shares more leading bits with the server than the box's /64 address wins, and the
// connection would leave from the VIP. A VIP pairlb adds (ManageAddresses) is deprecated
// (preferred_lft 0), which rule 3 ranks below the box's own address; one added by someone else
// without that is chosen.
func TestSourceAddressTowardsRealServers(t *testing.T) {
	lab := plbns.ForTest(t)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	box, err := lab.Namespace("sbox")
	must(err)
	srv, err := lab.Namespace("ssrv")
	must(err)
	must(lab.Veth(box, "int0", srv, "eth0"))
	must(box.AddAddr("int0", netip.MustParsePrefix("198.18.30.2/24"), netip.MustParsePrefix("2001:db8:30::2/64")))
	must(srv.AddAddr("eth0", netip.MustParsePrefix("198.18.30.50/24"), netip.MustParsePrefix("2001:db8:30::50/64")))
	serveTCP(t, srv, ":8080", "server")

	// Addresses as keepalived adds them: a secondary IPv4 VIP with the subnet's prefix, an IPv6
	// /128 that is preferred.
	must(box.AddAddr("int0", netip.MustParsePrefix("198.18.30.101/24"), netip.MustParsePrefix("2001:db8:30::101/128")))
	seen := func(server netip.Addr) string {
		t.Helper()
		line, err := tcpLine(box, netip.AddrPortFrom(server, 8080).String())
		if err != nil {
			t.Fatalf("connecting to %s: %v", server, err)
		}
		return strings.TrimPrefix(line, "server sees ")
	}
	srv4, srv6 := netip.MustParseAddr("198.18.30.50"), netip.MustParseAddr("2001:db8:30::50")
	if got := seen(srv4); got != "198.18.30.2" {
		t.Errorf("IPv4 source with a secondary VIP = %s, want the box's 198.18.30.2", got)
	}
	got6 := seen(srv6)
	t.Logf("IPv6 source with a preferred /128 VIP 2001:db8:30::101 on the server's subnet: %s", got6)
	if got6 != "2001:db8:30::101" {
		t.Errorf("IPv6 source = %s; this test documents that the kernel picks the preferred VIP (longest match)", got6)
	}

	// pairlb's own VIPs: a /32 and a deprecated /128.
	var hooked []Link
	m := New(box.Handle(), testLogger(t), WithNamespace(box.NsHandle()), WithLinksHook(func(l []Link) { hooked = l }))
	cfg := &config.Config{Global: config.Global{ManageAddresses: true}, VirtualServices: []config.VirtualService{
		{Name: "v4", VIP: netip.MustParseAddr("198.18.30.100")},
		{Name: "v6", VIP: netip.MustParseAddr("2001:db8:30::100")},
	}}
	must(m.Set(cfg))
	t.Cleanup(func() { must(m.Close()) })
	// Take the preferred hand-made IPv6 VIP away again: only pairlb's is left.
	must(delAddr(box, "int0", netip.MustParsePrefix("2001:db8:30::101/128")))
	if got := seen(srv4); got != "198.18.30.2" {
		t.Errorf("IPv4 source with pairlb's /32 VIP = %s, want 198.18.30.2", got)
	}
	if got := seen(srv6); got != "2001:db8:30::2" {
		t.Errorf("IPv6 source with pairlb's deprecated VIP = %s, want the box's 2001:db8:30::2", got)
	}

	// What subnet_originating asks for is the box's own address on the server's subnet, from
	// the links the Manager last planned with.
	links := hooked
	if len(links) == 0 {
		t.Fatal("the links hook was not called by Set")
	}
	for _, c := range []struct{ server, want string }{
		{"198.18.30.50", "198.18.30.2"}, {"2001:db8:30::50", "2001:db8:30::2"}, {"198.51.100.1", ""},
	} {
		got, ok := NewSources(cfg, links).Lookup(netip.MustParseAddr(c.server))
		if s := fmt.Sprint(got); ok != (c.want != "") || ok && s != c.want {
			t.Errorf("Lookup(%s) = %v, %v; want %q", c.server, got, ok, c.want)
		}
	}
}

func delAddr(n *plbns.NS, link string, p netip.Prefix) error {
	l, err := n.Link(link)
	if err != nil {
		return err
	}
	if err := n.Handle().AddrDel(l, &netlink.Addr{IPNet: ipNet(p)}); err != nil {
		return fmt.Errorf("removing %s: %w", p, err)
	}
	return nil
}
