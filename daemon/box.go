package daemon

import (
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/pairlb/pairlb/config"
	"github.com/pairlb/pairlb/routing"
)

// box is what the daemon knows of the box's own addresses: the latest snapshot of its links,
// and two tables built from it, once per snapshot, that the forwarding plane reads on every new
// connection: the subnet_originating sources (lb's SourceFunc; the health checks' sources too)
// and the box's own addresses (lb's loop guard). The sources leave out the VIPs of the
// configuration being applied (planFor), so that a VIP keepalived added with its subnet's
// prefix is never taken for the box's own address.
type box struct {
	mu    sync.Mutex // serialises the builders: apply, and routing's re-apply after link changes
	cfg   *config.Config
	links []routing.Link

	sources atomic.Pointer[routing.Sources]
	own     atomic.Pointer[map[netip.Addr]bool]
}

// planFor makes the tables built from the next snapshot on leave out cfg's VIPs. It builds
// nothing itself: the snapshot apply takes next does.
func (b *box) planFor(cfg *config.Config) {
	b.mu.Lock()
	b.cfg = cfg
	b.mu.Unlock()
}

// setLinks takes a snapshot of the links and builds the tables from it. It is routing's links
// hook: it runs in the manager's Set and re-apply, and must not call the manager.
func (b *box) setLinks(l []routing.Link) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.links = l
	b.build()
}

// rebuild builds the tables again from the snapshot there is, for the configuration planFor
// named last.
func (b *box) rebuild() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.build()
}

// build makes the tables; b.mu is held.
func (b *box) build() {
	src := routing.NewSources(b.cfg, b.links)
	b.sources.Store(&src)
	own := map[netip.Addr]bool{}
	for _, link := range b.links {
		for _, p := range link.Addrs {
			own[p.Addr().Unmap()] = true
		}
	}
	b.own.Store(&own)
}

// source is the box's own address on dst's subnet (subnet_originating). It runs for every new
// connection of such a service, so it only reads the prepared table.
func (b *box) source(dst netip.Addr) (netip.Addr, bool) {
	if s := b.sources.Load(); s != nil {
		return s.Lookup(dst)
	}
	return netip.Addr{}, false
}

// local reports whether a is one of the box's addresses by the latest snapshot (the balancer's
// loop guard asks it for every new connection; loopback and the VIPs it knows itself).
func (b *box) local(a netip.Addr) bool {
	own := b.own.Load()
	return own != nil && (*own)[a]
}
