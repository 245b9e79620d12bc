package lb

import (
	"encoding/binary"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// msgBatch carries up to len(bufs) datagrams through one recvmmsg(2) or sendmmsg(2) call, so
// that a busy UDP service pays one system call per batch instead of one per datagram. Its
// buffers, iovecs and address slots are allocated once and reused: a datagram costs no
// allocation.
type msgBatch struct {
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6 // large enough for either family
	bufs  [][]byte
	lens  []int // payload length of each datagram after recv, or to send
}

// newMsgBatch makes a batch of n slots with buffers of size bytes each; with size 0 the slots
// have no buffers of their own and carry other batches' payloads (see carry).
func newMsgBatch(n, size int) *msgBatch {
	b := &msgBatch{
		hdrs:  make([]unix.Mmsghdr, n),
		iovs:  make([]unix.Iovec, n),
		names: make([]unix.RawSockaddrInet6, n),
		bufs:  make([][]byte, n),
		lens:  make([]int, n),
	}
	for i := range n {
		if size > 0 {
			b.bufs[i] = make([]byte, size)
			b.iovs[i].Base = &b.bufs[i][0]
		}
		b.hdrs[i].Hdr.Iov = &b.iovs[i]
		b.hdrs[i].Hdr.Iovlen = 1
	}
	return b
}

// carry makes slot i send p, unaddressed (for a connected socket). p may be empty: a
// datagram without payload is still a datagram.
func (b *msgBatch) carry(i int, p []byte) {
	b.bufs[i] = p
	b.iovs[i].Base = unsafe.SliceData(p)
	b.lens[i] = len(p)
	b.hdrs[i].Hdr.Name, b.hdrs[i].Hdr.Namelen = nil, 0
}

// recvNow reads the datagrams queued on fd without waiting; unix.EAGAIN means none is.
// Datagrams truncated by a short buffer are reported through truncated(i).
func (b *msgBatch) recvNow(fd int) (int, error) {
	b.reset()
	for {
		r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&b.hdrs[0])), uintptr(len(b.hdrs)), unix.MSG_DONTWAIT, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, e // an Errno, never a nil interface holding 0
		}
		n := int(r)
		for i := range n {
			b.lens[i] = int(b.hdrs[i].Len)
		}
		return n, nil
	}
}

// reset prepares every slot to receive.
func (b *msgBatch) reset() {
	for i := range b.hdrs {
		h := &b.hdrs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&b.names[i]))
		h.Namelen = unix.SizeofSockaddrInet6
		h.Flags = 0
		b.iovs[i].SetLen(len(b.bufs[i]))
		b.hdrs[i].Len = 0
	}
}

func (b *msgBatch) truncated(i int) bool { return b.hdrs[i].Hdr.Flags&unix.MSG_TRUNC != 0 }

// from is the source address of datagram i after recv.
func (b *msgBatch) from(i int) netip.AddrPort {
	sa := &b.names[i]
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

// setDest makes slot i address its datagram to a; an invalid a leaves it unaddressed, for a
// connected socket.
func (b *msgBatch) setDest(i int, a netip.AddrPort) {
	h := &b.hdrs[i].Hdr
	if !a.IsValid() {
		h.Name, h.Namelen = nil, 0
		return
	}
	sa := &b.names[i]
	if a.Addr().Is4() {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		*sa4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: a.Addr().As4()}
		setNetPort(&sa4.Port, a.Port())
		h.Namelen = unix.SizeofSockaddrInet4
	} else {
		*sa = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: a.Addr().As16()}
		setNetPort(&sa.Port, a.Port())
		h.Namelen = unix.SizeofSockaddrInet6
	}
	h.Name = (*byte)(unsafe.Pointer(sa))
}

// sendNow writes datagrams [0, n) of the batch (their payloads are bufs[i][:lens[i]]) to fd
// without waiting: a datagram the kernel cannot take now is dropped, as a router would, rather
// than stalling the other flows behind it. It returns how many were sent.
func (b *msgBatch) sendNow(fd, n int) (int, error) {
	for i := range n {
		b.iovs[i].SetLen(b.lens[i])
	}
	sent, refused := 0, false
	for sent < n {
		r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&b.hdrs[sent])), uintptr(n-sent), unix.MSG_DONTWAIT, 0, 0)
		switch {
		case e == 0:
			sent += int(r)
		case e == unix.EINTR:
		case e == unix.ECONNREFUSED && !refused:
			// An ICMP error left by an earlier datagram is reported once; try again.
			refused = true
		case e == unix.EAGAIN || e == unix.ECONNREFUSED:
			return sent, nil
		default:
			return sent, e
		}
	}
	return sent, nil
}
