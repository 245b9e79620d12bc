package lb

import (
	"net"
	"net/netip"

	"github.com/pairlb/pairlb/config"
)

// connect opens the connection (TCP) or connected socket (UDP) of a new client: to the real
// server the service chooses, to the next one when a dial fails, and to the sorry server when
// none answers. It returns the real server with its active count taken (nil for the sorry
// server), or ok false when nothing answered, counted as no_server or dial_failed.
func connect[C any](b *Balancer, bnd *binding, client netip.AddrPort, dial func(local, to netip.AddrPort) (C, error)) (conn C, server *realServer, ok bool) {
	svc, st := bnd.svc, bnd.svc.stats
	var tried []*realServer
	for {
		r := svc.pick(client.Addr().Unmap(), tried)
		if r == nil {
			break
		}
		r.active.Add(1)
		to := r.dialAddr(bnd.port)
		c, err := dial(b.sourceFor(svc, client, to.Addr()), to)
		if err == nil {
			r.total.Add(1)
			return c, r, true
		}
		r.active.Add(-1)
		b.log.Warn("dial failed", "virtual_service", svc.cfg.Name, "real_server", r.key, "err", err)
		tried = append(tried, r)
	}
	if svc.cfg.HasSorryServer() {
		to := svc.cfg.SorryAddrPort(bnd.port)
		c, err := dial(b.sourceFor(svc, client, to.Addr()), to)
		if err == nil {
			return c, nil, true
		}
		b.log.Warn("dial to sorry server failed", "virtual_service", svc.cfg.Name, "sorry_server", to.String(), "err", err)
	}
	if len(tried) > 0 || svc.cfg.HasSorryServer() {
		st.drop(DropDialFailed)
	} else {
		st.drop(DropNoServer)
	}
	return conn, nil, false
}

// dialers build the service's dialers once: the timeout and keepalives come from the file,
// the transparency option from the service; the source address is chosen per connection.
func dialers(vs *config.VirtualService, g *config.Global) (tcp, udp *net.Dialer) {
	tcp = &net.Dialer{Timeout: g.DialTimeout, KeepAlive: -1}
	udp = &net.Dialer{}
	if vs.TCPKeepalive {
		tcp.KeepAliveConfig = keepAlive
	}
	tcp.Control = dialControl(vs.Transparent)
	udp.Control = dialControl(vs.Transparent)
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
