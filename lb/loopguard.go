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
// files where it can see that; this guard catches the rest at run time (DNAT on the box that
// turns a real server's address into a VIP, the package used directly).
//
// A chain of services (an outer service whose real server is an inner service's VIP) is
// legitimate, so a connection from the balancer's own socket is not refused as such: it is
// counted as a hop. Every connection and UDP session carries its hop number, 1 for a client
// from elsewhere, one more than the socket it came from for one of the balancer's own; a hop
// beyond the number of listeners has visited some listener twice, which is a cycle, and is
// refused and counted as a loop.
//
// The table holds only the sockets that can come back: those sent to one of the balancer's
// own listeners, those of a connection that is itself a hop, and (DNAT makes any address
// local, invisibly) those of a connection from the box's own address whose destination the
// box's NAT changed, or for UDP, where that cannot be read, of a session from the box's own
// address. So real servers elsewhere and clients elsewhere, the production case, cost one map
// lookup per dial and an atomic load per accept; a local client costs a getsockopt
// (SO_ORIGINAL_DST) per TCP connection, and no table entry.
//
// A loop through another process on the box (two balancers sending to each other) is not seen:
// neither knows the other's sockets.

// maxSelfConns bounds the table. A balancer with more hops of its own open at once forwards the
// next ones unguarded rather than refuse them.
const maxSelfConns = 1 << 16

// selfConn is one of the balancer's sockets that may arrive back at one of its listeners.
type selfConn struct {
	dst netip.AddrPort // where it was sent
	hop uint16         // the hop number of the connection it carries onward
}

// selfConns maps the local address of each such socket to where it went and its hop; the loops
// share it.
type selfConns struct {
	n  atomic.Int64 // entries; read without the lock on every accept
	mu sync.RWMutex
	m  map[netip.AddrPort]selfConn
}

// add notes a socket from src; it reports false when the table is full.
func (t *selfConns) add(src netip.AddrPort, c selfConn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.m) >= maxSelfConns {
		return false
	}
	if t.m == nil {
		t.m = map[netip.AddrPort]selfConn{}
	}
	t.m[src] = c
	t.n.Store(int64(len(t.m)))
	return true
}

func (t *selfConns) remove(src netip.AddrPort) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.m, src)
	t.n.Store(int64(len(t.m)))
}

// lookup returns the balancer's socket at src, if src is one.
func (t *selfConns) lookup(src netip.AddrPort) (selfConn, bool) {
	if t.n.Load() == 0 {
		return selfConn{}, false
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	c, ok := t.m[unmapPort(src)]
	return c, ok
}

// ownAddrs is what the guard knows of the balancer's own listeners, replaced by each Apply.
type ownAddrs struct {
	vips      map[netip.Addr]struct{}
	listeners map[listenerKey]struct{} // TCP listeners (redirectors included) as kindTCP
	maxHop    uint16                   // the number of listeners: a longer path has a cycle
}

// hopTCP returns the hop number of the connection fd, accepted from client on a listener at
// local, and whether its socket towards the real server should be noted; a hop beyond the
// number of listeners is a loop, which the caller refuses. The client address alone does not
// make a connection the balancer's own: the kernel gives the same local port to TCP sockets of
// the box that go to different places, so a local client of the VIP may share its address with
// one of the balancer's sockets. It is the balancer's own when that socket went to this
// listener, or to the address the box's NAT turned into it (the connection's original
// destination).
func (b *Balancer) hopTCP(fd int, client, local netip.AddrPort) (hop uint16, note bool) {
	if !b.isLocal(client.Addr()) {
		return 1, false
	}
	if local.Addr().IsUnspecified() {
		sa, err := unix.Getsockname(fd)
		if err != nil {
			return 1, false
		}
		local = sockaddrAddrPort(sa)
	}
	local = unmapPort(local)
	orig, natted := originalDst(fd, local.Addr())
	natted = natted && orig != local
	if c, ok := b.self.lookup(client); ok && (c.dst == local || natted && c.dst == orig) {
		return c.hop + 1, true
	}
	return 1, natted
}

// hopUDP is hopTCP for a new UDP session of client: a UDP port is not shared between the box's
// sockets (without SO_REUSEADDR), so the address decides. The original destination of a
// datagram the box's NAT changed cannot be read, so every session from the box's own address
// is noted.
func (b *Balancer) hopUDP(client netip.AddrPort) (hop uint16, note bool) {
	if !b.isLocal(client.Addr()) {
		return 1, false
	}
	if c, ok := b.self.lookup(client); ok {
		return c.hop + 1, true
	}
	return 1, true
}

// isLoop reports whether hop has passed more listeners than the balancer has.
func (b *Balancer) isLoop(hop uint16) bool {
	own := b.own.Load()
	return own != nil && hop > own.maxHop
}

// toListener reports whether dst is one of the balancer's own TCP listeners (tcp) or UDP
// listeners.
func (b *Balancer) toListener(dst netip.AddrPort, tcp bool) bool {
	own := b.own.Load()
	if own == nil {
		return false
	}
	k := listenerKey{kind: kindUDP, addr: unmapPort(dst)}
	if tcp {
		k.kind = kindTCP
	}
	_, ok := own.listeners[k]
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

// isLocal reports whether addr is one of this box's own.
func (b *Balancer) isLocal(addr netip.Addr) bool {
	addr = addr.Unmap()
	if addr.IsLoopback() || addr.IsUnspecified() {
		return true
	}
	if own := b.own.Load(); own != nil {
		if _, ok := own.vips[addr]; ok {
			return true
		}
	}
	if f := b.localFn.Load(); f != nil {
		return (*f)(addr)
	}
	return false
}

// setOwn records the balancer's listeners for the guard; Apply holds b.mu.
func (b *Balancer) setOwn(keys map[listenerKey]listener) {
	own := &ownAddrs{vips: map[netip.Addr]struct{}{}, listeners: map[listenerKey]struct{}{}, maxHop: uint16(min(len(keys), 1<<15))}
	for k := range keys {
		k.addr = unmapPort(k.addr)
		own.vips[k.addr.Addr()] = struct{}{}
		if k.kind == kindRedirect {
			k.kind = kindTCP
		}
		own.listeners[k] = struct{}{}
	}
	b.own.Store(own)
}

// noteSelf notes fd, a socket the balancer has just connected (or started connecting) to dst
// for a connection of hop number hop, and returns its local address; invalid when the table
// is full.
//
// A UDP session's socket is noted before its first datagram leaves, so its first hop back is
// always counted. A TCP connection can complete its handshake within connect on loopback, and
// another loop may accept it in the moment before it is noted: that hop then counts as a
// first one, and the count starts again from there. A loop still ends, a few hops later,
// without the cost of taking the port at bind (which would cap connections to local servers
// at one ephemeral range in all, TIME_WAIT included).
func (b *Balancer) noteSelf(fd int, dst netip.AddrPort, hop uint16) netip.AddrPort {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return netip.AddrPort{}
	}
	if ap := sockaddrAddrPort(sa); b.self.add(ap, selfConn{dst: unmapPort(dst), hop: hop}) {
		return ap
	}
	return netip.AddrPort{}
}

// loopRefused counts and logs (at most every 10 s) a connection or session refused because it
// comes from the balancer itself.
func (b *Balancer) loopRefused(svc *service, listener string, client netip.AddrPort) {
	svc.stats.drop(DropLoop, 1)
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
