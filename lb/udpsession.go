package lb

import (
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// udpSession is one client of a UDP listener and the connected socket towards its server.
// Only the listener's loop touches it.
type udpSession struct {
	l        *udpListener
	client   netip.AddrPort
	fd       int
	svc      *service
	server   *realServer // nil for the sorry server
	last     int64       // unix nanoseconds of the last datagram either way
	stopDown func() bool // close_on_down's watch, if any
	closed   bool

	// For the connection log: when the session began, the bytes each way (client to server,
	// server to client) and the port of its destination, whose address is the server's.
	start   int64
	in, out uint64
	dstPort uint16

	checked  int64  // the loop round (lp.now) in which the session was last checked for a move
	retry    int64  // when to look again for a better destination (see moveRetry)
	rxqDrops uint32 // the socket's count of dropped datagrams when last read (SO_RXQ_OVFL)

	older, newer *udpSession    // the listener's list by last activity
	self         netip.AddrPort // the socket's local address, noted by the loop guard
	hop          uint16         // the loop guard's hop number (loopguard.go)
	note         bool           // note the socket whatever its destination
}

// touch records activity at now: s becomes the newest session.
func (s *udpSession) touch(now int64) {
	s.last = now
	if l := s.l; l.newest != s {
		l.unlink(s)
		l.link(s)
	}
}

// mustMove reports whether session s must leave its destination before its next datagram: its
// real server is down or disabled, or, on the sorry server, a real server of the service is
// available again (the sorry server stands in only while none is; a client that keeps sending
// would otherwise stay on it for good).
func (s *udpSession) mustMove(bnd *binding, now int64) bool {
	if now < s.retry {
		return false
	}
	if s.server != nil {
		return s.server.leave.Load()
	}
	s.retry = now + moveRetry
	for _, r := range bnd.svc.servers {
		if r.available() {
			return true
		}
	}
	return false
}

// moveRetry is how often a session that must move but found nowhere to go, or a session on the
// sorry server, looks again.
const moveRetry = int64(time.Second)

// handle reads the server's datagrams and sends them to the client from the VIP socket.
func (s *udpSession) handle(lp *loop, _ int8, _ uint32) {
	b := lp.udp.replies
	for range udpRounds {
		n, err := b.recvNow(s.fd)
		switch err {
		case nil:
		case unix.EAGAIN:
			return
		case unix.ECONNREFUSED:
			// ICMP port unreachable from the server: evidence for health, which judges it;
			// the session stays, and moves if health then marks the server down.
			s.l.b.suspect(s.svc.cfg.Name, s.server, evidenceUDPRefused, lp.now)
			continue
		default:
			s.close(endServerReset) // a hard error: an ICMP error other than port unreachable
			return
		}
		if d := b.overflow(n, &s.rxqDrops); d > 0 {
			s.svc.stats.drop(DropUDPReceiveOverflow, uint64(d))
		}
		s.reply(lp, b, n)
		if n < len(b.hdrs) {
			return
		}
	}
}

// reply sends the n datagrams of batch b, read from the server, to the client.
func (s *udpSession) reply(lp *loop, b *msgBatch, n int) {
	st := s.svc.stats
	s.touch(lp.now)
	k := 0
	var size uint64
	for i := range n {
		if b.truncated(i) {
			st.drop(DropUDPTooLarge, 1)
			continue
		}
		if k != i {
			b.bufs[k], b.bufs[i] = b.bufs[i], b.bufs[k]
			b.iovs[k].Base, b.iovs[i].Base = &b.bufs[k][0], &b.bufs[i][0]
		}
		b.lens[k] = b.lens[i]
		size += uint64(b.lens[k])
		k++
	}
	sent, _, err := b.sendNow(s.l.fd, k, s.client)
	if sent < k {
		st.drop(DropUDPSendFailed, uint64(k-sent))
		if err != nil {
			if st.logs.allow(logUDPSendFailed, netip.AddrPort{}, "", err, lp.now) {
				st.logs.write(s.l.b.log, logUDPSendFailed, "virtual_service", s.svc.cfg.Name, "err", err)
			}
		}
	}
	st.bytesOut.Add(size)
	s.out += size
}

// close ends the session, for the reason why: idle, its server down with close_on_down, the
// listener aborted.
func (s *udpSession) close(why endReason) {
	if s.closed {
		return
	}
	s.end(why)
	s.l.closeIfIdle()
}

// end closes the session's socket and gives back everything it holds, leaving the listener
// open even if this was its last session (see move); why is how it ended, for the connection
// log.
func (s *udpSession) end(why endReason) {
	if s.closed {
		return
	}
	s.closed = true
	l, st := s.l, s.svc.stats
	if c := &l.b.clog; c.on.Load() {
		var server netip.AddrPort
		if s.server != nil {
			server = netip.AddrPortFrom(s.server.addr, s.dstPort)
		} else {
			server = netip.AddrPortFrom(s.svc.cfg.SorryServer.Addr(), s.dstPort)
		}
		c.put(&connRecord{svc: &s.svc.cfg.Name, start: s.start, end: l.lp.now, client: s.client, server: server,
			in: s.in, out: s.out, port: l.key.addr.Port(), udp: true, reason: why})
	}
	l.lp.forget(s.fd)
	sysClose(s.fd)
	if s.self.IsValid() {
		l.b.self.remove(s.self)
	}
	if s.stopDown != nil {
		s.stopDown()
	}
	if l.sessions[s.client] == s {
		delete(l.sessions, s.client)
	}
	l.unlink(s)
	st.udpSessions.Add(-1)
	st.active.Add(-1)
	if s.server != nil {
		s.server.release(l.b.log, s.svc.cfg.Name)
	}
	l.b.connWG.Done()
}
