package daemon

import (
	"net/netip"
	"testing"

	"github.com/pairlb/pairlb/routing"
)

// TestLocalAddrFromLinks: the balancer's loop guard learns the box's own addresses from the
// daemon's latest links snapshot, and only from it.
func TestLocalAddrFromLinks(t *testing.T) {
	var b box
	own, other := netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("198.51.100.8")
	if b.local(own) {
		t.Fatal("an address is local before any links are known")
	}
	links := []routing.Link{
		{Index: 2, Name: "eth0", Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("198.51.100.7/24")}},
		{Index: 3, Name: "eth1", Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("2001:db8::7/64")}},
	}
	b.setLinks(links)
	for a, want := range map[netip.Addr]bool{own: true, other: false, netip.MustParseAddr("2001:db8::7"): true} {
		if got := b.local(a); got != want {
			t.Errorf("localAddr(%s) = %v, want %v", a, got, want)
		}
	}
}
