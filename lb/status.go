package lb

import (
	"time"

	"github.com/pairlb/pairlb/config"
)

// ServiceStatus is a snapshot of one virtual service for the admin API and the metrics.
type ServiceStatus struct {
	Name      string `json:"name"`
	VIP       string `json:"vip"`
	Gateway   string `json:"default_gateway,omitempty"`
	Scheduler string `json:"scheduler,omitempty"` // as the file writes it
	// Placement is what places a new client: the scheduler's name, or "hash" for a persistent
	// service placing by the consistent hash of the client's address (persistence place_by:
	// hash), where the scheduler is not used. Empty for a redirector.
	Placement   string             `json:"placement,omitempty"`
	Persistence *PersistenceStatus `json:"persistence,omitempty"` // nil without persistence
	Redirect    string             `json:"redirect,omitempty"`
	// SorryServer is the sorry server's address ("" without one): it takes new connections
	// while no real server is available, which makes the service degraded rather than down.
	SorryServer string `json:"sorry_server,omitempty"`
	// UnavailableRedirect is the URL new clients are redirected to while no real server is
	// available ("" without one): like a sorry server, it makes the service degraded, not down.
	UnavailableRedirect string `json:"unavailable_redirect,omitempty"`
	// State is ServiceUp, ServiceDegraded or ServiceDown (ServiceStateOf says how it is
	// decided); Available of InRotation real servers take new connections.
	State       string       `json:"state"`
	Available   int          `json:"servers_available"`
	InRotation  int          `json:"servers_in_rotation"`
	Ports       []PortStatus `json:"ports"`
	Active      int64        `json:"active_connections"`
	UDPSessions int64        `json:"udp_sessions"`
	// UDPMoves counts UDP sessions moved to another destination: off a real server that went
	// down or was disabled, or off the sorry server once a real server was back.
	UDPMoves    uint64         `json:"udp_session_moves_total"`
	Accepted    uint64         `json:"connections_total"`
	BytesIn     uint64         `json:"bytes_client_to_server"`
	BytesOut    uint64         `json:"bytes_server_to_client"`
	Dropped     []DropStatus   `json:"dropped"`
	RealServers []ServerStatus `json:"real_servers"`
}

// PersistenceStatus is the source-IP persistence of a service and its table.
type PersistenceStatus struct {
	Type           string  `json:"type"`     // source-ip
	PlaceBy        string  `json:"place_by"` // hash | scheduler: what places a client the table does not know
	TimeoutSeconds float64 `json:"timeout_seconds"`
	Entries        int     `json:"entries"`
	MaxEntries     int     `json:"max_entries"`
	// Evictions counts entries forgotten to make room for a new client while the table was
	// full, not those that expired: clients that lose their server affinity early.
	Evictions uint64 `json:"evictions_total"`
}

// PortStatus is one listening port and the connections it accepted.
type PortStatus struct {
	Port     string `json:"port"` // as the file writes it: "443/tcp->4443"
	Listen   uint16 `json:"listen"`
	Proto    string `json:"proto"`
	Accepted uint64 `json:"connections_total"`
}

// DropStatus counts the traffic dropped for one reason.
type DropStatus struct {
	Reason string `json:"reason"`
	Count  uint64 `json:"count"`
}

// ServerStatus is a snapshot of one real server.
type ServerStatus struct {
	Address string `json:"address"` // the key of config.RealServer
	State   string `json:"state"`   // enabled | disabled | draining
	Up      bool   `json:"up"`      // health
	Weight  int32  `json:"weight"`
	Active  int64  `json:"active_connections"`
	Total   uint64 `json:"connections_total"`
	// StateSince and UpSince are when State and Up last changed, or were first set when the
	// server joined its service (a reload that keeps the server keeps them).
	StateSince time.Time `json:"state_since"`
	UpSince    time.Time `json:"up_since"`
	// DialRetries counts the dials to it that failed and were retried on another server.
	DialRetries uint64 `json:"dial_retries_total"`
}

// The states of a virtual service.
const (
	ServiceUp       = "up"       // every real server in rotation is available
	ServiceDegraded = "degraded" // some are, or none is and the sorry server stands in
	ServiceDown     = "down"     // none is and there is no sorry server: new clients are refused
)

// ServiceStates lists the states of a virtual service, for exporting one-hot series.
func ServiceStates() []string { return []string{ServiceUp, ServiceDegraded, ServiceDown} }

// ServiceStateOf decides the state of a service from its real servers. The servers in rotation
// are those the file and the operator want to take clients: enabled, with a weight above 0. A
// disabled or draining (or drained) server was taken out on purpose, so it does not make the
// service degraded: patching a Front End is not an outage. Of those in rotation, the available
// ones are also up. None available is down, unless a sorry server takes the new clients: then
// the service is degraded (clients get the sorry page, not a refusal); standIn says whether a
// sorry server or an unavailable_redirect answers them. This holds when every server is disabled
// too: nobody else is served. A redirector has no servers and is always up.
func ServiceStateOf(servers []ServerStatus, standIn, redirect bool) (state string, available, inRotation int) {
	if redirect {
		return ServiceUp, 0, 0
	}
	for _, r := range servers {
		if r.State != Enabled.String() || r.Weight <= 0 {
			continue
		}
		inRotation++
		if r.Up {
			available++
		}
	}
	switch {
	case available == 0 && standIn:
		return ServiceDegraded, available, inRotation
	case available == 0:
		return ServiceDown, available, inRotation
	case available < inRotation:
		return ServiceDegraded, available, inRotation
	}
	return ServiceUp, available, inRotation
}

// DropReasons lists every reason a drop can be counted under, for exporting zero series.
func DropReasons() []string { return dropReasonNames[:] }

// Status returns a snapshot of every virtual service in configuration order.
func (b *Balancer) Status() []ServiceStatus {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cfg == nil {
		return nil
	}
	out := make([]ServiceStatus, 0, len(b.cfg.VirtualServices))
	for _, vs := range b.cfg.VirtualServices {
		s := b.services[vs.Name]
		st := s.stats
		ss := ServiceStatus{
			Name:        vs.Name,
			VIP:         vs.VIP.String(),
			Redirect:    vs.Redirect,
			Active:      st.active.Load(),
			UDPSessions: st.udpSessions.Load(),
			UDPMoves:    st.udpMoves.Load(),
			Accepted:    st.accepted.Load(),
			BytesIn:     st.bytesIn.Load(),
			BytesOut:    st.bytesOut.Load(),
		}
		if vs.DefaultGateway.IsValid() {
			ss.Gateway = vs.DefaultGateway.String()
		}
		if vs.Redirect == "" {
			ss.Scheduler = string(vs.Scheduler)
			ss.Placement = s.placement()
		}
		if p := s.persist; p != nil && vs.Redirect == "" {
			placeBy := config.PlaceByHash
			if !s.placeByHash() {
				placeBy = config.PlaceByScheduler
			}
			ss.Persistence = &PersistenceStatus{
				Type:           vs.Persistence.Type,
				PlaceBy:        string(placeBy),
				TimeoutSeconds: vs.Persistence.Timeout.Seconds(),
				Entries:        p.len(),
				MaxEntries:     p.max,
				Evictions:      st.persistEvictions.Load(),
			}
		}
		for _, p := range vs.Ports {
			ss.Ports = append(ss.Ports, PortStatus{Port: p.String(), Listen: p.Listen, Proto: string(p.Proto), Accepted: st.port(p).accepted.Load()})
		}
		for r := range numDropReasons {
			ss.Dropped = append(ss.Dropped, DropStatus{Reason: r.String(), Count: st.dropped[r].Load()})
		}
		for _, r := range s.servers {
			ss.RealServers = append(ss.RealServers, ServerStatus{
				Address:     r.key,
				State:       State(r.state.Load()).String(),
				Up:          r.up.Load(),
				Weight:      r.weight.Load(),
				Active:      r.active.Load(),
				Total:       r.total.Load(),
				StateSince:  unixTime(r.stateSince.Load()),
				UpSince:     unixTime(r.upSince.Load()),
				DialRetries: r.dialRetries.Load(),
			})
		}
		if vs.HasSorryServer() {
			ss.SorryServer = vs.SorryServer.String()
			if vs.SorryServer.Port() == 0 {
				ss.SorryServer = vs.SorryServer.Addr().String()
			}
		}
		ss.UnavailableRedirect = vs.UnavailableRedirect
		ss.State, ss.Available, ss.InRotation = ServiceStateOf(ss.RealServers, vs.HasSorryServer() || vs.UnavailableRedirect != "", vs.Redirect != "")
		out = append(out, ss)
	}
	return out
}

// ParseState turns "enabled", "disabled" or "draining" (also "enable", "disable", "drain", as
// the admin API's verbs) into a State.
func ParseState(s string) (State, bool) {
	switch s {
	case "enabled", "enable":
		return Enabled, true
	case "disabled", "disable":
		return Disabled, true
	case "draining", "drain":
		return Draining, true
	}
	return 0, false
}

// unixTime is a time kept in unix nanoseconds; zero for never.
func unixTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}
