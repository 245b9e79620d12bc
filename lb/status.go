package lb

// ServiceStatus is a snapshot of one virtual service for the admin API and the metrics.
type ServiceStatus struct {
	Name        string         `json:"name"`
	VIP         string         `json:"vip"`
	Gateway     string         `json:"default_gateway,omitempty"`
	Scheduler   string         `json:"scheduler,omitempty"`
	Redirect    string         `json:"redirect,omitempty"`
	Ports       []PortStatus   `json:"ports"`
	Active      int64          `json:"active_connections"`
	UDPSessions int64          `json:"udp_sessions"`
	Accepted    uint64         `json:"connections_total"`
	BytesIn     uint64         `json:"bytes_client_to_server"`
	BytesOut    uint64         `json:"bytes_server_to_client"`
	Dropped     []DropStatus   `json:"dropped"`
	RealServers []ServerStatus `json:"real_servers"`
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
			Accepted:    st.accepted.Load(),
			BytesIn:     st.bytesIn.Load(),
			BytesOut:    st.bytesOut.Load(),
		}
		if vs.DefaultGateway.IsValid() {
			ss.Gateway = vs.DefaultGateway.String()
		}
		if vs.Redirect == "" {
			ss.Scheduler = string(vs.Scheduler)
		}
		for _, p := range vs.Ports {
			ss.Ports = append(ss.Ports, PortStatus{Port: p.String(), Listen: p.Listen, Proto: string(p.Proto), Accepted: st.port(p).accepted.Load()})
		}
		for r := range numDropReasons {
			ss.Dropped = append(ss.Dropped, DropStatus{Reason: r.String(), Count: st.dropped[r].Load()})
		}
		for _, r := range s.servers {
			ss.RealServers = append(ss.RealServers, ServerStatus{
				Address: r.key,
				State:   State(r.state.Load()).String(),
				Up:      r.up.Load(),
				Weight:  r.weight.Load(),
				Active:  r.active.Load(),
				Total:   r.total.Load(),
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
