package lb

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
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

	// connWG counts open connections and UDP sessions, tcpAcceptWG the TCP listeners some loop
	// still accepts on (the only code that adds to connWG without a lock), acceptWG the open UDP
	// listeners and the redirectors' goroutines. The package comment (doc.go) says in which
	// order shutdown waits for them, and why.
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
	// loops carry the TCP connections and the UDP sessions (loop.go), one per usable CPU. The
	// first Apply makes them (makeLoops) and Run runs them; both under mu.
	loops        []*loop
	running      bool // Run has started the loops: a loop made from now on starts at once
	loopWG       sync.WaitGroup
	udpListeners int // UDP listeners ever opened, to spread them over the loops; under mu

	evidence     atomic.Pointer[func(service, server, reason string)] // SetEvidenceFunc
	rcvbufLogged atomic.Bool                                          // newUDPListener: the receive buffer granted

	clog connLog // the connection log (connlog.go): SetConnectionLog, written by a goroutine of Run
}

// New returns a Balancer with no listeners. It holds no descriptor until Apply: a Balancer
// that is never applied needs nothing released. Call Apply to give it a configuration and Run
// to own its lifetime; once Apply has succeeded, only Run releases what it opened.
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
	b.clog.kick = make(chan struct{}, 1)
	return b
}

// ErrStopping is returned by Apply once the balancer has begun to stop.
var ErrStopping = errors.New("balancer is stopping")

// Run owns the balancer's lifetime: it runs the loops, does the periodic housekeeping and, when
// ctx ends, stops gracefully (see shutdown) with the configured drain timeout. It returns when
// every goroutine the balancer started has ended and every descriptor it opened is closed,
// also when ctx has ended before Run was called. Work that Apply left for the loops before Run
// (listeners to watch, connections queued in their backlog) waits for it.
func (b *Balancer) Run(ctx context.Context) {
	// The connection log's writer starts before the loops and stops after them (shutdown's
	// last step), so that it writes the line of every connection the loops closed.
	b.clog.start(b.log)
	b.mu.Lock()
	b.running = true
	b.runLoops(b.loops)
	b.mu.Unlock()
	// Every second: the log limiter's summaries are due a window after their first event, and
	// should not wait for a slower tick; the persistence sweep's work is only what expired.
	tick := time.NewTicker(time.Second)
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
			return
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

	// The operator who sent SIGTERM learns what the stop waits for, and at the end whether
	// the deadline cut any connection.
	start := time.Now()
	b.log.Info("drain started", "connections", b.openConnections(), "drain_timeout", drain)
	done := make(chan struct{})
	go func() {
		b.connWG.Wait()
		close(done)
	}()
	timer := time.NewTimer(drain)
	var cut int64
	select {
	case <-done:
		timer.Stop()
	case <-timer.C:
		cut = b.openConnections()
		b.log.Warn("drain timeout reached, closing open connections", "drain_timeout", drain, "connections", cut)
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
	b.log.Info("drain ended", "closed_at_deadline", cut, "duration", time.Since(start).Round(time.Millisecond))
	b.acceptWG.Wait()
	for _, lp := range b.loops {
		lp.post(lp.stop)
	}
	b.loopWG.Wait()
	for _, lp := range b.loops {
		lp.close()
	}
	b.clog.stop()
	b.log.Info("balancer stopped")
}

// openConnections is the number of TCP connections and UDP sessions open in every service.
func (b *Balancer) openConnections() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	var n int64
	for _, s := range b.services {
		n += s.stats.active.Load()
	}
	return n
}

// makeLoops makes the loops if they do not exist yet, one per CPU the process may use: a proxy
// pinned to one core gets one loop and no locks contended; Go's own GOMAXPROCS follows the same
// CPU affinity. It reports whether it made them now; on an error it keeps none. The caller
// holds mu.
func (b *Balancer) makeLoops() (made bool, err error) {
	if b.loops != nil {
		return false, nil
	}
	loops := make([]*loop, 0, runtime.GOMAXPROCS(0))
	for range cap(loops) {
		lp, err := newLoop()
		if err != nil {
			for _, lp := range loops {
				lp.close()
			}
			return false, err
		}
		lp.onTick(lp.sweepConns)
		loops = append(loops, lp)
	}
	b.loops = loops
	if b.running {
		b.runLoops(loops)
	}
	return true, nil
}

// unmakeLoops closes the loops of a first Apply that failed, before Run: nothing else holds
// them, and a Balancer that is never run must not keep them. The caller holds mu.
func (b *Balancer) unmakeLoops() {
	for _, lp := range b.loops {
		lp.stop() // what the aborted listeners posted is dropped with it
		lp.close()
	}
	b.loops = nil
}

// runLoops starts a goroutine for each of loops; shutdown waits for them. The caller holds mu.
func (b *Balancer) runLoops(loops []*loop) {
	for _, lp := range loops {
		b.loopWG.Add(1)
		go func() {
			defer b.loopWG.Done()
			lp.run()
		}()
	}
}

// served is the configuration being served, or nil before the first Apply. The daemon keeps
// the running configuration (daemon.Daemon.Running); this is the balancer's own, for its tests.
func (b *Balancer) served() *config.Config {
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
	b.logState(vs, server, st, old, r.active.Load())
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

// housekeeping is the balancer's periodic work on its services: expiring persistence entries,
// and the counts of log lines held back by a burst that has ended.
// It holds the balancer's lock only to list the services, so that a large table's sweep never
// delays a reload or a status request.
func (b *Balancer) housekeeping(now time.Time) {
	b.mu.Lock()
	services := make([]*service, 0, len(b.services))
	for _, s := range b.services {
		services = append(services, s)
	}
	b.mu.Unlock()
	for _, s := range services {
		s.stats.logs.flush(b.log, now.UnixNano(), "virtual_service", s.cfg.Name)
		// In chunks, each under the table's lock for a moment only: the work is the entries
		// that expired, each of which an insertion paid for, never a walk of the live ones.
		for s.persist != nil && s.persist.sweep(now) == sweepBudget {
		}
	}
}
