// Package lb is pairlb's forwarding plane: one listener per virtual-service port (TCP, UDP or
// an HTTP redirector), real-server pools with schedulers, persistence, access control and sorry
// servers, and the copying of bytes between clients and real servers.
//
// It makes the per-connection decisions and leaves the rest to others: it does not probe servers
// (cmd/pairlb feeds it health changes), does not touch routing tables and does not parse files.
package lb

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pairlb/pairlb/config"
)

// Balancer runs the listeners of a configuration and swaps to a new configuration on Apply
// without closing connections that are already open.
type Balancer struct {
	log *slog.Logger

	mu        sync.Mutex
	cfg       *config.Config
	services  map[string]*service
	listeners map[listenerKey]listener
	retiring  map[listenerKey]*udpListener // removed UDP listeners still serving their sessions
	stopping  bool

	// connWG counts open connections and UDP sessions. tcpAcceptWG counts the TCP listeners
	// some loop still accepts on, the only code that adds to connWG without a lock: shutdown
	// waits for them to stop before it waits for connWG. acceptWG counts open UDP listeners and
	// the redirectors' goroutines.
	connWG      sync.WaitGroup
	tcpAcceptWG sync.WaitGroup
	acceptWG    sync.WaitGroup

	// source finds the box's own address on a real server's subnet (subnet_originating).
	source atomic.Pointer[SourceFunc]

	// The loop guard (loopguard.go): the balancer's own sockets towards this box, the box's
	// addresses and the balancer's VIPs.
	self       selfConns
	localFn    atomic.Pointer[LocalFunc]
	own        atomic.Pointer[ownAddrs]
	loopLogged atomic.Int64 // unix ns of the last loop logged

	unavailable atomic.Int64 // clients being served an unavailable_redirect

	// force is cancelled when the drain deadline passes: every open connection closes.
	force       context.Context
	forceCancel context.CancelFunc
	// loops carry the TCP connections and the UDP sessions (loop.go), one per usable CPU; Run
	// runs them.
	loops        []*loop
	loopErr      error // why the loops could not be made; Apply reports it
	loopWG       sync.WaitGroup
	udpListeners int // UDP listeners ever opened, to spread them over the loops; under mu

	evidence     atomic.Pointer[func(service, server, reason string)] // SetEvidenceFunc
	rcvbufLogged atomic.Bool                                          // udp.go: the receive buffer granted
}

// listenerKind separates listeners that may share an address but not a socket type.
type listenerKind uint8

const (
	kindTCP listenerKind = iota
	kindUDP
	kindRedirect
)

type listenerKey struct {
	kind listenerKind
	addr netip.AddrPort
}

func (k listenerKey) String() string {
	switch k.kind {
	case kindUDP:
		return k.addr.String() + "/udp"
	case kindRedirect:
		return k.addr.String() + "/tcp (redirect)"
	}
	return k.addr.String() + "/tcp"
}

// binding is what a listener serves: a service and one of its ports. A reload stores a new
// binding; connections keep the one they were accepted with.
type binding struct {
	svc      *service
	port     config.Port
	accepted *portCounter
	global   *config.Global
}

type listener interface {
	rebind(*binding)
	// start begins serving; the first binding must be set.
	start()
	// retire stops taking new connections; open ones continue.
	retire()
	// abort closes everything at once.
	abort()
}

// New returns a Balancer with no listeners. Call Apply to give it a configuration and Run to
// own its lifetime.
func New(log *slog.Logger) *Balancer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	force, cancel := context.WithCancel(context.Background())
	b := &Balancer{
		log:         log,
		services:    map[string]*service{},
		listeners:   map[listenerKey]listener{},
		retiring:    map[listenerKey]*udpListener{},
		force:       force,
		forceCancel: cancel,
	}
	// One loop per CPU the process may use: a proxy pinned to one core gets one loop and no
	// locks contended; Go's own GOMAXPROCS follows the same CPU affinity.
	for range runtime.GOMAXPROCS(0) {
		lp, err := newLoop()
		if err != nil {
			b.loopErr = err
			break
		}
		lp.onTick(lp.sweepConns)
		b.loops = append(b.loops, lp)
	}
	return b
}

// ErrStopping is returned by Apply once the balancer has begun to stop.
var ErrStopping = errors.New("balancer is stopping")

// Apply makes the balancer serve cfg. It opens every new listener first and changes nothing if
// one cannot be opened; then it switches kept listeners to the new services, starts the new ones
// and retires the removed ones. Open connections are never closed by Apply.
func (b *Balancer) Apply(cfg *config.Config) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopping {
		return ErrStopping
	}
	if b.loopErr != nil {
		return fmt.Errorf("the balancer cannot carry TCP or UDP: %w", b.loopErr)
	}

	services := make(map[string]*service, len(cfg.VirtualServices))
	want := map[listenerKey]*binding{}
	for _, vs := range cfg.VirtualServices {
		svc := newService(vs, &cfg.Global, b.services[vs.Name])
		services[vs.Name] = svc
		for _, p := range vs.Ports {
			k := listenerKey{kind: kindTCP, addr: netip.AddrPortFrom(vs.VIP, p.Listen)}
			switch {
			case vs.Redirect != "":
				k.kind = kindRedirect
			case p.Proto == config.UDP:
				k.kind = kindUDP
			}
			want[k] = &binding{svc: svc, port: p, accepted: svc.stats.port(p), global: &cfg.Global}
		}
	}

	// Open every new socket before changing anything, so that a failure leaves the running
	// configuration as it was: every socket, listener and session. A removed UDP listener still
	// draining its sessions is taken back instead of opening a second socket on its address. A
	// listener that changes kind on the same address (TCP to redirector or back) gets a
	// duplicate of the running listener's socket rather than a socket of its own: nothing is
	// closed before the switch, and the connections queued in the backlog stay queued for the
	// successor instead of being reset.
	opened := map[listenerKey]listener{}
	revived := map[listenerKey]*udpListener{}
	handedOver := map[listenerKey]bool{} // running listeners whose socket a successor shares
	for k, bnd := range want {
		if _, ok := b.listeners[k]; ok {
			continue
		}
		if u, ok := b.retiring[k]; ok && u.revive() {
			revived[k] = u
			continue
		}
		var l listener
		var err error
		if pk, prev := b.predecessor(k, want); prev != nil {
			l, err = b.adopt(k, prev)
			handedOver[pk] = true
		} else {
			l, err = b.open(k, bnd)
		}
		if err != nil {
			// Only what this reload opened is closed: a duplicated socket's original stays
			// with the running listener.
			for _, o := range opened {
				o.abort()
			}
			for _, u := range revived {
				u.retire()
			}
			return fmt.Errorf("opening listener %s for %s: %w", k, bnd.svc.cfg.Name, err)
		}
		opened[k] = l
	}

	for _, svc := range services {
		svc.commit()
	}
	removeServers(b.services, services)
	for k, l := range b.listeners {
		if bnd, ok := want[k]; ok {
			l.rebind(bnd)
			continue
		}
		if handedOver[k] {
			b.log.Info("listener changes kind", "listener", k.String())
			if t, ok := l.(*tcpListener); ok {
				t.handOver()
			}
		} else {
			b.log.Info("listener removed", "listener", k.String())
		}
		l.retire()
		if u, ok := l.(*udpListener); ok {
			b.retiring[k] = u
		}
		delete(b.listeners, k)
	}
	for k, u := range revived {
		u.rebind(want[k])
		delete(b.retiring, k)
		b.listeners[k] = u
	}
	for k, l := range opened {
		l.rebind(want[k])
		l.start()
		b.listeners[k] = l
		b.log.Info("listener open", "listener", k.String(), "virtual_service", want[k].svc.cfg.Name)
	}
	for k, u := range b.retiring {
		if u.isClosed() {
			delete(b.retiring, k)
		}
	}
	b.setOwn(b.listeners)
	b.cfg = cfg
	b.services = services
	return nil
}

// removeServers marks the real servers of the running services that none of the new ones
// keeps (a server taken out of a pool, a service removed or renamed) as gone from their pool.
func removeServers(running, next map[string]*service) {
	kept := map[*realServer]bool{}
	for _, s := range next {
		for _, r := range s.servers {
			kept[r] = true
		}
	}
	for _, s := range running {
		for _, r := range s.servers {
			if !kept[r] {
				r.removeFromPool()
			}
		}
	}
}

// sameSocket reports whether two listener kinds would compete for one port: TCP and the HTTP
// redirector both need a TCP socket.
func sameSocket(a, b listenerKey) bool {
	tcpish := func(k listenerKind) bool { return k == kindTCP || k == kindRedirect }
	return tcpish(a.kind) && tcpish(b.kind)
}

// predecessor returns the running listener whose socket the new listener k must take over: one
// of the other TCP kind on the same address that the new configuration no longer wants.
func (b *Balancer) predecessor(k listenerKey, want map[listenerKey]*binding) (listenerKey, listener) {
	for pk, l := range b.listeners {
		if pk != k && pk.addr == k.addr && sameSocket(pk, k) && want[pk] == nil {
			return pk, l
		}
	}
	return listenerKey{}, nil
}

func (b *Balancer) open(k listenerKey, bnd *binding) (listener, error) {
	switch k.kind {
	case kindUDP:
		fd, err := listenUDP(k.addr)
		if err != nil {
			return nil, err
		}
		// A listener and its sessions share a loop; listeners take the loops in turn.
		lp := b.loops[b.udpListeners%len(b.loops)]
		b.udpListeners++
		return newUDPListener(b, k, lp, fd), nil
	default:
		fd, err := listenTCP(k.addr)
		if err != nil {
			return nil, err
		}
		return b.tcpKind(k, fd, false)
	}
}

// adopt makes listener k on a duplicate of prev's listening socket.
func (b *Balancer) adopt(k listenerKey, prev listener) (listener, error) {
	var fd int
	var err error
	switch p := prev.(type) {
	case *tcpListener:
		fd, err = p.dup()
	case *redirectListener:
		fd, err = p.dup()
	default:
		return nil, fmt.Errorf("listener %s: no socket to take over", k)
	}
	if err != nil {
		return nil, fmt.Errorf("taking over the listening socket of %s: %w", k, err)
	}
	return b.tcpKind(k, fd, true)
}

// tcpKind makes a listener of kind k on listening socket fd, which it then owns.
func (b *Balancer) tcpKind(k listenerKey, fd int, adopted bool) (listener, error) {
	if k.kind != kindRedirect {
		return &tcpListener{b: b, key: k, fd: fd}, nil
	}
	// The same socket as a forwarding listener's, served by net/http.
	f := os.NewFile(uintptr(fd), k.String())
	ln, err := net.FileListener(f) // a duplicate of fd
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("listener %s: %w", k, err)
	}
	return newRedirectListener(b, k, ln, adopted), nil
}

// Run owns the balancer's lifetime: it does the periodic housekeeping and, when ctx ends, stops
// gracefully (see shutdown) with the configured drain timeout. It returns when every goroutine
// the balancer started has ended.
func (b *Balancer) Run(ctx context.Context) error {
	for _, lp := range b.loops {
		b.loopWG.Add(1)
		go func() {
			defer b.loopWG.Done()
			lp.run()
		}()
	}
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			drain := config.DefaultDrainTimeout
			b.mu.Lock()
			if b.cfg != nil {
				drain = b.cfg.Global.DrainTimeout
			}
			b.mu.Unlock()
			b.shutdown(drain)
			return nil
		case now := <-tick.C:
			b.housekeeping(now)
		}
	}
}

// shutdown stops accepting, lets open connections and UDP sessions finish for up to drain, then
// closes what is left and waits for every goroutine.
func (b *Balancer) shutdown(drain time.Duration) {
	b.mu.Lock()
	b.stopping = true
	for _, l := range b.listeners {
		if u, ok := l.(*udpListener); ok {
			u.stopping()
		}
		l.retire()
	}
	for _, u := range b.retiring {
		u.stopping()
		u.retire()
	}
	b.mu.Unlock()
	b.tcpAcceptWG.Wait() // queued connections accepted; no more are added

	done := make(chan struct{})
	go func() {
		b.connWG.Wait()
		close(done)
	}()
	timer := time.NewTimer(drain)
	select {
	case <-done:
		timer.Stop()
	case <-timer.C:
		b.log.Warn("drain timeout reached, closing open connections", "drain_timeout", drain)
	}
	b.forceCancel()
	for _, lp := range b.loops {
		lp.post(lp.closeConns)
	}
	b.mu.Lock()
	for _, l := range b.listeners {
		l.abort()
	}
	for _, u := range b.retiring {
		u.abort()
	}
	b.mu.Unlock()
	<-done
	b.acceptWG.Wait()
	for _, lp := range b.loops {
		lp.post(lp.stop)
	}
	b.loopWG.Wait()
	for _, lp := range b.loops {
		lp.close()
	}
	b.log.Info("balancer stopped")
}

// Config returns the configuration being served, or nil before the first Apply.
func (b *Balancer) Config() *config.Config {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.cfg
}

func (b *Balancer) server(vs, key string) (*service, *realServer, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.services[vs]
	if s == nil {
		return nil, nil, fmt.Errorf("virtual service %q: %w", vs, ErrNotFound)
	}
	r := s.byKey[key]
	if r == nil {
		return nil, nil, fmt.Errorf("real server %q of virtual service %q: %w", key, vs, ErrNotFound)
	}
	return s, r, nil
}

// SourceFunc returns the box's own address on the directly connected subnet holding dst, and
// false when dst is on none.
type SourceFunc func(dst netip.Addr) (netip.Addr, bool)

// SetSourceFunc tells the balancer how to find the source address of services with
// subnet_originating. Without one, or when it finds none, the kernel chooses as for any
// connection.
func (b *Balancer) SetSourceFunc(f SourceFunc) { b.source.Store(&f) }

// sourceFor is the local address a connection of svc to dst leaves from.
func (b *Balancer) sourceFor(svc *service, client netip.AddrPort, dst netip.Addr) netip.AddrPort {
	if svc.cfg.SubnetOriginating {
		if f := b.source.Load(); f != nil {
			if a, ok := (*f)(dst); ok {
				return netip.AddrPortFrom(a, 0)
			}
		}
		return netip.AddrPort{}
	}
	return svc.localAddr(client)
}

// ErrNotFound is returned for a virtual service or real server the configuration lacks.
var ErrNotFound = errors.New("not found")

// SetServerState sets a real server's administrative state until the next reload that changes
// it in the file. Draining and disabled servers take no new connections; open ones continue.
func (b *Balancer) SetServerState(vs, server string, st State) error {
	_, r, err := b.server(vs, server)
	if err != nil {
		return err
	}
	old := r.setState(st)
	b.log.Info("real server state", "virtual_service", vs, "real_server", server, "state", st.String(), "was", old.String(), "active", r.active.Load())
	if st == Draining && r.active.Load() == 0 {
		b.log.Info("real server drained", "virtual_service", vs, "real_server", server)
	}
	return nil
}

// SetServerHealth records the health verdict on a real server. A server that is down takes no
// new connections; its open ones are closed only in services with close_on_down.
func (b *Balancer) SetServerHealth(vs, server string, up bool) error {
	_, r, err := b.server(vs, server)
	if err != nil {
		return err
	}
	r.setUp(up)
	return nil
}
