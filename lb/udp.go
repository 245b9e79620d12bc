package lb

import (
	"context"
	"errors"
	"golang.org/x/sys/unix"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// udpListener forwards datagrams arriving on one VIP:port. The socket is bound to the VIP itself,
// never a wildcard, so replies leave with the VIP as source (a wildcard socket would answer from
// whatever address the main table picks, and clients drop such replies).
//
// Each client address gets a session: a socket connected to its real server, read by a goroutine
// of its own, so a slow or dead server delays no one else's packets.
type udpListener struct {
	b    *Balancer
	key  listenerKey
	conn *net.UDPConn
	raw  syscall.RawConn
	cur  atomic.Pointer[binding]

	mu       sync.RWMutex
	sessions map[netip.AddrPort]*udpSession
	retired  bool // no new sessions; close the socket when the last one ends
	closed   bool

	// stopIdle, when set (nanoseconds), is the idle time that ends a session while the box
	// stops: a UDP session has no end of its own, so a stop would otherwise wait the whole
	// drain timeout for sessions whose exchange is long over.
	stopIdle atomic.Int64
}

// stopIdleTimeout ends sessions quiet this long once a stop has begun.
const stopIdleTimeout = time.Second

// stopping shortens the idle timeout of the sessions for a stop and wakes every session so
// that those already quiet end now.
func (l *udpListener) stopping() {
	l.stopIdle.Store(int64(stopIdleTimeout))
	l.mu.RLock()
	defer l.mu.RUnlock()
	for _, s := range l.sessions {
		_ = s.up.SetReadDeadline(time.Now())
	}
}

type udpSession struct {
	l      *udpListener
	client netip.AddrPort
	up     *net.UDPConn
	upRaw  syscall.RawConn
	readFn func(fd uintptr) bool // s.readOnce, bound once
	batch  *msgBatch             // set by readOnce
	svc    *service
	server *realServer  // nil for the sorry server
	last   atomic.Int64 // unix nanoseconds of the last datagram either way
}

// maxDatagram is the largest datagram pairlb forwards either way: a jumbo frame's payload.
// Lync's UDP services (STUN, media relay) stay far below it; a larger datagram is counted
// (udp_too_large) and dropped, never forwarded truncated.
const (
	maxDatagram   = 9216
	sessionBuffer = maxDatagram
)

func newUDPListener(b *Balancer, k listenerKey, c *net.UDPConn) (*udpListener, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	return &udpListener{b: b, key: k, conn: c, raw: raw, sessions: map[netip.AddrPort]*udpSession{}}, nil
}

func (l *udpListener) rebind(bnd *binding) { l.cur.Store(bnd) }

func (l *udpListener) start() {
	l.b.acceptWG.Add(1)
	go l.serve()
}

func (l *udpListener) retire() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.retired = true
	l.closeIfIdleLocked()
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
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.closed
}

func (l *udpListener) abort() {
	l.mu.Lock()
	sessions := make([]*udpSession, 0, len(l.sessions))
	for _, s := range l.sessions {
		sessions = append(sessions, s)
	}
	l.retired = true
	l.mu.Unlock()
	for _, s := range sessions {
		_ = s.up.Close()
	}
	l.mu.Lock()
	l.closeLocked()
	l.mu.Unlock()
}

func (l *udpListener) closeIfIdleLocked() {
	if l.retired && len(l.sessions) == 0 {
		l.closeLocked()
	}
}

func (l *udpListener) closeLocked() {
	if !l.closed {
		l.closed = true
		_ = l.conn.Close()
	}
}

// udpBatch is how many datagrams one recvmmsg/sendmmsg call moves at most.
const udpBatch = 32

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

func (l *udpListener) serve() {
	defer l.b.acceptWG.Done()
	in := newMsgBatch(udpBatch, maxDatagram)
	out := newMsgBatch(udpBatch, 0)
	var groups []forwardGroup
	for {
		n, err := in.recv(l.raw)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			l.b.log.Warn("udp read failed", "listener", l.key.String(), "err", err)
			continue
		}
		bnd := l.cur.Load()
		st := bnd.svc.stats
		now := time.Now().UnixNano()

		// Group the batch by session so each session's datagrams go out in one sendmmsg; the
		// order within a session is kept, which is all UDP promises.
		groups = groups[:0]
		for i := range n {
			if in.truncated(i) {
				st.drop(DropUDPTooLarge)
				continue
			}
			from := in.from(i)
			l.mu.RLock()
			s := l.sessions[from]
			l.mu.RUnlock()
			if s == nil {
				if s = l.newSession(bnd, from); s == nil {
					continue
				}
			}
			groups = addToGroup(groups, s, i)
		}
		for _, g := range groups {
			g.s.last.Store(now)
			var size uint64
			for k, i := range g.idx {
				out.carry(k, in.bufs[i][:in.lens[i]])
				size += uint64(in.lens[i])
			}
			sent, err := out.send(g.s.upRaw, len(g.idx))
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
}

// newSession admits a new client: access control, the session bound, a server choice and the
// connected socket towards it. It returns nil, counted, when the datagram must be dropped.
func (l *udpListener) newSession(bnd *binding, client netip.AddrPort) *udpSession {
	svc, st := bnd.svc, bnd.svc.stats
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
	up, r, ok := connect(l.b, bnd, client, func(local, to netip.AddrPort) (*net.UDPConn, error) {
		return svc.udpDialer.DialUDP(context.Background(), "udp", local, to)
	})
	if !ok {
		return nil
	}
	reject := func(reason DropReason) *udpSession {
		_ = up.Close()
		if r != nil {
			r.active.Add(-1)
		}
		st.drop(reason)
		return nil
	}
	raw, err := up.SyscallConn()
	if err != nil {
		return reject(DropUDPSendFailed)
	}
	s := &udpSession{l: l, client: client, up: up, upRaw: raw, svc: svc, server: r}
	s.readFn = s.readOnce
	s.last.Store(time.Now().UnixNano())

	l.mu.Lock()
	switch {
	case l.retired:
		l.mu.Unlock()
		return reject(DropServiceClosed)
	case st.udpSessions.Load() >= int64(svc.cfg.UDPMaxSessions):
		l.mu.Unlock()
		return reject(DropUDPTableFull)
	}
	l.sessions[client] = s
	st.udpSessions.Add(1)
	st.accepted.Add(1)
	st.active.Add(1)
	bnd.accepted.accepted.Add(1)
	l.b.connWG.Add(1) // under l.mu with retired false: shutdown has not started waiting
	l.mu.Unlock()

	go s.relayReplies()
	return s
}

// replyBatches are the buffers sessions read replies into. A session takes one only when a
// reply is there to read and gives it back before it waits again, so an idle session holds no
// buffer.
var replyBatches = sync.Pool{New: func() any { return newMsgBatch(8, sessionBuffer) }}

// relayReplies sends the real server's datagrams back to the client from the VIP socket until
// the session has been idle for the service's UDP idle timeout.
func (s *udpSession) relayReplies() {
	defer s.end()
	if s.server != nil && s.svc.cfg.CloseOnDown {
		stop := context.AfterFunc(s.server.downContext(), func() { _ = s.up.Close() })
		defer stop()
	}
	st := s.svc.stats
	idleTimeout := func() time.Duration {
		if d := time.Duration(s.l.stopIdle.Load()); d > 0 {
			return min(d, s.svc.cfg.UDPIdleTimeout)
		}
		return s.svc.cfg.UDPIdleTimeout
	}
	_ = s.up.SetReadDeadline(time.Unix(0, s.last.Load()).Add(idleTimeout()))
	for {
		b, n, err := s.readReplies()
		switch {
		case err == nil:
		case errors.Is(err, os.ErrDeadlineExceeded):
			// The deadline is moved only when it fires, not on every datagram.
			last, idle := time.Unix(0, s.last.Load()), idleTimeout()
			if time.Since(last) >= idle {
				return
			}
			_ = s.up.SetReadDeadline(last.Add(idle))
			continue
		case errors.Is(err, syscall.ECONNREFUSED):
			continue // ICMP port unreachable from the server; health checks judge it
		default:
			return // closed by abort, or a hard error
		}
		s.last.Store(time.Now().UnixNano())
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
			b.setDest(k, s.client)
			size += uint64(b.lens[k])
			k++
		}
		sent, _ := b.send(s.l.raw, k)
		replyBatches.Put(b)
		if sent < k {
			st.dropped[DropUDPSendFailed].Add(uint64(k - sent))
		}
		st.bytesOut.Add(size)
	}
}

// readReplies waits for the server's datagrams and reads those queued into a pooled batch.
func (s *udpSession) readReplies() (*msgBatch, int, error) {
	s.batch = nil
	err := s.upRaw.Read(s.readFn)
	b := s.batch
	if err == nil && b != nil && b.err != nil {
		err = b.err
	}
	if err != nil {
		if b != nil {
			replyBatches.Put(b)
		}
		return nil, 0, err
	}
	return b, b.n, nil
}

// readOnce is readFn: it takes a pooled batch only when replies are there, and gives it back
// before Read waits.
func (s *udpSession) readOnce(fd uintptr) bool {
	b := replyBatches.Get().(*msgBatch)
	b.n, b.err = b.recvNow(fd)
	if b.err == unix.EAGAIN {
		replyBatches.Put(b)
		return false
	}
	s.batch = b
	return true
}

func (s *udpSession) end() {
	_ = s.up.Close()
	l, st := s.l, s.svc.stats
	l.mu.Lock()
	if l.sessions[s.client] == s {
		delete(l.sessions, s.client)
	}
	l.closeIfIdleLocked()
	l.mu.Unlock()
	st.udpSessions.Add(-1)
	st.active.Add(-1)
	if s.server != nil {
		s.server.release(l.b.log, s.svc.cfg.Name)
	}
	l.b.connWG.Done()
}
