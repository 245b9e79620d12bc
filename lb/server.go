package lb

import (
	"context"
	"net/netip"
	"sync"
	"sync/atomic"
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
	seed   uint64        // hash of key, for rendezvous hashing

	lastPick atomic.Uint64 // the service's pick number when leastconn last chose it

	// down is cancelled when health marks the server down, closing the connections of services
	// with close_on_down; a fresh one replaces it for the connections that follow.
	downMu sync.Mutex
	down   context.Context
	cancel context.CancelFunc
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
	if r.up.Swap(up) == up || up {
		return
	}
	r.downMu.Lock()
	defer r.downMu.Unlock()
	if r.cancel != nil {
		r.cancel()
		r.down, r.cancel = nil, nil
	}
}

// available reports whether the server may take a new connection.
func (r *realServer) available() bool {
	return State(r.state.Load()) == Enabled && r.up.Load() && r.weight.Load() > 0
}
