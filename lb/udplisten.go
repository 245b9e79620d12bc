package lb

import (
	"context"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// udpListener forwards datagrams arriving on one VIP:port. The socket is bound to the VIP itself,
// never a wildcard, so replies leave with the VIP as source (a wildcard socket would answer from
// whatever address the main table picks, and clients drop such replies).
//
// Each client address gets a session: a socket connected to its real server. The listener's
// socket and the sockets of all its sessions sit on one loop (loop.go), which reads whichever
// is ready, so a slow or dead server delays no one else's packets, and a session costs a
// descriptor and a small struct, no goroutine.
type udpListener struct {
	b   *Balancer
	key listenerKey
	lp  *loop
	fd  int
	cur atomic.Pointer[binding]

	// Only the loop's goroutine touches the fields below, up to mu.
	sessions map[netip.AddrPort]*udpSession
	groups   []forwardGroup
	// oldest and newest end the list of the sessions by their last datagram, either way: the
	// idle sweep walks from the old end and stops at the first session that cannot have
	// expired, so that it costs the sessions that expire, never the whole table (up to 10M).
	oldest, newest *udpSession
	shortestIdle   int64  // the shortest idle timeout of the sessions listed; 0 with none
	swept          uint64 // sessions the idle sweep has looked at, expired or not: its work
	rxqDrops       uint32 // the socket's count of dropped datagrams when last read (SO_RXQ_OVFL)

	// mu orders the state changes made from Apply and shutdown against the loop's.
	mu      sync.Mutex
	started bool
	retired bool // no new sessions; close the socket when the last one ends
	closed  bool

	// stopIdle, when set (nanoseconds), is the idle time that ends a session while the box
	// stops: a UDP session has no end of its own, so a stop would otherwise wait the whole
	// drain timeout for sessions whose exchange is long over.
	stopIdle atomic.Int64
}

// stopIdleTimeout ends sessions quiet this long once a stop has begun.
const stopIdleTimeout = time.Second

// maxDatagram is the largest datagram pairlb forwards either way: a jumbo frame's payload.
// Lync's UDP services (STUN, media relay) stay far below it; a larger datagram is counted
// (udp_too_large) and dropped, never forwarded truncated.
const maxDatagram = 9216

// udpBatch is how many datagrams one recvmmsg/sendmmsg call moves at most.
const udpBatch = 32

// udpRounds bounds the batches one socket is read for per wakeup, so that a flood on one
// socket does not starve the others of the loop; the socket stays readable and the loop comes
// back to it.
const udpRounds = 4

// udpLoop is what the UDP listeners of one loop share: the batches every datagram passes
// through, used only by the loop's goroutine, and the listeners whose idle sessions the loop's
// tick ends.
type udpLoop struct {
	in      *msgBatch // datagrams from clients
	out     *msgBatch // one session's share of in, towards its server
	replies *msgBatch // datagrams from a server, sent on to its client
	lns     []*udpListener
}

// sweep ends the sessions idle for their service's UDP idle timeout.
func (u *udpLoop) sweep(now int64) {
	for _, l := range u.lns {
		l.sweep(now)
	}
}

func newUDPListener(b *Balancer, k listenerKey, lp *loop, fd int) *udpListener {
	if b.rcvbufLogged.CompareAndSwap(false, true) {
		// The kernel reports twice the size it grants: the rest is its bookkeeping.
		got, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF)
		switch {
		case err != nil:
		case got/2 < udpReceiveBuffer:
			b.log.Warn("udp receive buffer smaller than asked: bursts may be dropped (counted as udp_receive_overflow); raise net.core.rmem_max or grant CAP_NET_ADMIN",
				"listener", k.String(), "asked_bytes", udpReceiveBuffer, "granted_bytes", got/2)
		default:
			b.log.Info("udp receive buffer", "listener", k.String(), "granted_bytes", got/2)
		}
	}
	return &udpListener{b: b, key: k, lp: lp, fd: fd, sessions: map[netip.AddrPort]*udpSession{}}
}

func (l *udpListener) rebind(bnd *binding) { l.cur.Store(bnd) }

func (l *udpListener) start() {
	l.mu.Lock()
	l.started = true
	l.mu.Unlock()
	l.b.acceptWG.Add(1)
	l.lp.post(l.watch)
}

func (l *udpListener) watch() {
	l.mu.Lock()
	closed := l.closed
	l.mu.Unlock()
	if closed {
		return
	}
	u := l.lp.udpState()
	u.lns = append(u.lns, l)
	if err := l.lp.add(l.fd, unix.EPOLLIN, l, 0); err != nil {
		l.b.log.Error("listener not served", "listener", l.key.String(), "err", err)
	}
}

// retire stops taking new sessions; the open ones go on until they are idle.
func (l *udpListener) retire() {
	l.mu.Lock()
	l.retired = true
	started := l.started
	l.mu.Unlock()
	if started {
		l.lp.post(l.closeIfIdle)
	} else {
		l.closeIfIdle()
	}
}

// revive takes a retired listener back into service when a reload adds its address again
// before its last session ended. It reports false when the socket is already closed.
func (l *udpListener) revive() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.retired = false
	return true
}

func (l *udpListener) isClosed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

// abort ends every session and closes the socket.
func (l *udpListener) abort() {
	l.mu.Lock()
	l.retired = true
	started := l.started
	l.mu.Unlock()
	if !started {
		l.closeIfIdle()
		return
	}
	l.lp.post(func() {
		for _, s := range l.sessions {
			s.close(endDrainTimeout) // only a stop aborts a listener with sessions
		}
		l.closeIfIdle()
	})
}

// stopping shortens the idle timeout of the sessions for a stop and ends those already quiet.
func (l *udpListener) stopping() {
	l.stopIdle.Store(int64(stopIdleTimeout))
	l.lp.post(func() { l.sweep(l.lp.now) })
}

// closeIfIdle closes a retired listener that has no session left. On a started listener only
// the loop calls it.
func (l *udpListener) closeIfIdle() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || !l.retired || len(l.sessions) > 0 {
		return
	}
	l.closed = true
	sysClose(l.fd)
	if !l.started {
		return
	}
	l.lp.forget(l.fd)
	if u := l.lp.udp; u != nil {
		for i, x := range u.lns {
			if x == l {
				u.lns = append(u.lns[:i], u.lns[i+1:]...)
				break
			}
		}
	}
	l.b.acceptWG.Done()
}

// idleTimeout is how long a session of svc may stay quiet.
func (l *udpListener) idleTimeout(svc *service) int64 {
	idle := int64(svc.cfg.UDPIdleTimeout)
	if d := l.stopIdle.Load(); d > 0 {
		return min(d, idle)
	}
	return idle
}

// sweep ends the sessions that have been idle for their service's UDP idle timeout. It walks
// from the least recently active session and stops at the first one quiet for less than the
// shortest timeout of any: every session after it has been quiet for less still.
func (l *udpListener) sweep(now int64) {
	shortest := l.shortestIdle
	if d := l.stopIdle.Load(); d > 0 && d < shortest {
		shortest = d
	}
	for s := l.oldest; s != nil && now-s.last >= shortest; {
		l.swept++
		next := s.newer
		if quiet := now - s.last; quiet >= l.idleTimeout(s.svc) {
			why := endIdleTimeout
			if quiet < int64(s.svc.cfg.UDPIdleTimeout) {
				why = endShutdown // the stop's shorter timeout
			}
			s.close(why)
		}
		s = next
	}
}

// link makes s the newest session of the list.
func (l *udpListener) link(s *udpSession) {
	s.older, s.newer = l.newest, nil
	if l.newest != nil {
		l.newest.newer = s
	} else {
		l.oldest = s
	}
	l.newest = s
	if t := int64(s.svc.cfg.UDPIdleTimeout); l.shortestIdle == 0 || t < l.shortestIdle {
		l.shortestIdle = t
	}
}

// unlink takes s out of the list.
func (l *udpListener) unlink(s *udpSession) {
	if s.older != nil {
		s.older.newer = s.newer
	} else if l.oldest == s {
		l.oldest = s.newer
	}
	if s.newer != nil {
		s.newer.older = s.older
	} else if l.newest == s {
		l.newest = s.older
	}
	s.older, s.newer = nil, nil
	if l.oldest == nil {
		l.shortestIdle = 0
	}
}

// forwardGroup collects the datagrams of one batch that belong to one session.
type forwardGroup struct {
	s   *udpSession
	idx []int
}

// addToGroup files datagram i under its session, reusing the index slices of earlier batches.
func addToGroup(groups []forwardGroup, s *udpSession, i int) []forwardGroup {
	for j := range groups {
		if groups[j].s == s {
			groups[j].idx = append(groups[j].idx, i)
			return groups
		}
	}
	if len(groups) < cap(groups) {
		groups = groups[:len(groups)+1]
		g := &groups[len(groups)-1]
		g.s, g.idx = s, append(g.idx[:0], i)
		return groups
	}
	return append(groups, forwardGroup{s: s, idx: []int{i}})
}

// handle reads the clients' datagrams and forwards them to their sessions' servers.
func (l *udpListener) handle(lp *loop, _ int8, _ uint32) {
	in := lp.udp.in
	for range udpRounds {
		n, err := in.recvNow(l.fd)
		if err != nil {
			if err != unix.EAGAIN {
				st := l.cur.Load().svc.stats
				if st.logs.allow(logUDPReadFailed, l.key.addr, "", err, lp.now) {
					st.logs.write(l.b.log, logUDPReadFailed, "listener", l.key.String(), "err", err)
				}
			}
			return
		}
		if d := in.overflow(n, &l.rxqDrops); d > 0 {
			l.cur.Load().svc.stats.drop(DropUDPReceiveOverflow, uint64(d))
		}
		l.forward(lp, n)
		if l.closed || n < len(in.hdrs) {
			// Closed: the last session of a retired listener could not move. Short: the
			// socket is drained, or nearly; if not, it is still readable.
			return
		}
	}
}

// forward sends the n datagrams of the loop's input batch on to their sessions' servers.
func (l *udpListener) forward(lp *loop, n int) {
	in, out := lp.udp.in, lp.udp.out
	bnd := l.cur.Load()
	st := bnd.svc.stats

	// Group the batch by session so each session's datagrams go out in one sendmmsg; the
	// order within a session is kept, which is all UDP promises.
	groups := l.groups[:0]
	for i := range n {
		if in.truncated(i) {
			st.drop(DropUDPTooLarge, 1)
			continue
		}
		from := in.from(i)
		s := l.sessions[from]
		if s != nil && s.checked != lp.now {
			// Once per session and round, not per datagram: is its server still there?
			s.checked = lp.now
			if s.mustMove(bnd, lp.now) {
				if s = l.move(lp, bnd, s); s == nil {
					continue
				}
			}
		}
		if s == nil {
			if s = l.newSession(lp, bnd, from); s == nil {
				continue
			}
		}
		groups = addToGroup(groups, s, i)
	}
	l.groups = groups
	for _, g := range groups {
		g.s.touch(lp.now)
		var size uint64
		for k, i := range g.idx {
			out.carry(k, in.bufs[i][:in.lens[i]])
			size += uint64(in.lens[i])
		}
		sent, refused, err := out.sendNow(g.s.fd, len(g.idx), netip.AddrPort{})
		if refused {
			l.b.suspect(g.s.svc.cfg.Name, g.s.server, evidenceUDPRefused, lp.now)
		}
		if sent < len(g.idx) {
			// The server's socket is full or refused: those datagrams are lost, counted.
			st.drop(DropUDPSendFailed, uint64(len(g.idx)-sent))
			if err != nil {
				if st.logs.allow(logUDPSendFailed, netip.AddrPort{}, "", err, lp.now) {
					st.logs.write(l.b.log, logUDPSendFailed, "virtual_service", g.s.svc.cfg.Name, "err", err)
				}
			}
		}
		st.bytesIn.Add(size)
		g.s.in += size
	}
}

// move gives the client of session s a new session through the dial plan, as for a new client
// (the persistence entry follows the new choice), then ends s: its socket towards the old
// server is closed and its active count released. The datagram that found the old server gone
// goes to the new one, so none is lost. With nowhere else to go (no server available and no
// sorry server), s stays where it is, as a TCP connection would, and looks again later: health
// may be wrong, and a dead server loses nothing more. The sessions of a retired listener (its
// service removed) do not move: it takes no new session. It returns the session to use, or
// nil, counted, when the client is no longer admitted.
func (l *udpListener) move(lp *loop, bnd *binding, s *udpSession) *udpSession {
	l.mu.Lock()
	retired := l.retired
	l.mu.Unlock()
	if retired {
		s.retry = lp.now + moveRetry
		return s
	}
	svc, client := bnd.svc, s.client
	if !svc.allowed(client.Addr()) {
		s.close(endAccessDenied)
		svc.stats.drop(DropAccessDenied, 1)
		return nil
	}
	fd, r, ok := connectUDP(l.b, bnd, client, true)
	if !ok {
		s.retry = lp.now + moveRetry
		return s
	}
	s.end(endMoved)
	ns := l.open(lp, bnd, client, fd, r, false, s.hop, s.note)
	if ns == nil {
		l.closeIfIdle()
		return nil
	}
	svc.stats.udpMoves.Add(1)
	return ns
}

// newSession admits a new client: access control, the session bound, a server choice and the
// connected socket towards it. It returns nil, counted, when the datagram must be dropped.
func (l *udpListener) newSession(lp *loop, bnd *binding, client netip.AddrPort) *udpSession {
	svc, st := bnd.svc, bnd.svc.stats
	hop, note := l.b.hopUDP(client)
	if l.b.isLoop(hop) {
		l.b.loopRefused(svc, l.key.String(), client)
		return nil
	}
	if !svc.allowed(client.Addr()) {
		st.drop(DropAccessDenied, 1)
		return nil
	}
	// Checked again under the lock; this first look spares a flood of new clients beyond the
	// bound a socket and a server choice each.
	if st.udpSessions.Load() >= int64(svc.cfg.UDPMaxSessions) {
		st.drop(DropUDPTableFull, 1)
		return nil
	}
	fd, r, ok := connectUDP(l.b, bnd, client, false)
	if !ok {
		return nil
	}
	return l.open(lp, bnd, client, fd, r, true, hop, note)
}

// open makes the session of client on fd, a socket connected to r (nil: the sorry server)
// whose active count is taken. A fresh session is a new client's: it is held to the table's
// bound and counted among the service's connections; one that replaces a moved session is
// neither (the client is not new, and its old session's place is free). It returns nil,
// counted, when the listener has retired, the table has filled meanwhile (if fresh) or the
// loop cannot watch the socket.
//
// hop and note are the loop guard's (loopguard.go): the session's hop number, and whether its
// socket is to be noted whatever its destination.
func (l *udpListener) open(lp *loop, bnd *binding, client netip.AddrPort, fd int, r *realServer, fresh bool, hop uint16, note bool) *udpSession {
	svc, st := bnd.svc, bnd.svc.stats
	to := svc.cfg.SorryAddrPort(bnd.port)
	if r != nil {
		to = r.dialAddr(bnd.port)
	}
	var self netip.AddrPort
	if note || l.b.toListener(to, false) {
		self = l.b.noteSelf(fd, to, hop) // before the first datagram leaves
	}
	reject := func(reason DropReason) *udpSession {
		sysClose(fd)
		if self.IsValid() {
			l.b.self.remove(self)
		}
		if r != nil {
			r.release(l.b.log, svc.cfg.Name)
		}
		st.drop(reason, 1)
		return nil
	}

	l.mu.Lock()
	switch {
	case l.retired:
		l.mu.Unlock()
		return reject(DropServiceClosed)
	case fresh && st.udpSessions.Load() >= int64(svc.cfg.UDPMaxSessions):
		l.mu.Unlock()
		return reject(DropUDPTableFull)
	}
	s := &udpSession{l: l, client: client, fd: fd, svc: svc, server: r, last: lp.now, checked: lp.now, self: self, hop: hop, note: note,
		start: lp.now, dstPort: to.Port()}
	if err := lp.add(fd, unix.EPOLLIN, s, 0); err != nil {
		l.mu.Unlock()
		if st.logs.allow(logUDPSessionDropped, netip.AddrPort{}, "", err, lp.now) {
			st.logs.write(l.b.log, logUDPSessionDropped, "virtual_service", svc.cfg.Name, "err", err)
		}
		return reject(DropLocalError)
	}
	l.sessions[client] = s
	l.link(s)
	st.udpSessions.Add(1)
	st.active.Add(1)
	if fresh {
		st.accepted.Add(1)
		bnd.accepted.accepted.Add(1)
	}
	if r != nil {
		r.total.Add(1)
	}
	l.b.connWG.Add(1) // under l.mu with retired false: shutdown has not started waiting
	l.mu.Unlock()

	if r != nil && svc.cfg.CloseOnDown {
		s.stopDown = context.AfterFunc(r.downContext(), func() { lp.post(func() { s.close(endServerDown) }) })
	}
	return s
}
