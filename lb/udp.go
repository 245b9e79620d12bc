package lb

import (
	"context"
	"errors"
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
	cur  atomic.Pointer[binding]

	mu       sync.RWMutex
	sessions map[netip.AddrPort]*udpSession
	retired  bool // no new sessions; close the socket when the last one ends
	closed   bool
}

type udpSession struct {
	l      *udpListener
	client netip.AddrPort
	up     *net.UDPConn
	svc    *service
	server *realServer  // nil for the sorry server
	last   atomic.Int64 // unix nanoseconds of the last datagram either way
}

// maxDatagram is the largest UDP payload; the listener reads into one buffer of this size.
const maxDatagram = 65535

// sessionBuffer is the receive buffer of a session's reader. Real-server replies in Lync's UDP
// services (STUN, media relay) stay far below it; a larger one is counted and dropped, never
// forwarded truncated.
const sessionBuffer = 9216

func newUDPListener(b *Balancer, k listenerKey, c *net.UDPConn) *udpListener {
	return &udpListener{b: b, key: k, conn: c, sessions: map[netip.AddrPort]*udpSession{}}
}

func (l *udpListener) rebind(bnd *binding) { l.cur.Store(bnd) }

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

func (l *udpListener) serve() {
	defer l.b.acceptWG.Done()
	buf := make([]byte, maxDatagram)
	for {
		n, _, flags, from, err := l.conn.ReadMsgUDPAddrPort(buf, nil)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			l.b.log.Warn("udp read failed", "listener", l.key.String(), "err", err)
			continue
		}
		bnd := l.cur.Load()
		st := bnd.svc.stats
		if flags&syscall.MSG_TRUNC != 0 {
			st.drop(DropUDPSendFailed)
			continue
		}
		l.mu.RLock()
		s := l.sessions[from]
		l.mu.RUnlock()
		if s == nil {
			if s = l.newSession(bnd, from); s == nil {
				continue
			}
		}
		s.last.Store(time.Now().UnixNano())
		if _, err := s.up.Write(buf[:n]); err != nil {
			// ECONNREFUSED reports an ICMP error from an earlier datagram: the server may be
			// down; health checks decide that, the datagram is lost either way.
			st.drop(DropUDPSendFailed)
			continue
		}
		st.bytesIn.Add(uint64(n))
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
	up, r := l.dialServer(bnd, client)
	if up == nil {
		return nil
	}
	s := &udpSession{l: l, client: client, up: up, svc: svc, server: r}
	s.last.Store(time.Now().UnixNano())

	l.mu.Lock()
	if l.retired {
		l.mu.Unlock()
		_ = up.Close()
		if r != nil {
			r.active.Add(-1)
		}
		st.drop(DropServiceClosed)
		return nil
	}
	if st.udpSessions.Load() >= int64(svc.cfg.UDPMaxSessions) {
		l.mu.Unlock()
		_ = up.Close()
		if r != nil {
			r.active.Add(-1)
		}
		st.drop(DropUDPTableFull)
		return nil
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

func (l *udpListener) dialServer(bnd *binding, client netip.AddrPort) (*net.UDPConn, *realServer) {
	svc, st := bnd.svc, bnd.svc.stats
	var tried []*realServer
	dial := func(to netip.AddrPort) (*net.UDPConn, error) {
		var local *net.UDPAddr
		switch {
		case svc.cfg.Transparent:
			d := net.Dialer{LocalAddr: net.UDPAddrFromAddrPort(netip.AddrPortFrom(client.Addr().Unmap(), 0)), Control: transparent}
			c, err := d.Dial("udp", to.String())
			if err != nil {
				return nil, err
			}
			return c.(*net.UDPConn), nil
		case len(svc.cfg.SourceAddresses) > 0:
			i := svc.nextSource.Add(1) % uint32(len(svc.cfg.SourceAddresses))
			local = net.UDPAddrFromAddrPort(netip.AddrPortFrom(svc.cfg.SourceAddresses[i], 0))
		}
		return net.DialUDP("udp", local, net.UDPAddrFromAddrPort(to))
	}
	for {
		r := svc.pick(client.Addr().Unmap(), tried)
		if r == nil {
			break
		}
		r.active.Add(1)
		r.total.Add(1)
		to := netip.AddrPortFrom(r.addr, bnd.port.Target)
		if r.port != 0 {
			to = netip.AddrPortFrom(r.addr, r.port)
		}
		c, err := dial(to)
		if err == nil {
			return c, r
		}
		r.active.Add(-1)
		l.b.log.Warn("udp dial failed", "virtual_service", svc.cfg.Name, "real_server", r.key, "err", err)
		tried = append(tried, r)
	}
	if svc.cfg.HasSorryServer() {
		if c, err := dial(svc.cfg.SorryAddrPort(bnd.port)); err == nil {
			return c, nil
		}
	}
	if len(tried) > 0 {
		st.drop(DropDialFailed)
	} else {
		st.drop(DropNoServer)
	}
	return nil, nil
}

// relayReplies sends the real server's datagrams back to the client from the VIP socket until
// the session has been idle for the service's UDP idle timeout.
func (s *udpSession) relayReplies() {
	defer s.end()
	if s.server != nil && s.svc.cfg.CloseOnDown {
		stop := context.AfterFunc(s.server.downContext(), func() { _ = s.up.Close() })
		defer stop()
	}
	st := s.svc.stats
	idle := s.svc.cfg.UDPIdleTimeout
	buf := make([]byte, sessionBuffer)
	_ = s.up.SetReadDeadline(time.Unix(0, s.last.Load()).Add(idle))
	for {
		n, _, flags, _, err := s.up.ReadMsgUDPAddrPort(buf, nil)
		switch {
		case err == nil:
		case errors.Is(err, os.ErrDeadlineExceeded):
			// The deadline is moved only when it fires, not on every datagram.
			last := time.Unix(0, s.last.Load())
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
		if flags&syscall.MSG_TRUNC != 0 {
			st.drop(DropUDPSendFailed)
			continue
		}
		s.last.Store(time.Now().UnixNano())
		if _, err := s.l.conn.WriteToUDPAddrPort(buf[:n], s.client); err != nil {
			st.drop(DropUDPSendFailed)
			continue
		}
		st.bytesOut.Add(uint64(n))
	}
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
