package lb

import (
	"encoding/binary"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The loops make their system calls raw. Every socket, pipe and epoll set they touch is
// non-blocking, so no call can wait, and the runtime's preparation for a call that might
// (entersyscall/exitsyscall) is pure cost. It is also harmful: a call that runs longer than
// 20 µs (a connect or close on loopback does the peer's half of the handshake within it) makes
// the runtime hand the loop's processor to another thread, and the loop then pays a futex
// round trip to get it back. Measured with strace -c on the connection-rate workload: several
// futex and sysmon wake-ups per connection before, none after.
//
// The calls return the errno itself rather than an error, so that the common EAGAIN costs no
// interface conversion; 0 means success.

func sysRead(fd int, p []byte) (int, unix.Errno) {
	n, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	return int(n), e
}

func sysWrite(fd int, p []byte) (int, unix.Errno) {
	n, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	return int(n), e
}

// sysSplice moves up to n bytes from rfd to wfd without waiting.
func sysSplice(rfd, wfd, n int) (int, unix.Errno) {
	m, _, e := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(rfd), 0, uintptr(wfd), 0, uintptr(n),
		unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
	return int(m), e
}

// sysClose closes fd. It is the one way the package closes a descriptor it holds raw (resetFD
// closes through it too); a descriptor handed to an os.File, such as a loop's epoll set, is
// closed by its File. Linux releases the descriptor even when close reports an error, so there
// is nothing to retry or report.
func sysClose(fd int) { unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0) }

func sysShutdownWrite(fd int) { unix.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), unix.SHUT_WR, 0) }

func sysSocket(family, sotype int) (int, unix.Errno) {
	fd, _, e := unix.RawSyscall(unix.SYS_SOCKET, uintptr(family), uintptr(sotype)|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	return int(fd), e
}

func sysSetsockopt(fd, level, opt, v int) unix.Errno {
	val := int32(v)
	_, _, e := unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&val)), 4, 0)
	return e
}

func sysBind(fd int, ap netip.AddrPort) unix.Errno {
	var sa unix.RawSockaddrInet6
	n := putSockaddr(&sa, ap)
	_, _, e := unix.RawSyscall(unix.SYS_BIND, uintptr(fd), uintptr(unsafe.Pointer(&sa)), uintptr(n))
	return e
}

func sysConnect(fd int, ap netip.AddrPort) unix.Errno {
	var sa unix.RawSockaddrInet6
	n := putSockaddr(&sa, ap)
	_, _, e := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), uintptr(n))
	return e
}

// sysAccept takes a connection off listener fd, with the client's address.
func sysAccept(fd int) (int, netip.AddrPort, unix.Errno) {
	var sa unix.RawSockaddrInet6
	n := uint32(unix.SizeofSockaddrInet6)
	nfd, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(fd), uintptr(unsafe.Pointer(&sa)),
		uintptr(unsafe.Pointer(&n)), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if e != 0 {
		return -1, netip.AddrPort{}, e
	}
	return int(nfd), getSockaddr(&sa), 0
}

func sysEpollCtl(epfd, op, fd int, ev *unix.EpollEvent) unix.Errno {
	_, _, e := unix.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(epfd), uintptr(op), uintptr(fd), uintptr(unsafe.Pointer(ev)), 0, 0)
	return e
}

// sysEpollPoll returns the events ready now, without waiting.
func sysEpollPoll(epfd int, events []unix.EpollEvent) (int, unix.Errno) {
	n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	return int(n), e
}

// putSockaddr writes ap into sa (large enough for either family) in the kernel's layout and
// returns the address's length.
func putSockaddr(sa *unix.RawSockaddrInet6, ap netip.AddrPort) uint32 {
	a := ap.Addr().Unmap()
	if a.Is4() {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		*sa4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: a.As4()}
		setNetPort(&sa4.Port, ap.Port())
		return unix.SizeofSockaddrInet4
	}
	*sa = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: a.As16()}
	setNetPort(&sa.Port, ap.Port())
	return unix.SizeofSockaddrInet6
}

// getSockaddr reads the address the kernel left in sa.
func getSockaddr(sa *unix.RawSockaddrInet6) netip.AddrPort {
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), netPort(&sa4.Port))
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), netPort(&sa.Port))
	}
	return netip.AddrPort{}
}

// netPort reads a port stored in network byte order; setNetPort stores one.
func netPort(p *uint16) uint16 { return binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(p))[:]) }

func setNetPort(p *uint16, port uint16) {
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(p))[:], port)
}
