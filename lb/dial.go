package lb

import (
	"errors"
	"net/netip"
	"os"
	"time"

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
	// failedOn is the real server whose dial just failed, until next says whether the
	// connection was retried elsewhere (counted in its dialRetries) or not.
	failedOn *realServer
	sorry    bool // the sorry server has been tried
	quiet    bool // finding no destination is not a drop (a UDP session that stays put)
	// outcome is why next found no destination (no_server or dial_failed), for the
	// connection log; set with the drop it counts.
	outcome endReason
}

// next returns the next destination and the local address to leave from, with the real
// server's active count taken; ok false means none is left, and the drop has been counted.
func (p *dialPlan) next() (local, to netip.AddrPort, ok bool) {
	svc := p.bnd.svc
	failedOn := p.failedOn
	p.failedOn = nil
	if !p.sorry {
		if r := svc.pick(p.client.Addr().Unmap(), p.tried); r != nil {
			if failedOn != nil {
				failedOn.dialRetries.Add(1)
			}
			r.active.Add(1)
			p.cur = r
			to = r.dialAddr(p.bnd.port)
			return p.b.sourceFor(svc, p.client, to.Addr()), to, true
		}
	}
	p.cur = nil
	if svc.cfg.HasSorryServer() && !p.sorry {
		p.sorry = true
		if failedOn != nil {
			failedOn.dialRetries.Add(1)
		}
		to = svc.cfg.SorryAddrPort(p.bnd.port)
		return p.b.sourceFor(svc, p.client, to.Addr()), to, true
	}
	if p.quiet {
		return netip.AddrPort{}, netip.AddrPort{}, false
	}
	if len(p.tried) > 0 || svc.cfg.HasSorryServer() {
		svc.stats.drop(DropDialFailed, 1)
		p.outcome = endDialFailed
	} else {
		svc.stats.drop(DropNoServer, 1)
		p.outcome = endNoServer
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
		p.failedOn = r
		if reason := dialEvidence(err); reason != "" {
			p.b.suspect(name, r, reason, now)
		}
		if st.logs.allow(logDialFailed, to, r.key, err, now) {
			st.logs.write(p.b.log, logDialFailed, "virtual_service", name, "real_server", r.key, "err", err)
		}
		return
	}
	if st.logs.allow(logSorryDialFailed, to, "", err, now) {
		st.logs.write(p.b.log, logSorryDialFailed, "virtual_service", name, "sorry_server", to.String(), "err", err)
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
