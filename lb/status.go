package lb

import "github.com/pairlb/pairlb/config"

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
	Ports       []PortStatus       `json:"ports"`
	Active      int64              `json:"active_connections"`
	UDPSessions int64              `json:"udp_sessions"`
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
	// DialRetries counts the dials to it that failed and were retried on another server.
	DialRetries uint64 `json:"dial_retries_total"`
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
				DialRetries: r.dialRetries.Load(),
			})
		}
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
