package lb

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A real server that is pairlb itself (its own VIP:port, or a chain of this box's listeners
// leading back) turns one connection into as many as descriptors allow. validate refuses the
// files where it can see that; this guard catches the rest at run time (a real server given by
// another of the box's addresses, DNAT on the box, the package used directly): the balancer
// notes each of its own sockets towards this box, and a connection or new UDP session that
// arrives from one of them is refused and counted as a loop.
//
// Only sockets towards the box's own addresses are noted, so the production case, real servers
// elsewhere, costs one address lookup per dial and an atomic load per accept. (Real servers on
// loopback, as in the tests and the bench, pay a getsockname and the table per connection.)
//
// A loop through another process on the box (two balancers sending to each other) is not seen:
// neither knows the other's sockets.

// maxSelfConns bounds the table. A balancer with more connections to its own box open at once
// forwards the next ones unguarded rather than refuse them.
const maxSelfConns = 1 << 16

// selfConns maps the local address of each of the balancer's open sockets towards its own box
// to the address it was sent to; the loops share it.
type selfConns struct {
	n  atomic.Int64 // entries; read without the lock on every accept
	mu sync.RWMutex
	m  map[netip.AddrPort]netip.AddrPort
}

// add notes a socket from src to dst; it reports false when the table is full.
func (t *selfConns) add(src, dst netip.AddrPort) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.m) >= maxSelfConns {
		return false
	}
	if t.m == nil {
		t.m = map[netip.AddrPort]netip.AddrPort{}
	}
	t.m[src] = dst
	t.n.Store(int64(len(t.m)))
	return true
}

func (t *selfConns) remove(src netip.AddrPort) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.m, src)
	t.n.Store(int64(len(t.m)))
}

// lookup returns where the balancer's socket at src was sent, if src is one of its sockets.
func (t *selfConns) lookup(src netip.AddrPort) (netip.AddrPort, bool) {
	if t.n.Load() == 0 {
		return netip.AddrPort{}, false
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	dst, ok := t.m[unmapPort(src)]
	return dst, ok
}

// tcpLoop reports whether the connection fd, accepted from client on a listener at local,
// is one the balancer itself opened. The client address alone is not enough: the kernel gives
// the same local port to TCP sockets of the box that go to different places, so a local client
// of the VIP may share its address with one of the balancer's sockets towards a local real
// server. The connection is the balancer's own when that socket went to this listener, or to
// an address the box's NAT turned into it (the connection's original destination).
func (b *Balancer) tcpLoop(fd int, client, local netip.AddrPort) bool {
	dst, ok := b.self.lookup(client)
	if !ok {
		return false
	}
	if local.Addr().IsUnspecified() {
		sa, err := unix.Getsockname(fd)
		if err != nil {
			return false
		}
		local = sockaddrAddrPort(sa)
	}
	if unmapPort(local) == dst {
		return true
	}
	orig, ok := originalDst(fd, local.Addr())
	return ok && orig == dst
}

// udpLoop reports whether a datagram from client comes from one of the balancer's own
// sockets. A UDP port is never shared between the box's sockets (without SO_REUSEADDR), so
// the address decides.
func (b *Balancer) udpLoop(client netip.AddrPort) bool {
	_, ok := b.self.lookup(client)
	return ok
}

// originalDst is the destination a connection had before the box's DNAT changed it
// (SO_ORIGINAL_DST, from conntrack); false when conntrack does not know it.
func originalDst(fd int, local netip.Addr) (netip.AddrPort, bool) {
	var sa unix.RawSockaddrInet6
	n := uint32(unsafe.Sizeof(sa))
	// IP6T_SO_ORIGINAL_DST has the same number as SO_ORIGINAL_DST, at the IPv6 level.
	lvl := unix.SOL_IP
	if family(local) == unix.AF_INET6 {
		lvl = unix.SOL_IPV6
	}
	_, _, e := unix.RawSyscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(lvl), unix.SO_ORIGINAL_DST,
		uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&n)), 0)
	if e != 0 {
		return netip.AddrPort{}, false
	}
	ap := getSockaddr(&sa)
	return unmapPort(ap), ap.IsValid()
}

func unmapPort(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// LocalFunc reports whether an address is one of this box's own.
type LocalFunc func(netip.Addr) bool

// SetLocalFunc tells the balancer which addresses are the box's own (the daemon knows its
// links), for the loop guard. Loopback, the unspecified address and the balancer's own VIPs
// count as local without it. f runs for every new connection and session: it must only read
// a prepared table.
func (b *Balancer) SetLocalFunc(f LocalFunc) { b.localFn.Store(&f) }

// isLocal reports whether a connection to dst stays on this box.
func (b *Balancer) isLocal(dst netip.Addr) bool {
	dst = dst.Unmap()
	if dst.IsLoopback() || dst.IsUnspecified() {
		return true
	}
	if v := b.vips.Load(); v != nil {
		if _, ok := (*v)[dst]; ok {
			return true
		}
	}
	if f := b.localFn.Load(); f != nil {
		return (*f)(dst)
	}
	return false
}

// setVIPs records the addresses the balancer listens on; Apply holds b.mu.
func (b *Balancer) setVIPs(keys map[listenerKey]listener) {
	v := make(map[netip.Addr]struct{}, len(keys))
	for k := range keys {
		v[k.addr.Addr().Unmap()] = struct{}{}
	}
	b.vips.Store(&v)
}

// noteSelf notes fd, a socket the balancer has just connected (or started connecting) to dst,
// one of the box's own addresses, and returns its local address; invalid when the table is
// full.
//
// A UDP session's socket is noted before its first datagram leaves, so its first hop back is
// always caught. A TCP connection can complete its handshake within connect on loopback, and
// another loop may accept it in the moment before it is noted: that hop is then forwarded, and
// the next one caught. A chain of such misses is as unlikely as a run of lost coin tosses, so
// a loop still ends within a few hops, without the cost of taking the port at bind (which
// would cap connections to local servers at one ephemeral range in all, TIME_WAIT included).
func (b *Balancer) noteSelf(fd int, dst netip.AddrPort) netip.AddrPort {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return netip.AddrPort{}
	}
	if ap := sockaddrAddrPort(sa); b.self.add(ap, unmapPort(dst)) {
		return ap
	}
	return netip.AddrPort{}
}

// loopRefused counts and logs (at most every 10 s) a connection or session refused because it
// comes from the balancer itself.
func (b *Balancer) loopRefused(svc *service, listener string, client netip.AddrPort) {
	svc.stats.drop(DropLoop)
	now := time.Now().UnixNano()
	if last := b.loopLogged.Load(); now-last >= int64(10*time.Second) && b.loopLogged.CompareAndSwap(last, now) {
		b.log.Warn("refused a connection from the balancer's own socket: a real server leads back to this box's listeners",
			"virtual_service", svc.cfg.Name, "listener", listener, "client", client.String())
	}
}

func sockaddrAddrPort(sa unix.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
	}
	return netip.AddrPort{}
}
