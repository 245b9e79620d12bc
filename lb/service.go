package lb

import (
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/pairlb/pairlb/config"
)

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
