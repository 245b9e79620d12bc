package lb

import (
	"hash/fnv"
	"math"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/pairlb/pairlb/config"
)

// scheduler chooses a real server for a new connection among those available. It returns nil
// when none is available. Implementations are safe for concurrent use.
type scheduler interface {
	pick(servers []*realServer, client netip.Addr) *realServer
}

// newScheduler returns the scheduler s; picks is the service's pick counter (see leastConn).
func newScheduler(s config.Scheduler, picks *atomic.Uint64) scheduler {
	switch s {
	case config.RoundRobin:
		return &roundRobin{}
	case config.WeightedRoundRobin:
		return &weightedRoundRobin{}
	case config.WeightedLeastConn:
		return &leastConn{weighted: true, picks: picks}
	case config.SourceHash:
		return sourceHash{}
	default:
		return &leastConn{picks: picks}
	}
}

// roundRobin takes the available servers in turn. It counts turns over the available servers
// only: starting at a rotating index and skipping to the next available one would give the
// successor of every unavailable server its share as well as its own.
type roundRobin struct{ next atomic.Uint32 }

func (s *roundRobin) pick(servers []*realServer, _ netip.Addr) *realServer {
	var n uint32
	for _, r := range servers {
		if r.available() {
			n++
		}
	}
	if n == 0 {
		return nil
	}
	turn := (s.next.Add(1) - 1) % n
	var last *realServer
	for _, r := range servers {
		if !r.available() {
			continue
		}
		if turn == 0 {
			return r
		}
		turn--
		last = r
	}
	return last // a server became unavailable between the two scans
}

// weightedRoundRobin is nginx's smooth weighted round robin: over a cycle every server is picked
// in proportion to its weight, and heavy servers are interleaved rather than picked in a burst.
type weightedRoundRobin struct {
	mu      sync.Mutex
	current map[*realServer]int64
}

func (s *weightedRoundRobin) pick(servers []*realServer, _ netip.Addr) *realServer {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.current == nil {
		s.current = make(map[*realServer]int64, len(servers))
	}
	var best *realServer
	var total int64
	for _, r := range servers {
		if !r.available() {
			continue
		}
		w := int64(r.weight.Load())
		s.current[r] += w
		total += w
		if best == nil || s.current[r] > s.current[best] {
			best = r
		}
	}
	if best != nil {
		s.current[best] -= total
	}
	return best
}

// leastConn picks the server with the fewest open connections (relative to its weight when
// weighted). A tie goes to the server picked longest ago, as in HAProxy, where a server whose
// count changes goes behind the others of its count: ties to the first server of the pool sent
// about 92 % of a lightly loaded service's connections, where every server has 0 or 1 open, to
// that server. (A scan starting at a rotating offset is not enough: a connection that has just
// ended is released a moment after its client saw the end, and the next pick's rotation then
// lands on a server that still counts it.)
type leastConn struct {
	weighted bool
	// picks numbers the picks of the service; realServer.lastPick holds each server's last.
	// It is the service's, kept across reloads as the servers' numbers are.
	picks *atomic.Uint64
}

func (s *leastConn) pick(servers []*realServer, _ netip.Addr) *realServer {
	var best *realServer
	var bestActive, bestWeight int64
	var bestPick uint64
	for _, r := range servers {
		if !r.available() {
			continue
		}
		a, w, p := r.active.Load(), int64(1), r.lastPick.Load()
		if s.weighted {
			w = int64(r.weight.Load())
		}
		// a/w against bestActive/bestWeight without division.
		if best == nil || a*bestWeight < bestActive*w || (a*bestWeight == bestActive*w && p < bestPick) {
			best, bestActive, bestWeight, bestPick = r, a, w, p
		}
	}
	if best != nil {
		best.lastPick.Store(s.picks.Add(1))
	}
	return best
}

// sourceHash is weighted rendezvous (highest random weight) hashing of the client address. It is
// consistent in the strict sense: removing a server moves only the clients it had, adding one
// takes clients only onto it, and two boxes with the same servers and health view choose the
// same server for a client without sharing state. A pick costs one hash per server, which for
// pools of a few dozen servers is cheaper than keeping a lookup table in step with health.
type sourceHash struct{}

func (sourceHash) pick(servers []*realServer, client netip.Addr) *realServer {
	return rendezvous(servers, client)
}

func rendezvous(servers []*realServer, client netip.Addr) *realServer {
	h := hashAddr(client)
	var best *realServer
	var bestScore float64
	for _, r := range servers {
		if !r.available() {
			continue
		}
		score := rendezvousScore(h^r.seed, r.weight.Load())
		if best == nil || score > bestScore {
			best, bestScore = r, score
		}
	}
	return best
}

// rendezvousScore maps a hash to a weighted score: -w/ln(u) with u uniform in (0,1), so that a
// server's chance of the highest score is proportional to its weight.
func rendezvousScore(h uint64, weight int32) float64 {
	u := (float64(mix64(h)>>11) + 0.5) / (1 << 53)
	return -float64(weight) / math.Log(u)
}

func hashAddr(a netip.Addr) uint64 {
	b := a.As16()
	h := fnv.New64a()
	h.Write(b[:])
	return h.Sum64()
}

func hashString(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}

// mix64 is the splitmix64 finalizer: it spreads a structured input over all 64 bits.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
