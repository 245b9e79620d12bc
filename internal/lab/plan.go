package lab

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/pairlb/pairlb/config"
)

// Kind is what a lab server speaks on a port and how a client checks it.
type Kind string

// The kinds of traffic the lab sends.
const (
	KindTCP      Kind = "tcp"      // a line out, a line back naming the server
	KindTLS      Kind = "tls"      // a TLS handshake, then the same exchange inside it
	KindHTTP     Kind = "http"     // GET /, 200 with the server's name
	KindRedirect Kind = "redirect" // GET on a redirector, 302 with the expected Location
	KindSTUN     Kind = "stun"     // an RFC 5389 binding request over UDP
)

// tlsPorts are the target ports the Lync roles speak TLS on: HTTPS (443, 444, 4443), SIP over
// TLS/MTLS (5061, 5062, 5070-5076) and A/V authentication (5080). 135 (DCOM), 448 (call park)
// and 5269 (XMPP, STARTTLS after a plain start) are plain TCP here.
var tlsPorts = []uint16{443, 444, 4443, 5061, 5062, 5070, 5071, 5072, 5073, 5074, 5075, 5076, 5080}

// serverKind is what a real server speaks on a target port.
func serverKind(proto config.Proto, port uint16) Kind {
	switch {
	case proto == config.UDP:
		return KindSTUN
	case port == 80 || port == 8080:
		return KindHTTP
	case slices.Contains(tlsPorts, port):
		return KindTLS
	}
	return KindTCP
}

// portKind is how a client checks one port of a virtual service.
func portKind(vs *config.VirtualService, p config.Port) Kind {
	if vs.Redirect != "" {
		return KindRedirect
	}
	return serverKind(p.Proto, p.Target)
}

// Row is one line of the report: one port of one virtual service, with what was seen.
type Row struct {
	Service     string
	VIP         netip.Addr
	Port        config.Port
	Kind        Kind
	Network     string // the VIP's network
	Transparent bool
	Persistent  bool
	Redirect    string           // the template, for redirectors
	Pool        []netip.AddrPort // the enabled real servers, each with the port it is reached on
	Target      uint16           // the port the first real server is reached on (0 for redirectors)
	Clients     []string         // names of the clients that send to it

	// Filled in by the run.
	Sent, Answered int
	Servers        []string // real servers that answered, sorted
	Errors         []string // distinct problems, first ones
	Path           PathCheck

	seen map[string][]netip.Addr // client source: the real servers that answered it
}

// Key is the listener the row checks, "198.18.0.20:443/tcp": the label of its counters.
func (r *Row) Key() string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(r.VIP, r.Port.Listen), r.Port.Proto)
}

// Pass reports whether every request was answered correctly and the replies took the right path.
func (r *Row) Pass() bool {
	return r.Sent > 0 && r.Answered == r.Sent && len(r.Errors) == 0 && r.Path.OK
}

// ServerHost is one real server of the lab: an address with the ports it serves.
type ServerHost struct {
	Addr    netip.Addr
	Network string
	// ViaBox: the host's default route goes through the box (a transparent service uses it), so
	// replies to clients that the box connects as come back to the box.
	ViaBox bool
	Listen []Listen
}

// Listen is one port a lab server opens.
type Listen struct {
	Kind Kind
	Port uint16
}

// Flag renders the listener as the agent's -l flag: "tls@198.18.1.11:5061".
func (l Listen) Flag(a netip.Addr) string {
	return fmt.Sprintf("%s@%s", l.Kind, netip.AddrPortFrom(a, l.Port))
}

// Plan is what the lab derives from the mapped configuration: the rows to check and the real
// servers to run.
type Plan struct {
	Rows    []*Row
	Servers []*ServerHost
}

// BuildPlan derives the rows and real servers from a mapped configuration. Every address must
// lie in one of the lab's networks.
func BuildPlan(cfg *config.Config) (*Plan, error) {
	p := &Plan{}
	hosts := map[netip.Addr]*ServerHost{}
	host := func(a netip.Addr) (*ServerHost, error) {
		if h := hosts[a]; h != nil {
			return h, nil
		}
		n, ok := networkOf(a)
		if !ok {
			return nil, fmt.Errorf("real server %s is in none of the lab's networks", a)
		}
		h := &ServerHost{Addr: a, Network: n.Name}
		hosts[a] = h
		p.Servers = append(p.Servers, h)
		return h, nil
	}
	serve := func(h *ServerHost, proto config.Proto, port uint16) {
		l := Listen{Kind: serverKind(proto, port), Port: port}
		if !slices.Contains(h.Listen, l) {
			h.Listen = append(h.Listen, l)
		}
	}
	for i := range cfg.VirtualServices {
		vs := &cfg.VirtualServices[i]
		n, ok := networkOf(vs.VIP)
		if !ok {
			return nil, fmt.Errorf("virtual service %s: VIP %s is in none of the lab's networks", vs.Name, vs.VIP)
		}
		for _, rs := range vs.RealServers {
			if !rs.Enabled {
				continue
			}
			h, err := host(rs.Address)
			if err != nil {
				return nil, fmt.Errorf("virtual service %s: %w", vs.Name, err)
			}
			h.ViaBox = h.ViaBox || vs.Transparent
			for _, port := range vs.Ports {
				serve(h, port.Proto, rs.AddrPort(port.Target).Port())
			}
			// A health port of its own gets a server too (of the kind its port number implies:
			// the example's checks are TCP connects and STUN).
			if vs.Health.Port != 0 {
				proto := config.TCP
				if vs.Health.Type == config.HealthSTUN {
					proto = config.UDP
				}
				serve(h, proto, vs.Health.Port)
			}
		}
		if vs.HasSorryServer() {
			h, err := host(vs.SorryServer.Addr())
			if err != nil {
				return nil, fmt.Errorf("virtual service %s: sorry server: %w", vs.Name, err)
			}
			for _, port := range vs.Ports {
				serve(h, port.Proto, vs.SorryAddrPort(port).Port())
			}
		}
		for _, port := range vs.Ports {
			row := &Row{
				Service: vs.Name, VIP: vs.VIP, Port: port, Kind: portKind(vs, port), Network: n.Name,
				Transparent: vs.Transparent, Persistent: vs.Persistence.Enabled(), Redirect: vs.Redirect,
				Clients: clientsFor(n.Name),
			}
			for _, rs := range vs.RealServers {
				if rs.Enabled {
					row.Pool = append(row.Pool, rs.AddrPort(port.Target))
				}
			}
			if vs.Redirect == "" && len(row.Pool) > 0 {
				row.Target = row.Pool[0].Port()
			}
			p.Rows = append(p.Rows, row)
		}
	}
	for _, h := range p.Servers {
		slices.SortFunc(h.Listen, func(a, b Listen) int {
			return cmp.Or(cmp.Compare(a.Port, b.Port), strings.Compare(string(a.Kind), string(b.Kind)))
		})
	}
	slices.SortFunc(p.Servers, func(a, b *ServerHost) int { return a.Addr.Compare(b.Addr) })
	return p, nil
}
