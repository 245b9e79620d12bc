package lb

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// maxBacklog asks for the longest accept queue; the kernel caps it at net.core.somaxconn.
const maxBacklog = 65535

// listenTCP opens a listening socket on addr, also when the box does not hold addr yet (see
// bindVIP).
func listenTCP(addr netip.AddrPort) (int, error) {
	fd, err := bindVIP(addr, unix.SOCK_STREAM,
		[3]int{unix.SOL_SOCKET, unix.SO_REUSEADDR, 1},
		// Accepted sockets inherit it: Nagle off on both legs (Microsoft asks it for the Edge).
		[3]int{unix.IPPROTO_TCP, unix.TCP_NODELAY, 1})
	if err != nil {
		return -1, err
	}
	if err := unix.Listen(fd, maxBacklog); err != nil {
		sysClose(fd)
		return -1, fmt.Errorf("listen %s: %w", addr, err)
	}
	return fd, nil
}

// bindVIP opens a non-blocking socket of sotype bound to addr, with the options given and
// IP_FREEBIND, so that a listener can bind a VIP the box does not hold yet: on the standby of
// a pair the VIP arrives with keepalived, and the listener must already be there to serve it.
func bindVIP(addr netip.AddrPort, sotype int, opts ...[3]int) (int, error) {
	fam := family(addr.Addr())
	fd, err := unix.Socket(fam, sotype|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	if fam == unix.AF_INET6 {
		opts = append(opts, [3]int{unix.IPPROTO_IPV6, unix.IPV6_FREEBIND, 1}, [3]int{unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1})
	} else {
		opts = append(opts, [3]int{unix.IPPROTO_IP, unix.IP_FREEBIND, 1})
	}
	for _, o := range opts {
		if err := unix.SetsockoptInt(fd, o[0], o[1], o[2]); err != nil {
			sysClose(fd)
			return -1, fmt.Errorf("setsockopt %d/%d: %w", o[0], o[1], err)
		}
	}
	if errno := sysBind(fd, addr); errno != 0 {
		sysClose(fd)
		return -1, fmt.Errorf("bind %s: %w", addr, errno)
	}
	return fd, nil
}

// udpReceiveBuffer is the receive buffer asked for each VIP socket. A VIP socket queues what
// its loop has not read yet; while the loop is busy elsewhere (a burst of new TCP connections,
// a garbage collection, a core shared with other work), a socket holding the default 208 KiB
// drops a burst after a few hundred datagrams: about 8,500 of a 20,000-datagram burst were
// lost so. 4 MiB holds several thousand small media or STUN datagrams, 10 ms of a 1 Gb/s
// flood of them, which is more than a loop stalls; the memory is taken only while datagrams
// wait. The kernel caps SO_RCVBUF at net.core.rmem_max; with CAP_NET_ADMIN, SO_RCVBUFFORCE
// passes the cap. What the kernel granted is logged once.
const udpReceiveBuffer = 4 << 20

// listenUDP opens a datagram socket on addr, also when the box does not hold addr yet (see
// bindVIP), with the receive buffer above and the kernel's drop count delivered with each
// datagram (SO_RXQ_OVFL), so that datagrams lost on a full queue are counted. Go's poller
// never sees it: the listener's loop reads it.
func listenUDP(addr netip.AddrPort) (int, error) {
	fd, err := bindVIP(addr, unix.SOCK_DGRAM, [3]int{unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 1})
	if err != nil {
		return -1, err
	}
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, udpReceiveBuffer) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, udpReceiveBuffer) // capped, not refused
	}
	return fd, nil
}

// dialSocket opens a non-blocking socket of type sotype and connects it to "to" (for a stream
// socket, starts connecting) from local (if valid), for a transparent service from the
// client's own address. prepare, if set, sets the options of the socket type before connect.
func dialSocket(sotype int, local, to netip.AddrPort, transparent bool, prepare func(fd int) unix.Errno) (int, error) {
	fam := family(to.Addr())
	fd, errno := sysSocket(fam, sotype)
	if errno != 0 {
		return -1, fmt.Errorf("socket: %w", errno)
	}
	fail := func(what string, errno unix.Errno) (int, error) {
		sysClose(fd)
		return -1, fmt.Errorf("%s: %w", what, errno)
	}
	if prepare != nil {
		if errno := prepare(fd); errno != 0 {
			return fail("setsockopt", errno)
		}
	}
	if transparent {
		lvl, opt := unix.SOL_IP, unix.IP_TRANSPARENT
		if fam == unix.AF_INET6 {
			lvl, opt = unix.SOL_IPV6, unix.IPV6_TRANSPARENT
		}
		if errno := sysSetsockopt(fd, lvl, opt, 1); errno != 0 {
			return fail("setsockopt IP_TRANSPARENT", errno)
		}
	}
	if local.IsValid() {
		// The port is chosen at connect, per destination, not at bind, where it would have to
		// be unique for the whole box and cap the balancer at one ephemeral range in all.
		if errno := sysSetsockopt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1); errno != 0 {
			return fail("setsockopt IP_BIND_ADDRESS_NO_PORT", errno)
		}
		if errno := sysBind(fd, local); errno != 0 {
			return fail("bind "+local.String(), errno)
		}
	}
	if errno := sysConnect(fd, to); errno != 0 && errno != unix.EINPROGRESS {
		return fail("connect "+to.String(), errno)
	}
	return fd, nil
}

// dialTCP starts a non-blocking connection to "to" from local (if valid), for a transparent
// service from the client's own address.
func dialTCP(local, to netip.AddrPort, transparent, keepalive bool) (int, error) {
	return dialSocket(unix.SOCK_STREAM, local, to, transparent, func(fd int) unix.Errno {
		if keepalive {
			setKeepalive(fd, true)
		}
		return sysSetsockopt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	})
}

// prepareUDP sets the options of a session's socket: the kernel tells, with each datagram, how
// many it dropped for a full receive queue (SO_RXQ_OVFL), which the session counts.
func prepareUDP(fd int) unix.Errno {
	return sysSetsockopt(fd, unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 1)
}

// keepAlive: a dead peer of an idle connection is found within about two minutes.
var keepAlive = net.KeepAliveConfig{Enable: true, Idle: 60 * time.Second, Interval: 15 * time.Second, Count: 4}

func setKeepalive(fd int, on bool) {
	if !on {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 0)
		return
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(keepAlive.Idle/time.Second))
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(keepAlive.Interval/time.Second))
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPCNT, keepAlive.Count)
}

// resetFD closes fd with an RST instead of a FIN, so the peer learns at once that the
// connection is gone (TCP refusal, "Reset on Close").
func resetFD(fd int) {
	_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	sysClose(fd)
}

func family(a netip.Addr) int {
	if a.Unmap().Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}
