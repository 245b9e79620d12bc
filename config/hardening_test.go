package config

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// rs is a real-server list for one-line services.
const rs1 = `real_servers: [{address: 198.18.2.11}]`

// TestHostileInputs holds files that each passed validate although they cannot work (or gave
// a misleading message, or none with a line): each must now fail at the line of the value, with
// a message that names what is wrong and a value shown at a bounded length.
func TestHostileInputs(t *testing.T) {
	svc := func(extra string) string {
		return services(`{name: a, vip: 198.51.100.10, ports: ["443/tcp"], ` + extra + rs1 + `}`)
	}
	huge := strings.Repeat("k", 2_000_000)
	for _, tc := range []struct {
		name, src string
		line      int
		msg       string
	}{
		// Header-bound strings of the health check.
		{"CRLF in health.host", svc(`health: {type: http, host: "lync.example\r\nX-Injected: 1"}, `), 2, "control character U+000D"},
		{"LF in health.sni", svc(`health: {type: tls, sni: "a\nb"}, `), 2, "control character U+000A"},
		{"NUL in health.path", svc(`health: {type: http, path: "/x\x00y"}, `), 2, "control character U+0000"},
		{"space in health.host", svc(`health: {type: http, host: "a b"}, `), 2, "not allowed in a host name"},
		{"space in health.path", svc(`health: {type: http, path: "/a b"}, `), 2, "cannot be sent in a request line"},
		{"host with port as SNI", svc(`health: {type: https, host: "lync.example:4443"}, `), 2, "add sni: lync.example"},
		{"port in health.sni", svc(`health: {type: tls, sni: "lync.example:443"}, `), 2, "has no port"},
		{"bare IPv6 host header", svc(`health: {type: http, host: "2001:db8::1"}, `), 2, "written in brackets"},

		// Durations at which nothing can work.
		{"health timeout 1ns", svc(`health: {timeout: 1ns}, `), 2, "out of range 100ms-3600s"},
		{"dial timeout 1ns", "global: {dial_timeout: 1ns}\n" + services(web), 1, "out of range 10ms-60s"},
		{"drain timeout 1ns", "global: {drain_timeout: 1ns}\n" + services(web), 1, "out of range 100ms-3600s"},
		{"preempt delay 1ns", pairFile(validPair + "  preempt: true\n  preempt_delay: 1ns\n"), 14, "whole milliseconds"},

		// Addresses no VIP, server or gateway can be.
		{"limited broadcast VIP", services(`{name: a, vip: 255.255.255.255, ports: ["443/tcp"], ` + rs1 + `}`), 2, "limited broadcast"},
		{"this-network VIP", services(`{name: a, vip: 0.1.2.3, ports: ["443/tcp"], ` + rs1 + `}`), 2, "0.0.0.0/8"},
		{"IPv6 link-local VIP", services(`{name: a, vip: "fe80::10", ports: ["443/tcp"], real_servers: [{address: "2001:db8::11"}]}`), 2, "link-local"},
		{"broadcast real server", services(`{name: a, vip: 198.51.100.10, ports: ["443/tcp"], real_servers: [{address: 255.255.255.255}]}`), 2, "limited broadcast"},
		{"broadcast sorry server", svc(`sorry_server: "255.255.255.255:80", `), 2, "limited broadcast"},
		{"broadcast source address", svc(`source_addresses: [255.255.255.255], `), 2, "limited broadcast"},
		{"link-local gateway", svc(`default_gateway: 169.254.0.1, `), 2, "link-local gateway"},
		{"IPv6 link-local gateway", services(`{name: a, vip: "2001:db8::10", default_gateway: "fe80::1", ports: ["443/tcp"], real_servers: [{address: "2001:db8::11"}]}`), 2, "link-local"},
		{"broadcast admin", "global: {admin: \"255.255.255.255:9090\"}\n" + services(web), 1, "limited broadcast"},
		{"VIP on the pair network's broadcast", strings.Replace(pairFile(validPair), "vip: 203.0.113.11", "vip: 203.0.113.255", 1), 4, "broadcast address of outside"},

		// Redirect templates without a host.
		{"redirect https://%s", services(`{name: r, vip: 198.51.100.10, ports: ["80/tcp"], redirect: "https://%s"}`), 2, "no host"},
		{"redirect https:///x", services(`{name: r, vip: 198.51.100.10, ports: ["80/tcp"], redirect: "https:///x"}`), 2, "no host"},
		{"redirect https://:443%s", services(`{name: r, vip: 198.51.100.10, ports: ["80/tcp"], redirect: "https://:443%s"}`), 2, "no host"},
		{"redirect %h inside a name", services(`{name: r, vip: 198.51.100.10, ports: ["80/tcp"], redirect: "https://www.%h%s"}`), 2, "%h stands for the whole host"},
		{"redirect with user info", services(`{name: r, vip: 198.51.100.10, ports: ["80/tcp"], redirect: "https://u@%h%s"}`), 2, "user information"},
		{"unavailable redirect https://%s", svc(`unavailable_redirect: "https://%s", `), 2, "no host"},

		// The pair's admin addresses.
		{"both nodes on one admin address", strings.Replace(pairFile(validPair), "addresses: {inside: 198.51.100.3, outside: 203.0.113.3}}", "addresses: {inside: 198.51.100.3, outside: 203.0.113.3}, admin: 198.51.100.2:9090}", 1), 12, "the same admin address as node lb1"},
		{"admin on the other node", strings.Replace(pairFile(validPair), "addresses: {inside: 198.51.100.3, outside: 203.0.113.3}}", "addresses: {inside: 198.51.100.3, outside: 203.0.113.3}, admin: 203.0.113.2:9090}", 1), 12, "node lb1's own address"},

		// Overflowing numbers, with the range of the key rather than a wrong diagnosis.
		{"overflowing port", services(`{name: a, vip: 198.51.100.10, ports: ["99999999999999999999/tcp"], ` + rs1 + `}`), 2, "port out of range 1-65535"},
		{"overflowing translated port", services(`{name: a, vip: 198.51.100.10, ports: ["443/tcp->99999999999999999999"], ` + rs1 + `}`), 2, "port out of range 1-65535"},
		{"overflowing duration", "global: {drain_timeout: 9999999999h}\n" + services(web), 1, "out of range 100ms-3600s"},
		{"overflowing idle timeout", "global: {idle_timeout: 99999999999999999999s}\n" + services(web), 1, "0 (none) or 60s-86400s"},
		{"overflowing integer", svc(`udp: {max_sessions: 99999999999999999999}, `), 2, "out of range 1-10000000"},

		// Keys, bytes and aliases the YAML library reports badly or without a line.
		{"2 MB key", "global:\n  " + huge + ": 1\n" + services(web), 2, "a line of 2,000,005 bytes, at most 65,536"},
		{"2 MB key in a flow mapping", "global: {" + huge + ": 1}\n" + services(web), 1, "a line of 2,000,013 bytes"},
		{"2 KB key", "global:\n  " + huge[:2000] + ": 1\n" + services(web), 2, "a key of 2,000 characters"},
		{"nesting on the first line", strings.Repeat("[", 20000) + strings.Repeat("]", 20000) + "\n", 1, "exceeded max depth"},
		{"2 MB alias name", "global: {admin: *" + strings.Repeat("a", 60000) + "}\n" + services(web), 1, "names no anchor"},
		{"NUL byte", "global:\n  admin: 127.0.0.1:9090\x00\n" + services(web), 2, "control character U+0000 (NUL)"},
		{"binary garbage", "global:\n  admin: 127.0.0.1:9090\n\x7fELF\x02\x01\x01\x00\x00", 3, "control character U+007F"},
		{"invalid UTF-8", services(web) + "# caf\xe9\n", 3, "byte 0xe9 is not UTF-8"},
		{"UTF-16", "\xff\xfeg\x00l\x00", 1, "UTF-16"},
		{"unknown alias", "global: {admin: *nowhere}\n" + services(web), 1, "alias *nowhere names no anchor"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := parseErrors(t, tc.src)
			for _, e := range errs {
				if strings.Contains(e.Msg, tc.msg) {
					if e.Line != tc.line {
						t.Errorf("line %d, want %d: %v", e.Line, tc.line, e)
					}
					if n := len(e.Error()); n > 1000 {
						t.Errorf("the message is %d bytes long: values must be shown short", n)
					}
					return
				}
			}
			t.Errorf("no error containing %q; got:\n%.2000v", tc.msg, errs)
		})
	}
}

// TestLongValuesShownShort: a long value is named, not echoed.
func TestLongValuesShownShort(t *testing.T) {
	big := strings.Repeat("x", 60_000)
	errs := parseErrors(t, "virtual_services:\n  - name: "+big+"\n    vip: 198.51.100.10\n    ports:\n      - "+big+"/tcp\n      - 1/"+big+"\n    "+rs1+"\n")
	if len(errs) != 3 {
		t.Fatalf("want an error for the name and each port, got:\n%.2000v", errs)
	}
	for i, e := range errs {
		if s := e.Error(); len(s) > 400 || e.Line != []int{2, 5, 6}[i] {
			t.Errorf("line %d, %d bytes: %.300s", e.Line, len(s), s)
		}
	}
	if !strings.Contains(errs[0].Value, "(60,000 bytes)") {
		t.Errorf("the value does not say how long it was: %q", errs[0].Value)
	}
}

// TestErrorListCapped: a 1.2 MB file with 200,000 problems reports the first MaxReported by
// line and how many more there were, not 200,000 lines.
func TestErrorListCapped(t *testing.T) {
	var b strings.Builder
	b.WriteString("virtual_services:\n  - name: a\n    vip: 198.51.100.10\n    real_servers: [{address: 198.18.2.11}]\n    ports:\n")
	const bad = 200_000
	for range bad {
		b.WriteString("      - x\n") // line 6 onwards
	}
	errs := parseErrors(t, b.String())
	if len(errs) != MaxReported+1 {
		t.Fatalf("%d errors reported, want %d and a count", len(errs), MaxReported+1)
	}
	for i, e := range errs[:MaxReported] {
		if e.Line != 6+i {
			t.Fatalf("error %d is at line %d, want %d (the first by line)", i, e.Line, 6+i)
		}
	}
	if want := "... and 199,900 more errors"; !strings.Contains(errs[MaxReported].Msg, want) {
		t.Errorf("last entry %q, want %q", errs[MaxReported], want)
	}
}

// TestAliasExpansionBounded: a few lines of nested aliases stand for a billion real servers;
// they are refused, while ordinary anchors (one pool for several services) still work.
func TestAliasExpansionBounded(t *testing.T) {
	var b strings.Builder
	b.WriteString("x:\n  - &a0 {address: 198.18.2.11}\n")
	for i := 1; i <= 9; i++ {
		fmt.Fprintf(&b, "  - &a%d [", i)
		for j := range 10 {
			if j > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "*a%d", i-1)
		}
		b.WriteString("]\n")
	}
	b.WriteString("virtual_services:\n")
	// 100 services of 10,000 servers each: 3 million values from about 8 KB of file.
	for i := range 100 {
		fmt.Fprintf(&b, "  - {name: s%d, vip: 198.51.100.10, ports: [\"%d/tcp\"], real_servers: *a4}\n", i, i+1)
	}
	errs := parseErrors(t, b.String())
	if len(errs) != 1 || !strings.Contains(errs[0].Msg, "aliases expand the file by") || errs[0].Line == 0 {
		t.Errorf("want one error about the aliases, with a line; got:\n%.2000v", errs)
	}

	shared := `x:
  - &fe [{address: 198.18.2.11}, {address: 198.18.2.12}]
virtual_services:
  - {name: a, vip: 198.51.100.10, ports: ["443/tcp"], real_servers: *fe}
  - {name: b, vip: 198.51.100.11, ports: ["443/tcp"], real_servers: *fe}
`
	// x is no key of the file: the anchors parse, the unknown key is the only problem.
	errs = parseErrors(t, shared)
	if len(errs) != 1 || !strings.Contains(errs[0].Msg, "unknown key") {
		t.Errorf("shared pool: %v", errs)
	}
}

func TestWarnings(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		path      string
		line      int
		msg       string // "" for no warning
	}{
		{"admin on 0.0.0.0 without token", "global: {admin: \"0.0.0.0:9090\"}\n" + services(web), "global.admin", 1, "IPv4 and IPv6 alike"},
		{"admin on :: without token", "global: {admin: \"[::]:9090\"}\n" + services(web), "global.admin", 1, "IPv4 and IPv6 alike"},
		{"admin on a network address without token", "global: {admin: \"198.51.100.2:9090\"}\n" + services(web), "global.admin", 1, "set admin_token_file"},
		{"admin on 0.0.0.0 with a token", "global: {admin: \"0.0.0.0:9090\", admin_token_file: /etc/pairlb/token}\n" + services(web), "", 0, ""},
		{"admin on loopback", "global: {admin: \"127.0.0.1:9191\"}\n" + services(web), "", 0, ""},
		{"relative token path", "global: {admin_token_file: token}\n" + services(web), "global.admin_token_file", 1, "a relative path"},
		{"leastconn under persistence", services(`{name: a, vip: 198.51.100.10, ports: ["443/tcp"], scheduler: leastconn, persistence: {type: source-ip}, ` + rs1 + `}`),
			"virtual_services[0].scheduler", 2, "place_by: scheduler"},
		{"roundrobin under persistence, place_by hash", services(`{name: a, vip: 198.51.100.10, ports: ["443/tcp"], scheduler: roundrobin, persistence: {type: source-ip, place_by: hash}, ` + rs1 + `}`),
			"virtual_services[0].scheduler", 2, "does not apply"},
		{"place_by scheduler", services(`{name: a, vip: 198.51.100.10, ports: ["443/tcp"], scheduler: leastconn, persistence: {type: source-ip, place_by: scheduler}, ` + rs1 + `}`), "", 0, ""},
		{"source-hash under persistence", services(`{name: a, vip: 198.51.100.10, ports: ["443/tcp"], scheduler: source-hash, persistence: {type: source-ip}, ` + rs1 + `}`), "", 0, ""},
		{"persistence without a scheduler line", services(`{name: a, vip: 198.51.100.10, ports: ["443/tcp"], persistence: {type: source-ip}, ` + rs1 + `}`), "", 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse("test.yaml", []byte(tc.src))
			if err != nil {
				t.Fatal(err)
			}
			if tc.msg == "" {
				if len(cfg.Warnings) != 0 {
					t.Errorf("unexpected warnings: %v", cfg.Warnings)
				}
				return
			}
			if len(cfg.Warnings) != 1 {
				t.Fatalf("%d warnings, want 1: %v", len(cfg.Warnings), cfg.Warnings)
			}
			w := cfg.Warnings[0]
			if w.Path != tc.path || w.Line != tc.line || !strings.Contains(w.Msg, tc.msg) {
				t.Errorf("warning %v, want %s at line %d containing %q", w, tc.path, tc.line, tc.msg)
			}
		})
	}
}

func TestExamplesHaveNoWarnings(t *testing.T) {
	for _, name := range []string{"lync2013-single-pair.yaml", "loopback.yaml"} {
		if cfg := loadExample(t, name); len(cfg.Warnings) > 0 {
			t.Errorf("%s:\n%v", name, Errors(cfg.Warnings))
		}
	}
}

func TestPlaceBy(t *testing.T) {
	parse := func(persistence string) *VirtualService {
		t.Helper()
		cfg, err := Parse("test.yaml", []byte(services(`{name: a, vip: 198.51.100.10, ports: ["443/tcp"], persistence: `+persistence+`, `+rs1+`}`)))
		if err != nil {
			t.Fatal(err)
		}
		return &cfg.VirtualServices[0]
	}
	for _, tc := range []struct {
		persistence string
		placeBy     PlaceBy
		placement   string
		summary     string
	}{
		{"{type: source-ip, timeout: 1200s}", PlaceByHash, "hash", "placement hash (persistence source-ip 20m)"},
		{"{type: source-ip, place_by: hash}", PlaceByHash, "hash", "placement hash (persistence source-ip 20m)"},
		{"{type: source-ip, timeout: 90s, place_by: scheduler}", PlaceByScheduler, "leastconn", "leastconn (persistence source-ip 1m30s)"},
		{"{type: none}", PlaceByHash, "leastconn", "main table, leastconn, 1/1"},
	} {
		vs := parse(tc.persistence)
		if vs.Persistence.PlaceBy != tc.placeBy || vs.Placement() != tc.placement || !strings.Contains(vs.Summary(), tc.summary) {
			t.Errorf("%s: place_by %s, placement %s, summary %q; want %s, %s, %q", tc.persistence,
				vs.Persistence.PlaceBy, vs.Placement(), vs.Summary(), tc.placeBy, tc.placement, tc.summary)
		}
	}
	for _, tc := range []struct{ persistence, msg string }{
		{"{type: none, place_by: scheduler}", "only with type: source-ip"},
		{"{place_by: hash}", "only with type: source-ip"},
		{"{type: source-ip, place_by: leastconn}", "want hash"},
	} {
		errs := parseErrors(t, services(`{name: a, vip: 198.51.100.10, ports: ["443/tcp"], persistence: `+tc.persistence+`, `+rs1+`}`))
		if len(errs) != 1 || errs[0].Path != "virtual_services[0].persistence.place_by" || !strings.Contains(errs[0].Msg, tc.msg) {
			t.Errorf("%s: %v, want %q", tc.persistence, errs, tc.msg)
		}
	}
}

func TestForwardingLoops(t *testing.T) {
	for _, tc := range []struct {
		name     string
		services []string
		line     int
		msg      string // "" when the file is valid
	}{
		{"a service that is its own real server", []string{
			`{name: self, vip: 198.51.100.10, ports: ["443/tcp"], real_servers: [{address: 198.18.2.11}, {address: 198.51.100.10}]}`,
		}, 2, "forwarding loop: self -> self (198.51.100.10:443/tcp is a listener of self"},
		{"its own sorry server", []string{
			`{name: self, vip: 198.51.100.10, ports: ["443/tcp"], sorry_server: 198.51.100.10, ` + rs1 + `}`,
		}, 2, "forwarding loop: self -> self"},
		{"a cycle through a translated port", []string{
			`{name: rp-https, vip: 198.51.100.30, ports: ["443/tcp->4443"], real_servers: [{address: 198.51.100.31}]}`,
			`{name: rp-inner, vip: 198.51.100.31, ports: ["4443/tcp"], real_servers: [{address: 198.51.100.30:443}]}`,
		}, 2, "forwarding loop: rp-https -> rp-inner -> rp-https (198.51.100.31:4443/tcp is a listener of rp-inner"},
		{"three services", []string{
			`{name: c, vip: 198.51.100.12, ports: ["80/tcp"], real_servers: [{address: 198.51.100.10}]}`,
			`{name: a, vip: 198.51.100.10, ports: ["80/tcp"], real_servers: [{address: 198.51.100.11}]}`,
			`{name: b, vip: 198.51.100.11, ports: ["80/tcp"], real_servers: [{address: 198.51.100.12}]}`,
		}, 2, "forwarding loop: c -> a -> b -> c"},
		{"udp", []string{
			`{name: stun, vip: 198.51.100.10, ports: ["3478/udp"], health: {type: none}, real_servers: [{address: 198.51.100.10}]}`,
		}, 2, "3478/udp is a listener of stun"},
		{"a disabled server still counts", []string{
			`{name: self, vip: 198.51.100.10, ports: ["443/tcp"], real_servers: [{address: 198.18.2.11}, {address: 198.51.100.10, enabled: false}]}`,
		}, 2, "forwarding loop"},
		{"a chain is fine", []string{
			`{name: outer, vip: 198.51.100.10, ports: ["443/tcp"], real_servers: [{address: 198.51.100.11}]}`,
			`{name: inner, vip: 198.51.100.11, ports: ["443/tcp"], ` + rs1 + `}`,
		}, 0, ""},
		{"other protocol is no loop", []string{
			`{name: a, vip: 198.51.100.10, ports: ["3478/udp"], health: {type: none}, real_servers: [{address: 198.51.100.11}]}`,
			`{name: b, vip: 198.51.100.11, ports: ["3478/tcp"], real_servers: [{address: 198.51.100.10}]}`,
		}, 0, ""},
		{"other port is no loop", []string{
			`{name: a, vip: 198.51.100.10, ports: ["443/tcp->4443"], real_servers: [{address: 198.51.100.10}]}`,
		}, 0, ""},
		{"a redirector ends a chain", []string{
			`{name: a, vip: 198.51.100.10, ports: ["443/tcp->80"], real_servers: [{address: 198.51.100.10}]}`,
			`{name: r, vip: 198.51.100.10, ports: ["80/tcp"], redirect: "https://%h%s"}`,
		}, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := services(tc.services...)
			if tc.msg == "" {
				if _, err := Parse("test.yaml", []byte(src)); err != nil {
					t.Fatal(err)
				}
				return
			}
			errs := parseErrors(t, src)
			if len(errs) != 1 || errs[0].Line != tc.line || !strings.Contains(errs[0].Msg, tc.msg) {
				t.Errorf("got:\n%v\nwant one error at line %d containing %q", errs, tc.line, tc.msg)
			}
		})
	}
}

func TestRedirectTemplates(t *testing.T) {
	for _, ok := range []string{
		"https://%h%s", "http://%h%s", "https://%h:8443%s", "https://%h/sorry", "https://lync.example.com%s",
		"https://lync.example.com:8443/x%s", "http://[2001:db8::1]%s", "https://198.51.100.30/x?from=%s",
	} {
		for _, key := range []string{"redirect", "unavailable_redirect"} {
			src := services(`{name: r, vip: 198.51.100.10, ports: ["80/tcp"], redirect: "` + ok + `"}`)
			if key == "unavailable_redirect" {
				src = services(`{name: r, vip: 198.51.100.10, ports: ["80/tcp"], unavailable_redirect: "` + ok + `", ` + rs1 + `}`)
			}
			if _, err := Parse("test.yaml", []byte(src)); err != nil {
				t.Errorf("%s %q: %v", key, ok, err)
			}
		}
	}
	for _, bad := range []struct{ tpl, msg string }{
		{"https://%s", "no host"},
		{"https:///sorry", "no host"},
		{"https://:443%s", "no host"},
		{"https://%h.evil.example%s", "%h stands for the whole host"},
		{"https://%h:%s", "a colon without a port"},
		{"https://%h:99999%s", "port out of range"},
		{"https://a..b%s", "empty label"},
		{"https://2001:db8::1%s", "written in brackets: [2001:db8::1]"},
		{"https://%x", "unknown placeholder"},
	} {
		for _, key := range []string{"redirect", "unavailable_redirect"} {
			src := services(`{name: r, vip: 198.51.100.10, ports: ["80/tcp"], redirect: "` + bad.tpl + `"}`)
			if key == "unavailable_redirect" {
				src = services(`{name: r, vip: 198.51.100.10, ports: ["80/tcp"], unavailable_redirect: "` + bad.tpl + `", ` + rs1 + `}`)
			}
			errs := parseErrors(t, src)
			if len(errs) != 1 || errs[0].Path != "virtual_services[0]."+key || !strings.Contains(errs[0].Msg, bad.msg) {
				t.Errorf("%s %q: %v, want %q", key, bad.tpl, errs, bad.msg)
			}
		}
	}
}

func TestAdminHosts(t *testing.T) {
	cfg, err := Parse("test.yaml", []byte("global:\n  admin_hosts: [Admin.Example.COM., lb1, lb-1.corp.example]\n"+services(web)))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(cfg.Global.AdminHosts, " "); got != "admin.example.com lb1 lb-1.corp.example" {
		t.Errorf("admin_hosts = %q", got)
	}
	for _, bad := range []struct{ name, msg string }{
		{"198.51.100.2", "IP literals are always accepted"},
		{"\"[::1]\"", "IP literals are always accepted"},
		{"\"lb1:9090\"", "no port"},
		{"\"http://lb1\"", "not a URL"},
		{"\"*.example.com\"", "wildcards are not supported"},
		{"a..example", "empty label"},
		{"-lb1", "starts or ends with '-'"},
		{"lb_1", "not allowed in a host name"},
		{"10.1.2", "browsers read as an IPv4 address"},
		{"lb1.0x7f", "browsers read as an IPv4 address"},
		{strings.Repeat("a", 64) + ".example", "longer than 63"},
		{strings.Repeat("abcdefg.", 32) + "example", "at most 253"},
	} {
		errs := parseErrors(t, "global:\n  admin_hosts: ["+bad.name+"]\n"+services(web))
		if len(errs) != 1 || errs[0].Path != "global.admin_hosts[0]" || errs[0].Line != 2 || !strings.Contains(errs[0].Msg, bad.msg) {
			t.Errorf("%s: %v, want %q", bad.name, errs, bad.msg)
		}
	}
	errs := parseErrors(t, "global:\n  admin_hosts: [lb1, LB1.]\n"+services(web))
	if len(errs) != 1 || !strings.Contains(errs[0].Msg, "listed twice") {
		t.Errorf("duplicate: %v", errs)
	}
}

// TestHostileInputsOnlyWhatIsWrong guards the table above: the fixtures it edits are valid.
func TestHostileInputsOnlyWhatIsWrong(t *testing.T) {
	for _, src := range []string{
		pairFile(validPair),
		pairFile(validPair + "  preempt: true\n  preempt_delay: 1500ms\n"),
		services(`{name: a, vip: 198.51.100.10, ports: ["443/tcp"], health: {type: https, host: "lync.example:4443", sni: lync.example, path: "/a%20b?x=1"}, ` + rs1 + `}`),
		services(`{name: a, vip: 198.51.100.10, ports: ["443/tcp"], health: {type: http, host: "[2001:db8::1]:80"}, ` + rs1 + `}`),
		services(`{name: a, vip: 198.51.100.10, ports: ["443/tcp"], health: {type: tls, sni: 198.18.2.11, timeout: 100ms}, ` + rs1 + `}`),
		services(`{name: a, vip: "2001:db8::10", default_gateway: "2001:db8::1", ports: ["443/tcp"], real_servers: [{address: "2001:db8::11"}]}`),
		"global: {dial_timeout: 10ms, drain_timeout: 100ms}\n" + services(web),
	} {
		if _, err := Parse("test.yaml", []byte(src)); err != nil {
			t.Errorf("%s\n%v", src, err)
		}
	}
	var errs Errors
	if _, err := Parse("test.yaml", []byte(services(web))); errors.As(err, &errs) {
		t.Fatal(errs)
	}
}
