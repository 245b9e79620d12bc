package lb

import (
	"fmt"
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

// maxBacklog asks for the longest accept queue; the kernel caps it at net.core.somaxconn.
const maxBacklog = 65535

// listenTCP opens a listening socket on addr, also when the box does not hold addr yet (see
// bindVIP).
func listenTCP(addr netip.AddrPort) (int, error) {
	fd, err := bindVIP(addr, unix.SOCK_STREAM,
		[3]int{unix.SOL_SOCKET, unix.SO_REUSEADDR, 1},
		// Accepted sockets inherit it: Nagle off on both legs (Microsoft asks it for the Edge).
		[3]int{unix.IPPROTO_TCP, unix.TCP_NODELAY, 1})
	if err != nil {
		return -1, err
	}
	if err := unix.Listen(fd, maxBacklog); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("listen %s: %w", addr, err)
	}
	return fd, nil
}

// bindVIP opens a non-blocking socket of sotype bound to addr, with the options given and
// IP_FREEBIND, so that a listener can bind a VIP the box does not hold yet: on the standby of
// a pair the VIP arrives with keepalived, and the listener must already be there to serve it.
func bindVIP(addr netip.AddrPort, sotype int, opts ...[3]int) (int, error) {
	fam := family(addr.Addr())
	fd, err := unix.Socket(fam, sotype|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	if fam == unix.AF_INET6 {
		opts = append(opts, [3]int{unix.IPPROTO_IPV6, unix.IPV6_FREEBIND, 1}, [3]int{unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1})
	} else {
		opts = append(opts, [3]int{unix.IPPROTO_IP, unix.IP_FREEBIND, 1})
	}
	for _, o := range opts {
		if err := unix.SetsockoptInt(fd, o[0], o[1], o[2]); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("setsockopt %d/%d: %w", o[0], o[1], err)
		}
	}
	if errno := sysBind(fd, addr); errno != 0 {
		unix.Close(fd)
		return -1, fmt.Errorf("bind %s: %w", addr, errno)
	}
	return fd, nil
}

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
		unix.Close(l.fd)
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
			l.b.acceptTCP(lp, fd, client, l.key.addr, l.cur.Load())
		case unix.EINTR, unix.ECONNABORTED:
		case unix.EAGAIN:
			return false
		default:
			// Out of descriptors or memory: stop watching for a while rather than spin on a
			// listener that stays ready, as HAProxy does.
			st := l.cur.Load().svc.stats
			if n, ok := st.logs.allow(logAcceptFailed, lp.now); ok {
				st.logs.write(l.b.log, logAcceptFailed, n, "listener", l.key.String(), "err", err, "retry_in", acceptPause)
			}
			lp.remove(l.fd)
			time.AfterFunc(acceptPause, func() { lp.post(func() { l.watch(lp) }) })
			return false
		}
	}
	return true
}

const acceptPause = 100 * time.Millisecond
