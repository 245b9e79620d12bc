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
	DropAccessDenied  DropReason = iota // client not allowed by the service's access lists
	DropNoServer                        // no real server available and no sorry server
	DropDialFailed                      // every available server (and the sorry server) failed to connect
	DropUDPTableFull                    // a new UDP client while the session table is at its bound
	DropUDPSendFailed                   // the kernel refused to send a datagram
	DropUDPTooLarge                     // a datagram larger than maxDatagram
	DropServiceClosed                   // traffic for a service a reload removed
	DropLoop                            // traffic from the balancer's own socket: a real server leads back to it
	numDropReasons
)

var dropReasonNames = [numDropReasons]string{
	"access_denied", "no_server", "dial_failed", "udp_table_full", "udp_send_failed", "udp_too_large", "service_closed", "loop",
}

func (r DropReason) String() string { return dropReasonNames[r] }

// serviceStats are the counters of one virtual service. They are kept by service name across
// reloads so that counters never go backwards while the service exists.
type serviceStats struct {
	accepted    atomic.Uint64 // connections accepted and UDP sessions created
	active      atomic.Int64
	udpSessions atomic.Int64
	bytesIn     atomic.Uint64 // client to server
	bytesOut    atomic.Uint64 // server to client
	dropped     [numDropReasons]atomic.Uint64

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
	s := &service{cfg: vs, sched: newScheduler(vs.Scheduler), byKey: make(map[string]*realServer, len(vs.RealServers))}
	if old != nil {
		s.stats = old.stats
	} else {
		s.stats = &serviceStats{}
	}
	for _, rc := range vs.RealServers {
		key := rc.Key()
		var r *realServer
		if old != nil {
			r = old.byKey[key]
		}
		shared := r != nil
		if r == nil {
			r = &realServer{key: key, addr: rc.Address, port: rc.Port, seed: hashString(key)}
			r.up.Store(vs.Health.Type == config.HealthNone || vs.Health.InitialUp)
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
				r.state.Store(int32(state))
			}
			if vs.Health.Type == config.HealthNone {
				r.up.Store(true)
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
		if old != nil && old.persist != nil && old.cfg.Persistence == vs.Persistence {
			s.persist = old.persist
		} else {
			s.persist = newPersistTable(vs.Persistence.Timeout, vs.Persistence.MaxEntries)
		}
	}
	return s
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
	if s.persist != nil {
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
