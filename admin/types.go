package admin

import (
	"time"

	"github.com/pairlb/pairlb/health"
	"github.com/pairlb/pairlb/lb"
	"github.com/pairlb/pairlb/routing"
)

// The JSON of the admin API, declared here only: the server answers with these types, and the
// client, the pair checker, the lab and the tests decode into them. The status page
// (ui/app.js) reads the same field names.

// API paths the client asks.
const (
	PathStatus  = "/api/v1/status"
	PathReload  = "/api/v1/reload"
	PathReapply = "/api/v1/reapply"
	PathReady   = "/readyz"
	// PathRealServers is the root of the endpoints that name a real server by its address in
	// every virtual service at once (lb.ServerAddr says which servers an address names): GET
	// PathRealServers+ADDRESS is what each has open, POST PathRealServers+ADDRESS+"/drain" (or
	// "/disable", "/enable") sets the state in all of them.
	PathRealServers = "/api/v1/real-servers/"
)

// Status is GET /api/v1/status: the balancer's view of every service merged with the health
// monitor's view of every real server, and the routing plan's state.
type Status struct {
	Version         string           `json:"version"`
	ConfigFile      string           `json:"config_file"`
	ConfigHash      string           `json:"config_hash"`
	Ready           bool             `json:"ready"`
	VirtualServices []VirtualService `json:"virtual_services"`
	// Routing is nil when pairlb changes no kernel state (no CAP_NET_ADMIN, nothing to route).
	Routing *Routing `json:"routing,omitempty"`
}

// Routing is the routing plan's state: how many units it has, and those not installed.
type Routing struct {
	Units    int              `json:"units"`
	Problems []RoutingProblem `json:"problems"`
}

// RoutingProblem is a unit of the routing plan not installed, and why.
type RoutingProblem struct {
	Kind     string    `json:"kind"` // gateway, address, transparency, cleanup
	Unit     string    `json:"unit"` // "gateway 198.18.1.1", "VIP address 198.18.1.100", "ipv6 transparency"
	Gateway  string    `json:"gateway,omitempty"`
	VIP      string    `json:"vip,omitempty"`
	Family   string    `json:"family,omitempty"`
	Services []string  `json:"virtual_services"`
	Reason   string    `json:"reason"`
	Since    time.Time `json:"since"`
}

// VirtualService is one service of the status.
type VirtualService struct {
	lb.ServiceStatus
	RealServers []RealServer `json:"real_servers"` // shadows lb.ServiceStatus.RealServers
}

// RealServer is one real server of a service.
type RealServer struct {
	lb.ServerStatus
	// Available: takes new connections (enabled, up and with a weight).
	Available bool `json:"available"`
	// Drained: draining with no connection or UDP session left, safe to stop; a draining
	// server with something open is not (lb.ServerStatus.Active says how much).
	Drained bool    `json:"drained,omitempty"`
	Health  *Health `json:"health,omitempty"` // nil: not probed
}

// isDrained is RealServer.Drained and AddressServer.Drained from the balancer's state.
func isDrained(state string, active int64) bool {
	return state == lb.Draining.String() && active == 0
}

// Health is the health monitor's view of a real server.
type Health struct {
	Check               string     `json:"check"`
	Address             string     `json:"address"` // where the probe goes
	Up                  bool       `json:"up"`
	Since               time.Time  `json:"since"`
	LastCheck           *time.Time `json:"last_check,omitempty"` // nil before the first
	LastError           string     `json:"last_error,omitempty"`
	LastDurationSeconds float64    `json:"last_duration_seconds"`
	// Data-plane evidence against the server (health.Monitor.Suspect).
	Evidence       uint64     `json:"evidence,omitempty"`         // reports since the server was added
	LastEvidence   string     `json:"last_evidence,omitempty"`    // the latest recorded
	LastEvidenceAt *time.Time `json:"last_evidence_at,omitempty"` // nil without evidence
	Suspect        bool       `json:"suspect,omitempty"`          // probed at the fast interval until its state settles
}

// ServerState is the answer to POST .../real-servers/{address}/{action}.
type ServerState struct {
	VirtualService string `json:"virtual_service"`
	RealServer     string `json:"real_server"`
	State          string `json:"state"`
}

// AddressState is the answer to GET /api/v1/real-servers/{address} and to POST
// /api/v1/real-servers/{address}/{action}: every real server the address names, in every
// virtual service, in configuration order.
type AddressState struct {
	Address string `json:"address"`         // as the daemon read it: "10.11.1.11" (every port), "10.11.1.12:4443"
	State   string `json:"state,omitempty"` // POST: the state set
	// Active is the open connections and UDP sessions of all of them together.
	Active      int64           `json:"active_connections"`
	RealServers []AddressServer `json:"real_servers"`
}

// AddressServer is one real server of an AddressState.
type AddressServer struct {
	VirtualService string `json:"virtual_service"`
	RealServer     string `json:"real_server"`
	State          string `json:"state"`
	Was            string `json:"was,omitempty"` // POST: the state before, equal to State when it was in it already
	Active         int64  `json:"active_connections"`
	Drained        bool   `json:"drained"` // as RealServer.Drained
}

// ReloadResult is the answer to POST /api/v1/reload and /api/v1/reapply: the configuration in
// force after.
type ReloadResult struct {
	Result          string `json:"result"`
	ConfigHash      string `json:"config_hash"`
	VirtualServices int    `json:"virtual_services"`
}

// ErrorResponse is the body of every answer under /api/ that is not 2xx.
type ErrorResponse struct {
	Error  string   `json:"error"`
	Errors []string `json:"errors,omitempty"`
}

// Find returns the real server rs of the service vs, or nil.
func (st *Status) Find(vs, rs string) *RealServer {
	for i := range st.VirtualServices {
		s := &st.VirtualServices[i]
		if s.Name != vs {
			continue
		}
		for j := range s.RealServers {
			if s.RealServers[j].Address == rs {
				return &s.RealServers[j]
			}
		}
	}
	return nil
}

// Status is the status document the server answers with now.
func (s *Server) Status() Status {
	st := newStatus(s.version, s.Ready(), s.d.Services(), s.d.Health())
	if cfg := s.d.Running(); cfg != nil {
		st.ConfigFile, st.ConfigHash = cfg.Path, cfg.Hash
	}
	if units, problems, ok := s.d.Routing(); ok {
		st.Routing = newRouting(units, problems)
	}
	return st
}

// newStatus merges the balancer's view of the services with the monitor's of their servers.
func newStatus(version string, ready bool, services []lb.ServiceStatus, targets []health.TargetStatus) Status {
	type key struct{ vs, rs string }
	hs := map[key]health.TargetStatus{}
	for _, h := range targets {
		hs[key{h.Service, h.Server}] = h
	}
	out := Status{Version: version, Ready: ready, VirtualServices: []VirtualService{}}
	for _, s := range services {
		v := VirtualService{ServiceStatus: s, RealServers: []RealServer{}}
		for _, r := range s.RealServers {
			sv := RealServer{ServerStatus: r, Available: r.State == "enabled" && r.Up && r.Weight > 0, Drained: isDrained(r.State, r.Active)}
			if h, ok := hs[key{s.Name, r.Address}]; ok {
				hv := &Health{Check: string(h.Check), Address: h.Addr.String(), Up: h.Up, Since: h.Since,
					LastError: h.LastError, LastDurationSeconds: h.LastDuration.Seconds(),
					Evidence: h.Evidence, LastEvidence: h.LastEvidence, Suspect: h.Suspect}
				if !h.LastCheck.IsZero() {
					lc := h.LastCheck
					hv.LastCheck = &lc
				}
				if !h.LastEvidenceAt.IsZero() {
					le := h.LastEvidenceAt
					hv.LastEvidenceAt = &le
				}
				sv.Health = hv
			}
			v.RealServers = append(v.RealServers, sv)
		}
		if v.Ports == nil {
			v.Ports = []lb.PortStatus{}
		}
		out.VirtualServices = append(out.VirtualServices, v)
	}
	return out
}

func newRouting(units []routing.Unit, problems []routing.Problem) *Routing {
	v := &Routing{Units: len(units), Problems: []RoutingProblem{}}
	for _, p := range problems {
		rp := RoutingProblem{Kind: string(p.Kind), Unit: p.UnitID.String(), Family: string(p.Family),
			Services: p.Services, Reason: p.Reason, Since: p.Since}
		switch p.Kind {
		case routing.UnitGateway:
			rp.Gateway = p.Addr.String()
		case routing.UnitAddress:
			rp.VIP = p.Addr.String()
		}
		if rp.Services == nil {
			rp.Services = []string{}
		}
		v.Problems = append(v.Problems, rp)
	}
	return v
}
