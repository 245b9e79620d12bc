package lb

import (
	"sync"
	"sync/atomic"

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

// drop counts n connections or datagrams not forwarded for reason r: the one way the package
// counts a drop, so that every drop reaches the status and the metrics.
func (s *serviceStats) drop(r DropReason, n uint64) { s.dropped[r].Add(n) }

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
