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
	Available bool    `json:"available"`
	Health    *Health `json:"health,omitempty"` // nil: not probed
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
			sv := RealServer{ServerStatus: r, Available: r.State == "enabled" && r.Up && r.Weight > 0}
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
