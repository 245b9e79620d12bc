package lb

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/pairlb/pairlb/config"
	"golang.org/x/sys/unix"
)

// dialPlan walks the destinations of a new client's connection: the real server the service
// chooses, the next one each time a dial fails, then the sorry server. TCP dials on a loop
// follow it one asynchronous attempt at a time; UDP (connectUDP) follows it at once.
type dialPlan struct {
	b      *Balancer
	bnd    *binding
	client netip.AddrPort
	tried  []*realServer
	cur    *realServer // the server of the attempt under way; nil for the sorry server
	sorry  bool        // the sorry server has been tried
	quiet  bool        // finding no destination is not a drop (a UDP session that stays put)
}

// next returns the next destination and the local address to leave from, with the real
// server's active count taken; ok false means none is left, and the drop has been counted.
func (p *dialPlan) next() (local, to netip.AddrPort, ok bool) {
	svc := p.bnd.svc
	if !p.sorry {
		if r := svc.pick(p.client.Addr().Unmap(), p.tried); r != nil {
			r.active.Add(1)
			p.cur = r
			to = r.dialAddr(p.bnd.port)
			return p.b.sourceFor(svc, p.client, to.Addr()), to, true
		}
	}
	p.cur = nil
	if svc.cfg.HasSorryServer() && !p.sorry {
		p.sorry = true
		to = svc.cfg.SorryAddrPort(p.bnd.port)
		return p.b.sourceFor(svc, p.client, to.Addr()), to, true
	}
	if p.quiet {
		return netip.AddrPort{}, netip.AddrPort{}, false
	}
	if len(p.tried) > 0 || svc.cfg.HasSorryServer() {
		svc.stats.drop(DropDialFailed)
	} else {
		svc.stats.drop(DropNoServer)
	}
	return netip.AddrPort{}, netip.AddrPort{}, false
}

// failed records that the attempt to "to" failed. A refusal, a timeout or host unreachable is
// also evidence against the real server for health (SetEvidenceFunc).
func (p *dialPlan) failed(to netip.AddrPort, err error) {
	svc := p.bnd.svc
	name, st := svc.cfg.Name, svc.stats
	now := time.Now().UnixNano()
	if r := p.cur; r != nil {
		r.active.Add(-1)
		p.tried = append(p.tried, r)
		if reason := dialEvidence(err); reason != "" {
			p.b.suspect(name, r, reason, now)
		}
		if n, ok := st.logs.allow(logDialFailed, now); ok {
			st.logs.write(p.b.log, logDialFailed, n, "virtual_service", name, "real_server", r.key, "err", err)
		}
		return
	}
	if n, ok := st.logs.allow(logSorryDialFailed, now); ok {
		st.logs.write(p.b.log, logSorryDialFailed, n, "virtual_service", name, "sorry_server", to.String(), "err", err)
	}
}

// dialEvidence is the evidence a failed dial gives against its server, or "" for a failure of
// the box's own (descriptors, a source address it does not hold).
func dialEvidence(err error) string {
	switch {
	case errors.Is(err, unix.ECONNREFUSED):
		return evidenceDialRefused
	case errors.Is(err, unix.ETIMEDOUT), errors.Is(err, os.ErrDeadlineExceeded):
		return evidenceDialTimeout
	case errors.Is(err, unix.EHOSTUNREACH):
		return evidenceDialNoHost
	}
	return ""
}

// succeeded records that the attempt under way connected and returns its real server (nil for
// the sorry server), whose active count the connection now holds.
func (p *dialPlan) succeeded() *realServer {
	if p.cur != nil {
		p.cur.total.Add(1)
	}
	return p.cur
}

// connectUDP opens the connected socket of a new UDP client, following the dial plan. It
// returns the real server with its active count taken (nil for the sorry server), or ok false
// when no socket could be connected, counted as no_server or dial_failed unless quiet. The
// caller counts the session in the server's total once it keeps it.
func connectUDP(b *Balancer, bnd *binding, client netip.AddrPort, quiet bool) (fd int, server *realServer, ok bool) {
	p := dialPlan{b: b, bnd: bnd, client: client, quiet: quiet}
	for {
		local, to, ok := p.next()
		if !ok {
			return -1, nil, false
		}
		fd, err := dialSocket(unix.SOCK_DGRAM, local, to, bnd.svc.cfg.Transparent, prepareUDP)
		if err == nil {
			return fd, p.cur, true
		}
		p.failed(to, err)
	}
}

// prepareUDP sets the options of a session's socket: the kernel tells, with each datagram, how
// many it dropped for a full receive queue (SO_RXQ_OVFL), which the session counts.
func prepareUDP(fd int) unix.Errno {
	return sysSetsockopt(fd, unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 1)
}

// dialSocket opens a non-blocking socket of type sotype and connects it to "to" (for a stream
// socket, starts connecting) from local (if valid), for a transparent service from the
// client's own address. prepare, if set, sets the options of the socket type before connect.
func dialSocket(sotype int, local, to netip.AddrPort, transparent bool, prepare func(fd int) unix.Errno) (int, error) {
	fam := family(to.Addr())
	fd, errno := sysSocket(fam, sotype)
	if errno != 0 {
		return -1, fmt.Errorf("socket: %w", errno)
	}
	fail := func(what string, errno unix.Errno) (int, error) {
		sysClose(fd)
		return -1, fmt.Errorf("%s: %w", what, errno)
	}
	if prepare != nil {
		if errno := prepare(fd); errno != 0 {
			return fail("setsockopt", errno)
		}
	}
	if transparent {
		lvl, opt := unix.SOL_IP, unix.IP_TRANSPARENT
		if fam == unix.AF_INET6 {
			lvl, opt = unix.SOL_IPV6, unix.IPV6_TRANSPARENT
		}
		if errno := sysSetsockopt(fd, lvl, opt, 1); errno != 0 {
			return fail("setsockopt IP_TRANSPARENT", errno)
		}
	}
	if local.IsValid() {
		// The port is chosen at connect, per destination, not at bind, where it would have to
		// be unique for the whole box and cap the balancer at one ephemeral range in all.
		if errno := sysSetsockopt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1); errno != 0 {
			return fail("setsockopt IP_BIND_ADDRESS_NO_PORT", errno)
		}
		if errno := sysBind(fd, local); errno != 0 {
			return fail("bind "+local.String(), errno)
		}
	}
	if errno := sysConnect(fd, to); errno != 0 && errno != unix.EINPROGRESS {
		return fail("connect "+to.String(), errno)
	}
	return fd, nil
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
