package lb

import (
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

	// Receiving: room for each datagram's control message, the socket's drop count
	// (SO_RXQ_OVFL); nil in a batch that only sends.
	oob []ovflControl

	// Sending: the messages of one sendmmsg call (see pack), how many datagrams each carries,
	// their control messages, and the one destination of them all.
	msgs []unix.Mmsghdr
	segs []int
	ctrl []gsoControl
	dest unix.RawSockaddrInet6
}

// ovflControl is room for the control message SO_RXQ_OVFL adds to a datagram: a cmsghdr and
// the socket's 32-bit count of datagrams dropped so far, 8-byte aligned (CmsgSpace(4)).
type ovflControl [3]uint64

// rxqDrops reads the drop count from slot i's control message, if it has one. The kernel adds
// it only once the socket has dropped something.
func (b *msgBatch) rxqDrops(i int) (uint32, bool) {
	h := &b.hdrs[i].Hdr
	if b.oob == nil || h.Flags&unix.MSG_CTRUNC != 0 || h.Controllen < uint64(unix.CmsgLen(4)) {
		return 0, false
	}
	c := (*unix.Cmsghdr)(unsafe.Pointer(&b.oob[i]))
	if c.Level != unix.SOL_SOCKET || c.Type != unix.SO_RXQ_OVFL || c.Len < uint64(unix.CmsgLen(4)) {
		return 0, false
	}
	return *(*uint32)(unsafe.Add(unsafe.Pointer(c), unix.CmsgLen(0))), true
}

// overflow returns how many datagrams the socket dropped, according to the first n datagrams
// just received, since the count last (the socket's running count, which it updates). The
// count a datagram carries is the one when it was queued, so drops after the last datagram
// read are learnt with the next one.
func (b *msgBatch) overflow(n int, last *uint32) uint32 {
	for i := n - 1; i >= 0; i-- {
		if c, ok := b.rxqDrops(i); ok {
			d := c - *last // a running 32-bit count: the difference survives its wrap
			*last = c
			return d
		}
	}
	return 0
}

// newMsgBatch makes a batch of n slots with buffers of size bytes each, to receive into; with
// size 0 the slots have no buffers of their own and carry other batches' payloads (see carry).
func newMsgBatch(n, size int) *msgBatch {
	b := &msgBatch{
		hdrs:  make([]unix.Mmsghdr, n),
		iovs:  make([]unix.Iovec, n),
		names: make([]unix.RawSockaddrInet6, n),
		bufs:  make([][]byte, n),
		lens:  make([]int, n),
		msgs:  make([]unix.Mmsghdr, n),
		segs:  make([]int, n),
		ctrl:  make([]gsoControl, n),
	}
	if size > 0 {
		b.oob = make([]ovflControl, n)
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

// carry makes slot i send p. p may be empty: a datagram without payload is still a datagram.
func (b *msgBatch) carry(i int, p []byte) {
	b.bufs[i] = p
	b.iovs[i].Base = unsafe.SliceData(p)
	b.lens[i] = len(p)
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
		if b.oob != nil {
			h.Control = (*byte)(unsafe.Pointer(&b.oob[i]))
			h.SetControllen(int(unsafe.Sizeof(b.oob[i])))
		}
		b.iovs[i].SetLen(len(b.bufs[i]))
		b.hdrs[i].Len = 0
	}
}

func (b *msgBatch) truncated(i int) bool { return b.hdrs[i].Hdr.Flags&unix.MSG_TRUNC != 0 }

// from is the source address of datagram i after recv.
func (b *msgBatch) from(i int) netip.AddrPort { return getSockaddr(&b.names[i]) }

// destination is the socket address of a for a message header: nil for an invalid a, for a
// connected socket.
func (b *msgBatch) destination(a netip.AddrPort) (*byte, uint32) {
	if !a.IsValid() {
		return nil, 0
	}
	n := putSockaddr(&b.dest, a)
	return (*byte)(unsafe.Pointer(&b.dest)), n
}

// gsoMaxSegment is the largest datagram sent by segmentation offload: it fits the smallest
// MTU an IPv6 path may have (1280 bytes, less the headers), and so nearly every IPv4 path. A
// kernel that refuses a segment size for its path gets the datagrams one by one.
const gsoMaxSegment = 1200

// gsoControl is a control message asking for UDP segmentation offload (UDP_SEGMENT): room for
// a cmsghdr and its 16-bit segment size, 8-byte aligned.
type gsoControl [3]uint64

func (c *gsoControl) set(size int) {
	h := (*unix.Cmsghdr)(unsafe.Pointer(c))
	h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	*(*uint16)(unsafe.Add(unsafe.Pointer(c), unix.CmsgLen(0))) = uint16(size)
}

// pack lays datagrams [from, n) out as messages for sendmmsg, all to one destination (name).
// With gso, a run of datagrams of one size (its last may be shorter) becomes one message with
// UDP_SEGMENT: the kernel takes it through its stack once and cuts it into the same datagrams
// at the end, instead of routing, queueing and delivering each on its own. It returns the
// number of messages; segs tells how many datagrams each carries.
func (b *msgBatch) pack(from, n int, name *byte, namelen uint32, gso bool) int {
	m := 0
	for i := from; i < n; m++ {
		size, j := b.lens[i], i+1
		if gso && size > 0 && size <= gsoMaxSegment {
			for j < n && b.lens[j] == size {
				j++
			}
			if j < n && b.lens[j] > 0 && b.lens[j] < size {
				j++
			}
		}
		h := &b.msgs[m].Hdr
		h.Name, h.Namelen = name, namelen
		h.Iov = &b.iovs[i]
		h.SetIovlen(j - i)
		h.Control = nil
		h.SetControllen(0)
		if j-i > 1 {
			b.ctrl[m].set(size)
			h.Control = (*byte)(unsafe.Pointer(&b.ctrl[m]))
			h.SetControllen(unix.CmsgSpace(2))
		}
		b.segs[m] = j - i
		i = j
	}
	return m
}

// sendNow writes datagrams [0, n) of the batch (their payloads are bufs[i][:lens[i]]) to fd,
// addressed to "to" (invalid for a connected socket), without waiting: a datagram the kernel
// cannot take now is dropped, as a router would, rather than stalling the other flows behind
// it. It returns how many were sent, and whether the socket reported ICMP port unreachable
// for an earlier datagram (ECONNREFUSED on a connected socket): evidence against the peer.
func (b *msgBatch) sendNow(fd, n int, to netip.AddrPort) (sent int, refused bool, err error) {
	for i := range n {
		b.iovs[i].SetLen(b.lens[i])
	}
	name, namelen := b.destination(to)
	gso := true
	for sent < n {
		m := b.pack(sent, n, name, namelen, gso)
		r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&b.msgs[0])), uintptr(m), unix.MSG_DONTWAIT, 0, 0)
		switch {
		case e == 0:
			for _, k := range b.segs[:r] {
				sent += k
			}
		case e == unix.EINTR:
		case e == unix.ECONNREFUSED && !refused:
			// An ICMP error left by an earlier datagram is reported once; try again.
			refused = true
		case e == unix.EAGAIN || e == unix.ECONNREFUSED:
			return sent, refused, nil
		case gso && b.segs[0] > 1 && (e == unix.EINVAL || e == unix.EIO || e == unix.ENOPROTOOPT):
			// The path cannot take this segment size (MTU), the device cannot checksum for
			// segmentation, or the kernel has no UDP_SEGMENT: one datagram a message.
			gso = false
		default:
			return sent, refused, e
		}
	}
	return sent, refused, nil
}
