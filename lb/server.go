package lb

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pairlb/pairlb/config"
)

// State is the administrative state of a real server, set from the file or at run time.
type State int32

// Administrative states. Health is separate: a server receives new connections only when it is
// Enabled and healthy.
const (
	Enabled  State = iota
	Disabled       // no new connections; open ones continue
	Draining       // no new connections; open ones continue; reported when the last one closes
)

func (s State) String() string {
	switch s {
	case Enabled:
		return "enabled"
	case Disabled:
		return "disabled"
	case Draining:
		return "draining"
	}
	return "unknown"
}

// realServer is one pool member. It lives as long as its virtual service keeps a server with
// the same key, so counters and run-time state survive a reload.
type realServer struct {
	key    string     // config.RealServer.Key()
	addr   netip.Addr // address to dial
	port   uint16     // 0: the virtual-service port's target port
	weight atomic.Int32
	state  atomic.Int32  // State
	up     atomic.Bool   // health
	active atomic.Int64  // open connections / UDP sessions
	total  atomic.Uint64 // connections and UDP sessions ever sent to it
	// dialRetries counts the dials to it that failed and were tried again on another real
	// server or the sorry server: the clients it would have lost without the retry.
	dialRetries atomic.Uint64
	seed        uint64 // hash of key, for rendezvous hashing

	lastPick atomic.Uint64 // the service's pick number when leastconn last chose it

	// stateSince and upSince are when the administrative state and the health verdict last
	// changed (or were first set), in unix nanoseconds: what the status's "down for 2h13m,
	// since 09:14:02" is measured from. Written under downMu with the value they date.
	stateSince atomic.Int64
	upSince    atomic.Int64

	// leave is set while the server is down or disabled: a UDP session on it moves to another
	// server with its client's next datagram. A client that keeps sending from one port (every
	// STUN, ICE and TURN client) would otherwise never leave a dead server, since each of its
	// datagrams renews the session. It is derived from up and state, under downMu, so that the
	// datagram path reads one atomic instead of two. A draining server keeps its sessions: that
	// is what draining means. A server a reload took out of its service leaves too: nothing
	// checks its health any more, and the file no longer sends clients there.
	leave atomic.Bool

	// lastEvidence is when a failure seen on the forwarding path (a refused or timed-out dial,
	// ICMP port unreachable) was last reported to the evidence function, in unix nanoseconds.
	lastEvidence atomic.Int64

	// down is cancelled when health marks the server down, closing the connections of services
	// with close_on_down; a fresh one replaces it for the connections that follow.
	downMu  sync.Mutex
	down    context.Context
	cancel  context.CancelFunc
	removed bool // a reload took it out of its service; under downMu
}

// downContext returns the context that ends when the server is next marked down.
func (r *realServer) downContext() context.Context {
	r.downMu.Lock()
	defer r.downMu.Unlock()
	if r.down == nil {
		r.down, r.cancel = context.WithCancel(context.Background())
	}
	return r.down
}

// setUp records a health verdict. Going down ends the down context.
func (r *realServer) setUp(up bool) {
	r.downMu.Lock()
	defer r.downMu.Unlock()
	was := r.up.Swap(up)
	if was != up || r.upSince.Load() == 0 {
		r.upSince.Store(time.Now().UnixNano())
	}
	r.leave.Store(r.mustLeave())
	if was && !up && r.cancel != nil {
		r.cancel()
		r.down, r.cancel = nil, nil
	}
}

// setState sets the administrative state and returns the one before.
func (r *realServer) setState(st State) State {
	r.downMu.Lock()
	defer r.downMu.Unlock()
	old := State(r.state.Swap(int32(st)))
	if old != st || r.stateSince.Load() == 0 {
		r.stateSince.Store(time.Now().UnixNano())
	}
	r.leave.Store(r.mustLeave())
	return old
}

// removeFromPool marks a server that a reload took out of its service: its UDP sessions move
// with their clients' next datagrams; its TCP connections go on, as a reload promises.
func (r *realServer) removeFromPool() {
	r.downMu.Lock()
	defer r.downMu.Unlock()
	r.removed = true
	r.leave.Store(true)
}

// mustLeave is leave's value from up, state and removal; the caller holds downMu, which orders
// the updates of leave, so that the last one reflects the last change of any.
func (r *realServer) mustLeave() bool {
	return r.removed || !r.up.Load() || State(r.state.Load()) == Disabled
}

// available reports whether the server may take a new connection.
func (r *realServer) available() bool {
	return State(r.state.Load()) == Enabled && r.up.Load() && r.weight.Load() > 0
}

// SetEvidenceFunc gives the balancer a function to tell about failures it sees on the
// forwarding path that say a real server may be down: a TCP dial refused, timed out or
// answered by host unreachable, and ICMP port unreachable on a UDP session (ECONNREFUSED on
// its socket). Health checks alone would notice only at their next interval, while clients
// are sent there meanwhile. f is called at most once per second per real server, from the
// balancer's event loops, so it must not block. The daemon wires it to the health monitor,
// which decides what the evidence is worth.
func (b *Balancer) SetEvidenceFunc(f func(service, server, reason string)) { b.evidence.Store(&f) }

// Reasons given to the evidence function.
const (
	evidenceUDPRefused  = "udp port unreachable"
	evidenceDialRefused = "connection refused"
	evidenceDialTimeout = "connect timeout"
	evidenceDialNoHost  = "host unreachable"
	evidenceMinInterval = int64(time.Second)
)

// suspect reports evidence against r of service vs, at most once per evidenceMinInterval per
// server; now is unix nanoseconds.
func (b *Balancer) suspect(vs string, r *realServer, reason string, now int64) {
	f := b.evidence.Load()
	if f == nil || r == nil {
		return
	}
	last := r.lastEvidence.Load()
	if (last != 0 && now-last < evidenceMinInterval) || !r.lastEvidence.CompareAndSwap(last, now) {
		return
	}
	(*f)(vs, r.key, reason)
}

// release gives back the active count taken by the dial plan.
func (r *realServer) release(log *slog.Logger, vs string) {
	if r.active.Add(-1) == 0 && State(r.state.Load()) == Draining {
		log.Info("real server drained", "virtual_service", vs, "real_server", r.key)
	}
}

// dialAddr is where a connection for the virtual-service port p goes on this server.
func (r *realServer) dialAddr(p config.Port) netip.AddrPort {
	if r.port != 0 {
		return netip.AddrPortFrom(r.addr, r.port)
	}
	return netip.AddrPortFrom(r.addr, p.Target)
}
