package lab

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/pairlb/pairlb/config"
	"github.com/pairlb/pairlb/internal/netns"
)

func TestJudge(t *testing.T) {
	box := []netip.Addr{netip.MustParseAddr("198.18.0.2")}
	pool := []netip.AddrPort{netip.MustParseAddrPort("198.18.1.11:4443"), netip.MustParseAddrPort("198.18.1.12:4443")}
	hello := func(server, local, peer string) Result {
		return Result{Probe: Probe{Source: "198.19.1.10"}, Hello: Hello{Server: server, Local: local, Peer: peer}}
	}
	for _, tc := range []struct {
		name        string
		transparent bool
		res         Result
		wantErr     string
	}{
		{"ok", false, hello("198.18.1.11", "198.18.1.11:4443", "198.18.0.2:40000"), ""},
		{"probe failed", false, Result{Probe: Probe{Source: "198.19.1.10"}, Err: "i/o timeout"}, "i/o timeout"},
		{"not in the pool", false, hello("198.18.1.13", "198.18.1.13:4443", "198.18.0.2:1"), "not a real server"},
		{"wrong port", false, hello("198.18.1.11", "198.18.1.11:443", "198.18.0.2:1"), "want 198.18.1.11:4443"},
		{"client seen without transparency", false, hello("198.18.1.12", "198.18.1.12:4443", "198.19.1.10:1"), "box's own address"},
		{"transparent ok", true, hello("198.18.1.12", "198.18.1.12:4443", "198.19.1.10:1"), ""},
		{"transparent but box seen", true, hello("198.18.1.12", "198.18.1.12:4443", "198.18.0.2:1"), "client's own address"},
	} {
		row := &Row{Pool: pool, Transparent: tc.transparent, Kind: KindTLS}
		judge(row, "cli-int", tc.res, box)
		finishRow(row)
		got := strings.Join(row.Errors, "; ")
		if tc.wantErr == "" && (got != "" || row.Answered != 1) || tc.wantErr != "" && (!strings.Contains(got, tc.wantErr) || row.Answered != 0) {
			t.Errorf("%s: answered %d, errors %q; want error containing %q", tc.name, row.Answered, got, tc.wantErr)
		}
	}

	// Redirects: the Location must be the template filled in.
	row := &Row{Kind: KindRedirect, Redirect: "https://%h%s"}
	res := Result{Probe: Probe{Host: "lync.lab.test", Path: "/a?b=1"}, Status: 302, Location: "https://lync.lab.test/a?b=1"}
	judge(row, "cli-ext", res, box)
	res.Location = "https://lync.lab.test/"
	judge(row, "cli-ext", res, box)
	finishRow(row)
	if row.Answered != 1 || row.Sent != 2 || len(row.Errors) != 1 {
		t.Errorf("redirects: answered %d/%d, errors %v", row.Answered, row.Sent, row.Errors)
	}

	// Persistence: one source, two servers.
	row = &Row{Pool: pool, Persistent: true, Kind: KindTLS}
	judge(row, "cli-int", hello("198.18.1.11", "198.18.1.11:4443", "198.18.0.2:1"), box)
	judge(row, "cli-int", hello("198.18.1.12", "198.18.1.12:4443", "198.18.0.2:1"), box)
	finishRow(row)
	if row.Pass() || len(row.Errors) != 1 || !strings.Contains(row.Errors[0], "persistence") {
		t.Errorf("persistence not checked: %v", row.Errors)
	}
	if d := cmp.Diff([]string{"198.18.1.11", "198.18.1.12"}, row.Servers); d != "" {
		t.Errorf("servers used (-want +got):\n%s", d)
	}
}

func TestPathCheck(t *testing.T) {
	row := &Row{VIP: netip.MustParseAddr("198.18.0.20"), Port: config.Port{Listen: 443, Target: 443, Proto: config.TCP}, Network: "internal"}
	key := row.Key()
	for _, tc := range []struct {
		name      string
		forwarded map[string]map[string]uint64
		received  map[string]map[string]uint64
		ok        bool
		leak      string
	}{
		{"through the gateway", map[string]map[string]uint64{"r-int": {prefixFrom + key: 40}, "r-ext": {}},
			map[string]map[string]uint64{"cli-int": {prefixRecv + key: 20}, "cli-dmzsub": {prefixRecv + key: 20}}, true, ""},
		{"nothing at all", map[string]map[string]uint64{"r-int": {}}, map[string]map[string]uint64{"cli-int": {}}, false, ""},
		{"via another router", map[string]map[string]uint64{"r-int": {prefixFrom + key: 40}, "r-ext": {prefixFrom + key: 3}},
			map[string]map[string]uint64{"cli-int": {prefixRecv + key: 40}}, false, "3 via r-ext"},
		{"straight from the box", map[string]map[string]uint64{"r-int": {prefixFrom + key: 20}},
			map[string]map[string]uint64{"cli-dmzsub": {prefixRecv + key: 26, prefixDirect + key: 6}}, false, "6 straight from the box to cli-dmzsub"},
		{"more received than forwarded", map[string]map[string]uint64{"r-int": {prefixFrom + key: 20}},
			map[string]map[string]uint64{"cli-int": {prefixRecv + key: 21}}, false, "more than r-int forwarded"},
	} {
		pc := pathCheck(row, tc.forwarded, tc.received)
		if pc.OK != tc.ok || !strings.Contains(strings.Join(pc.Leaks, "; "), tc.leak) {
			t.Errorf("%s: %s; want ok=%v, leak %q", tc.name, pc, tc.ok, tc.leak)
		}
	}
}

func TestParseCounters(t *testing.T) {
	out := `{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "inet", "name": "plblab"}},
{"rule": {"family": "inet", "table": "plblab", "chain": "forward", "comment": "invalid", "expr": [
  {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "invalid"}},
  {"counter": {"packets": 9, "bytes": 7822}}, {"drop": null}]}},
{"rule": {"family": "inet", "table": "plblab", "chain": "forward", "comment": "from 198.18.0.20:443/tcp", "expr": [
  {"counter": {"packets": 64, "bytes": 19528}}]}}]}`
	got, err := netns.ParseNFTCounters([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(map[string]uint64{"invalid": 9, "from 198.18.0.20:443/tcp": 64}, got); d != "" {
		t.Errorf("counters (-want +got):\n%s", d)
	}
}

// The firewalls match exactly the listener of each row.
func TestRulesets(t *testing.T) {
	rows := []*Row{{VIP: netip.MustParseAddr("203.0.113.12"), Port: config.Port{Listen: 3478, Target: 3478, Proto: config.UDP}}}
	r := routerRuleset(rows)
	for _, want := range []string{"ct state invalid counter drop", `ip saddr 203.0.113.12 meta l4proto udp th sport 3478 counter comment "from 203.0.113.12:3478/udp"`} {
		if !strings.Contains(r, want) {
			t.Errorf("router ruleset lacks %q:\n%s", want, r)
		}
	}
	c := clientRuleset(rows, []byte{2, 0, 0, 0, 0, 1})
	if !strings.Contains(c, `ether saddr 02:00:00:00:00:01 ip saddr 203.0.113.12 meta l4proto udp th sport 3478 counter comment "direct 203.0.113.12:3478/udp"`) {
		t.Errorf("client ruleset:\n%s", c)
	}
}
