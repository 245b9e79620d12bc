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

	// Only the loop's goroutine touches sessions and groups.
	sessions map[netip.AddrPort]*udpSession
	groups   []forwardGroup

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
	self     netip.AddrPort // the socket's local address, noted by the loop guard
}

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

// udpState returns the loop's UDP state, made with the loop's first UDP listener.
func (lp *loop) udpState() *udpLoop {
	if lp.udp == nil {
		lp.udp = &udpLoop{
			in:      newMsgBatch(udpBatch, maxDatagram),
			out:     newMsgBatch(udpBatch, 0),
			replies: newMsgBatch(udpBatch, maxDatagram),
		}
		lp.onTick(lp.udp.sweep)
	}
	return lp.udp
}

// sweep ends the sessions idle for their service's UDP idle timeout.
func (u *udpLoop) sweep(now int64) {
	for _, l := range u.lns {
		l.sweep(now)
	}
}

// listenUDP opens a datagram socket on addr, also when the box does not hold addr yet (see
// bindVIP). Go's poller never sees it: the listener's loop reads it.
func listenUDP(addr netip.AddrPort) (int, error) {
	return bindVIP(addr, unix.SOCK_DGRAM)
}

func newUDPListener(b *Balancer, k listenerKey, lp *loop, fd int) *udpListener {
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
			s.close()
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
	unix.Close(l.fd)
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

// sweep ends the sessions that have been idle for their service's UDP idle timeout.
func (l *udpListener) sweep(now int64) {
	for _, s := range l.sessions {
		if now-s.last >= l.idleTimeout(s.svc) {
			s.close()
		}
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
				l.b.log.Warn("udp read failed", "listener", l.key.String(), "err", err)
			}
			return
		}
		l.forward(lp, n)
		if n < len(in.hdrs) {
			return // the socket is drained, or nearly: if not, it is still readable
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
			st.drop(DropUDPTooLarge)
			continue
		}
		from := in.from(i)
		s := l.sessions[from]
		if s == nil {
			if s = l.newSession(lp, bnd, from); s == nil {
				continue
			}
		}
		groups = addToGroup(groups, s, i)
	}
	l.groups = groups
	for _, g := range groups {
		g.s.last = lp.now
		var size uint64
		for k, i := range g.idx {
			out.carry(k, in.bufs[i][:in.lens[i]])
			size += uint64(in.lens[i])
		}
		sent, err := out.sendNow(g.s.fd, len(g.idx), netip.AddrPort{})
		if sent < len(g.idx) {
			// The server's socket is full or refused: those datagrams are lost, counted.
			st.dropped[DropUDPSendFailed].Add(uint64(len(g.idx) - sent))
			if err != nil {
				l.b.log.Debug("udp send failed", "virtual_service", g.s.svc.cfg.Name, "err", err)
			}
		}
		st.bytesIn.Add(size)
	}
}

// newSession admits a new client: access control, the session bound, a server choice and the
// connected socket towards it. It returns nil, counted, when the datagram must be dropped.
func (l *udpListener) newSession(lp *loop, bnd *binding, client netip.AddrPort) *udpSession {
	svc, st := bnd.svc, bnd.svc.stats
	if l.b.udpLoop(client) {
		l.b.loopRefused(svc, l.key.String(), client)
		return nil
	}
	if !svc.allowed(client.Addr()) {
		st.drop(DropAccessDenied)
		return nil
	}
	// Checked again under the lock; this first look spares a flood of new clients beyond the
	// bound a socket and a server choice each.
	if st.udpSessions.Load() >= int64(svc.cfg.UDPMaxSessions) {
		st.drop(DropUDPTableFull)
		return nil
	}
	fd, r, ok := connectUDP(l.b, bnd, client)
	if !ok {
		return nil
	}
	to := svc.cfg.SorryAddrPort(bnd.port)
	if r != nil {
		to = r.dialAddr(bnd.port)
	}
	var self netip.AddrPort
	if l.b.isLocal(to.Addr()) {
		self = l.b.noteSelf(fd, to) // before the first datagram leaves (loopguard.go)
	}
	reject := func(reason DropReason) *udpSession {
		unix.Close(fd)
		if self.IsValid() {
			l.b.self.remove(self)
		}
		if r != nil {
			r.active.Add(-1)
		}
		st.drop(reason)
		return nil
	}

	l.mu.Lock()
	switch {
	case l.retired:
		l.mu.Unlock()
		return reject(DropServiceClosed)
	case st.udpSessions.Load() >= int64(svc.cfg.UDPMaxSessions):
		l.mu.Unlock()
		return reject(DropUDPTableFull)
	}
	s := &udpSession{l: l, client: client, fd: fd, svc: svc, server: r, last: lp.now, self: self}
	if err := lp.add(fd, unix.EPOLLIN, s, 0); err != nil {
		l.mu.Unlock()
		l.b.log.Warn("udp session dropped", "virtual_service", svc.cfg.Name, "err", err)
		return reject(DropUDPSendFailed)
	}
	l.sessions[client] = s
	st.udpSessions.Add(1)
	st.accepted.Add(1)
	st.active.Add(1)
	bnd.accepted.accepted.Add(1)
	l.b.connWG.Add(1) // under l.mu with retired false: shutdown has not started waiting
	l.mu.Unlock()

	if r != nil && svc.cfg.CloseOnDown {
		s.stopDown = context.AfterFunc(r.downContext(), func() { lp.post(s.close) })
	}
	return s
}

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
			continue // ICMP port unreachable from the server; health checks judge it
		default:
			s.close() // a hard error
			return
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
	s.last = lp.now
	k := 0
	var size uint64
	for i := range n {
		if b.truncated(i) {
			st.drop(DropUDPTooLarge)
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
	sent, _ := b.sendNow(s.l.fd, k, s.client)
	if sent < k {
		st.dropped[DropUDPSendFailed].Add(uint64(k - sent))
	}
	st.bytesOut.Add(size)
}

// close ends the session: idle, its server down with close_on_down, or the listener aborted.
func (s *udpSession) close() {
	if s.closed {
		return
	}
	s.closed = true
	l, st := s.l, s.svc.stats
	l.lp.forget(s.fd)
	unix.Close(s.fd)
	if s.self.IsValid() {
		l.b.self.remove(s.self)
	}
	if s.stopDown != nil {
		s.stopDown()
	}
	if l.sessions[s.client] == s {
		delete(l.sessions, s.client)
	}
	st.udpSessions.Add(-1)
	st.active.Add(-1)
	if s.server != nil {
		s.server.release(l.b.log, s.svc.cfg.Name)
	}
	l.b.connWG.Done()
	l.closeIfIdle()
}
