package config

import (
	"io/fs"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func loadExample(t *testing.T, name string) *Config {
	t.Helper()
	data, err := fs.ReadFile(Examples, "examples/"+name)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := Parse(name, data)
	if err != nil {
		t.Fatalf("example %s does not load:\n%v", name, err)
	}
	return cfg
}

func TestExamplesAllLoad(t *testing.T) {
	names, err := fs.Glob(Examples, "examples/*.yaml")
	if err != nil || len(names) < 2 {
		t.Fatalf("embedded examples: %v, %v", names, err)
	}
	for _, name := range names {
		// Load reads the file from disk too: the embedded copy and the file are the same bytes.
		cfg, err := Load(name)
		if err != nil {
			t.Errorf("%s:\n%v", name, err)
			continue
		}
		if cfg.Path != name || len(cfg.Hash) != 64 {
			t.Errorf("%s: Path %q, Hash %q", name, cfg.Path, cfg.Hash)
		}
	}
}

func TestLyncExample(t *testing.T) {
	cfg := loadExample(t, "lync2013-single-pair.yaml")

	// The 18 rows of docs/lync2013.md "The services", plus the two port-80 redirectors, with Edge
	// External AV split into its TCP and STUN halves.
	if got, want := len(cfg.VirtualServices), 21; got != want {
		t.Fatalf("%d virtual services, want %d", got, want)
	}
	if !cfg.Global.UseDefaultRouteOnly || cfg.Global.IdleTimeout != 1800*time.Second {
		t.Errorf("global = %+v, want use_default_route_only and idle 1800s", cfg.Global)
	}

	// Every service replies through the gateway of the guide's network its VIP lives on.
	networks := []struct{ net, gw string }{
		{"10.11.0.0/16", "10.11.0.1"},
		{"192.168.100.0/24", "192.168.100.1"},
		{"201.44.53.0/24", "201.44.53.1"},
	}
	for _, vs := range cfg.VirtualServices {
		found := false
		for _, n := range networks {
			if netip.MustParsePrefix(n.net).Contains(vs.VIP) {
				found = true
				if vs.DefaultGateway != netip.MustParseAddr(n.gw) {
					t.Errorf("%s: VIP %s, gateway %s, want %s", vs.Name, vs.VIP, vs.DefaultGateway, n.gw)
				}
			}
		}
		if !found {
			t.Errorf("%s: VIP %s outside the guide's networks", vs.Name, vs.VIP)
		}
		if vs.IdleTimeout != 1800*time.Second {
			t.Errorf("%s: idle timeout %s, want 1800s", vs.Name, vs.IdleTimeout)
		}
	}

	for _, tc := range []struct {
		name        string
		ports       string
		persist     bool
		health      HealthType
		healthPort  uint16
		transparent bool
		redirect    string
	}{
		{"fe-web-https", "443/tcp", true, HealthTCP, 5061, false, ""},
		{"director-hlb", "443/tcp,444/tcp,5061/tcp,4443/tcp", true, HealthTCP, 5061, false, ""},
		{"mediation", "5070/tcp", true, HealthTCP, 5070, false, ""},
		{"edge-int-av", "443/tcp,3478/udp", true, HealthTCP, 443, false, ""},
		{"edge-ext-http-redirect", "80/tcp", false, HealthNone, 0, false, "https://%h%s"},
		{"owa-http-redirect", "80/tcp", false, HealthNone, 0, false, "https://%h%s"},
		{"rp-http", "80/tcp->8080", false, HealthTCP, 5061, false, ""},
		{"rp-https", "443/tcp->4443", false, HealthTCP, 5061, false, ""},
		{"edge-ext-av-tcp", "443/tcp", true, HealthTCP, 443, true, ""},
		{"edge-ext-av-stun", "3478/udp", true, HealthSTUN, 0, true, ""},
	} {
		vs := cfg.VirtualService(tc.name)
		if vs == nil {
			t.Errorf("no service %s", tc.name)
			continue
		}
		ports := ""
		for i, p := range vs.Ports {
			if i > 0 {
				ports += ","
			}
			ports += p.String()
		}
		if ports != tc.ports || vs.Persistence.Enabled() != tc.persist || vs.Health.Type != tc.health ||
			vs.Health.Port != tc.healthPort || vs.Transparent != tc.transparent || vs.Redirect != tc.redirect {
			t.Errorf("%s: %s", tc.name, vs.Summary())
		}
		if tc.persist && vs.Persistence.Timeout != 1200*time.Second {
			t.Errorf("%s: persistence %s, want 1200s", tc.name, vs.Persistence.Timeout)
		}
	}
	// The catalog gives Edge External Conferencing and AV a VIP of their own (AV's TCP and STUN
	// halves share theirs).
	onVIP := func(name string) []string {
		var names []string
		for _, vs := range cfg.VirtualServices {
			if vs.VIP == cfg.VirtualService(name).VIP {
				names = append(names, vs.Name)
			}
		}
		return names
	}
	if diff := cmp.Diff([]string{"edge-ext-conferencing"}, onVIP("edge-ext-conferencing")); diff != "" {
		t.Errorf("services on the conferencing VIP (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"edge-ext-av-tcp", "edge-ext-av-stun"}, onVIP("edge-ext-av-tcp")); diff != "" {
		t.Errorf("services on the AV VIP (-want +got):\n%s", diff)
	}
}

func TestLoopbackExample(t *testing.T) {
	cfg := loadExample(t, "loopback.yaml")
	for _, vs := range cfg.VirtualServices {
		if !vs.VIP.IsLoopback() {
			t.Errorf("%s: VIP %s is not loopback", vs.Name, vs.VIP)
		}
		for _, p := range vs.Ports {
			// Ports below 1024 need root or CAP_NET_BIND_SERVICE.
			if p.Listen < 1024 {
				t.Errorf("%s: port %s needs privileges", vs.Name, p)
			}
		}
		for _, rs := range vs.RealServers {
			if !rs.Address.IsLoopback() {
				t.Errorf("%s: real server %s is not loopback", vs.Name, rs.Key())
			}
		}
		if vs.DefaultGateway.IsValid() || vs.Transparent {
			t.Errorf("%s needs routing set-up: %s", vs.Name, vs.Summary())
		}
	}
	if cfg.Global.Admin != netip.MustParseAddrPort("127.0.0.1:9090") || cfg.Global.ManageAddresses {
		t.Errorf("global = %+v", cfg.Global)
	}
}
