// Package config owns pairlb's file format: it decodes the YAML file strictly, turns every value
// into a typed one once (netip addresses, time.Duration), applies defaults and validates the
// result, reporting every problem with the file, line, field path and value.
//
// It is not where behaviour lives: the balancer, the routing manager and the health monitor read
// a *Config and never parse text themselves.
package config

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Defaults and ranges. The ranges are the appliance's (Connection Timeout 0 or 60-86400 s).
const (
	DefaultAdmin          = "127.0.0.1:9090"
	DefaultIdleTimeout    = 1800 * time.Second
	DefaultDrainTimeout   = 30 * time.Second
	DefaultDialTimeout    = 3 * time.Second
	DefaultUDPIdleTimeout = 60 * time.Second
	DefaultUDPMaxSessions = 65536
	DefaultPersistTimeout = 1200 * time.Second
	DefaultPersistEntries = 1 << 20
	DefaultHealthInterval = 9 * time.Second
	DefaultHealthTimeout  = 3 * time.Second
	DefaultHealthRise     = 2
	DefaultHealthFall     = 3
	MinIdleTimeout        = 60 * time.Second
	MaxIdleTimeout        = 86400 * time.Second
	MaxWeight             = 65535
)

// Config is a loaded, validated configuration. Values are final: defaults are applied and
// per-service settings that inherit from global are resolved.
type Config struct {
	// Path is the file it was loaded from, Hash the hex SHA-256 of its bytes.
	Path string
	Hash string

	Global          Global
	VirtualServices []VirtualService
	Pair            *Pair // nil when the file has no pair section (a single box)

	// Warnings are valid settings that are probably not what the file means (a scheduler that
	// does not apply, an admin API open to the network without a token), in the order of the
	// file. `pairlb validate` prints them and `pairlb run` logs them at start and on reload.
	Warnings []*FieldError
}

// Global holds settings for the whole box.
type Global struct {
	UseDefaultRouteOnly bool
	ManageAddresses     bool
	Admin               netip.AddrPort
	AdminTokenFile      string
	// AdminToken is the bearer token read from AdminTokenFile by Load (nil without a file, and
	// after Parse, which reads no file).
	AdminToken   []byte
	IdleTimeout  time.Duration // 0 means none
	DrainTimeout time.Duration
	DialTimeout  time.Duration
	TCPKeepalive bool
	ResetOnClose bool
	DeferAccept  bool // default of the TCP services that are not redirectors
	// AdminHosts are the host names, besides the admin address itself and names that resolve to
	// loopback, that the admin API accepts in a request's Host header (DNS rebinding).
	AdminHosts []string
	// ConnectionLog is where a line per connection goes; off when the file has no
	// connection_log.
	ConnectionLog ConnectionLog
}

// ConnectionLog says where the balancer writes one line per connection and UDP session, and in
// which format. The zero value is off.
type ConnectionLog struct {
	// To is ConnLogStderr, ConnLogSyslog or the absolute path of a file, appended to.
	To     string
	Format ConnLogFormat
}

// The destinations of the connection log that are not a file.
const (
	ConnLogStderr = "stderr"
	ConnLogSyslog = "syslog"
)

// ConnLogFormat is the form of a connection-log line.
type ConnLogFormat string

// The formats of the connection log.
const (
	ConnLogText ConnLogFormat = "text"
	ConnLogJSON ConnLogFormat = "json"
)

// Enabled reports whether connections are logged.
func (c ConnectionLog) Enabled() bool { return c.To != "" }

// File reports whether the log goes to a file, whose path To is.
func (c ConnectionLog) File() bool {
	return c.Enabled() && c.To != ConnLogStderr && c.To != ConnLogSyslog
}

// Proto is a transport protocol of a virtual-service port.
type Proto string

// The protocols a port may carry.
const (
	TCP Proto = "tcp"
	UDP Proto = "udp"
)

// Port is one listening port of a virtual service and the port its traffic is forwarded to.
type Port struct {
	Listen uint16
	Target uint16 // equal to Listen unless the file translates the port ("443/tcp->4443")
	Proto  Proto
}

// String renders the port as the file writes it.
func (p Port) String() string {
	s := strconv.Itoa(int(p.Listen)) + "/" + string(p.Proto)
	if p.Target != p.Listen {
		s += "->" + strconv.Itoa(int(p.Target))
	}
	return s
}

// Scheduler names a way of choosing a real server for a new connection.
type Scheduler string

// The schedulers pairlb implements.
const (
	RoundRobin         Scheduler = "roundrobin"
	WeightedRoundRobin Scheduler = "weighted-roundrobin"
	LeastConn          Scheduler = "leastconn"
	WeightedLeastConn  Scheduler = "weighted-leastconn"
	SourceHash         Scheduler = "source-hash"
)

// Schedulers lists every valid scheduler, in the order the documentation gives them.
var Schedulers = []Scheduler{RoundRobin, WeightedRoundRobin, LeastConn, WeightedLeastConn, SourceHash}

// Persistence keeps a client on the real server it was first sent to.
type Persistence struct {
	Type       string // "none" or "source-ip"
	Timeout    time.Duration
	MaxEntries int
	// PlaceBy says how a client without an entry is placed: by a consistent hash of its address
	// (both boxes of a pair agree without sharing a table) or by the service's scheduler.
	PlaceBy PlaceBy
}

// PlaceBy is how a persistent service places a new client.
type PlaceBy string

// The placements of a new client of a persistent service.
const (
	PlaceByHash      PlaceBy = "hash"
	PlaceByScheduler PlaceBy = "scheduler"
)

// Enabled reports whether the service keeps clients on their server.
func (p Persistence) Enabled() bool { return p.Type == "source-ip" }

// PlacementHash is what Placement returns when a consistent hash of the client's address, not
// the scheduler, places new clients.
const PlacementHash = "hash"

// Placement is how the service really places a new client: PlacementHash for a source-ip
// persistent service with place_by hash, else the name of its scheduler. Everything that shows
// the scheduler shows this instead.
func (v *VirtualService) Placement() string {
	if v.Persistence.Enabled() && v.Persistence.PlaceBy != PlaceByScheduler {
		return PlacementHash
	}
	return string(v.Scheduler)
}

// Access lists the client networks allowed and denied. An empty allow list allows everyone not
// denied; deny wins over allow.
type Access struct {
	Allow []netip.Prefix
	Deny  []netip.Prefix
}

// HealthType names a kind of health check.
type HealthType string

// The health checks pairlb knows.
const (
	HealthNone  HealthType = "none"
	HealthTCP   HealthType = "tcp"
	HealthHTTP  HealthType = "http"
	HealthHTTPS HealthType = "https"
	HealthTLS   HealthType = "tls"
	HealthSTUN  HealthType = "stun"
)

// HealthTypes lists every valid health check type.
var HealthTypes = []HealthType{HealthNone, HealthTCP, HealthHTTP, HealthHTTPS, HealthTLS, HealthSTUN}

// Health describes how the real servers of a virtual service are probed.
type Health struct {
	Type     HealthType
	Port     uint16 // 0: the real server's service port
	Method   string // http(s): default GET
	Path     string // http(s): default /
	Host     string // http(s): Host header; tls/https: also the SNI name unless SNI is set
	SNI      string
	Expect   []int // http(s): accepted status codes; default 200-399
	Verify   bool  // https/tls: verify the certificate chain and expiry
	Interval time.Duration
	Timeout  time.Duration
	Rise     int
	Fall     int
	// InitialUp starts servers as up instead of down until their first successful check.
	InitialUp bool
}

// RealServer is one member of a virtual service's pool.
type RealServer struct {
	Address netip.Addr
	Port    uint16 // 0: the target port of the virtual-service port being forwarded
	Weight  int
	Enabled bool
}

// Key identifies the real server within its virtual service, as the file writes it
// ("10.11.1.11" or "10.11.1.12:4443"). It is stable across reloads.
func (r RealServer) Key() string {
	if r.Port == 0 {
		return r.Address.String()
	}
	return netip.AddrPortFrom(r.Address, r.Port).String()
}

// AddrPort is the address connections for a virtual-service port with the given target port go to.
func (r RealServer) AddrPort(target uint16) netip.AddrPort {
	if r.Port != 0 {
		target = r.Port
	}
	return netip.AddrPortFrom(r.Address, target)
}

// VirtualService is one VIP with its ports, pool and settings.
type VirtualService struct {
	Name           string
	VIP            netip.Addr
	Ports          []Port
	DefaultGateway netip.Addr // invalid (zero) when the service follows the box's main table
	Scheduler      Scheduler
	Persistence    Persistence
	IdleTimeout    time.Duration // resolved: the service's own or global's
	TCPKeepalive   bool
	ResetOnClose   bool
	Transparent    bool
	// SubnetOriginating makes connections to real servers leave from the box's own address on
	// the real server's subnet (the appliance's Subnet Originating Requests).
	SubnetOriginating bool
	SourceAddresses   []netip.Addr
	Access            Access
	// SorryServer takes new connections when no real server is available. Its port is 0 when
	// the file gave none: then the target port of the virtual-service port applies.
	SorryServer netip.AddrPort
	Health      Health
	CloseOnDown bool
	// DeferAccept takes a TCP connection only once the client has sent data (TCP_DEFER_ACCEPT):
	// for protocols where the client speaks first (HTTP, TLS, SIP), it spares the balancer a
	// wakeup per connection and connections that never send anything.
	DeferAccept    bool
	RealServers    []RealServer
	UDPIdleTimeout time.Duration
	UDPMaxSessions int
	// Redirect, when set, makes the service an HTTP redirector answering every request with a
	// 302 to this template (%h: Host header, %s: path and query).
	Redirect string
	// UnavailableRedirect is the URL an HTTP service redirects to when no server is up.
	UnavailableRedirect string
}

// HasSorryServer reports whether the service names a sorry server.
func (v *VirtualService) HasSorryServer() bool { return v.SorryServer.Addr().IsValid() }

// SorryAddrPort is the sorry server's address for a virtual-service port.
func (v *VirtualService) SorryAddrPort(p Port) netip.AddrPort {
	if v.SorryServer.Port() != 0 {
		return v.SorryServer
	}
	return netip.AddrPortFrom(v.SorryServer.Addr(), p.Target)
}

// Summary is the one-line description `pairlb validate` prints.
func (v *VirtualService) Summary() string {
	ports := ""
	for i, p := range v.Ports {
		if i > 0 {
			ports += ","
		}
		ports += p.String()
	}
	if v.Redirect != "" {
		return fmt.Sprintf("%s: %s [%s] redirect to %s", v.Name, v.VIP, ports, v.Redirect)
	}
	gw := "main table"
	if v.DefaultGateway.IsValid() {
		gw = "gw " + v.DefaultGateway.String()
	}
	enabled := 0
	for _, r := range v.RealServers {
		if r.Enabled {
			enabled++
		}
	}
	placement := string(v.Scheduler)
	if v.Persistence.Enabled() {
		// "placement hash (persistence source-ip 20m)", "leastconn (persistence source-ip 20m)"
		if v.Placement() == PlacementHash {
			placement = "placement hash"
		}
		placement += fmt.Sprintf(" (persistence source-ip %s)", shortDuration(v.Persistence.Timeout))
	}
	s := fmt.Sprintf("%s: %s [%s] %s, %s, %d/%d real servers enabled, health %s",
		v.Name, v.VIP, ports, gw, placement, enabled, len(v.RealServers), v.Health.Type)
	if v.Transparent {
		s += ", transparent"
	}
	return s
}

// shortDuration writes d without zero units: 20m, 1h30m, 90s -> 1m30s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// VirtualService returns the service with the given name, or nil.
func (c *Config) VirtualService(name string) *VirtualService {
	for i := range c.VirtualServices {
		if c.VirtualServices[i].Name == name {
			return &c.VirtualServices[i]
		}
	}
	return nil
}
