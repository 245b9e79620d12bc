package lb

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/pairlb/pairlb/config"
)

// ServerAddr names real servers by address in every virtual service at once, as an operator
// does who takes a machine out for maintenance: a Lync Front End sits in eight or more services.
//
// The rule: an address without a port (10.11.1.11) names every real server at that IP, whatever
// port the file gives it, in every service; an address with a port (10.11.1.12:4443) names only
// the real servers the file writes with that port. A real server written without a port (it is
// dialled on each service port's target port) is named by its IP alone.
type ServerAddr struct {
	Addr netip.Addr
	Port uint16 // 0: every port
}

// ParseServerAddr reads an address as the file writes a real server's (config.ParseRealServerAddr).
func ParseServerAddr(s string) (ServerAddr, error) {
	a, port, err := config.ParseRealServerAddr(s)
	if err != nil {
		return ServerAddr{}, fmt.Errorf("real server address %q: %w", s, err)
	}
	return ServerAddr{Addr: a, Port: port}, nil
}

// String is the address as the file would write it.
func (a ServerAddr) String() string {
	if a.Port == 0 {
		return a.Addr.String()
	}
	return netip.AddrPortFrom(a.Addr, a.Port).String()
}

func (a ServerAddr) match(addr netip.Addr, port uint16) bool {
	return a.Addr.IsValid() && addr == a.Addr && (a.Port == 0 || port == a.Port)
}

// MatchesKey reports whether a names the real server whose key (config.RealServer.Key, the
// address the status shows) is key.
func (a ServerAddr) MatchesKey(key string) bool {
	addr, port, err := config.ParseRealServerAddr(key)
	return err == nil && a.match(addr, port)
}

// ServerChange is one real server SetServerStateByAddr set.
type ServerChange struct {
	Service string // the virtual service
	Server  string // the real server's key
	State   State  // the state set
	Was     State  // the state before; equal to State when it was in it already
	Active  int64  // open connections and UDP sessions (dials under way included) at that moment
}

// SetServerStateByAddr sets the administrative state of every real server a names, in every
// virtual service (configuration order, then the file's order of servers), as SetServerState
// does for one. It does so under the balancer's lock: no reload comes between two services, and
// a status taken meanwhile sees all of them changed or none. An address no service has is
// ErrNotFound, and nothing changes.
func (b *Balancer) SetServerStateByAddr(a ServerAddr, st State) ([]ServerChange, error) {
	changed, err := func() ([]ServerChange, error) {
		b.mu.Lock()
		defer b.mu.Unlock()
		var out []ServerChange
		for _, s := range b.servicesInOrder() {
			for _, r := range s.servers {
				if a.match(r.addr, r.port) {
					old := r.setState(st)
					out = append(out, ServerChange{Service: s.cfg.Name, Server: r.key, State: st, Was: old, Active: r.active.Load()})
				}
			}
		}
		if len(out) == 0 {
			return nil, b.addrNotFound(a)
		}
		return out, nil
	}()
	for _, c := range changed {
		b.logState(c.Service, c.Server, c.State, c.Was, c.Active)
	}
	return changed, err
}

// servicesInOrder is the running services in configuration order. The caller holds mu.
func (b *Balancer) servicesInOrder() []*service {
	if b.cfg == nil {
		return nil
	}
	out := make([]*service, 0, len(b.cfg.VirtualServices))
	for _, vs := range b.cfg.VirtualServices {
		if s := b.services[vs.Name]; s != nil {
			out = append(out, s)
		}
	}
	return out
}

// addrNotFound is the error for an address no service has. For one given with a port it names
// the real servers at the same IP, the likely meaning of an operator who added the service's
// port to a server the file writes without one. The caller holds mu.
func (b *Balancer) addrNotFound(a ServerAddr) error {
	var near []string
	if a.Port != 0 {
		for _, s := range b.servicesInOrder() {
			for _, r := range s.servers {
				if r.addr == a.Addr {
					near = append(near, r.key+" in "+s.cfg.Name)
				}
			}
		}
	}
	if len(near) == 0 {
		return fmt.Errorf("real server address %s: in no virtual service: %w", a, ErrNotFound)
	}
	return fmt.Errorf("real server address %s: in no virtual service with that port (the file has %s; %s names all of them): %w",
		a, strings.Join(near, ", "), a.Addr, ErrNotFound)
}

// logState logs a real server's administrative state set at run time, and that a draining
// server is drained already when it has nothing open.
func (b *Balancer) logState(vs, server string, st, old State, active int64) {
	b.log.Info("real server state", "virtual_service", vs, "real_server", server, "state", st.String(), "was", old.String(), "active", active)
	if st == Draining && active == 0 {
		b.log.Info("real server drained", "virtual_service", vs, "real_server", server)
	}
}
