package lab

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pairlb/pairlb/config"
)

// Network is one of the guide's three networks and where the lab puts it.
type Network struct {
	Name  string       // internal, dmz, external
	Guide netip.Prefix // the guide's addresses (config/examples/lync2013-single-pair.yaml)
	Lab   netip.Prefix // the lab's: same length, host bits kept
}

// Networks are the guide's networks in the order the lab builds them. The lab's prefixes are
// all inside Allowed.
var Networks = []Network{
	{Name: "internal", Guide: netip.MustParsePrefix("10.11.0.0/16"), Lab: netip.MustParsePrefix("198.18.0.0/16")},
	{Name: "dmz", Guide: netip.MustParsePrefix("192.168.100.0/24"), Lab: netip.MustParsePrefix("198.51.100.0/24")},
	{Name: "external", Guide: netip.MustParsePrefix("201.44.53.0/24"), Lab: netip.MustParsePrefix("203.0.113.0/24")},
}

// Allowed are the only ranges any lab address may come from: the benchmarking range and two
// documentation ranges (never 192.0.2.0/24).
var Allowed = []netip.Prefix{
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("198.51.100.0/24"),
	netip.MustParsePrefix("203.0.113.0/24"),
}

// InAllowed reports whether a lies in one of the Allowed ranges.
func InAllowed(a netip.Addr) bool {
	return slices.ContainsFunc(Allowed, func(p netip.Prefix) bool { return p.Contains(a) })
}

// networkOf returns the network whose lab prefix holds a.
func networkOf(a netip.Addr) (Network, bool) {
	for _, n := range Networks {
		if n.Lab.Contains(a) {
			return n, true
		}
	}
	return Network{}, false
}

// MapAddr moves a guide address into the lab: the network part is replaced by the lab's, the
// host part kept (10.11.1.12 becomes 198.18.1.12). Addresses outside the guide's networks are an
// error: the lab never uses an address it has not placed.
func MapAddr(a netip.Addr) (netip.Addr, error) {
	a = a.Unmap()
	for _, n := range Networks {
		if !n.Guide.Contains(a) {
			continue
		}
		g, l := a.As4(), n.Lab.Addr().As4()
		bits := n.Guide.Bits()
		var out [4]byte
		for i := range 4 {
			keep := byte(0xff) // the mask of the network part in this byte
			switch {
			case bits >= 8*(i+1):
			case bits <= 8*i:
				keep = 0
			default:
				keep = ^byte(0xff >> (bits - 8*i))
			}
			out[i] = l[i]&keep | g[i]&^keep
		}
		return netip.AddrFrom4(out), nil
	}
	return netip.Addr{}, fmt.Errorf("address %s is in none of the guide's networks (%s)", a, guideNets())
}

func mapPrefix(p netip.Prefix) (netip.Prefix, error) {
	for _, n := range Networks {
		if n.Guide.Bits() <= p.Bits() && n.Guide.Contains(p.Addr()) {
			a, err := MapAddr(p.Addr())
			if err != nil {
				return netip.Prefix{}, err
			}
			return netip.PrefixFrom(a, p.Bits()), nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("network %s is not inside one of the guide's networks (%s)", p, guideNets())
}

func guideNets() string {
	var s []string
	for _, n := range Networks {
		s = append(s, n.Guide.String())
	}
	return strings.Join(s, ", ")
}

// MapConfig returns a copy of the parsed Lync example with every address moved into the lab's
// networks (MapAddr). Every service, port, scheduler, persistence, health and timeout setting is
// kept; global gains manage_addresses (pairlb adds the VIPs itself) and use_default_route_only.
// The pair section is left out: the lab runs one box. The admin listener must be a loopback
// address, which stays inside the box's namespace.
func MapConfig(src *config.Config) (*config.Config, error) {
	out := *src
	out.Path, out.Hash = "", ""
	// One box, no keepalived: pairlb adds the VIPs itself, and the pair section (the two nodes'
	// addresses, VRRP) has nothing to describe.
	out.Pair = nil
	out.Global.ManageAddresses = true
	out.Global.UseDefaultRouteOnly = true
	if !out.Global.Admin.Addr().IsLoopback() {
		return nil, fmt.Errorf("admin listener %s: the lab needs a loopback address", out.Global.Admin)
	}
	out.VirtualServices = make([]config.VirtualService, len(src.VirtualServices))
	for i, vs := range src.VirtualServices {
		m, err := mapService(vs)
		if err != nil {
			return nil, fmt.Errorf("virtual service %s: %w", vs.Name, err)
		}
		out.VirtualServices[i] = m
	}
	return &out, nil
}

func mapService(vs config.VirtualService) (config.VirtualService, error) {
	var err error
	addr := func(a netip.Addr) netip.Addr {
		if !a.IsValid() || err != nil {
			return a
		}
		var m netip.Addr
		m, err = MapAddr(a)
		return m
	}
	prefixes := func(ps []netip.Prefix) []netip.Prefix {
		var out []netip.Prefix
		for _, p := range ps {
			m, perr := mapPrefix(p)
			if perr != nil && err == nil {
				err = perr
			}
			out = append(out, m)
		}
		return out
	}
	vs.VIP = addr(vs.VIP)
	vs.DefaultGateway = addr(vs.DefaultGateway)
	vs.Ports = slices.Clone(vs.Ports)
	vs.Health.Expect = slices.Clone(vs.Health.Expect)
	vs.RealServers = slices.Clone(vs.RealServers)
	for i := range vs.RealServers {
		vs.RealServers[i].Address = addr(vs.RealServers[i].Address)
	}
	if vs.HasSorryServer() {
		vs.SorryServer = netip.AddrPortFrom(addr(vs.SorryServer.Addr()), vs.SorryServer.Port())
	}
	src := vs.SourceAddresses
	vs.SourceAddresses = nil
	for _, a := range src {
		vs.SourceAddresses = append(vs.SourceAddresses, addr(a))
	}
	vs.Access = config.Access{Allow: prefixes(vs.Access.Allow), Deny: prefixes(vs.Access.Deny)}
	return vs, err
}

// Addresses lists every address a configuration names (VIPs, gateways, real servers, sorry
// servers, source addresses, the networks of access lists), for checks.
func Addresses(cfg *config.Config) []netip.Addr {
	var out []netip.Addr
	for _, vs := range cfg.VirtualServices {
		out = append(out, vs.VIP)
		if vs.DefaultGateway.IsValid() {
			out = append(out, vs.DefaultGateway)
		}
		for _, rs := range vs.RealServers {
			out = append(out, rs.Address)
		}
		if vs.HasSorryServer() {
			out = append(out, vs.SorryServer.Addr())
		}
		out = append(out, vs.SourceAddresses...)
		for _, p := range slices.Concat(vs.Access.Allow, vs.Access.Deny) {
			out = append(out, p.Addr(), lastAddr(p))
		}
	}
	return out
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	for i := range 4 {
		host := 32 - p.Bits() - 8*(3-i)
		switch {
		case host >= 8:
			b[i] = 0xff
		case host > 0:
			b[i] |= byte(1<<host - 1)
		}
	}
	return netip.AddrFrom4(b)
}

// Render writes cfg as a pairlb configuration file that config.Parse reads back into the same
// values. Every setting is written out, defaults included, so the file shows what the lab runs.
func Render(cfg *config.Config, header string) []byte {
	var b strings.Builder
	for line := range strings.SplitSeq(strings.TrimRight(header, "\n"), "\n") {
		b.WriteString(strings.TrimRight("# "+line, " ") + "\n")
	}
	g := cfg.Global
	b.WriteString("global:\n")
	fmt.Fprintf(&b, "  use_default_route_only: %t\n", g.UseDefaultRouteOnly)
	fmt.Fprintf(&b, "  manage_addresses: %t\n", g.ManageAddresses)
	fmt.Fprintf(&b, "  admin: %s\n", quote(g.Admin.String()))
	if g.AdminTokenFile != "" {
		fmt.Fprintf(&b, "  admin_token_file: %s\n", quote(g.AdminTokenFile))
	}
	fmt.Fprintf(&b, "  idle_timeout: %s\n", dur(g.IdleTimeout))
	fmt.Fprintf(&b, "  drain_timeout: %s\n", dur(g.DrainTimeout))
	fmt.Fprintf(&b, "  dial_timeout: %s\n", dur(g.DialTimeout))
	fmt.Fprintf(&b, "  tcp_keepalive: %t\n", g.TCPKeepalive)
	fmt.Fprintf(&b, "  reset_on_close: %t\n", g.ResetOnClose)
	fmt.Fprintf(&b, "  defer_accept: %t\n", g.DeferAccept)
	b.WriteString("\nvirtual_services:\n")
	for i := range cfg.VirtualServices {
		if i > 0 {
			b.WriteString("\n")
		}
		renderService(&b, &cfg.VirtualServices[i])
	}
	return []byte(b.String())
}

func renderService(b *strings.Builder, vs *config.VirtualService) {
	fmt.Fprintf(b, "  - name: %s\n", quote(vs.Name))
	fmt.Fprintf(b, "    vip: %s\n", vs.VIP)
	var ports []string
	for _, p := range vs.Ports {
		ports = append(ports, quote(p.String()))
	}
	fmt.Fprintf(b, "    ports: [%s]\n", strings.Join(ports, ", "))
	if vs.DefaultGateway.IsValid() {
		fmt.Fprintf(b, "    default_gateway: %s\n", vs.DefaultGateway)
	}
	// A scheduler that persistence keeps from placing clients is left out (config warns about
	// it), unless it is not the default and leaving it out would change what is read back.
	if vs.Placement() != config.PlacementHash || vs.Scheduler != config.LeastConn {
		fmt.Fprintf(b, "    scheduler: %s\n", vs.Scheduler)
	}
	p := vs.Persistence
	if p.Enabled() {
		fmt.Fprintf(b, "    persistence: {type: %s, timeout: %s, max_entries: %d, place_by: %s}\n", p.Type, dur(p.Timeout), p.MaxEntries, p.PlaceBy)
	} else {
		fmt.Fprintf(b, "    persistence: {type: %s, timeout: %s, max_entries: %d}\n", p.Type, dur(p.Timeout), p.MaxEntries)
	}
	fmt.Fprintf(b, "    idle_timeout: %s\n", dur(vs.IdleTimeout))
	fmt.Fprintf(b, "    tcp_keepalive: %t\n", vs.TCPKeepalive)
	fmt.Fprintf(b, "    reset_on_close: %t\n", vs.ResetOnClose)
	fmt.Fprintf(b, "    transparent: %t\n", vs.Transparent)
	fmt.Fprintf(b, "    subnet_originating: %t\n", vs.SubnetOriginating)
	fmt.Fprintf(b, "    close_on_down: %t\n", vs.CloseOnDown)
	fmt.Fprintf(b, "    defer_accept: %t\n", vs.DeferAccept)
	if len(vs.SourceAddresses) > 0 {
		fmt.Fprintf(b, "    source_addresses: [%s]\n", joinStrings(vs.SourceAddresses))
	}
	if len(vs.Access.Allow)+len(vs.Access.Deny) > 0 {
		fmt.Fprintf(b, "    access: {allow: [%s], deny: [%s]}\n", joinStrings(vs.Access.Allow), joinStrings(vs.Access.Deny))
	}
	fmt.Fprintf(b, "    udp: {idle_timeout: %s, max_sessions: %d}\n", dur(vs.UDPIdleTimeout), vs.UDPMaxSessions)
	if vs.Redirect != "" {
		// A redirector answers every request itself: no servers, no health check.
		fmt.Fprintf(b, "    redirect: %s\n", quote(vs.Redirect))
		return
	}
	if vs.HasSorryServer() {
		s := vs.SorryServer.Addr().String()
		if vs.SorryServer.Port() != 0 {
			s = vs.SorryServer.String()
		}
		fmt.Fprintf(b, "    sorry_server: %s\n", quote(s))
	}
	if vs.UnavailableRedirect != "" {
		fmt.Fprintf(b, "    unavailable_redirect: %s\n", quote(vs.UnavailableRedirect))
	}
	h := vs.Health
	hf := []string{"type: " + string(h.Type), "port: " + strconv.Itoa(int(h.Port)),
		"method: " + h.Method, "path: " + quote(h.Path)}
	if h.Host != "" {
		hf = append(hf, "host: "+quote(h.Host))
	}
	if h.SNI != "" {
		hf = append(hf, "sni: "+quote(h.SNI))
	}
	if len(h.Expect) > 0 {
		var codes []string
		for _, c := range h.Expect {
			codes = append(codes, strconv.Itoa(c))
		}
		hf = append(hf, "expect: ["+strings.Join(codes, ", ")+"]")
	}
	initial := "down"
	if h.InitialUp {
		initial = "up"
	}
	hf = append(hf, "verify: "+strconv.FormatBool(h.Verify), "interval: "+dur(h.Interval),
		"timeout: "+dur(h.Timeout), "rise: "+strconv.Itoa(h.Rise), "fall: "+strconv.Itoa(h.Fall), "initial: "+initial)
	fmt.Fprintf(b, "    health: {%s}\n", strings.Join(hf, ", "))
	b.WriteString("    real_servers:\n")
	for _, rs := range vs.RealServers {
		fmt.Fprintf(b, "      - {address: %s, weight: %d, enabled: %t}\n", quote(rs.Key()), rs.Weight, rs.Enabled)
	}
}

// quote writes a YAML double-quoted scalar. Go's escapes for printable ASCII text ("\"", "\\")
// are YAML's too; the lab's values are ASCII.
func quote(s string) string { return strconv.Quote(s) }

func dur(d time.Duration) string {
	if d == 0 {
		return "0"
	}
	if d%time.Second == 0 {
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	}
	return d.String()
}

func joinStrings[T fmt.Stringer](xs []T) string {
	var s []string
	for _, x := range xs {
		s = append(s, quote(x.String()))
	}
	return strings.Join(s, ", ")
}
