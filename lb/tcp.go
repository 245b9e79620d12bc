package lb

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pairlb/pairlb/config"
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
		l.b.connWG.Add(1) // before shutdown's Wait: shutdown waits for this loop to end first
		bnd := l.cur.Load()
		bnd.accepted.accepted.Add(1)
		bnd.svc.stats.accepted.Add(1)
		go l.b.proxyTCP(c, bnd)
	}
}

// proxyTCP serves one client connection from accept to close.
func (b *Balancer) proxyTCP(client *net.TCPConn, bnd *binding) {
	defer b.connWG.Done()
	svc, st := bnd.svc, bnd.svc.stats
	caddr := addrPort(client.RemoteAddr())
	if !svc.allowed(caddr.Addr()) {
		st.drop(DropAccessDenied)
		reset(client)
		return
	}
	st.active.Add(1)
	defer st.active.Add(-1)

	server, r := b.dialServer(bnd, caddr)
	if server == nil {
		if svc.cfg.UnavailableRedirect != "" {
			serveUnavailable(client, svc.cfg.UnavailableRedirect)
			return
		}
		reset(client)
		return
	}
	if r != nil {
		defer r.release(b.log, svc.cfg.Name)
	}
	if svc.cfg.TCPKeepalive {
		_ = client.SetKeepAliveConfig(keepAlive)
	}
	p := &tcpProxy{client: client, server: server, idle: svc.cfg.IdleTimeout, resetOnIdle: svc.cfg.ResetOnClose}
	if !b.track(p) {
		p.abort()
		return
	}
	defer b.untrack(p)
	if r != nil && svc.cfg.CloseOnDown {
		stopDown := context.AfterFunc(r.downContext(), p.abort)
		defer stopDown()
	}
	p.run(st)
}

var keepAlive = net.KeepAliveConfig{Enable: true, Idle: 60 * time.Second, Interval: 15 * time.Second, Count: 4}

// dialServer connects to a real server chosen by the service, trying the next one when a dial
// fails, then to the sorry server. It returns the chosen real server (nil for the sorry server)
// with its active count already taken, or a nil connection when nothing answered.
func (b *Balancer) dialServer(bnd *binding, client netip.AddrPort) (*net.TCPConn, *realServer) {
	svc, st := bnd.svc, bnd.svc.stats
	var tried []*realServer
	for {
		r := svc.pick(client.Addr().Unmap(), tried)
		if r == nil {
			break
		}
		r.active.Add(1)
		r.total.Add(1)
		to := r.dialAddr(bnd.port)
		c, err := svc.tcpDialer.DialTCP(context.Background(), "tcp", b.sourceFor(svc, client, to.Addr()), to)
		if err == nil {
			return c, r
		}
		r.active.Add(-1)
		b.log.Warn("dial failed", "virtual_service", svc.cfg.Name, "real_server", r.key, "err", err)
		tried = append(tried, r)
	}
	if svc.cfg.HasSorryServer() {
		addr := svc.cfg.SorryAddrPort(bnd.port)
		c, err := svc.tcpDialer.DialTCP(context.Background(), "tcp", b.sourceFor(svc, client, addr.Addr()), addr)
		if err == nil {
			return c, nil
		}
		b.log.Warn("dial to sorry server failed", "virtual_service", svc.cfg.Name, "sorry_server", addr.String(), "err", err)
	}
	if len(tried) > 0 || svc.cfg.HasSorryServer() {
		st.drop(DropDialFailed)
	} else {
		st.drop(DropNoServer)
	}
	return nil, nil
}

// release gives back the active count taken by dialServer.
func (r *realServer) release(log *slog.Logger, vs string) {
	if r.active.Add(-1) == 0 && State(r.state.Load()) == Draining {
		log.Info("real server drained", "virtual_service", vs, "real_server", r.key)
	}
}

// dialers build the service's dialers once: the timeout and keepalives come from the file,
// the transparency option from the service; the source address is chosen per connection.
func dialers(vs *config.VirtualService, g *config.Global) (tcp, udp *net.Dialer) {
	tcp = &net.Dialer{Timeout: g.DialTimeout, KeepAlive: -1}
	udp = &net.Dialer{}
	if vs.TCPKeepalive {
		tcp.KeepAliveConfig = keepAlive
	}
	if vs.Transparent {
		tcp.Control, udp.Control = transparent, transparent
	}
	return tcp, udp
}

// localAddr is the source address of a connection to a real server: the client's own for a
// transparent service, the next of the Alternate Source Addresses if the file lists some, and
// otherwise none, so the kernel uses the box's address on the path to the server.
func (s *service) localAddr(client netip.AddrPort) netip.AddrPort {
	switch {
	case s.cfg.Transparent:
		return netip.AddrPortFrom(client.Addr().Unmap(), 0)
	case len(s.cfg.SourceAddresses) > 0:
		i := s.nextSource.Add(1) % uint32(len(s.cfg.SourceAddresses))
		return netip.AddrPortFrom(s.cfg.SourceAddresses[i], 0)
	}
	return netip.AddrPort{}
}

// dialAddr is where a connection for the virtual-service port p goes on this server.
func (r *realServer) dialAddr(p config.Port) netip.AddrPort {
	if r.port != 0 {
		return netip.AddrPortFrom(r.addr, r.port)
	}
	return netip.AddrPortFrom(r.addr, p.Target)
}

// tcpProxy copies bytes both ways between a client and a real server.
type tcpProxy struct {
	client, server *net.TCPConn
	idle           time.Duration // 0: no idle timeout
	resetOnIdle    bool
	moved          atomic.Uint64 // bytes relayed in both directions, for idleness
	closeOnce      sync.Once
	idled          atomic.Bool
	halfClosed     atomic.Bool // one direction has ended
}

// relayRound is how often each direction of a connection publishes its byte counts and checks
// for idleness: counters move during long connections, and a quiet connection wakes up only
// this often.
const relayRound = 30 * time.Second

func (p *tcpProxy) run(st *serviceStats) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.copyServerToClient(st)
	}()
	p.copyClientToServer(st)
	<-done
	p.close()
}

// The two directions have names of their own so that a goroutine dump says which is which.
func (p *tcpProxy) copyClientToServer(st *serviceStats) { p.pipe(p.server, p.client, &st.bytesIn) }
func (p *tcpProxy) copyServerToClient(st *serviceStats) { p.pipe(p.client, p.server, &st.bytesOut) }

func (p *tcpProxy) close() {
	p.closeOnce.Do(func() {
		if p.idled.Load() && p.resetOnIdle {
			reset(p.client)
			reset(p.server)
			return
		}
		_ = p.client.Close()
		_ = p.server.Close()
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
