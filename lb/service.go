package lb

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pairlb/pairlb/config"
)

// DropReason says why a connection or datagram was not forwarded. The set is fixed so that a
// metric labelled by it stays bounded.
type DropReason int

// Reasons for dropping traffic.
const (
	DropAccessDenied       DropReason = iota // client not allowed by the service's access lists
	DropNoServer                             // no real server available and no sorry server
	DropDialFailed                           // every available server (and the sorry server) failed to connect
	DropUDPTableFull                         // a new UDP client while the session table is at its bound
	DropUDPSendFailed                        // the kernel refused to send a datagram
	DropUDPTooLarge                          // a datagram larger than maxDatagram
	DropServiceClosed                        // traffic for a service a reload removed
	DropUDPReceiveOverflow                   // datagrams the kernel dropped on a full receive queue, before pairlb read them
	DropLocalError                           // the box could not carry it (an epoll set refused the socket: memory)
	DropLoop                                 // traffic from the balancer's own socket: a real server leads back to it
	numDropReasons
)

var dropReasonNames = [numDropReasons]string{
	"access_denied", "no_server", "dial_failed", "udp_table_full", "udp_send_failed", "udp_too_large", "service_closed",
	"udp_receive_overflow", "local_error", "loop",
}

func (r DropReason) String() string { return dropReasonNames[r] }

// serviceStats are the counters of one virtual service. They are kept by service name across
// reloads so that counters never go backwards while the service exists.
type serviceStats struct {
	accepted    atomic.Uint64 // connections accepted and UDP sessions created
	active      atomic.Int64
	udpSessions atomic.Int64
	udpMoves    atomic.Uint64 // UDP sessions moved off a server gone down or disabled, or off the sorry server

	persistEvictions atomic.Uint64 // persistence entries evicted for room, by every table the service had
	bytesIn          atomic.Uint64 // client to server
	bytesOut         atomic.Uint64 // server to client
	dropped          [numDropReasons]atomic.Uint64
	picks            atomic.Uint64 // leastconn's pick numbers (see leastConn)
	logs             logLimiter    // the service's per-connection and per-datagram log lines

	mu    sync.Mutex
	ports map[config.Port]*portCounter
}

func (s *serviceStats) drop(r DropReason) { s.dropped[r].Add(1) }

// service is the run-time form of one config.VirtualService. A reload builds a new service and
// listeners switch to it atomically; connections keep the service they started with.
type service struct {
	cfg     config.VirtualService
	servers []*realServer
	byKey   map[string]*realServer
	sched   scheduler
	persist *persistTable // nil without persistence
	stats   *serviceStats

	nextSource atomic.Uint32 // round robin over cfg.SourceAddresses

	// onCommit changes the real servers this service shares with the running one; Apply runs
	// it once the reload is accepted, so that a rejected reload leaves them as they were.
	onCommit []func()
}

// commit makes the changes newService left for the reload's success.
func (s *service) commit() {
	for _, f := range s.onCommit {
		f()
	}
	s.onCommit = nil
}

func newService(vs config.VirtualService, g *config.Global, old *service) *service {
	s := &service{cfg: vs, byKey: make(map[string]*realServer, len(vs.RealServers))}
	if old != nil {
		s.stats = old.stats
	} else {
		s.stats = &serviceStats{}
	}
	s.sched = newScheduler(vs.Scheduler, &s.stats.picks)
	for _, rc := range vs.RealServers {
		key := rc.Key()
		var r *realServer
		if old != nil {
			r = old.byKey[key]
		}
		shared := r != nil
		if r == nil {
			r = &realServer{key: key, addr: rc.Address, port: rc.Port, seed: hashString(key)}
			r.setUp(vs.Health.Type == config.HealthNone || vs.Health.InitialUp)
		}
		state := State(-1)
		// The file's enabled: false wins; otherwise a run-time state set through the API stays.
		if !rc.Enabled {
			state = Disabled
		} else if old == nil || old.byKey[key] == nil || old.fileDisabled(key) {
			state = Enabled
		}
		set := func() {
			if state >= 0 {
				r.setState(state)
			}
			if vs.Health.Type == config.HealthNone {
				r.setUp(true)
			}
			r.weight.Store(int32(rc.Weight))
		}
		if shared {
			s.onCommit = append(s.onCommit, set)
		} else {
			set()
		}
		s.servers = append(s.servers, r)
		s.byKey[key] = r
	}
	if vs.Persistence.Enabled() {
		// place_by says only how clients without an entry are placed: the entries stay good.
		was, now := old.persistence(), vs.Persistence
		was.PlaceBy, now.PlaceBy = "", ""
		if old != nil && old.persist != nil && was == now {
			s.persist = old.persist
		} else {
			s.persist = newPersistTable(vs.Persistence.Timeout, vs.Persistence.MaxEntries, &s.stats.persistEvictions)
		}
	}
	return s
}

// persistence is the persistence settings of s; none for a nil s.
func (s *service) persistence() config.Persistence {
	if s == nil {
		return config.Persistence{}
	}
	return s.cfg.Persistence
}

// fileDisabled reports whether the file disabled the server in this (older) service, so that
// re-enabling it in the file takes effect on reload.
func (s *service) fileDisabled(key string) bool {
	for _, rc := range s.cfg.RealServers {
		if rc.Key() == key {
			return !rc.Enabled
		}
	}
	return false
}

// allowed applies the access lists: deny wins, and an empty allow list allows everyone.
func (s *service) allowed(client netip.Addr) bool {
	client = client.Unmap()
	for _, p := range s.cfg.Access.Deny {
		if p.Contains(client) {
			return false
		}
	}
	if len(s.cfg.Access.Allow) == 0 {
		return true
	}
	for _, p := range s.cfg.Access.Allow {
		if p.Contains(client) {
			return true
		}
	}
	return false
}

// pick chooses a real server for client, skipping those in tried. Persistence sends a client
// back to its server while that server is available.
func (s *service) pick(client netip.Addr, tried []*realServer) *realServer {
	now := time.Now()
	if s.persist != nil && len(tried) == 0 {
		if key, ok := s.persist.lookup(client, now); ok {
			if r := s.byKey[key]; r != nil && r.available() {
				s.persist.store(client, key, now)
				return r
			}
		}
	}
	candidates := s.servers
	if len(tried) > 0 {
		candidates = make([]*realServer, 0, len(s.servers))
	outer:
		for _, r := range s.servers {
			for _, t := range tried {
				if r == t {
					continue outer
				}
			}
			candidates = append(candidates, r)
		}
	}
	var r *realServer
	if s.placeByHash() {
		// A new client of a persistent service goes where a consistent hash of its address
		// sends it: both boxes of a pair, with the same configuration and health view, agree on
		// it without sharing a table, so affinity survives a failover.
		r = rendezvous(candidates, client)
	} else {
		r = s.sched.pick(candidates, client)
	}
	if r != nil && s.persist != nil {
		s.persist.store(client, r.key, now)
	}
	return r
}

// placeByHash reports whether a new client is placed by the consistent hash rather than by the
// scheduler: with persistence, unless the file says place_by: scheduler.
func (s *service) placeByHash() bool {
	return s.persist != nil && s.cfg.Persistence.PlaceBy != config.PlaceByScheduler
}

// placement names what places a new client, for the status and the metrics: the scheduler, or
// "hash" for a persistent service that places by the consistent hash.
func (s *service) placement() string {
	if s.placeByHash() {
		return placementHash
	}
	return string(s.cfg.Scheduler)
}

// placementHash is the placement of a persistent service with place_by: hash.
const placementHash = "hash"

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

// portCounter counts the connections accepted on one port of a service.
type portCounter struct {
	port     config.Port
	accepted atomic.Uint64
}

// port returns the counter of p, creating it on first use. Counters are kept across reloads.
func (s *serviceStats) port(p config.Port) *portCounter {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ports == nil {
		s.ports = map[config.Port]*portCounter{}
	}
	c := s.ports[p]
	if c == nil {
		c = &portCounter{port: p}
		s.ports[p] = c
	}
	return c
}
