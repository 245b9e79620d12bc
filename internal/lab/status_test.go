package lab

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/pairlb/pairlb/config"
)

// The status check finds what a wrong answer gets wrong.
func TestStatusCheck(t *testing.T) {
	a := netip.MustParseAddr("198.18.1.11")
	cfg := &config.Config{VirtualServices: []config.VirtualService{
		{Name: "fe", RealServers: []config.RealServer{{Address: a, Enabled: true}, {Address: a.Next(), Enabled: false}}},
		{Name: "redir", Redirect: "https://%h%s"},
	}}
	rows := []*Row{{Service: "fe", Port: config.Port{Listen: 443, Proto: config.TCP}, Sent: 4}}
	for _, tc := range []struct{ name, json, want string }{
		{"ok", `{"ready": true, "virtual_services": [{"name": "fe", "ports": [{"listen": 443, "proto": "tcp", "connections_total": 4}],
			"real_servers": [{"address": "198.18.1.11", "state": "enabled", "up": true, "health": {"up": true}}]}, {"name": "redir"}]}`, ""},
		{"service missing", `{"ready": true, "virtual_services": [{"name": "fe", "ports": [{"listen": 443, "proto": "tcp", "connections_total": 4}],
			"real_servers": [{"address": "198.18.1.11", "state": "enabled", "up": true, "health": {"up": true}}]}]}`, "redir: not listed"},
		{"server down", `{"ready": true, "virtual_services": [{"name": "fe", "ports": [{"listen": 443, "proto": "tcp", "connections_total": 4}],
			"real_servers": [{"address": "198.18.1.11", "state": "enabled", "up": false, "health": {"up": false}}]}, {"name": "redir"}]}`, "198.18.1.11 health is not up"},
		{"server drained", `{"ready": true, "virtual_services": [{"name": "fe", "ports": [{"listen": 443, "proto": "tcp", "connections_total": 4}],
			"real_servers": [{"address": "198.18.1.11", "state": "draining", "up": true, "health": {"up": true}}]}, {"name": "redir"}]}`, "is draining, want enabled"},
		{"no connections", `{"ready": true, "virtual_services": [{"name": "fe", "ports": [{"listen": 443, "proto": "tcp", "connections_total": 0}],
			"real_servers": [{"address": "198.18.1.11", "state": "enabled", "up": true, "health": {"up": true}}]}, {"name": "redir"}]}`, "443/tcp counts no connections"},
		{"not json", `pairlb status: admin API: connection refused`, "decoding"},
	} {
		sc := &StatusCheck{}
		sc.check(cfg, rows, []byte(tc.json))
		got := strings.Join(sc.Problems, "; ")
		if tc.want == "" && !sc.OK() || tc.want != "" && !strings.Contains(got, tc.want) {
			t.Errorf("%s: problems %q; want %q", tc.name, got, tc.want)
		}
	}
}
