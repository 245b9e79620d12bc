package config

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// netipEqual lets cmp compare netip values, whose fields are unexported.
var netipEqual = cmpopts.EquateComparable(netip.Addr{}, netip.AddrPort{}, netip.Prefix{})

// services builds a file whose virtual services are the given one-line flow mappings; the
// first service is on line 2, the next on line 3, and so on.
func services(items ...string) string {
	s := "virtual_services:\n"
	for _, it := range items {
		s += "  - " + it + "\n"
	}
	return s
}

// web is a valid service line for tests that only need one to exist.
const web = `{name: web, vip: 192.0.2.10, ports: ["443/tcp"], real_servers: [{address: 192.0.2.21}]}`

func parseErrors(t *testing.T, src string) Errors {
	t.Helper()
	cfg, err := Parse("test.yaml", []byte(src))
	if err == nil {
		t.Fatalf("Parse succeeded, want errors; got %d services", len(cfg.VirtualServices))
	}
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("Parse error is %T, want Errors: %v", err, err)
	}
	if cfg != nil {
		t.Errorf("Parse returned a config along with errors")
	}
	return errs
}

func TestDefaults(t *testing.T) {
	src := `virtual_services:
  - name: web
    vip: 192.0.2.10
    ports: ["443/tcp"]
    real_servers:
      - address: 192.0.2.21
`
	cfg, err := Parse("test.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(src))
	want := &Config{
		Path: "test.yaml",
		Hash: hex.EncodeToString(sum[:]),
		Global: Global{
			Admin:        netip.MustParseAddrPort("127.0.0.1:9090"),
			IdleTimeout:  1800 * time.Second,
			DrainTimeout: 30 * time.Second,
			DialTimeout:  3 * time.Second,
			TCPKeepalive: true,
		},
		VirtualServices: []VirtualService{{
			Name:         "web",
			VIP:          netip.MustParseAddr("192.0.2.10"),
			Ports:        []Port{{Listen: 443, Target: 443, Proto: TCP}},
			Scheduler:    LeastConn,
			Persistence:  Persistence{Type: "none", Timeout: 1200 * time.Second, MaxEntries: 1 << 20, PlaceBy: PlaceByHash},
			IdleTimeout:  1800 * time.Second,
			TCPKeepalive: true,
			Health: Health{
				Type: HealthTCP, Method: "GET", Path: "/",
				Interval: 9 * time.Second, Timeout: 3 * time.Second, Rise: 2, Fall: 3,
			},
			RealServers:    []RealServer{{Address: netip.MustParseAddr("192.0.2.21"), Weight: 1, Enabled: true}},
			UDPIdleTimeout: 60 * time.Second,
			UDPMaxSessions: 65536,
		}},
	}
	if diff := cmp.Diff(want, cfg, netipEqual); diff != "" {
		t.Errorf("Parse mismatch (-want +got):\n%s", diff)
	}
}

// TestConnectionLog: the connection log is off without the key, text unless the file says json,
// and goes to stderr, syslog or a file. Parse reads no file, so a file's directory is Load's
// check (TestLoadConnectionLogFile).
func TestConnectionLog(t *testing.T) {
	for _, tc := range []struct {
		global string
		want   ConnectionLog
		file   bool
	}{
		{"", ConnectionLog{}, false},
		{"global: {connection_log: null}\n", ConnectionLog{}, false},
		{"global: {connection_log: {to: stderr}}\n", ConnectionLog{To: "stderr", Format: ConnLogText}, false},
		{"global: {connection_log: {to: syslog, format: json}}\n", ConnectionLog{To: "syslog", Format: ConnLogJSON}, false},
		{"global: {connection_log: {to: /var/log/pairlb/connections.log, format: text}}\n", ConnectionLog{To: "/var/log/pairlb/connections.log", Format: ConnLogText}, true},
	} {
		cfg, err := Parse("test.yaml", []byte(tc.global+services(web)))
		if err != nil {
			t.Errorf("%q: %v", tc.global, err)
			continue
		}
		got := cfg.Global.ConnectionLog
		if got != tc.want || got.Enabled() != (tc.want.To != "") || got.File() != tc.file {
			t.Errorf("%q: %+v (enabled %v, file %v), want %+v", tc.global, got, got.Enabled(), got.File(), tc.want)
		}
	}
}

// TestFullFile parses the format as the documentation writes it, every key given.
func TestFullFile(t *testing.T) {
	src := `global:
  use_default_route_only: true
  manage_addresses: true
  admin: "[::1]:9191"
  admin_token_file: /etc/pairlb/token
  idle_timeout: 20m
  drain_timeout: 10s
  dial_timeout: 2s
  tcp_keepalive: false
  reset_on_close: true
virtual_services:
  - name: fe-web-https
    vip: 10.11.0.20
    ports: ["443/tcp", "444/tcp->4444", "3478/udp"]
    default_gateway: 10.11.0.1
    scheduler: weighted-leastconn
    persistence: {type: source-ip, timeout: 1200s, max_entries: 1048576}
    idle_timeout: 0
    tcp_keepalive: true
    reset_on_close: false
    transparent: false
    subnet_originating: false
    source_addresses: [10.11.0.200, 10.11.0.201]
    access: {allow: ["10.0.0.0/8", 192.0.2.7, "2001:db8::/32"], deny: ["10.66.0.0/16"]}
    sorry_server: 10.11.0.99:443
    health: {type: https, port: 5061, method: HEAD, path: /health, host: web.example, sni: sni.example, expect: [200, 204], verify: true, interval: 5s, timeout: 2s, rise: 3, fall: 4, initial: up}
    close_on_down: true
    defer_accept: true
    udp: {idle_timeout: 30s, max_sessions: 1000}
    real_servers:
      - {address: 10.11.1.11, weight: 5}
      - {address: 10.11.1.12, enabled: false}
    unavailable_redirect: "https://sorry.example/"
  - name: edge-ext-http-redirect
    vip: 201.44.53.10
    ports: ["80/tcp"]
    redirect: "https://%h%s"
`
	cfg, err := Parse("full.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	wantGlobal := Global{
		UseDefaultRouteOnly: true,
		ManageAddresses:     true,
		Admin:               netip.MustParseAddrPort("[::1]:9191"),
		AdminTokenFile:      "/etc/pairlb/token",
		IdleTimeout:         20 * time.Minute,
		DrainTimeout:        10 * time.Second,
		DialTimeout:         2 * time.Second,
		TCPKeepalive:        false,
		ResetOnClose:        true,
	}
	addr := netip.MustParseAddr
	wantServices := []VirtualService{{
		Name: "fe-web-https",
		VIP:  addr("10.11.0.20"),
		Ports: []Port{
			{Listen: 443, Target: 443, Proto: TCP},
			{Listen: 444, Target: 4444, Proto: TCP},
			{Listen: 3478, Target: 3478, Proto: UDP},
		},
		DefaultGateway:  addr("10.11.0.1"),
		Scheduler:       WeightedLeastConn,
		Persistence:     Persistence{Type: "source-ip", Timeout: 1200 * time.Second, MaxEntries: 1 << 20, PlaceBy: PlaceByHash},
		IdleTimeout:     0,
		TCPKeepalive:    true,
		ResetOnClose:    false,
		SourceAddresses: []netip.Addr{addr("10.11.0.200"), addr("10.11.0.201")},
		Access: Access{
			Allow: []netip.Prefix{
				netip.MustParsePrefix("10.0.0.0/8"),
				netip.MustParsePrefix("192.0.2.7/32"),
				netip.MustParsePrefix("2001:db8::/32"),
			},
			Deny: []netip.Prefix{netip.MustParsePrefix("10.66.0.0/16")},
		},
		SorryServer: netip.MustParseAddrPort("10.11.0.99:443"),
		Health: Health{
			Type: HealthHTTPS, Port: 5061, Method: "HEAD", Path: "/health", Host: "web.example",
			SNI: "sni.example", Expect: []int{200, 204}, Verify: true,
			Interval: 5 * time.Second, Timeout: 2 * time.Second, Rise: 3, Fall: 4, InitialUp: true,
		},
		CloseOnDown: true,
		DeferAccept: true,
		RealServers: []RealServer{
			{Address: addr("10.11.1.11"), Weight: 5, Enabled: true},
			{Address: addr("10.11.1.12"), Weight: 1, Enabled: false},
		},
		UDPIdleTimeout:      30 * time.Second,
		UDPMaxSessions:      1000,
		UnavailableRedirect: "https://sorry.example/",
	}, {
		Name:  "edge-ext-http-redirect",
		VIP:   addr("201.44.53.10"),
		Ports: []Port{{Listen: 80, Target: 80, Proto: TCP}},
		// Inherited from global: keepalive off, reset on.
		Scheduler:    LeastConn,
		Persistence:  Persistence{Type: "none", Timeout: 1200 * time.Second, MaxEntries: 1 << 20, PlaceBy: PlaceByHash},
		IdleTimeout:  20 * time.Minute,
		ResetOnClose: true,
		// A redirector has no servers to check.
		Health: Health{
			Type: HealthNone, Method: "GET", Path: "/",
			Interval: 9 * time.Second, Timeout: 3 * time.Second, Rise: 2, Fall: 3,
		},
		UDPIdleTimeout: 60 * time.Second,
		UDPMaxSessions: 65536,
		Redirect:       "https://%h%s",
	}}
	if diff := cmp.Diff(wantGlobal, cfg.Global, netipEqual); diff != "" {
		t.Errorf("Global mismatch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(wantServices, cfg.VirtualServices, netipEqual); diff != "" {
		t.Errorf("VirtualServices mismatch (-want +got):\n%s", diff)
	}
}

func TestInheritance(t *testing.T) {
	src := "global: {idle_timeout: 600s, tcp_keepalive: false, reset_on_close: true, defer_accept: true}\n" + services(
		`{name: inherits, vip: 192.0.2.10, ports: ["80/tcp"], real_servers: [{address: 192.0.2.21}]}`,
		`{name: own, vip: 192.0.2.10, ports: ["81/tcp"], real_servers: [{address: 192.0.2.21}], idle_timeout: 3600s, tcp_keepalive: true, reset_on_close: false, defer_accept: false}`,
		`{name: udp-only, vip: 192.0.2.10, ports: ["3478/udp"], real_servers: [{address: 192.0.2.21}]}`,
		`{name: redirector, vip: 192.0.2.10, ports: ["82/tcp"], redirect: "https://%h%s"}`,
	)
	cfg, err := Parse("test.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	type resolved struct {
		Idle                          time.Duration
		Keepalive, Reset, DeferAccept bool
		HealthTimeoutSane             bool
	}
	var got []resolved
	for _, vs := range cfg.VirtualServices {
		got = append(got, resolved{vs.IdleTimeout, vs.TCPKeepalive, vs.ResetOnClose, vs.DeferAccept, vs.Health.Timeout <= vs.Health.Interval})
	}
	want := []resolved{
		{600 * time.Second, false, true, true, true},
		{3600 * time.Second, true, false, false, true},
		{600 * time.Second, false, true, false, true}, // defer_accept is for TCP
		{600 * time.Second, false, true, false, true}, // and not for a redirector
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("resolved settings (-want +got):\n%s", diff)
	}
}

func TestShortIntervalLowersDefaultTimeout(t *testing.T) {
	src := services(`{name: web, vip: 192.0.2.10, ports: ["443/tcp"], health: {interval: 1s}, real_servers: [{address: 192.0.2.21}]}`)
	cfg, err := Parse("test.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.VirtualServices[0].Health.Timeout; got != time.Second {
		t.Errorf("health timeout = %s, want 1s (the interval)", got)
	}
}

func TestAnchorsAndAliases(t *testing.T) {
	src := `virtual_services:
  - name: a
    vip: 192.0.2.10
    ports: ["80/tcp"]
    persistence: &sticky {type: source-ip, timeout: 600s}
    real_servers: &pool
      - {address: 192.0.2.21}
      - {address: 192.0.2.22}
  - name: b
    vip: 192.0.2.10
    ports: ["81/tcp"]
    persistence: *sticky
    real_servers: *pool
`
	cfg, err := Parse("test.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	b := cfg.VirtualService("b")
	if b == nil || !b.Persistence.Enabled() || b.Persistence.Timeout != 600*time.Second || len(b.RealServers) != 2 {
		t.Errorf("aliases not followed: %+v", b)
	}
}

func TestFieldErrorString(t *testing.T) {
	for _, tc := range []struct {
		err  FieldError
		want string
	}{
		{FieldError{File: "lync.yaml", Line: 14, Path: "virtual_services[2].ports[1]", Value: "70000/tcp", Msg: "port out of range 1-65535"},
			`lync.yaml:14: virtual_services[2].ports[1]: "70000/tcp": port out of range 1-65535`},
		{FieldError{File: "lync.yaml", Line: 3, Path: "virtual_services[0].name", Msg: "required"},
			`lync.yaml:3: virtual_services[0].name: required`},
		{FieldError{File: "lync.yaml", Msg: "empty file"}, `lync.yaml: empty file`},
	} {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("Error() = %q, want %q", got, tc.want)
		}
	}
}

// TestRenderedError checks one message end to end, exactly as `pairlb validate` prints it.
func TestRenderedError(t *testing.T) {
	src := services(
		`{name: a, vip: 192.0.2.10, ports: ["443/tcp"], real_servers: [{address: 192.0.2.21}]}`,
		`{name: b, vip: 192.0.2.11, ports: ["443/tcp"], real_servers: [{address: 192.0.2.21}]}`,
		`{name: c, vip: 192.0.2.12, ports: ["443/tcp", "70000/tcp"], real_servers: [{address: 192.0.2.21}]}`,
	)
	_, err := Parse("lync.yaml", []byte(src))
	want := `lync.yaml:4: virtual_services[2].ports[1]: "70000/tcp": port out of range 1-65535`
	if err == nil || err.Error() != want {
		t.Errorf("Parse error:\n%v\nwant:\n%s", err, want)
	}
}

// TestRejects has one case per validation rule. Each asserts the field path and the value the
// message names, and the line where it is cheap to know.
func TestRejects(t *testing.T) {
	const rs = `real_servers: [{address: 192.0.2.21}]`
	for _, tc := range []struct {
		name  string
		src   string
		path  string
		value string
		msg   string // a part of the message
		line  int    // 0: not checked
	}{
		{"empty file", "", "", "", "empty file", 0},
		{"only comments", "# nothing\n# here\n", "", "", "empty file", 0},
		{"bare document", "---\n", "", "", "empty", 0},
		{"syntax", "virtual_services: [\n", "", "", "invalid YAML", 1},
		{"two documents", services(web) + "---\nvirtual_services: []\n", "", "", "second YAML document", 3},
		{"no virtual services", "global: {admin: 127.0.0.1:9090}\n", "virtual_services", "", "at least one virtual service", 1},
		{"empty virtual services", "virtual_services: []\n", "virtual_services", "", "at least one virtual service", 1},
		{"virtual services not a list", "virtual_services: {name: a}\n", "virtual_services", "", "want a list", 1},
		{"unknown top-level key", "virtual_service: []\n" + services(web), "", "virtual_service", "unknown key", 1},
		{"unknown service key", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp"], helath: {}, ` + rs + `}`),
			"virtual_services[0]", "helath", "unknown key", 2},
		{"unknown nested key", "virtual_services:\n  - name: a\n    vip: 192.0.2.10\n    ports: [\"80/tcp\"]\n    real_servers:\n      - address: 192.0.2.21\n        wieght: 2\n",
			"virtual_services[0].real_servers[0]", "wieght", "unknown key", 7},
		{"duplicate key", "virtual_services:\n  - name: a\n    vip: 192.0.2.10\n    vip: 192.0.2.11\n    ports: [\"80/tcp\"]\n    " + rs + "\n",
			"virtual_services[0].vip", "", "duplicate key, first given at line 3", 4},
		{"merge key", services(`{<<: {name: a}, vip: 192.0.2.10, ports: ["80/tcp"], ` + rs + `}`), "virtual_services[0]", "<<", "merge keys", 2},
		{"missing name", services(`{vip: 192.0.2.10, ports: ["80/tcp"], ` + rs + `}`), "virtual_services[0].name", "", "required", 2},
		{"defer_accept without TCP", services(`{name: a, vip: 192.0.2.10, ports: ["3478/udp"], defer_accept: true, ` + rs + `}`),
			"virtual_services[0].defer_accept", "true", "applies to TCP ports", 2},
		{"defer_accept on a redirector", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp"], defer_accept: true, redirect: "https://%h%s"}`),
			"virtual_services[0].defer_accept", "true", "not for a redirector", 2},
		{"bad name", services(`{name: "fe web", vip: 192.0.2.10, ports: ["80/tcp"], ` + rs + `}`), "virtual_services[0].name", "fe web", "letters, digits", 2},
		{"long name", services(`{name: ` + strings.Repeat("a", 64) + `, vip: 192.0.2.10, ports: ["80/tcp"], ` + rs + `}`),
			"virtual_services[0].name", strings.Repeat("a", 64), "1-63", 2},
		{"duplicate name", services(web, `{name: web, vip: 192.0.2.11, ports: ["443/tcp"], `+rs+`}`),
			"virtual_services[1].name", "web", "duplicate name, first used by virtual_services[0] (line 2)", 3},
		{"missing vip", services(`{name: a, ports: ["80/tcp"], ` + rs + `}`), "virtual_services[0].vip", "", "required", 2},
		{"bad vip", services(`{name: a, vip: 192.0.2.300, ports: ["80/tcp"], ` + rs + `}`), "virtual_services[0].vip", "192.0.2.300", "not an IP address", 2},
		{"hostname vip", services(`{name: a, vip: lync.example, ports: ["80/tcp"], ` + rs + `}`), "virtual_services[0].vip", "lync.example", "not an IP address", 2},
		{"unspecified vip", services(`{name: a, vip: 0.0.0.0, ports: ["80/tcp"], ` + rs + `}`), "virtual_services[0].vip", "0.0.0.0", "unspecified", 2},
		{"multicast vip", services(`{name: a, vip: "ff02::1", ports: ["80/tcp"], ` + rs + `}`), "virtual_services[0].vip", "ff02::1", "multicast", 2},
		{"mapped vip", services(`{name: a, vip: "::ffff:192.0.2.10", ports: ["80/tcp"], ` + rs + `}`), "virtual_services[0].vip", "::ffff:192.0.2.10", "write it as 192.0.2.10", 2},
		{"zoned vip", services(`{name: a, vip: "fe80::1%eth0", ports: ["80/tcp"], ` + rs + `}`), "virtual_services[0].vip", "fe80::1%eth0", "zones", 2},
		{"no ports", services(`{name: a, vip: 192.0.2.10, ` + rs + `}`), "virtual_services[0].ports", "", "required", 2},
		{"empty ports", services(`{name: a, vip: 192.0.2.10, ports: [], ` + rs + `}`), "virtual_services[0].ports", "", "at least one port", 2},
		{"ports not a list", services(`{name: a, vip: 192.0.2.10, ports: "80/tcp", ` + rs + `}`), "virtual_services[0].ports", "80/tcp", "want a list", 2},
		{"port out of range", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp", "70000/tcp"], ` + rs + `}`),
			"virtual_services[0].ports[1]", "70000/tcp", "port out of range 1-65535", 2},
		{"port zero", services(`{name: a, vip: 192.0.2.10, ports: ["0/udp"], ` + rs + `}`), "virtual_services[0].ports[0]", "0/udp", "out of range", 2},
		{"target out of range", services(`{name: a, vip: 192.0.2.10, ports: ["443/tcp->65536"], ` + rs + `}`),
			"virtual_services[0].ports[0]", "443/tcp->65536", "out of range", 2},
		{"port without proto", services(`{name: a, vip: 192.0.2.10, ports: [443], ` + rs + `}`), "virtual_services[0].ports[0]", "443", "protocol required", 2},
		{"unknown proto", services(`{name: a, vip: 192.0.2.10, ports: ["443/sctp"], ` + rs + `}`), "virtual_services[0].ports[0]", "443/sctp", "unknown protocol", 2},
		{"malformed port", services(`{name: a, vip: 192.0.2.10, ports: ["https/tcp"], ` + rs + `}`), "virtual_services[0].ports[0]", "https/tcp", "malformed port", 2},
		{"malformed translation", services(`{name: a, vip: 192.0.2.10, ports: ["443/tcp->"], ` + rs + `}`), "virtual_services[0].ports[0]", "443/tcp->", "malformed port", 2},
		{"port twice in a service", services(`{name: a, vip: 192.0.2.10, ports: ["443/tcp", "443/tcp->4443"], ` + rs + `}`),
			"virtual_services[0].ports[1]", "443/tcp->4443", "listed twice", 2},
		{"two services on one listener", services(web, `{name: other, vip: 192.0.2.10, ports: ["80/tcp", "443/tcp"], `+rs+`}`),
			"virtual_services[1].ports[1]", "443/tcp", "192.0.2.10:443/tcp is already used by web (line 2)", 3},
		{"gateway family", services(`{name: a, vip: 192.0.2.10, default_gateway: "2001:db8::1", ports: ["80/tcp"], ` + rs + `}`),
			"virtual_services[0].default_gateway", "2001:db8::1", "IPv6 gateway for IPv4 VIP", 2},
		{"gateway is vip", services(`{name: a, vip: 192.0.2.10, default_gateway: 192.0.2.10, ports: ["80/tcp"], ` + rs + `}`),
			"virtual_services[0].default_gateway", "192.0.2.10", "the VIP itself", 2},
		{"gateways differ on one vip", services(
			`{name: a, vip: 192.0.2.10, default_gateway: 192.0.2.1, ports: ["80/tcp"], `+rs+`}`,
			`{name: b, vip: 192.0.2.10, default_gateway: 192.0.2.2, ports: ["81/tcp"], `+rs+`}`),
			"virtual_services[1].default_gateway", "192.0.2.2", "must share one default gateway: a uses 192.0.2.1", 3},
		{"gateway missing on shared vip", services(
			`{name: a, vip: 192.0.2.10, default_gateway: 192.0.2.1, ports: ["80/tcp"], `+rs+`}`,
			`{name: b, vip: 192.0.2.10, ports: ["81/tcp"], `+rs+`}`),
			"virtual_services[1].default_gateway", "none", "must share one default gateway", 3},
		{"unknown scheduler", services(`{name: a, vip: 192.0.2.10, scheduler: fastest, ports: ["80/tcp"], ` + rs + `}`),
			"virtual_services[0].scheduler", "fastest", "unknown scheduler", 2},
		{"unknown persistence", services(`{name: a, vip: 192.0.2.10, persistence: {type: cookie}, ports: ["80/tcp"], ` + rs + `}`),
			"virtual_services[0].persistence.type", "cookie", "unknown persistence type", 2},
		{"persistence timeout", services(`{name: a, vip: 192.0.2.10, persistence: {type: source-ip, timeout: 0s}, ports: ["80/tcp"], ` + rs + `}`),
			"virtual_services[0].persistence.timeout", "0s", "out of range 1s-86400s", 2},
		{"persistence entries", services(`{name: a, vip: 192.0.2.10, persistence: {max_entries: 0}, ports: ["80/tcp"], ` + rs + `}`),
			"virtual_services[0].persistence.max_entries", "0", "out of range 1-16777216", 2},
		{"global idle timeout", "global: {idle_timeout: 30s}\n" + services(web), "global.idle_timeout", "30s", "0 (none) or 60s-86400s", 1},
		{"service idle timeout", services(`{name: a, vip: 192.0.2.10, idle_timeout: 100000s, ports: ["80/tcp"], ` + rs + `}`),
			"virtual_services[0].idle_timeout", "100000s", "0 (none) or 60s-86400s", 2},
		{"negative idle timeout", "global: {idle_timeout: -60s}\n" + services(web), "global.idle_timeout", "-60s", "out of range", 1},
		{"duration without unit", "global: {idle_timeout: 1800}\n" + services(web), "global.idle_timeout", "1800", "a duration needs a unit", 1},
		{"drain timeout", "global: {drain_timeout: 2h}\n" + services(web), "global.drain_timeout", "2h", "out of range 100ms-3600s", 1},
		{"dial timeout zero", "global: {dial_timeout: 0}\n" + services(web), "global.dial_timeout", "0", "out of range 10ms-60s", 1},
		{"udp idle timeout", services(`{name: a, vip: 192.0.2.10, udp: {idle_timeout: 500ms}, ports: ["53/udp"], ` + rs + `}`),
			"virtual_services[0].udp.idle_timeout", "500ms", "out of range 1s-86400s", 2},
		{"udp sessions", services(`{name: a, vip: 192.0.2.10, udp: {max_sessions: 20000000}, ports: ["53/udp"], ` + rs + `}`),
			"virtual_services[0].udp.max_sessions", "20000000", "out of range 1-10000000", 2},
		{"not a bool", "global: {tcp_keepalive: yes}\n" + services(web), "global.tcp_keepalive", "yes", "want true or false", 1},
		{"quoted bool", "global: {reset_on_close: \"true\"}\n" + services(web), "global.reset_on_close", "true", "want true or false", 1},
		{"not a number", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp"], real_servers: [{address: 192.0.2.21, weight: heavy}]}`),
			"virtual_services[0].real_servers[0].weight", "heavy", "whole number", 2},
		{"bad admin", "global: {admin: localhost:9090}\n" + services(web), "global.admin", "localhost:9090", "want address:port", 1},
		{"admin without port", "global: {admin: 127.0.0.1}\n" + services(web), "global.admin", "127.0.0.1", "want address:port", 1},
		{"admin on a vip", "global: {admin: 192.0.2.10:443}\n" + services(web), "virtual_services[0].ports[0]", "443/tcp", "admin listener 192.0.2.10:443", 3},
		{"admin on every address", "global: {admin: 0.0.0.0:443}\n" + services(web), "virtual_services[0].ports[0]", "443/tcp", "admin listener 0.0.0.0:443", 3},
		{"zero weight", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp"], real_servers: [{address: 192.0.2.21, weight: 0}]}`),
			"virtual_services[0].real_servers[0].weight", "0", "out of range 1-65535", 2},
		{"negative weight", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp"], real_servers: [{address: 192.0.2.21, weight: -3}]}`),
			"virtual_services[0].real_servers[0].weight", "-3", "out of range 1-65535", 2},
		{"no real servers", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp"]}`), "virtual_services[0].real_servers", "", "at least one real server", 2},
		{"empty real servers", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp"], real_servers: []}`), "virtual_services[0].real_servers", "", "at least one real server", 2},
		{"real server without address", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp"], real_servers: [{weight: 2}]}`),
			"virtual_services[0].real_servers[0].address", "", "required", 2},
		{"bad real server", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp"], real_servers: [{address: "192.0.2.21:0"}]}`),
			"virtual_services[0].real_servers[0].address", "192.0.2.21:0", "port out of range", 2},
		{"real server v6 without brackets", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp"], real_servers: [{address: "[2001:db8::1"}]}`),
			"virtual_services[0].real_servers[0].address", "[2001:db8::1", "want address or address:port", 2},
		{"duplicate real server", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp"], real_servers: [{address: 192.0.2.21}, {address: 192.0.2.21, weight: 3}]}`),
			"virtual_services[0].real_servers[1].address", "192.0.2.21", "listed twice", 2},
		{"ambiguous real server port", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp", "443/tcp"], real_servers: [{address: "192.0.2.21:8080"}]}`),
			"virtual_services[0].real_servers[0].address", "192.0.2.21:8080", "ambiguous", 2},
		{"redirect with real servers", services(`{name: r, vip: 192.0.2.10, ports: ["80/tcp"], redirect: "https://%h%s", ` + rs + `}`),
			"virtual_services[0].real_servers", "", "not allowed with redirect", 2},
		{"redirect with udp", services(`{name: r, vip: 192.0.2.10, ports: ["80/tcp", "80/udp"], redirect: "https://%h%s"}`),
			"virtual_services[0].ports[1]", "80/udp", "needs tcp", 2},
		{"redirect with sorry server", services(`{name: r, vip: 192.0.2.10, ports: ["80/tcp"], redirect: "https://%h%s", sorry_server: 192.0.2.99}`),
			"virtual_services[0].sorry_server", "192.0.2.99", "not allowed with redirect", 2},
		{"redirect with health", services(`{name: r, vip: 192.0.2.10, ports: ["80/tcp"], redirect: "https://%h%s", health: {type: tcp}}`),
			"virtual_services[0].health", "", "not allowed with redirect", 2},
		{"redirect not http", services(`{name: r, vip: 192.0.2.10, ports: ["80/tcp"], redirect: "ftp://%h%s"}`),
			"virtual_services[0].redirect", "ftp://%h%s", "http:// or https://", 2},
		{"redirect without host", services(`{name: r, vip: 192.0.2.10, ports: ["80/tcp"], redirect: "https://"}`),
			"virtual_services[0].redirect", "https://", "http:// or https://", 2},
		{"redirect placeholder", services(`{name: r, vip: 192.0.2.10, ports: ["80/tcp"], redirect: "https://%h%p"}`),
			"virtual_services[0].redirect", "https://%h%p", "unknown placeholder", 2},
		{"unavailable redirect", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp"], unavailable_redirect: "/sorry", ` + rs + `}`),
			"virtual_services[0].unavailable_redirect", "/sorry", "starting with http:// or https://", 2},
		{"bad sorry server", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp"], sorry_server: "192.0.2.99:http", ` + rs + `}`),
			"virtual_services[0].sorry_server", "192.0.2.99:http", "port out of range", 2},
		{"source address family", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp"], source_addresses: ["2001:db8::5"], ` + rs + `}`),
			"virtual_services[0].source_addresses[0]", "2001:db8::5", "IPv6 source address for IPv4 real server 192.0.2.21", 2},
		{"duplicate source address", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp"], source_addresses: [192.0.2.5, 192.0.2.5], ` + rs + `}`),
			"virtual_services[0].source_addresses[1]", "192.0.2.5", "listed twice", 2},
		{"transparent with source addresses", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp"], transparent: true, source_addresses: [192.0.2.5], ` + rs + `}`),
			"virtual_services[0].source_addresses", "", "not allowed with transparent", 2},
		{"transparent with subnet originating", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp"], transparent: true, subnet_originating: true, ` + rs + `}`),
			"virtual_services[0].subnet_originating", "true", "not allowed with transparent", 2},
		{"transparent across families", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp"], transparent: true, real_servers: [{address: "2001:db8::21"}]}`),
			"virtual_services[0].real_servers[0].address", "2001:db8::21", "transparency needs one family", 2},
		{"access host bits", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp"], access: {allow: ["10.1.2.3/8"]}, ` + rs + `}`),
			"virtual_services[0].access.allow[0]", "10.1.2.3/8", "the network is 10.0.0.0/8", 2},
		{"access not a prefix", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp"], access: {deny: ["10.0.0.0/33"]}, ` + rs + `}`),
			"virtual_services[0].access.deny[0]", "10.0.0.0/33", "want a network", 2},
		{"unknown health type", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp"], health: {type: icmp}, ` + rs + `}`),
			"virtual_services[0].health.type", "icmp", "unknown health type", 2},
		{"health port", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp"], health: {port: 65536}, ` + rs + `}`),
			"virtual_services[0].health.port", "65536", "out of range 0-65535", 2},
		{"health timeout above interval", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp"], health: {interval: 2s, timeout: 5s}, ` + rs + `}`),
			"virtual_services[0].health.timeout", "5s", "longer than the interval", 2},
		{"health timeout zero", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp"], health: {timeout: 0s}, ` + rs + `}`),
			"virtual_services[0].health.timeout", "0s", "out of range 100ms-3600s", 2},
		{"health rise", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp"], health: {rise: 0}, ` + rs + `}`),
			"virtual_services[0].health.rise", "0", "out of range 1-100", 2},
		{"health fall", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp"], health: {fall: 101}, ` + rs + `}`),
			"virtual_services[0].health.fall", "101", "out of range 1-100", 2},
		{"health initial", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp"], health: {initial: maybe}, ` + rs + `}`),
			"virtual_services[0].health.initial", "maybe", "want up or down", 2},
		{"health path", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp"], health: {type: http, path: healthz}, ` + rs + `}`),
			"virtual_services[0].health.path", "healthz", "starting with /", 2},
		{"health method", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp"], health: {type: http, method: get}, ` + rs + `}`),
			"virtual_services[0].health.method", "get", "HTTP method", 2},
		{"health expect", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp"], health: {type: http, expect: [200, 600]}, ` + rs + `}`),
			"virtual_services[0].health.expect[1]", "600", "100-599", 2},
		{"list where a value belongs", services(`{name: [a], vip: 192.0.2.10, ports: ["80/tcp"], ` + rs + `}`),
			"virtual_services[0].name", "", "want a single value, got a list", 2},
		{"empty list item", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp", ~], ` + rs + `}`),
			"virtual_services[0].ports[1]", "", "empty list item", 2},
		{"mapping as list item", services(`{name: a, vip: 192.0.2.10, ports: [{port: 80}], ` + rs + `}`),
			"virtual_services[0].ports[0]", "", "want a single value, got a mapping", 2},
		{"service not a mapping", services(`web`), "virtual_services[0]", "web", "want a mapping", 2},
		{"connection log not a mapping", "global: {connection_log: stderr}\n" + services(web), "global.connection_log", "stderr", "want a mapping", 1},
		{"connection log without to", "global: {connection_log: {format: json}}\n" + services(web), "global.connection_log.to", "", "required", 1},
		{"connection log to a relative file", "global: {connection_log: {to: log/connections.log}}\n" + services(web),
			"global.connection_log.to", "log/connections.log", "want stderr, syslog or the absolute path of a file", 1},
		{"connection log format unknown", "global: {connection_log: {to: stderr, format: tcplog}}\n" + services(web),
			"global.connection_log.format", "tcplog", "unknown format (want text or json)", 1},
		{"connection log key unknown", "global: {connection_log: {to: stderr, level: info}}\n" + services(web),
			"global.connection_log", "level", "unknown key (want one of to, format)", 1},
		{"health not a mapping", services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp"], health: tcp, ` + rs + `}`),
			"virtual_services[0].health", "tcp", "want a mapping", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := parseErrors(t, tc.src)
			for _, e := range errs {
				if e.Path == tc.path && e.Value == tc.value && strings.Contains(e.Msg, tc.msg) {
					if tc.line != 0 && e.Line != tc.line {
						t.Errorf("line = %d, want %d: %v", e.Line, tc.line, e)
					}
					// What the user reads names the field and quotes the value.
					s := e.Error()
					if !strings.HasPrefix(s, "test.yaml") || !strings.Contains(s, tc.path) || !strings.Contains(s, tc.value) {
						t.Errorf("message %q does not name file, path %q and value %q", s, tc.path, tc.value)
					}
					return
				}
			}
			t.Errorf("no error at %s with value %q containing %q; got:\n%v", tc.path, tc.value, tc.msg, errs)
		})
	}
}

// TestRejectsOnlyWhatIsWrong guards the table above: the fixtures it builds on are valid.
func TestRejectsOnlyWhatIsWrong(t *testing.T) {
	for _, src := range []string{
		services(web),
		services(web, `{name: b, vip: 192.0.2.10, ports: ["80/tcp"], real_servers: [{address: 192.0.2.21}]}`),
		services(`{name: r, vip: 192.0.2.10, ports: ["80/tcp"], redirect: "https://%h%s"}`),
		services(`{name: a, vip: "2001:db8::10", default_gateway: "2001:db8::1", ports: ["80/tcp"], real_servers: [{address: 192.0.2.21}]}`),
		services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp"], transparent: true, real_servers: [{address: "192.0.2.21:8080"}]}`),
		services(`{name: a, vip: 192.0.2.10, ports: ["80/tcp"], real_servers: [{address: "[2001:db8::21]:8080"}, {address: "2001:db8::22"}]}`),
		"global: {admin: 192.0.2.10:9090}\n" + services(web),
		"global: {idle_timeout: 0, admin_token_file: \"\"}\n" + services(web),
	} {
		if _, err := Parse("test.yaml", []byte(src)); err != nil {
			t.Errorf("Parse(%q): %v", src, err)
		}
	}
}

func TestAllErrorsAtOnce(t *testing.T) {
	src := `global:
  idle_timeout: 30s
  colour: blue
virtual_services:
  - name: a
    vip: 192.0.2.300
    ports: ["70000/tcp", "443/tcp"]
    scheduler: fastest
    real_servers:
      - {address: 192.0.2.21, weight: 0}
  - name: a
    vip: 192.0.2.11
    ports: ["80/tcp"]
    redirect: "ftp://x"
`
	errs := parseErrors(t, src)
	type where struct {
		Line int
		Path string
	}
	var got []where
	for _, e := range errs {
		got = append(got, where{e.Line, e.Path})
	}
	want := []where{
		{2, "global.idle_timeout"},
		{3, "global"},
		{6, "virtual_services[0].vip"},
		{7, "virtual_services[0].ports[0]"},
		{8, "virtual_services[0].scheduler"},
		{10, "virtual_services[0].real_servers[0].weight"},
		{11, "virtual_services[1].name"},
		{14, "virtual_services[1].redirect"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("errors (-want +got):\n%s\nall:\n%v", diff, errs)
	}
	if n := strings.Count(errs.Error(), "\n") + 1; n != len(want) {
		t.Errorf("Error() has %d lines, want one per problem (%d)", n, len(want))
	}
	var fe *FieldError
	if !errors.As(error(errs), &fe) || fe.Line != 2 {
		t.Errorf("errors.As(*FieldError) = %v, want the first problem", fe)
	}
}

func TestLoad(t *testing.T) {
	if _, err := Load("examples/does-not-exist.yaml"); err == nil {
		t.Error("Load of a missing file succeeded")
	}
	var errs Errors
	if _, err := Load("examples/does-not-exist.yaml"); errors.As(err, &errs) {
		t.Errorf("a missing file is reported as a file problem: %v", err)
	}
}

func TestParsePort(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Port
	}{
		{"443/tcp", Port{443, 443, TCP}},
		{"3478/udp", Port{3478, 3478, UDP}},
		{"443/tcp->4443", Port{443, 4443, TCP}},
		{"1/udp->65535", Port{1, 65535, UDP}},
	} {
		got, err := parsePort(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("parsePort(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
		if got.String() != tc.in {
			t.Errorf("Port.String() = %q, want %q", got.String(), tc.in)
		}
	}
	for _, in := range []string{"", "443", "443/", "/tcp", "443/TCP", "443/tcp->", "443/tcp->0", "-1/tcp", "443 /tcp", "443/tcp->4443/tcp"} {
		if p, err := parsePort(in); err == nil {
			t.Errorf("parsePort(%q) = %v, want an error", in, p)
		}
	}
}

// TestServiceNotAMappingIsOneError: a service that is no mapping at all is one problem, not one
// per missing field.
func TestServiceNotAMappingIsOneError(t *testing.T) {
	if errs := parseErrors(t, services("web")); len(errs) != 1 {
		t.Errorf("got %d errors, want 1:\n%v", len(errs), errs)
	}
}

// TestHelpers covers the accessors the other packages use on a parsed service.
func TestHelpers(t *testing.T) {
	src := services(
		`{name: web, vip: 192.0.2.10, ports: ["443/tcp->4443"], sorry_server: 192.0.2.99, real_servers: [{address: 192.0.2.21}, {address: "192.0.2.22:8443", enabled: false}]}`,
		`{name: six, vip: "2001:db8::10", ports: ["80/tcp"], sorry_server: "[2001:db8::99]:8080", real_servers: [{address: "2001:db8::21"}]}`,
	)
	cfg, err := Parse("test.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	web, six := cfg.VirtualService("web"), cfg.VirtualService("six")
	if cfg.VirtualService("nope") != nil {
		t.Error("VirtualService of an unknown name is not nil")
	}
	port := web.Ports[0]
	got := []string{
		web.RealServers[0].Key(),
		web.RealServers[1].Key(),
		web.RealServers[0].AddrPort(port.Target).String(),
		web.RealServers[1].AddrPort(port.Target).String(),
		web.SorryAddrPort(port).String(),
		six.SorryAddrPort(six.Ports[0]).String(),
		six.RealServers[0].Key(),
		web.Summary(),
	}
	want := []string{
		"192.0.2.21",
		"192.0.2.22:8443",
		"192.0.2.21:4443",
		"192.0.2.22:8443",
		"192.0.2.99:4443",
		"[2001:db8::99]:8080",
		"2001:db8::21",
		"web: 192.0.2.10 [443/tcp->4443] main table, leastconn, 1/2 real servers enabled, health tcp",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("helpers (-want +got):\n%s", diff)
	}
	if !web.HasSorryServer() {
		t.Error("HasSorryServer is false")
	}
}

// FuzzParse: no input makes Parse panic, every failure is reported as Errors, at most
// MaxReported and a count of the rest, each placed in the file and bounded in size, so that a
// hostile file can neither crash validate nor flood its output.
func FuzzParse(f *testing.F) {
	for _, name := range []string{"examples/lync2013-single-pair.yaml", "examples/loopback.yaml"} {
		data, err := Examples.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(services(web)))
	f.Add([]byte("a: &a [*a]\n"))
	f.Add([]byte(pairFile(validPair)))
	f.Add([]byte("global: &a {admin: *a}\n"))
	f.Add([]byte("virtual_services: [&s {name: a, vip: 198.51.100.10, ports: [\"1/tcp\"], real_servers: [{address: 198.51.100.10}]}, *s]\n"))
	f.Add([]byte("global:\n  admin: \"\\0\"\n"))
	f.Add([]byte("\xff\xfe\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.yaml", data)
		if err == nil {
			if len(cfg.VirtualServices) == 0 {
				t.Error("a config without virtual services was accepted")
			}
			return
		}
		var errs Errors
		if !errors.As(err, &errs) || len(errs) == 0 || len(errs) > MaxReported+1 {
			t.Fatalf("error %T is not Errors of 1-%d entries: %.500v", err, MaxReported+1, err)
		}
		for _, e := range errs {
			if s := e.Error(); len(s) > 2000 || !strings.HasPrefix(s, "fuzz.yaml") {
				t.Fatalf("unbounded or unplaced message (%d bytes): %.300s", len(s), s)
			}
		}
	})
}
