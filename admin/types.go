package admin

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/pairlb/pairlb/config"
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
	// LastReload is the last time the file was read: at start, then at every reload. With
	// ConfigOnDisk it says whether the configuration in force is the file an operator sees.
	LastReload   *Reload       `json:"last_reload,omitempty"`
	ConfigOnDisk *ConfigOnDisk `json:"config_on_disk,omitempty"`
	// Time is when the status was taken, by the daemon's clock: the page's rates divide the
	// counters' growth between two statuses by the difference of their times.
	Time time.Time `json:"time"`
	// ServicesDown and ServicesDegraded count the virtual services in those states
	// (lb.ServiceStateOf): the header says them beside "ready".
	ServicesDown     int `json:"services_down"`
	ServicesDegraded int `json:"services_degraded"`
}

// ReadyText is the header's word on the daemon: "ready" or "NOT READY", then how many virtual
// services are down or degraded ("ready, 2 services down, 1 degraded"), so that a ready daemon
// never reads as all well while a service refuses its clients.
func (st *Status) ReadyText() string {
	text := "ready"
	if !st.Ready {
		text = "NOT READY"
	}
	plural := func(n int) string {
		if n == 1 {
			return "1 service"
		}
		return fmt.Sprintf("%d services", n)
	}
	switch {
	case st.ServicesDown > 0 && st.ServicesDegraded > 0:
		text += fmt.Sprintf(", %s down, %d degraded", plural(st.ServicesDown), st.ServicesDegraded)
	case st.ServicesDown > 0:
		text += ", " + plural(st.ServicesDown) + " down"
	case st.ServicesDegraded > 0:
		text += ", " + plural(st.ServicesDegraded) + " degraded"
	}
	return text
}

// The results of a reload.
const (
	ReloadOK     = "ok"
	ReloadFailed = "failed"
)

// The triggers of a Reload.
const (
	TriggerStart  = "start"  // the file read by `pairlb run`
	TriggerReload = "reload" // SIGHUP, `pairlb reload` or POST /api/v1/reload
)

// Reload is the verdict on a reading of the configuration file: the answer to POST
// /api/v1/reload (200 when the file was applied; 422 when it does not validate and 500 when it
// cannot be applied, then with error and errors as every error answer has them) and the
// status's last_reload.
type Reload struct {
	// Result is ReloadOK or ReloadFailed; ConfigHash and VirtualServices are the configuration in
	// force after, which a failure leaves as it was.
	ReloadResult
	Time    time.Time `json:"time"`
	Trigger string    `json:"trigger"` // TriggerStart or TriggerReload
	File    string    `json:"file"`
	// PreviousHash is the configuration an applied file replaced ("" at start).
	PreviousHash string `json:"previous_hash,omitempty"`
	// Changes is what an applied file changed, in the order daemon's diff gives them; empty when
	// it changed nothing (and at start).
	Changes []Change `json:"changes"`
	// RejectedHash is the SHA-256 of the file rejected; "" when it could not be read.
	RejectedHash string   `json:"rejected_hash,omitempty"`
	Error        string   `json:"error,omitempty"`
	Errors       []string `json:"errors,omitempty"` // one per problem, as config.Errors renders them
}

// Applied is the verdict on cfg, now in force in place of prev (nil at start), with what it
// changed.
func Applied(at time.Time, trigger string, prev, cfg *config.Config, changes []Change) *Reload {
	if changes == nil {
		changes = []Change{}
	}
	for i := range changes {
		changes[i].Text = changes[i].String()
	}
	r := &Reload{ReloadResult: ReloadResult{Result: ReloadOK, ConfigHash: cfg.Hash, VirtualServices: len(cfg.VirtualServices)},
		Time: at, Trigger: trigger, File: cfg.Path, Changes: changes}
	if prev != nil {
		r.PreviousHash = prev.Hash
	}
	return r
}

// Nothing is what an applied reload that changed nothing says: whether the file is the one in
// force already, or differs only in what changes nothing.
func (r *Reload) Nothing() string {
	if r.PreviousHash == "" || r.PreviousHash == r.ConfigHash {
		return "nothing changed (the file is the one in force)"
	}
	return "nothing changed (the file differs only in comments, layout or order)"
}

// Rejected is the verdict on the file at path, whose bytes hash to rejectedHash ("" when it
// could not be read), refused for err while running stays in force: err's problems one per
// entry (every problem of a config.Errors, else each line of err).
func Rejected(at time.Time, path, rejectedHash string, running *config.Config, err error) *Reload {
	r := &Reload{ReloadResult: ReloadResult{Result: ReloadFailed}, Time: at, Trigger: TriggerReload, File: path,
		Changes: []Change{}, RejectedHash: rejectedHash, Error: "reload rejected; the running configuration stays"}
	if running != nil {
		r.ConfigHash, r.VirtualServices = running.Hash, len(running.VirtualServices)
	}
	var errs config.Errors
	if errors.As(err, &errs) {
		for _, e := range errs {
			r.Errors = append(r.Errors, e.Error())
		}
	} else if err != nil {
		r.Errors = strings.Split(err.Error(), "\n")
	}
	return r
}

// The kinds of Change.
const (
	ChangeGlobal         = "global_changed"          // Settings: the keys of global
	ChangeServiceAdded   = "virtual_service_added"   // with its real servers
	ChangeServiceRemoved = "virtual_service_removed" // with its real servers
	ChangeServiceChanged = "virtual_service_changed" // Settings: the keys of the service; its real servers are changes of their own
	ChangeServerAdded    = "real_server_added"
	ChangeServerRemoved  = "real_server_removed"
	ChangeServerWeight   = "real_server_reweighted" // Weight
	ChangeServerEnabled  = "real_server_enabled"    // enabled: true in the file again
	ChangeServerDisabled = "real_server_disabled"   // enabled: false in the file
	ChangePairAdded      = "pair_added"
	ChangePairRemoved    = "pair_removed"
	ChangePairChanged    = "pair_changed" // Settings: the keys of pair
)

// Change is one difference between the configuration a reload replaced and the one it put in
// force.
type Change struct {
	Kind           string `json:"kind"` // one of the Change* constants
	VirtualService string `json:"virtual_service,omitempty"`
	RealServer     string `json:"real_server,omitempty"` // as the file writes it: 10.11.1.11 or 10.11.1.12:4443
	// Settings are the keys that changed, as the file writes them ("ports", "health",
	// "udp.idle_timeout"; "admin_token" when the token file's content changed).
	Settings []string      `json:"settings,omitempty"`
	Weight   *WeightChange `json:"weight,omitempty"`
	// Text is String, for the page; Applied sets it.
	Text string `json:"text,omitempty"`
}

// WeightChange is a real server's weight before and after a reload.
type WeightChange struct {
	From int `json:"from"`
	To   int `json:"to"`
}

// String is the change as the reload's log line and `pairlb reload` say it.
func (c Change) String() string {
	settings := strings.Join(c.Settings, ", ")
	switch c.Kind {
	case ChangeGlobal:
		return "global changed: " + settings
	case ChangeServiceAdded:
		return "virtual service " + c.VirtualService + " added"
	case ChangeServiceRemoved:
		return "virtual service " + c.VirtualService + " removed"
	case ChangeServiceChanged:
		return "virtual service " + c.VirtualService + " changed: " + settings
	case ChangeServerAdded:
		return "real server " + c.RealServer + " added to " + c.VirtualService
	case ChangeServerRemoved:
		return "real server " + c.RealServer + " removed from " + c.VirtualService
	case ChangeServerWeight:
		if c.Weight == nil {
			return "real server " + c.RealServer + " of " + c.VirtualService + " re-weighted"
		}
		return fmt.Sprintf("real server %s of %s re-weighted %d -> %d", c.RealServer, c.VirtualService, c.Weight.From, c.Weight.To)
	case ChangeServerEnabled:
		return "real server " + c.RealServer + " of " + c.VirtualService + " enabled in the file"
	case ChangeServerDisabled:
		return "real server " + c.RealServer + " of " + c.VirtualService + " disabled in the file"
	case ChangePairAdded:
		return "pair added"
	case ChangePairRemoved:
		return "pair removed"
	case ChangePairChanged:
		return "pair changed: " + settings
	}
	return strings.TrimSpace(strings.Join([]string{c.Kind, c.VirtualService, c.RealServer, settings}, " "))
}

// ChangesText is changes on one line, as the reload's log line gives them: "nothing changed"
// when there are none.
func ChangesText(changes []Change) string {
	if len(changes) == 0 {
		return "nothing changed"
	}
	parts := make([]string, len(changes))
	for i, c := range changes {
		parts[i] = c.String()
	}
	return strings.Join(parts, "; ")
}

// The states of ConfigOnDisk.
const (
	OnDiskSame    = "same"    // the file holds the running configuration
	OnDiskDiffers = "differs" // the file was changed and not (successfully) reloaded
	OnDiskUnknown = "unknown" // the file could not be read: Error says why
)

// ConfigOnDisk compares the configuration file, as it is when the status is asked, with the
// configuration in force.
type ConfigOnDisk struct {
	State string `json:"state"`          // OnDiskSame, OnDiskDiffers or OnDiskUnknown
	Hash  string `json:"hash,omitempty"` // the file's SHA-256 now
	Error string `json:"error,omitempty"`
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
	// Condition is what the page's colour and the table's SINCE column say of the server, one
	// of the Server* constants; Since is when it entered it (zero from a daemon that does not
	// say): the later of its last change of administrative state and of health, for an enabled
	// server; when the drain started, for a draining or drained one.
	Condition string    `json:"condition"`
	Since     time.Time `json:"since"`
}

// The conditions of a RealServer.
const (
	ServerAvailable  = "available"   // enabled, up, weight above 0
	ServerDown       = "down"        // enabled, health down
	ServerZeroWeight = "zero_weight" // enabled and up, but weight 0: takes no new clients
	ServerDraining   = "draining"    // draining with connections left
	ServerDrained    = "drained"     // draining with nothing left open: safe to stop
	ServerDisabled   = "disabled"
)

// serverCondition is RealServer.Condition and RealServer.Since from the balancer's view.
func serverCondition(r lb.ServerStatus) (string, time.Time) {
	later := r.StateSince
	if r.UpSince.After(later) {
		later = r.UpSince
	}
	switch {
	case r.State == lb.Disabled.String():
		return ServerDisabled, r.StateSince
	case isDrained(r.State, r.Active):
		return ServerDrained, r.StateSince
	case r.State == lb.Draining.String():
		return ServerDraining, r.StateSince
	case !r.Up:
		return ServerDown, later
	case r.Weight <= 0:
		return ServerZeroWeight, later
	}
	return ServerAvailable, later
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

// ReloadResult is the answer to POST /api/v1/reapply, and the start of a Reload: the
// configuration in force after.
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
	st.Time = time.Now()
	if cfg := s.d.Running(); cfg != nil {
		st.ConfigFile, st.ConfigHash = cfg.Path, cfg.Hash
	}
	if units, problems, ok := s.d.Routing(); ok {
		st.Routing = newRouting(units, problems)
	}
	st.LastReload = s.d.LastReload()
	if st.ConfigHash != "" {
		od := s.d.ConfigOnDisk()
		st.ConfigOnDisk = &od
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
			sv.Condition, sv.Since = serverCondition(r)
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
		switch v.State {
		case lb.ServiceDown:
			out.ServicesDown++
		case lb.ServiceDegraded:
			out.ServicesDegraded++
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
