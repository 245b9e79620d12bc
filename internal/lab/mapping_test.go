package lab

import (
	"io/fs"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/pairlb/pairlb/config"
)

func guideExample(t *testing.T) *config.Config {
	t.Helper()
	data, err := fs.ReadFile(config.Examples, "examples/"+ExampleName)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(ExampleName, data)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

var netipEqual = cmpopts.EquateComparable(netip.Addr{}, netip.AddrPort{}, netip.Prefix{})

func TestMapAddr(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"10.11.0.1", "198.18.0.1"},
		{"10.11.2.12", "198.18.2.12"},
		{"10.11.255.254", "198.18.255.254"},
		{"192.168.100.1", "198.51.100.1"},
		{"192.168.100.30", "198.51.100.30"},
		{"201.44.53.12", "203.0.113.12"},
	} {
		got, err := MapAddr(netip.MustParseAddr(tc.in))
		if err != nil || got != netip.MustParseAddr(tc.want) {
			t.Errorf("MapAddr(%s) = %s, %v; want %s", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"10.12.0.1", "192.168.101.1", "192.0.2.1", "127.0.0.1", "198.18.0.1"} {
		if got, err := MapAddr(netip.MustParseAddr(bad)); err == nil {
			t.Errorf("MapAddr(%s) = %s, want an error", bad, got)
		}
	}
}

// Every address of the mapped example lies in the allowed ranges and in the network of the
// guide address it came from; services, ports and settings are unchanged.
func TestMappedExample(t *testing.T) {
	guide := guideExample(t)
	mapped, text, err := MappedExample()
	if err != nil {
		t.Fatalf("%v\n%s", err, text)
	}
	for _, a := range Addresses(mapped) {
		if !InAllowed(a) {
			t.Errorf("address %s outside %v", a, Allowed)
		}
		for _, forbidden := range []string{"192.0.2.0/24", "10.0.0.0/8", "192.168.0.0/16", "201.44.53.0/24"} {
			if netip.MustParsePrefix(forbidden).Contains(a) {
				t.Errorf("address %s in %s", a, forbidden)
			}
		}
	}
	if got, want := len(mapped.VirtualServices), len(guide.VirtualServices); got != want || got != 21 {
		t.Fatalf("%d services mapped, %d in the guide (want 21)", got, want)
	}
	if !mapped.Global.ManageAddresses || !mapped.Global.UseDefaultRouteOnly {
		t.Errorf("global = %+v, want manage_addresses and use_default_route_only", mapped.Global)
	}
	for i := range guide.VirtualServices {
		g, m := guide.VirtualServices[i], mapped.VirtualServices[i]
		for _, pair := range [][2]netip.Addr{{g.VIP, m.VIP}, {g.DefaultGateway, m.DefaultGateway}} {
			want, err := MapAddr(pair[0])
			if err != nil || pair[1] != want {
				t.Errorf("%s: %s mapped to %s, want %s (%v)", g.Name, pair[0], pair[1], want, err)
			}
		}
		gn, _ := networkOfGuide(g.VIP)
		mn, _ := networkOf(m.VIP)
		if gn != mn.Name {
			t.Errorf("%s: VIP moved from network %s to %s", g.Name, gn, mn.Name)
		}
		// Everything but the addresses is the same.
		g.VIP, g.DefaultGateway, m.VIP, m.DefaultGateway = netip.Addr{}, netip.Addr{}, netip.Addr{}, netip.Addr{}
		for j := range g.RealServers {
			want, _ := MapAddr(g.RealServers[j].Address)
			if m.RealServers[j].Address != want {
				t.Errorf("%s: real server %s mapped to %s, want %s", g.Name, g.RealServers[j].Address, m.RealServers[j].Address, want)
			}
			g.RealServers[j].Address, m.RealServers[j].Address = netip.Addr{}, netip.Addr{}
		}
		if d := cmp.Diff(g, m, netipEqual, cmpopts.EquateEmpty()); d != "" {
			t.Errorf("%s changed beyond its addresses (-guide +lab):\n%s", g.Name, d)
		}
	}
	// Global settings other than the two the lab sets are kept.
	g, m := guide.Global, mapped.Global
	g.ManageAddresses, g.UseDefaultRouteOnly = true, true
	if mapped.Pair != nil {
		t.Error("the pair section was kept; the lab runs one box")
	}
	if d := cmp.Diff(g, m, netipEqual); d != "" {
		t.Errorf("global changed (-guide +lab):\n%s", d)
	}
}

func networkOfGuide(a netip.Addr) (string, bool) {
	for _, n := range Networks {
		if n.Guide.Contains(a) {
			return n.Name, true
		}
	}
	return "", false
}

// Render writes everything config.Parse reads back, so a round trip changes nothing.
func TestRenderRoundTrip(t *testing.T) {
	guide := guideExample(t)
	back, err := config.Parse("rendered.yaml", Render(guide, "round trip"))
	if err != nil {
		t.Fatal(err)
	}
	// The pair section is not rendered: the lab runs one box.
	ignore := cmpopts.IgnoreFields(config.Config{}, "Path", "Hash", "Pair")
	if d := cmp.Diff(guide, back, netipEqual, ignore, cmpopts.EquateEmpty()); d != "" {
		t.Errorf("round trip changed the configuration (-before +after):\n%s", d)
	}
}

// The plan checks every port of every service and runs a server for every pool member, each
// serving the ports its services forward to and probe.
func TestPlan(t *testing.T) {
	cfg, _, err := MappedExample()
	if err != nil {
		t.Fatal(err)
	}
	p, err := BuildPlan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ports := 0
	for _, vs := range cfg.VirtualServices {
		ports += len(vs.Ports)
	}
	if len(p.Rows) != ports {
		t.Errorf("%d rows for %d service ports", len(p.Rows), ports)
	}
	byAddr := map[netip.Addr]*ServerHost{}
	for _, h := range p.Servers {
		byAddr[h.Addr] = h
	}
	for _, row := range p.Rows {
		if len(row.Clients) == 0 {
			t.Errorf("%s: no client sends to it", row.Key())
		}
		if row.Kind == KindRedirect {
			continue
		}
		if len(row.Pool) == 0 {
			t.Errorf("%s: no real servers", row.Key())
		}
		for _, ap := range row.Pool {
			want := Listen{Kind: serverKind(row.Port.Proto, ap.Port()), Port: ap.Port()}
			h := byAddr[ap.Addr()]
			if h == nil || !contains(h.Listen, want) {
				t.Errorf("%s: real server %s does not serve %v", row.Key(), ap, want)
			}
		}
	}
	for _, tc := range []struct {
		service string
		port    uint16
		kind    Kind
	}{
		{"fe-web-https", 443, KindTLS}, {"fe-web-http", 80, KindHTTP}, {"fe-dcom", 135, KindTCP},
		{"rp-http", 80, KindHTTP}, {"rp-https", 443, KindTLS}, {"owa-http-redirect", 80, KindRedirect},
		{"edge-ext-av-stun", 3478, KindSTUN}, {"edge-ext-xmpp", 5269, KindTCP},
	} {
		found := false
		for _, row := range p.Rows {
			if row.Service == tc.service && row.Port.Listen == tc.port {
				found = true
				if row.Kind != tc.kind {
					t.Errorf("%s %d: kind %s, want %s", tc.service, tc.port, row.Kind, tc.kind)
				}
			}
		}
		if !found {
			t.Errorf("no row for %s %d", tc.service, tc.port)
		}
	}
	// Real servers of transparent services route through the box.
	for _, vs := range cfg.VirtualServices {
		for _, rs := range vs.RealServers {
			if vs.Transparent && !byAddr[rs.Address].ViaBox {
				t.Errorf("%s: real server %s of a transparent service does not route via the box", vs.Name, rs.Address)
			}
		}
	}
	if err := checkPlacement(cfg); err != nil {
		t.Error(err)
	}
	for _, a := range labAddresses() {
		if !InAllowed(a) {
			t.Errorf("lab host address %s outside the allowed ranges", a)
		}
	}
}

func contains[T comparable](xs []T, x T) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

func TestSTUNRoundTrip(t *testing.T) {
	tx := [12]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	req := stunRequest(tx)
	got, ok := parseSTUNRequest(req)
	if !ok || got != tx {
		t.Fatalf("parseSTUNRequest = %v, %v", got, ok)
	}
	for _, peer := range []string{"198.19.3.10:40000", "[2001:db8::1]:3478"} {
		ap := netip.MustParseAddrPort(peer)
		mapped, sw, err := parseSTUNSuccess(stunSuccess(tx, ap, "pairlb-lab server=x"), tx)
		if err != nil || mapped != ap || sw != "pairlb-lab server=x" {
			t.Errorf("%s: got %s %q %v", peer, mapped, sw, err)
		}
	}
	other := tx
	other[0] = 99
	if _, _, err := parseSTUNSuccess(stunSuccess(tx, netip.MustParseAddrPort("198.19.3.10:1"), ""), other); err == nil {
		t.Error("response to another transaction accepted")
	}
}
