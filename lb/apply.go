package lb

import (
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/pairlb/pairlb/config"
)

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

// Apply makes the balancer serve cfg. It opens every new listener first and changes nothing if
// one cannot be opened; then it switches kept listeners to the new services, starts the new ones
// and retires the removed ones. Open connections are never closed by Apply. The first Apply also
// makes the loops (see the package comment on kernel resources).
func (b *Balancer) Apply(cfg *config.Config) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopping {
		return ErrStopping
	}
	made, err := b.makeLoops()
	if err != nil {
		return fmt.Errorf("the balancer cannot carry TCP or UDP: %w", err)
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
			if made && !b.running {
				b.unmakeLoops()
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
			switch h := l.(type) {
			case *tcpListener:
				h.handOver()
			case *redirectListener:
				h.handOver()
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
