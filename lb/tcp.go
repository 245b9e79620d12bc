package lb

import (
	"bufio"
	"context"
	"errors"
	"golang.org/x/sys/unix"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

type tcpListener struct {
	b       *Balancer
	key     listenerKey
	ln      *net.TCPListener
	cur     atomic.Pointer[binding]
	retired atomic.Bool
}

func (l *tcpListener) rebind(bnd *binding) { l.cur.Store(bnd) }

func (l *tcpListener) start() {
	l.b.tcpAcceptWG.Add(1)
	go l.serve()
}

// retire stops the listener after it has accepted the connections already queued in its
// backlog: closing it at once would reset them. A deadline in the past makes Accept return the
// queued ones and then time out.
func (l *tcpListener) retire() {
	l.retired.Store(true)
	_ = l.ln.SetDeadline(time.Unix(1, 0))
}

func (l *tcpListener) abort() { _ = l.ln.Close() }

func (l *tcpListener) serve() {
	defer l.b.tcpAcceptWG.Done()
	var backoff time.Duration
	for {
		c, err := l.ln.AcceptTCP()
		if err != nil {
			if l.retired.Load() {
				for _, c := range l.drainBacklog() {
					l.handle(c)
				}
				_ = l.ln.Close()
				return
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors or memory: wait a little rather than spin, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.b.log.Warn("accept failed", "listener", l.key.String(), "err", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		l.handle(c)
	}
}

func (l *tcpListener) handle(c *net.TCPConn) {
	l.b.connWG.Add(1) // before shutdown's Wait: shutdown waits for this loop to end first
	bnd := l.cur.Load()
	bnd.accepted.accepted.Add(1)
	bnd.svc.stats.accepted.Add(1)
	go l.b.proxyTCP(c, bnd)
}

// drainBacklog accepts, without waiting, the connections already queued on a retiring
// listener: closing the listener would reset them, and Accept past its deadline no longer
// tries.
func (l *tcpListener) drainBacklog() []*net.TCPConn {
	rc, err := l.ln.SyscallConn()
	if err != nil {
		return nil
	}
	var fds []int
	_ = rc.Control(func(fd uintptr) {
		for {
			nfd, _, err := unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return
			}
			fds = append(fds, nfd)
		}
	})
	var conns []*net.TCPConn
	for _, fd := range fds {
		f := os.NewFile(uintptr(fd), "accepted")
		c, err := net.FileConn(f) // a duplicate of fd, in Go's poller
		f.Close()
		if tc, ok := c.(*net.TCPConn); ok && err == nil {
			conns = append(conns, tc)
		} else if c != nil {
			c.Close()
		}
	}
	return conns
}

// proxyTCP serves one client connection from accept until its relay runs; the relay's
// directions release the connection when both have ended.
func (b *Balancer) proxyTCP(client *net.TCPConn, bnd *binding) {
	svc, st := bnd.svc, bnd.svc.stats
	caddr := addrPort(client.RemoteAddr())
	if !svc.allowed(caddr.Addr()) {
		st.drop(DropAccessDenied)
		reset(client)
		b.connWG.Done()
		return
	}
	st.active.Add(1)
	server, r, _ := connect(b, bnd, caddr, func(local, to netip.AddrPort) (*net.TCPConn, error) {
		return svc.tcpDialer.DialTCP(context.Background(), "tcp", local, to)
	})
	if server == nil {
		if svc.cfg.UnavailableRedirect != "" {
			serveUnavailable(client, svc.cfg.UnavailableRedirect)
		} else {
			reset(client)
		}
		st.active.Add(-1)
		b.connWG.Done()
		return
	}
	if svc.cfg.TCPKeepalive {
		_ = client.SetKeepAliveConfig(keepAlive)
	}
	p := &tcpProxy{client: client, server: server, idle: svc.cfg.IdleTimeout, resetOnIdle: svc.cfg.ResetOnClose, parker: b.parker}
	p.lastActive.Store(time.Now().UnixNano())
	var stopDown func() bool
	p.release = func() {
		if stopDown != nil {
			stopDown()
		}
		b.untrack(p)
		if r != nil {
			r.release(b.log, svc.cfg.Name)
		}
		st.active.Add(-1)
		b.connWG.Done()
	}
	c2s, err1 := p.newRelay(server, client, &st.bytesIn)
	s2c, err2 := p.newRelay(client, server, &st.bytesOut)
	if err1 != nil || err2 != nil || !b.track(p) {
		p.close()
		p.release()
		return
	}
	p.c2s, p.s2c = c2s, s2c
	if r != nil && svc.cfg.CloseOnDown {
		stopDown = context.AfterFunc(r.downContext(), p.abort)
	}
	go p.s2c.resume()
	p.c2s.resume()
}

var keepAlive = net.KeepAliveConfig{Enable: true, Idle: 60 * time.Second, Interval: 15 * time.Second, Count: 4}

// release gives back the active count taken by connect.
func (r *realServer) release(log *slog.Logger, vs string) {
	if r.active.Add(-1) == 0 && State(r.state.Load()) == Draining {
		log.Info("real server drained", "virtual_service", vs, "real_server", r.key)
	}
}

// tcpProxy copies bytes both ways between a client and a real server.
type tcpProxy struct {
	client, server *net.TCPConn
	c2s, s2c       *relay
	parker         *parker       // nil: directions never park
	release        func()        // after both directions have finished
	idle           time.Duration // 0: no idle timeout
	resetOnIdle    bool
	moved          atomic.Uint64 // bytes relayed in both directions, for idleness
	lastActive     atomic.Int64  // unix ns of the last check period that saw bytes move
	finished       atomic.Int32  // directions that have ended
	closed         atomic.Bool
	closeOnce      sync.Once
	idled          atomic.Bool
	halfClosed     atomic.Bool // one direction has ended
}

// idleSince reports whether the connection has reached its idle timeout at now.
func (p *tcpProxy) idleSince(now time.Time) bool {
	return p.idle > 0 && now.Sub(time.Unix(0, p.lastActive.Load())) >= p.idle
}

func (p *tcpProxy) isClosed() bool { return p.closed.Load() }

// relayRound bounds how often a busy direction of a connection publishes its byte counts and
// checks for idleness; a quiet direction parks (park.go) and wakes up no more.
const relayRound = 30 * time.Second

// close closes both sockets; a parked direction is finished here, since no goroutine of its
// own is left to notice.
func (p *tcpProxy) close() {
	p.closeOnce.Do(func() {
		p.closed.Store(true)
		if p.idled.Load() && p.resetOnIdle {
			reset(p.client)
			reset(p.server)
		} else {
			_ = p.client.Close()
			_ = p.server.Close()
		}
		if p.parker == nil {
			return
		}
		for _, r := range []*relay{p.c2s, p.s2c} {
			if r != nil && p.parker.unpark(r) {
				r.finish()
			}
		}
	})
}

// abort closes both sides at the drain deadline.
func (p *tcpProxy) abort() { p.close() }

// serveUnavailable answers an HTTP client with a redirect when the service has no server: the
// appliance's "Not Available Redirection".
func serveUnavailable(c *net.TCPConn, template string) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	req, err := http.ReadRequest(bufio.NewReader(io.LimitReader(c, 64<<10)))
	if err != nil {
		return
	}
	resp := http.Response{
		StatusCode: http.StatusFound,
		ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{"Location": {expandRedirect(template, req)}, "Connection": {"close"}},
		Close:  true,
	}
	_ = resp.Write(c)
}

func addrPort(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.AddrPort()
	case *net.UDPAddr:
		return a.AddrPort()
	}
	return netip.AddrPort{}
}
