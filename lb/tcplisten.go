package lb

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// tcpListener is a listening socket served by every loop of the balancer: each loop watches it
// (EPOLLEXCLUSIVE, so a new connection wakes one loop rather than all) and takes the
// connections it accepts onto itself.
type tcpListener struct {
	b   *Balancer
	key listenerKey
	fd  int
	cur atomic.Pointer[binding]

	// mu keeps accept and close apart: a loop must never accept on a descriptor number that
	// abort has closed, since the kernel may already have given it to another listener.
	mu       sync.Mutex
	started  bool
	closed   bool
	retired  bool
	handed   bool // a successor of another kind shares the socket and serves its backlog
	watching int  // loops that have not yet stopped watching after retire
	finished sync.Once
}

// acceptBatch bounds the connections one loop accepts per wakeup, so that a flood of new
// connections does not starve the open ones; the listener stays ready and wakes it again.
const acceptBatch = 64

// rebind serves bnd from now on. Accepted sockets inherit the listener's options, so the
// service's keepalive setting is made here once, not on every connection.
func (l *tcpListener) rebind(bnd *binding) {
	setKeepalive(l.fd, bnd.svc.cfg.TCPKeepalive)
	deferSecs := 0
	if bnd.svc.cfg.DeferAccept {
		deferSecs = deferAcceptSeconds
	}
	_ = unix.SetsockoptInt(l.fd, unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, deferSecs)
	l.cur.Store(bnd)
}

// deferAcceptSeconds is how long a deferred connection waits for the client's first bytes. A
// client that waits for the server to speak first is not lost, only late: once this has passed,
// the kernel hands the connection over at the client's next ACK (after a SYN-ACK resent about a
// second later).
const deferAcceptSeconds = 1

func (l *tcpListener) start() {
	l.mu.Lock()
	l.started = true
	l.watching = len(l.b.loops)
	l.mu.Unlock()
	l.b.tcpAcceptWG.Add(1)
	for _, lp := range l.b.loops {
		lp.post(func() { l.watch(lp) })
	}
}

func (l *tcpListener) watch(lp *loop) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || l.retired {
		return
	}
	if err := lp.add(l.fd, unix.EPOLLIN|unix.EPOLLEXCLUSIVE, l, 0); err != nil {
		l.b.log.Error("listener not served", "listener", l.key.String(), "err", err)
	}
}

// retire stops the listener after each loop has accepted the connections queued in its
// backlog: closing it at once would reset them.
func (l *tcpListener) retire() {
	l.mu.Lock()
	l.retired = true
	l.mu.Unlock()
	for _, lp := range l.b.loops {
		lp.post(func() { l.unwatch(lp) })
	}
}

func (l *tcpListener) unwatch(lp *loop) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		for !l.handed && l.acceptSome(lp) {
		}
		// Out of the epoll set before the close: while a successor holds a duplicate, closing
		// would not take the socket out of the set, and the loop would wake for connections
		// it no longer accepts.
		lp.remove(l.fd)
	}
	l.watching--
	if l.watching == 0 {
		l.closeLocked()
	}
}

// abort closes the socket now: the balancer stops, or the reload that opened it failed.
func (l *tcpListener) abort() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		// Out of every epoll set first (epoll_ctl may be called from any thread): a successor's
		// duplicate may keep the socket alive, and a closed descriptor can no longer be removed.
		for _, lp := range l.b.loops {
			_ = unix.EpollCtl(lp.epfd, unix.EPOLL_CTL_DEL, l.fd, nil)
		}
	}
	l.closeLocked()
	for _, lp := range l.b.loops {
		fd := l.fd
		lp.post(func() { lp.forgetIf(fd, l) })
	}
}

// handOver tells a listener about to retire that a successor of the other kind shares its
// socket: the successor serves the backlog, so the listener stops without draining it.
func (l *tcpListener) handOver() {
	l.mu.Lock()
	l.handed = true
	l.mu.Unlock()
}

// dup returns a duplicate of the listening socket, for a successor of another kind.
func (l *tcpListener) dup() (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return -1, net.ErrClosed
	}
	return unix.FcntlInt(uintptr(l.fd), unix.F_DUPFD_CLOEXEC, 0)
}

func (l *tcpListener) closeLocked() {
	if !l.closed {
		l.closed = true
		sysClose(l.fd)
	}
	if l.started {
		l.finished.Do(l.b.tcpAcceptWG.Done)
	}
}

func (l *tcpListener) handle(lp *loop, _ int8, _ uint32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	// Once retired, the listener accepts only in unwatch, and not at all when a successor has
	// its socket.
	if !l.closed && !l.retired {
		l.acceptSome(lp)
	}
}

// acceptSome accepts up to acceptBatch connections onto lp; it reports whether more may be
// queued.
func (l *tcpListener) acceptSome(lp *loop) bool {
	for range acceptBatch {
		fd, client, err := sysAccept(l.fd)
		switch err {
		case 0:
			l.admit(lp, fd, client)
		case unix.EINTR, unix.ECONNABORTED:
		case unix.EAGAIN:
			return false
		default:
			// Out of descriptors or memory: stop watching for a while rather than spin on a
			// listener that stays ready, as HAProxy does.
			st := l.cur.Load().svc.stats
			if st.logs.allow(logAcceptFailed, l.key.addr, "", err, lp.now) {
				st.logs.write(l.b.log, logAcceptFailed, "listener", l.key.String(), "err", err, "retry_in", acceptPause)
			}
			lp.remove(l.fd)
			time.AfterFunc(acceptPause, func() { lp.post(func() { l.watch(lp) }) })
			return false
		}
	}
	return true
}

const acceptPause = 100 * time.Millisecond

// admit counts a connection accepted from client on lp and refuses it (with a reset) when it
// is a forwarding loop or the service's access lists deny it; otherwise the connection begins.
func (l *tcpListener) admit(lp *loop, fd int, client netip.AddrPort) {
	b, bnd := l.b, l.cur.Load()
	svc, st := bnd.svc, bnd.svc.stats
	bnd.accepted.accepted.Add(1)
	st.accepted.Add(1)
	hop, note := b.hopTCP(fd, client, l.key.addr)
	if b.isLoop(hop) {
		b.loopRefused(svc, bnd.port.String(), client)
		b.logRefused(lp, bnd, client, endLoopRefused)
		resetFD(fd)
		return
	}
	if !svc.allowed(client.Addr()) {
		st.drop(DropAccessDenied, 1)
		b.logRefused(lp, bnd, client, endAccessDenied)
		resetFD(fd)
		return
	}
	newTCPConn(lp, b, bnd, fd, client, hop, note)
}
