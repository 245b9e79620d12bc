package lb

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// A tcpConn is one proxied connection: the client's socket, accepted by a loop, and the socket
// towards the real server, dialled without blocking from the same loop. Only that loop touches
// it.
type tcpConn struct {
	lp   *loop
	b    *Balancer
	bnd  *binding
	plan dialPlan
	real *realServer // nil until connected, and for the sorry server

	fd    [2]int // by side; -1 when not open
	ready [2]uint8
	// hop is the loop guard's (loopguard.go): the connection's hop number.
	hop uint16
	// timerSlot is the connection's list on its loop's timer wheel (tcptimers.go).
	timerSlot int32
	dir       [2]direction // [sideClient]: client to server, [sideServer]: server to client

	dialTo                         netip.AddrPort
	dialing, closed, idled, queued bool
	reset                          bool // close with RST
	piped                          bool // in lp.piped: a direction has held a pipe
	listed                         bool // on the timer wheel: from newTCPConn to close
	// note is the loop guard's: whether the socket towards the server is to be noted whatever
	// its destination.
	note       bool
	lastActive int64 // unix ns
	start      int64 // unix ns of the accept, for the connection log
	// fin is the side whose peer ended its direction first, plus one; 0 while neither has.
	fin      int8
	stopDown func() bool

	// The timer wheel's: the connection's deadline (unix ns, 0 for none), its neighbours on its
	// list.
	timerAt      int64
	tprev, tnext *tcpConn

	// The loop guard's: the local address of the socket towards the server, once noted.
	self netip.AddrPort
}

// Sides of a connection, and directions: direction d reads side d and writes the other.
const (
	sideClient = 0
	sideServer = 1
)

// Readiness of a side, from the edge-triggered events.
const (
	canRead    uint8 = 1 << iota
	canWrite         // cleared when a write would block, set by the next EPOLLOUT
	peerClosed       // the peer has sent FIN or RST: read until the end, never assume drained
)

// connEvents: every event, edge-triggered, so a socket is registered once and never modified.
const connEvents = unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET

// direction is one way of a connection. Bytes are read into the loop's scratch buffer and
// written out at once; only what the destination does not take is kept, in a pooled buffer.
// A read that fills the scratch buffer means bulk data: the direction then moves by splice(2)
// through a pooled pipe (HAProxy's splice-auto), and keeps the pipe until it has been quiet
// for a tick, so that each burst of a transfer does not start over with a copy.
type direction struct {
	pend     *[]byte // bytes read but not yet written, [off:end]
	off, end int
	pipe     *relayPipe
	inPipe   int   // bytes in the pipe not yet written
	last     int64 // unix ns of the last read, for giving the pipe back
	eof      bool  // the source has ended
	done     bool  // ended and the destination told (shut down or about to close)
	total    *atomic.Uint64
	moved    uint64 // bytes read from the source, for the connection log
}

func (h *direction) pending() bool { return h.end > h.off || h.inPipe > 0 }

// roundBudget bounds the bytes one direction moves per wakeup, so that a bulk transfer does not
// starve the loop's other connections; the loop continues it next round.
const roundBudget = 1 << 20

// newTCPConn takes fd, a client connection from client that its listener admitted, onto lp
// and starts dialling its real server; hop and note are the loop guard's (loopguard.go).
func newTCPConn(lp *loop, b *Balancer, bnd *binding, fd int, client netip.AddrPort, hop uint16, note bool) {
	svc, st := bnd.svc, bnd.svc.stats
	b.connWG.Add(1) // before shutdown's Wait: shutdown waits for the loops to stop accepting
	st.active.Add(1)
	c := &tcpConn{lp: lp, b: b, bnd: bnd, fd: [2]int{fd, -1}, lastActive: lp.now, start: lp.now, hop: hop, note: note}
	c.plan = dialPlan{b: b, bnd: bnd, client: client}
	c.dir[sideClient].total, c.dir[sideServer].total = &st.bytesIn, &st.bytesOut
	c.ready[sideClient] = canWrite
	lp.timers.arm(c, 0) // the loop's table of its connections
	if err := lp.add(fd, connEvents, c, sideClient); err != nil {
		st.drop(DropLocalError, 1)
		if st.logs.allow(logConnDropped, netip.AddrPort{}, "", err, lp.now) {
			st.logs.write(b.log, logConnDropped, "virtual_service", svc.cfg.Name, "err", err)
		}
		c.reset = true
		c.close(endLocalError)
		return
	}
	c.dialNext()
}

// dialNext starts a connection to the next destination of the dial plan, or gives up on the
// client when none is left.
func (c *tcpConn) dialNext() {
	for {
		local, to, ok := c.plan.next()
		if !ok {
			c.unavailable()
			return
		}
		c.dialTo = to // for the connection log also when the dial fails at once
		fd, err := dialTCP(local, to, c.bnd.svc.cfg.Transparent, c.bnd.svc.cfg.TCPKeepalive)
		if err == nil && (c.note || c.b.toListener(to, true)) {
			c.self = c.b.noteSelf(fd, to, c.hop)
		}
		if err == nil {
			if err = c.lp.add(fd, connEvents, c, sideServer); err == nil {
				c.fd[sideServer], c.dialing = fd, true
				c.ready[sideServer] = 0
				var deadline int64
				if d := c.bnd.global.DialTimeout; d > 0 {
					deadline = c.lp.now + int64(d)
				}
				c.lp.timers.arm(c, deadline)
				return
			}
			sysClose(fd)
			c.forgetSelf()
		}
		c.plan.failed(to, err)
	}
}

// forgetSelf takes the server side's address out of the loop guard's table once its socket is
// closed.
func (c *tcpConn) forgetSelf() {
	if c.self.IsValid() {
		c.b.self.remove(c.self)
		c.self = netip.AddrPort{}
	}
}

// dialFailed abandons the attempt under way and tries the next destination.
func (c *tcpConn) dialFailed(err error) {
	fd := c.fd[sideServer]
	c.lp.forget(fd)
	sysClose(fd)
	c.forgetSelf()
	c.fd[sideServer], c.dialing = -1, false
	c.plan.failed(c.dialTo, err)
	c.dialNext()
}

// unavailable answers a client no server took: an HTTP redirect where the service has one
// (the appliance's "Not Available Redirection"), a reset otherwise.
func (c *tcpConn) unavailable() {
	redirect := c.bnd.svc.cfg.UnavailableRedirect
	if redirect == "" {
		c.reset = true
		c.close(c.plan.outcome)
		return
	}
	fd := c.fd[sideClient]
	c.lp.remove(fd) // the duplicate FileConn makes would keep it in the epoll set
	f := os.NewFile(uintptr(fd), "client")
	nc, err := net.FileConn(f)
	f.Close()
	c.fd[sideClient] = -1
	switch {
	case err != nil:
	case c.b.unavailable.Add(1) > maxUnavailable:
		c.b.unavailable.Add(-1)
		if tc, ok := nc.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		nc.Close()
	default:
		c.b.connWG.Add(1)
		go func() {
			defer c.b.connWG.Done()
			defer c.b.unavailable.Add(-1)
			serveUnavailable(nc, redirect)
		}()
	}
	c.close(c.plan.outcome)
}

func (c *tcpConn) handle(_ *loop, side int8, ev uint32) {
	if c.closed {
		return
	}
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		c.ready[side] |= canRead
	}
	if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		c.ready[side] |= peerClosed
	}
	if ev&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		c.ready[side] |= canWrite
	}
	if c.dialing {
		if side != sideServer {
			return // the client's bytes wait in its socket until the server answers
		}
		if ev&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
			if errno, _ := unix.GetsockoptInt(c.fd[sideServer], unix.SOL_SOCKET, unix.SO_ERROR); errno != 0 {
				c.dialFailed(fmt.Errorf("connect %s: %w", c.dialTo, unix.Errno(errno)))
				return
			}
		}
		if ev&(unix.EPOLLOUT|unix.EPOLLHUP) == 0 {
			return
		}
		c.connected()
	}
	c.pump()
}

func (c *tcpConn) connected() {
	c.dialing = false
	c.armIdle()
	c.real = c.plan.succeeded()
	if c.real != nil && c.bnd.svc.cfg.CloseOnDown {
		lp := c.lp
		c.stopDown = context.AfterFunc(c.real.downContext(), func() { lp.post(func() { c.close(endServerDown) }) })
	}
}

// pump moves what can move in both directions without waiting, and closes the connection once
// both have ended.
func (c *tcpConn) pump() {
	if c.closed || c.dialing {
		return
	}
	if !c.move(sideClient) || !c.move(sideServer) {
		return
	}
	if c.dir[sideClient].done && c.dir[sideServer].done {
		why := endClientClosed
		if c.fin == sideServer+1 {
			why = endServerClosed
		}
		c.close(why)
	}
}

// move relays direction d until its source would block, its destination is full, the source
// has ended or the round's budget is spent. It reports false when it closed the connection.
func (c *tcpConn) move(d int) bool {
	h := &c.dir[d]
	src, dst := d, 1-d
	for budget := roundBudget; ; {
		if h.pending() {
			if c.ready[dst]&canWrite == 0 {
				return true // EPOLLOUT on dst resumes
			}
			if err := c.flush(h, dst); err != nil {
				c.close(resetBy(dst))
				return false
			}
			if h.pending() {
				return true
			}
		}
		if h.eof {
			if !h.done {
				h.done = true
				// The first direction to end half-closes, so the peer sees the end while the
				// other direction goes on; after the second, both sockets close at once.
				if !c.dir[dst].done {
					sysShutdownWrite(c.fd[dst])
				}
			}
			return true
		}
		if c.ready[src]&canRead == 0 {
			return true
		}
		if budget <= 0 {
			c.lp.continueLater(c)
			return true
		}
		n, failed := c.fill(h, src, dst)
		if failed != endNone {
			c.close(failed)
			return false
		}
		budget -= n
	}
}

// fill reads what src has (or splices it into the pipe) and writes it to dst at once. It
// returns the bytes read, and how the connection ended if a socket failed (the side that failed
// is the reason); an end of src sets eof.
func (c *tcpConn) fill(h *direction, src, dst int) (int, endReason) {
	var n int
	var errno unix.Errno
	if h.pipe != nil {
		n, errno = sysSplice(c.fd[src], h.pipe.w, maxSplice)
	} else {
		n, errno = sysRead(c.fd[src], c.lp.scratch)
	}
	switch {
	case errno == unix.EAGAIN:
		c.ready[src] &^= canRead
		return 0, endNone
	case errno == unix.EINTR:
		return 0, endNone
	case errno != 0:
		return 0, resetBy(src)
	case n == 0:
		h.eof = true
		if c.fin == 0 {
			c.fin = int8(src) + 1
		}
		return 0, endNone
	}
	h.total.Add(uint64(n)) // counted before the peer can see it, for readers of the counters
	h.moved += uint64(n)
	c.lastActive, h.last = c.lp.now, c.lp.now
	if h.pipe != nil {
		h.inPipe = n
		if c.flush(h, dst) != nil {
			return n, resetBy(dst)
		}
		return n, endNone
	}
	if n == len(c.lp.scratch) {
		// Bulk: splice from now on. Without a pipe (descriptor limit) the buffer carries on.
		h.pipe, _ = pipePool.Get().(*relayPipe)
		if h.pipe != nil && !c.piped {
			c.piped = true // the loop's tick gives the pipe back once the direction is quiet
			c.lp.piped = append(c.lp.piped, c)
		}
	} else if c.ready[src]&peerClosed == 0 {
		// A short read drained the socket: data arriving after it raises a new edge. (After
		// FIN or RST no edge is due, so then the read goes on until it sees the end.)
		c.ready[src] &^= canRead
	}
	w, errno := sysWrite(c.fd[dst], c.lp.scratch[:n])
	switch errno {
	case 0:
	case unix.EAGAIN, unix.EINTR:
		w = 0
	default:
		return n, resetBy(dst)
	}
	if w < n {
		c.ready[dst] &^= canWrite
		h.pend = bufPool.Get().(*[]byte)
		h.off, h.end = 0, copy(*h.pend, c.lp.scratch[w:n])
	}
	return n, endNone
}

// flush writes what direction h holds to dst until it is empty or dst would block.
func (c *tcpConn) flush(h *direction, dst int) error {
	fd := c.fd[dst]
	for h.inPipe > 0 {
		m, errno := sysSplice(h.pipe.r, fd, h.inPipe)
		switch errno {
		case 0:
			h.inPipe -= m
		case unix.EINTR:
		case unix.EAGAIN:
			c.ready[dst] &^= canWrite
			return nil
		default:
			return errno
		}
	}
	for h.end > h.off {
		w, errno := sysWrite(fd, (*h.pend)[h.off:h.end])
		switch errno {
		case 0:
			h.off += w
		case unix.EINTR:
		case unix.EAGAIN:
			c.ready[dst] &^= canWrite
			return nil
		default:
			return errno
		}
	}
	if h.pend != nil {
		bufPool.Put(h.pend)
		h.pend, h.off, h.end = nil, 0, 0
	}
	return nil
}

// close closes both sockets and gives back everything the connection holds; why is how it
// ended, for the connection log.
func (c *tcpConn) close(why endReason) {
	if c.closed {
		return
	}
	c.closed = true
	if l := &c.b.clog; l.on.Load() {
		l.put(&connRecord{svc: &c.bnd.svc.cfg.Name, start: c.start, end: c.lp.now, client: c.plan.client, server: c.dialTo,
			in: c.dir[sideClient].moved, out: c.dir[sideServer].moved, port: c.bnd.port.Listen, reason: why})
	}
	reset := c.reset || (c.idled && c.bnd.svc.cfg.ResetOnClose)
	for side, fd := range c.fd {
		if fd < 0 {
			continue
		}
		c.lp.forget(fd)
		if reset {
			resetFD(fd)
		} else {
			sysClose(fd)
		}
		c.fd[side] = -1
	}
	c.forgetSelf()
	c.lp.timers.remove(c)
	for d := range c.dir {
		h := &c.dir[d]
		if h.pipe != nil {
			if h.inPipe > 0 {
				h.pipe.drain()
			}
			pipePool.Put(h.pipe)
			h.pipe = nil
		}
		if h.pend != nil {
			bufPool.Put(h.pend)
			h.pend = nil
		}
	}
	if c.stopDown != nil {
		c.stopDown()
	}
	if c.dialing && c.plan.cur != nil {
		c.plan.cur.active.Add(-1) // the attempt under way held it
	}
	if c.real != nil {
		c.real.release(c.b.log, c.bnd.svc.cfg.Name)
	}
	c.bnd.svc.stats.active.Add(-1)
	c.b.connWG.Done()
}

// armIdle sets c's deadline to the moment it will have been quiet for its service's idle
// timeout, if it has one.
func (c *tcpConn) armIdle() {
	if idle := c.bnd.svc.cfg.IdleTimeout; idle > 0 {
		c.lp.timers.arm(c, c.lastActive+int64(idle))
	} else {
		c.lp.timers.arm(c, 0)
	}
}

// expired is called when c's deadline has come: a dial that has not connected in time gives way
// to the next destination, a connection quiet for its idle timeout closes, and one active since
// its deadline was set waits for the new one.
func (c *tcpConn) expired(now int64) {
	switch idle := c.bnd.svc.cfg.IdleTimeout; {
	case c.dialing: // its dial timeout has passed
		c.dialFailed(fmt.Errorf("connect %s: %w", c.dialTo, os.ErrDeadlineExceeded))
	case idle > 0 && now-c.lastActive >= int64(idle):
		c.idled = true
		c.close(endIdleTimeout)
	default:
		c.armIdle()
	}
}

// givePipesBack returns the pipes of c's directions that have been quiet for a tick, so that an
// idle connection holds none; it reports whether c still holds one.
func (c *tcpConn) givePipesBack(now int64) bool {
	held := false
	for d := range c.dir {
		h := &c.dir[d]
		if h.pipe != nil && h.inPipe == 0 && now-h.last >= int64(loopTick) {
			pipePool.Put(h.pipe)
			h.pipe = nil
		}
		held = held || h.pipe != nil
	}
	return held
}
