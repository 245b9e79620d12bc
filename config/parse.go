package config

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Limits that only the parser needs.
const (
	maxPersistEntries = 16 << 20
	maxUDPSessions    = 10_000_000
	maxDrainTimeout   = time.Hour
	maxDialTimeout    = 60 * time.Second
	maxHealthInterval = time.Hour
)

var (
	topKeys    = []string{"global", "virtual_services", "pair"}
	globalKeys = []string{"use_default_route_only", "manage_addresses", "admin", "admin_token_file",
		"idle_timeout", "drain_timeout", "dial_timeout", "tcp_keepalive", "reset_on_close", "defer_accept"}
	serviceKeys = []string{"name", "vip", "ports", "default_gateway", "scheduler", "persistence",
		"idle_timeout", "tcp_keepalive", "reset_on_close", "transparent", "subnet_originating",
		"source_addresses", "access", "sorry_server", "health", "close_on_down", "udp",
		"real_servers", "unavailable_redirect", "redirect", "defer_accept"}
	persistenceKeys = []string{"type", "timeout", "max_entries"}
	accessKeys      = []string{"allow", "deny"}
	healthKeys      = []string{"type", "port", "method", "path", "host", "sni", "expect", "verify",
		"interval", "timeout", "rise", "fall", "initial"}
	udpKeys        = []string{"idle_timeout", "max_sessions"}
	realServerKeys = []string{"address", "weight", "enabled"}
)

// Load reads and parses the configuration file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes, types, completes and validates the configuration in data; file names it in
// messages and becomes Config.Path. On any problem it returns Errors holding every problem found,
// in the order of the file.
func Parse(file string, data []byte) (*Config, error) {
	p := &parser{file: file}
	sum := sha256.Sum256(data)
	cfg := &Config{Path: file, Hash: hex.EncodeToString(sum[:])}
	if root := p.document(data); root != nil {
		p.config(root, cfg)
	}
	if len(p.errs) > 0 {
		slices.SortStableFunc(p.errs, func(a, b *FieldError) int { return cmp.Compare(a.Line, b.Line) })
		return nil, p.errs
	}
	return cfg, nil
}

// yamlLine finds the line in the YAML library's syntax errors, which carry it only in their text.
var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// document is the root node of the file's single YAML document, nil when there is none.
func (p *parser) document(data []byte) *yaml.Node {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	err := dec.Decode(&doc)
	if errors.Is(err, io.EOF) {
		p.fail(nil, "", "", "empty file: want global and virtual_services")
		return nil
	}
	if err != nil {
		p.syntax(err)
		return nil
	}
	root := deref(doc.Content[0])
	if isNull(root) {
		p.fail(root, "", "", "empty document: want global and virtual_services")
		return nil
	}
	var next yaml.Node
	if err := dec.Decode(&next); err == nil {
		p.fail(&next, "", "", "a second YAML document: the file must hold exactly one")
	} else if !errors.Is(err, io.EOF) {
		p.syntax(err)
	}
	return root
}

func (p *parser) syntax(err error) {
	if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
		line, _ := strconv.Atoi(m[1])
		p.errs = append(p.errs, &FieldError{File: p.file, Line: line, Msg: "invalid YAML: " + m[2]})
		return
	}
	p.fail(nil, "", "", "invalid YAML: %s", strings.TrimPrefix(err.Error(), "yaml: "))
}

// spot is where a value was written.
type spot struct {
	node *yaml.Node
	path string
}

// placed remembers where a service's values were written, for the checks that tie values
// together. A node is nil when the value was absent or invalid (and then already reported).
type placed struct {
	name       *yaml.Node
	vip        *yaml.Node
	gateway    *yaml.Node
	badGateway bool   // given but invalid: leave it out of the checks across services
	ports      []spot // one per VirtualService.Ports entry
	sources    []spot // one per VirtualService.SourceAddresses entry
	servers    []spot // one per VirtualService.RealServers entry, the address
}

func (p *parser) config(root *yaml.Node, cfg *Config) {
	f, ok := p.mapping(root, "", topKeys...)
	if !ok {
		return
	}
	cfg.Global = p.global(p.section(f, "global", globalKeys...))

	items := p.list(f, "virtual_services")
	if n := f.vals["virtual_services"]; n == nil || (n.Kind == yaml.SequenceNode && len(items) == 0) {
		p.fail(cmp.Or(n, root), "virtual_services", "", "at least one virtual service is required")
	}
	var where []placed
	for i, item := range items {
		vs, at := p.service(item, index("virtual_services", i), cfg.Global)
		cfg.VirtualServices = append(cfg.VirtualServices, vs)
		where = append(where, at)
	}
	p.across(cfg, where)
	if n := f.vals["pair"]; n != nil {
		cfg.Pair = p.pair(n, f, cfg, where)
	}
}

func (p *parser) global(f fields) Global {
	g := Global{
		UseDefaultRouteOnly: p.boolean(f, "use_default_route_only", false),
		ManageAddresses:     p.boolean(f, "manage_addresses", false),
		Admin:               netip.MustParseAddrPort(DefaultAdmin),
		AdminTokenFile:      p.str(f, "admin_token_file", ""),
		IdleTimeout:         p.idleTimeout(f, "idle_timeout", DefaultIdleTimeout),
		DrainTimeout:        p.duration(f, "drain_timeout", DefaultDrainTimeout, 0, maxDrainTimeout),
		DialTimeout:         p.duration(f, "dial_timeout", DefaultDialTimeout, 0, maxDialTimeout),
		TCPKeepalive:        p.boolean(f, "tcp_keepalive", true),
		ResetOnClose:        p.boolean(f, "reset_on_close", false),
		DeferAccept:         p.boolean(f, "defer_accept", false),
	}
	if n := p.scalar(f, "admin"); n != nil {
		if ap, err := parseListen(n.Value); err != nil {
			p.bad(n, f.at("admin"), "%v", err)
		} else {
			g.Admin = ap
		}
	}
	return g
}

// service reads one virtual service, resolving what it inherits from g, and checks the rules
// that involve only this service.
func (p *parser) service(node *yaml.Node, path string, g Global) (VirtualService, placed) {
	var vs VirtualService
	var at placed
	f, ok := p.mapping(node, path, serviceKeys...)
	if !ok {
		return vs, at
	}

	if n := p.required(f, "name"); n != nil {
		if validName.MatchString(n.Value) {
			vs.Name, at.name = n.Value, n
		} else {
			p.bad(n, f.at("name"), "want 1-63 letters, digits, '.', '_' or '-'")
		}
	}
	if n := p.required(f, "vip"); n != nil {
		if a, err := parseAddr(n.Value); err != nil {
			p.bad(n, f.at("vip"), "%v", err)
		} else {
			vs.VIP, at.vip = a, n
		}
	}
	p.ports(f, &vs, &at)
	if n := p.scalar(f, "default_gateway"); n != nil {
		a, err := parseAddr(n.Value)
		at.badGateway = true
		switch {
		case err != nil:
			p.bad(n, f.at("default_gateway"), "%v", err)
		case vs.VIP.IsValid() && a.Is4() != vs.VIP.Is4():
			p.bad(n, f.at("default_gateway"), "%s gateway for %s VIP %s", family(a), family(vs.VIP), vs.VIP)
		case a == vs.VIP:
			p.bad(n, f.at("default_gateway"), "the gateway cannot be the VIP itself")
		default:
			vs.DefaultGateway, at.gateway, at.badGateway = a, n, false
		}
	}
	vs.Scheduler = LeastConn
	if n := p.scalar(f, "scheduler"); n != nil {
		if s := Scheduler(n.Value); slices.Contains(Schedulers, s) {
			vs.Scheduler = s
		} else {
			p.bad(n, f.at("scheduler"), "unknown scheduler (want one of %s)", joinNames(Schedulers))
		}
	}
	vs.Persistence = p.persistence(p.section(f, "persistence", persistenceKeys...))
	vs.IdleTimeout = p.idleTimeout(f, "idle_timeout", g.IdleTimeout)
	vs.TCPKeepalive = p.boolean(f, "tcp_keepalive", g.TCPKeepalive)
	vs.ResetOnClose = p.boolean(f, "reset_on_close", g.ResetOnClose)
	vs.Transparent = p.boolean(f, "transparent", false)
	vs.SubnetOriginating = p.boolean(f, "subnet_originating", false)
	vs.CloseOnDown = p.boolean(f, "close_on_down", false)
	// The global default reaches the services it can apply to; a service that asks for it
	// where it cannot apply is told so.
	hasTCP := slices.ContainsFunc(vs.Ports, func(pt Port) bool { return pt.Proto == TCP })
	vs.DeferAccept = p.boolean(f, "defer_accept", g.DeferAccept && hasTCP && !f.has("redirect"))
	if n := f.vals["defer_accept"]; vs.DeferAccept {
		switch {
		case f.has("redirect"):
			p.bad(n, f.at("defer_accept"), "not for a redirector")
		case !hasTCP:
			p.bad(n, f.at("defer_accept"), "applies to TCP ports; this service has none")
		}
	}
	p.sourceAddresses(f, &vs, &at)
	vs.Access = p.access(p.section(f, "access", accessKeys...))
	if n := p.scalar(f, "sorry_server"); n != nil {
		if a, port, err := parseAddrOptPort(n.Value); err != nil {
			p.bad(n, f.at("sorry_server"), "%v", err)
		} else {
			vs.SorryServer = netip.AddrPortFrom(a, port)
		}
	}
	// A redirector has no servers to probe; any other service gets a TCP connect by default.
	defaultCheck := HealthTCP
	if f.has("redirect") {
		defaultCheck = HealthNone
	}
	vs.Health = p.health(p.section(f, "health", healthKeys...), defaultCheck)
	udp := p.section(f, "udp", udpKeys...)
	vs.UDPIdleTimeout = p.duration(udp, "idle_timeout", DefaultUDPIdleTimeout, time.Second, MaxIdleTimeout)
	vs.UDPMaxSessions = p.integer(udp, "max_sessions", DefaultUDPMaxSessions, 1, maxUDPSessions)
	p.realServers(f, &vs, &at)
	if n := p.scalar(f, "unavailable_redirect"); n != nil {
		if err := checkURL(n.Value); err != nil {
			p.bad(n, f.at("unavailable_redirect"), "%v", err)
		} else {
			vs.UnavailableRedirect = n.Value
		}
	}
	if n := p.scalar(f, "redirect"); n != nil {
		if err := checkRedirect(n.Value); err != nil {
			p.bad(n, f.at("redirect"), "%v", err)
		} else {
			vs.Redirect = n.Value
		}
	}

	if f.has("redirect") {
		p.redirector(f, &vs, &at)
	} else if n := f.vals["real_servers"]; n == nil || (n.Kind == yaml.SequenceNode && len(n.Content) == 0) {
		p.fail(cmp.Or(n, node), f.at("real_servers"), "", "at least one real server is required (or redirect, for a redirector)")
	}
	p.addressing(f, &vs, &at)
	return vs, at
}

// ports reads the service's ports; a port repeated within the service is found by across.
func (p *parser) ports(f fields, vs *VirtualService, at *placed) {
	if !f.has("ports") {
		p.fail(f.node, f.at("ports"), "", "required: at least one port like \"443/tcp\"")
		return
	}
	items := p.list(f, "ports")
	if f.vals["ports"].Kind == yaml.SequenceNode && len(items) == 0 {
		p.fail(f.vals["ports"], f.at("ports"), "", "at least one port is required")
	}
	for i, n := range items {
		path := index(f.at("ports"), i)
		if !p.listItem(n, path) {
			continue
		}
		port, err := parsePort(n.Value)
		if err != nil {
			p.bad(n, path, "%v", err)
			continue
		}
		vs.Ports = append(vs.Ports, port)
		at.ports = append(at.ports, spot{n, path})
	}
}

func (p *parser) persistence(f fields) Persistence {
	ps := Persistence{
		Type:       "none",
		PlaceBy:    PlaceByHash,
		Timeout:    p.duration(f, "timeout", DefaultPersistTimeout, time.Second, MaxIdleTimeout),
		MaxEntries: p.integer(f, "max_entries", DefaultPersistEntries, 1, maxPersistEntries),
	}
	if n := p.scalar(f, "type"); n != nil {
		if n.Value == "none" || n.Value == "source-ip" {
			ps.Type = n.Value
		} else {
			p.bad(n, f.at("type"), "unknown persistence type (want none or source-ip)")
		}
	}
	return ps
}

func (p *parser) sourceAddresses(f fields, vs *VirtualService, at *placed) {
	seen := map[netip.Addr]int{}
	for i, n := range p.list(f, "source_addresses") {
		path := index(f.at("source_addresses"), i)
		if !p.listItem(n, path) {
			continue
		}
		a, err := parseAddr(n.Value)
		switch {
		case err != nil:
			p.bad(n, path, "%v", err)
		case seen[a] != 0:
			p.bad(n, path, "listed twice, first at line %d", seen[a])
		default:
			seen[a] = n.Line
			vs.SourceAddresses = append(vs.SourceAddresses, a)
			at.sources = append(at.sources, spot{n, path})
		}
	}
}

func (p *parser) access(f fields) Access {
	return Access{Allow: p.prefixes(f, "allow"), Deny: p.prefixes(f, "deny")}
}

func (p *parser) prefixes(f fields, key string) []netip.Prefix {
	var out []netip.Prefix
	for i, n := range p.list(f, key) {
		path := index(f.at(key), i)
		if !p.listItem(n, path) {
			continue
		}
		if pf, err := parsePrefix(n.Value); err != nil {
			p.bad(n, path, "%v", err)
		} else {
			out = append(out, pf)
		}
	}
	return out
}

func (p *parser) health(f fields, def HealthType) Health {
	h := Health{
		Type:     def,
		Port:     uint16(p.integer(f, "port", 0, 0, 65535)),
		Method:   "GET",
		Path:     "/",
		Host:     p.str(f, "host", ""),
		SNI:      p.str(f, "sni", ""),
		Verify:   p.boolean(f, "verify", false),
		Interval: p.duration(f, "interval", DefaultHealthInterval, time.Second, maxHealthInterval),
		Rise:     p.integer(f, "rise", DefaultHealthRise, 1, 100),
		Fall:     p.integer(f, "fall", DefaultHealthFall, 1, 100),
	}
	if n := p.scalar(f, "type"); n != nil {
		if t := HealthType(n.Value); slices.Contains(HealthTypes, t) {
			h.Type = t
		} else {
			p.bad(n, f.at("type"), "unknown health type (want one of %s)", joinNames(HealthTypes))
		}
	}
	// A short interval brings the default timeout down with it rather than making it an error.
	h.Timeout = p.duration(f, "timeout", min(DefaultHealthTimeout, h.Interval), 0, maxHealthInterval)
	if n := f.vals["timeout"]; n != nil && h.Timeout > h.Interval {
		p.bad(n, f.at("timeout"), "longer than the interval (%s): a check would still run when the next starts", seconds(h.Interval))
	}
	if n := p.scalar(f, "method"); n != nil {
		if isToken(n.Value) {
			h.Method = n.Value
		} else {
			p.bad(n, f.at("method"), "want an HTTP method like GET or HEAD")
		}
	}
	if n := p.scalar(f, "path"); n != nil {
		if strings.HasPrefix(n.Value, "/") && !strings.ContainsAny(n.Value, " \t\r\n") {
			h.Path = n.Value
		} else {
			p.bad(n, f.at("path"), "want a path starting with /")
		}
	}
	for i, n := range p.list(f, "expect") {
		path := index(f.at("expect"), i)
		if !p.listItem(n, path) {
			continue
		}
		code, err := strconv.Atoi(n.Value)
		if err != nil || code < 100 || code > 599 {
			p.bad(n, path, "want an HTTP status code 100-599")
			continue
		}
		h.Expect = append(h.Expect, code)
	}
	if n := p.scalar(f, "initial"); n != nil {
		switch n.Value {
		case "up":
			h.InitialUp = true
		case "down":
		default:
			p.bad(n, f.at("initial"), "want up or down")
		}
	}

	return h
}

func isToken(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < 'A' || c > 'Z' {
			return false
		}
	}
	return true
}

func (p *parser) realServers(f fields, vs *VirtualService, at *placed) {
	seen := map[string]int{}
	for i, n := range p.list(f, "real_servers") {
		path := index(f.at("real_servers"), i)
		rf, ok := p.mapping(n, path, realServerKeys...)
		if !ok {
			continue
		}
		rs := RealServer{
			Weight:  p.integer(rf, "weight", 1, 1, MaxWeight),
			Enabled: p.boolean(rf, "enabled", true),
		}
		an := p.required(rf, "address")
		if an == nil {
			continue
		}
		var err error
		if rs.Address, rs.Port, err = parseAddrOptPort(an.Value); err != nil {
			p.bad(an, rf.at("address"), "%v", err)
			continue
		}
		if line := seen[rs.Key()]; line != 0 {
			p.bad(an, rf.at("address"), "real server listed twice, first at line %d", line)
			continue
		}
		seen[rs.Key()] = an.Line
		if rs.Port != 0 && len(vs.Ports) > 1 {
			p.bad(an, rf.at("address"), "a real-server port is ambiguous in a service with %d ports: drop it and translate on the service port instead (\"443/tcp->4443\")", len(vs.Ports))
		}
		vs.RealServers = append(vs.RealServers, rs)
		at.servers = append(at.servers, spot{an, rf.at("address")})
	}
}

// redirector checks that a redirect service carries nothing a redirector cannot use.
func (p *parser) redirector(f fields, vs *VirtualService, at *placed) {
	for _, key := range []string{"real_servers", "sorry_server", "health", "unavailable_redirect"} {
		if n := f.vals[key]; n != nil {
			p.fail(n, f.at(key), n.Value, "not allowed with redirect: a redirector answers every request itself")
		}
	}
	for i, port := range vs.Ports {
		if port.Proto != TCP {
			p.bad(at.ports[i].node, at.ports[i].path, "a redirector answers HTTP, which needs tcp ports")
		}
	}
}

// addressing checks the rules that tie the service's addresses together.
func (p *parser) addressing(f fields, vs *VirtualService, at *placed) {
	if vs.Transparent {
		if n := f.vals["source_addresses"]; n != nil && len(vs.SourceAddresses) > 0 {
			p.fail(n, f.at("source_addresses"), "", "not allowed with transparent: true, which connects from the client's own address")
		}
		if n := f.vals["subnet_originating"]; n != nil && vs.SubnetOriginating {
			p.bad(n, f.at("subnet_originating"), "not allowed with transparent: true, which connects from the client's own address")
		}
		// The real server sees the client's address, which is of the VIP's family.
		for i, rs := range vs.RealServers {
			if vs.VIP.IsValid() && rs.Address.Is4() != vs.VIP.Is4() {
				p.bad(at.servers[i].node, at.servers[i].path, "%s real server behind %s VIP %s: transparency needs one family", family(rs.Address), family(vs.VIP), vs.VIP)
			}
		}
	}
	for i, a := range vs.SourceAddresses {
		for _, rs := range vs.RealServers {
			if a.Is4() != rs.Address.Is4() {
				p.bad(at.sources[i].node, at.sources[i].path, "%s source address for %s real server %s", family(a), family(rs.Address), rs.Key())
				break
			}
		}
	}
}

// across checks the rules that involve several services: unique names, one owner per listening
// address, one gateway per VIP, and the admin listener kept apart.
func (p *parser) across(cfg *Config, where []placed) {
	names := map[string]spot{}
	type listener struct {
		vip   netip.Addr
		proto Proto
		port  uint16
	}
	type owner struct {
		service int
		line    int
	}
	listeners := map[listener]owner{}
	gateways := map[netip.Addr]int{} // VIP to the first service on it
	admin := cfg.Global.Admin

	for i := range cfg.VirtualServices {
		vs, at := &cfg.VirtualServices[i], where[i]
		path := index("virtual_services", i)
		if at.name != nil {
			if first, ok := names[vs.Name]; ok {
				p.bad(at.name, path+".name", "duplicate name, first used by %s (line %d)", first.path, first.node.Line)
			} else {
				names[vs.Name] = spot{at.name, path}
			}
		}
		if at.vip == nil {
			continue
		}
		for j, port := range vs.Ports {
			l := listener{vs.VIP, port.Proto, port.Listen}
			n := at.ports[j].node
			if o, ok := listeners[l]; ok && o.service == i {
				p.bad(n, at.ports[j].path, "port %d/%s listed twice (line %d)", port.Listen, port.Proto, o.line)
				continue
			} else if ok {
				other := cmp.Or(cfg.VirtualServices[o.service].Name, index("virtual_services", o.service))
				p.bad(n, at.ports[j].path, "%s/%s is already used by %s (line %d)", netip.AddrPortFrom(vs.VIP, port.Listen), port.Proto, other, o.line)
				continue
			}
			listeners[l] = owner{i, n.Line}
			// An unspecified admin address listens on every address of the box, VIPs included.
			if port.Proto == TCP && port.Listen == admin.Port() && (admin.Addr() == vs.VIP || admin.Addr().IsUnspecified()) {
				p.bad(n, at.ports[j].path, "collides with the admin listener %s (global.admin)", admin)
			}
		}
		// The routing manager gives each VIP one rule and table: services sharing a VIP must
		// agree on the gateway their replies leave through.
		if at.badGateway {
			continue
		}
		if first, ok := gateways[vs.VIP]; !ok {
			gateways[vs.VIP] = i
		} else if other := &cfg.VirtualServices[first]; other.DefaultGateway != vs.DefaultGateway {
			p.fail(cmp.Or(at.gateway, at.vip), path+".default_gateway", gatewayName(vs.DefaultGateway),
				"services on VIP %s must share one default gateway: %s uses %s",
				vs.VIP, cmp.Or(other.Name, index("virtual_services", first)), gatewayName(other.DefaultGateway))
		}
	}
}

func gatewayName(a netip.Addr) string {
	if !a.IsValid() {
		return "none"
	}
	return a.String()
}

func joinNames[T ~string](names []T) string {
	s := make([]string, len(names))
	for i, n := range names {
		s[i] = string(n)
	}
	return strings.Join(s, ", ")
}
