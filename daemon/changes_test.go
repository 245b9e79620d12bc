package daemon

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/pairlb/pairlb/admin"
	"github.com/pairlb/pairlb/config"
)

// changesBase is a file of two services; each case below writes the file it reloads to.
const changesBase = `global:
  drain_timeout: 5s
virtual_services:
  - name: fe-sip
    vip: 198.51.100.10
    ports: ["5061/tcp"]
    scheduler: leastconn
    health: {type: tcp}
    real_servers:
      - {address: 198.18.2.11}
      - {address: 198.18.2.12, weight: 2}
      - {address: "198.18.2.13:5062"}
  - name: edge
    vip: 203.0.113.10
    ports: ["443/tcp", "3478/udp"]
    real_servers:
      - {address: 198.18.3.11}
`

const changesPair = `pair:
  networks:
    - {name: inside, interface: eth1, prefix: 198.51.100.0/24, vrid: 51}
    - {name: outside, interface: eth2, prefix: 203.0.113.0/24, vrid: 52}
  nodes:
    - {name: lb1, priority: 150, addresses: {inside: 198.51.100.2, outside: 203.0.113.2}}
    - {name: lb2, priority: 100, addresses: {inside: 198.51.100.3, outside: 203.0.113.3}}
`

func parseChanges(t *testing.T, src string) *config.Config {
	t.Helper()
	cfg, err := config.Parse("pairlb.yaml", []byte(src))
	if err != nil {
		t.Fatalf("%v\n%s", err, src)
	}
	return cfg
}

// TestChanges: what a reload changed, named, for its log line and `pairlb reload`; a reload
// that changes nothing says so, and a different file that means the same is nothing.
func TestChanges(t *testing.T) {
	rs := func(kind, vs, server string) admin.Change {
		return admin.Change{Kind: kind, VirtualService: vs, RealServer: server}
	}
	for _, tc := range []struct {
		name       string
		prev, next string
		edit       func(*config.Config) // applied to next after parsing (what the named files hold)
		want       []admin.Change
		text       string // ChangesText of the changes
	}{
		{name: "same file", prev: changesBase, next: changesBase, text: "nothing changed"},
		{name: "comments, layout and order",
			prev: changesBase,
			next: strings.Replace(strings.Replace(changesBase, "  drain_timeout: 5s\n", "  # drain\n  drain_timeout: 5000ms\n", 1),
				"      - {address: 198.18.2.11}\n      - {address: 198.18.2.12, weight: 2}\n",
				"      - {address: 198.18.2.12, weight: 2, enabled: true}\n      - address: 198.18.2.11\n", 1),
			text: "nothing changed"},
		{name: "service added",
			prev: changesBase,
			next: changesBase + "  - {name: web, vip: 198.51.100.20, ports: [\"80/tcp\"], redirect: \"https://%h%s\"}\n",
			want: []admin.Change{{Kind: admin.ChangeServiceAdded, VirtualService: "web"}},
			text: "virtual service web added"},
		{name: "service removed",
			prev: changesBase,
			next: changesBase[:strings.Index(changesBase, "  - name: edge")],
			want: []admin.Change{{Kind: admin.ChangeServiceRemoved, VirtualService: "edge"}},
			text: "virtual service edge removed"},
		{name: "service renamed is removed and added",
			prev: changesBase,
			next: strings.Replace(changesBase, "name: edge", "name: edge-access", 1),
			want: []admin.Change{{Kind: admin.ChangeServiceRemoved, VirtualService: "edge"}, {Kind: admin.ChangeServiceAdded, VirtualService: "edge-access"}},
			text: "virtual service edge removed; virtual service edge-access added"},
		{name: "service changed, settings named",
			prev: changesBase,
			next: strings.Replace(strings.Replace(changesBase, `ports: ["443/tcp", "3478/udp"]`, "ports: [\"443/tcp\", \"3478/udp\"]\n    udp: {idle_timeout: 120s}\n    access: {allow: [198.18.0.0/15]}", 1),
				"scheduler: leastconn\n    health: {type: tcp}", "scheduler: roundrobin\n    health: {type: tcp, interval: 5s}", 1),
			want: []admin.Change{
				{Kind: admin.ChangeServiceChanged, VirtualService: "fe-sip", Settings: []string{"scheduler", "health"}},
				{Kind: admin.ChangeServiceChanged, VirtualService: "edge", Settings: []string{"access", "udp.idle_timeout"}},
			},
			text: "virtual service fe-sip changed: scheduler, health; virtual service edge changed: access, udp.idle_timeout"},
		{name: "real servers added, removed, re-weighted, disabled",
			prev: changesBase,
			next: strings.Replace(changesBase,
				"      - {address: 198.18.2.11}\n      - {address: 198.18.2.12, weight: 2}\n      - {address: \"198.18.2.13:5062\"}\n",
				"      - {address: 198.18.2.11, enabled: false}\n      - {address: 198.18.2.12, weight: 5}\n      - {address: \"198.18.2.13:5063\"}\n      - {address: 198.18.2.14}\n", 1),
			want: []admin.Change{
				rs(admin.ChangeServerRemoved, "fe-sip", "198.18.2.13:5062"),
				rs(admin.ChangeServerAdded, "fe-sip", "198.18.2.13:5063"),
				rs(admin.ChangeServerAdded, "fe-sip", "198.18.2.14"),
				rs(admin.ChangeServerDisabled, "fe-sip", "198.18.2.11"),
				{Kind: admin.ChangeServerWeight, VirtualService: "fe-sip", RealServer: "198.18.2.12", Weight: &admin.WeightChange{From: 2, To: 5}},
			},
			text: "real server 198.18.2.13:5062 removed from fe-sip; real server 198.18.2.13:5063 added to fe-sip; real server 198.18.2.14 added to fe-sip; " +
				"real server 198.18.2.11 of fe-sip disabled in the file; real server 198.18.2.12 of fe-sip re-weighted 2 -> 5"},
		{name: "re-weighted and enabled again",
			prev: strings.Replace(changesBase, "{address: 198.18.3.11}", "{address: 198.18.3.11, enabled: false}", 1),
			next: strings.Replace(changesBase, "{address: 198.18.3.11}", "{address: 198.18.3.11, weight: 3}", 1),
			want: []admin.Change{
				{Kind: admin.ChangeServerWeight, VirtualService: "edge", RealServer: "198.18.3.11", Weight: &admin.WeightChange{From: 1, To: 3}},
				rs(admin.ChangeServerEnabled, "edge", "198.18.3.11"),
			},
			text: "real server 198.18.3.11 of edge re-weighted 1 -> 3; real server 198.18.3.11 of edge enabled in the file"},
		{name: "a global default changes the services that inherit it",
			prev: changesBase,
			next: strings.Replace(changesBase, "  drain_timeout: 5s\n", "  drain_timeout: 5s\n  idle_timeout: 600s\n", 1),
			want: []admin.Change{
				{Kind: admin.ChangeGlobal, Settings: []string{"idle_timeout"}},
				{Kind: admin.ChangeServiceChanged, VirtualService: "fe-sip", Settings: []string{"idle_timeout"}},
				{Kind: admin.ChangeServiceChanged, VirtualService: "edge", Settings: []string{"idle_timeout"}},
			},
			text: "global changed: idle_timeout; virtual service fe-sip changed: idle_timeout; virtual service edge changed: idle_timeout"},
		{name: "the token file's content",
			prev: changesBase, next: changesBase,
			edit: func(c *config.Config) { c.Global.AdminToken = []byte("n3w") },
			want: []admin.Change{{Kind: admin.ChangeGlobal, Settings: []string{"admin_token"}}},
			text: "global changed: admin_token"},
		{name: "pair added", prev: changesBase, next: changesBase + changesPair,
			want: []admin.Change{{Kind: admin.ChangePairAdded}}, text: "pair added"},
		{name: "pair removed", prev: changesBase + changesPair, next: changesBase,
			want: []admin.Change{{Kind: admin.ChangePairRemoved}}, text: "pair removed"},
		{name: "pair changed",
			prev: changesBase + changesPair,
			next: strings.Replace(changesBase+changesPair, "addresses: {inside: 198.51.100.3,", "addresses: {inside: 198.51.100.4,", 1) + "  preempt: true\n",
			want: []admin.Change{{Kind: admin.ChangePairChanged, Settings: []string{"nodes", "preempt"}}},
			text: "pair changed: nodes, preempt"},
		{name: "the VRRP secret's content",
			prev: changesBase + changesPair, next: changesBase + changesPair,
			edit: func(c *config.Config) { c.Pair.AuthSecret = "s3cret" },
			want: []admin.Change{{Kind: admin.ChangePairChanged, Settings: []string{"auth_secret"}}},
			text: "pair changed: auth_secret"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prev, next := parseChanges(t, tc.prev), parseChanges(t, tc.next)
			if tc.edit != nil {
				tc.edit(next)
			}
			got := changes(prev, next)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("changes (-want +got):\n%s", diff)
			}
			if text := admin.ChangesText(got); text != tc.text {
				t.Errorf("ChangesText:\n got %q\nwant %q", text, tc.text)
			}
		})
	}
}

// TestChangesCoverEveryField: every field of the configuration is compared by a reload's diff
// (in a table, or apart), and every table names a field that exists, so that a setting added to
// config can never change without the reload saying so.
func TestChangesCoverEveryField(t *testing.T) {
	keys := func(table []fieldKey) []string {
		var out []string
		for _, k := range table {
			out = append(out, k.field)
		}
		return out
	}
	for _, tc := range []struct {
		typ    reflect.Type
		fields []string
	}{
		{reflect.TypeFor[config.Config](), configApart},
		{reflect.TypeFor[config.Global](), keys(globalKeys)},
		{reflect.TypeFor[config.VirtualService](), append(keys(serviceKeys), serviceApart...)},
		{reflect.TypeFor[config.Pair](), keys(pairKeys)},
		{reflect.TypeFor[config.RealServer](), realServerApart},
	} {
		var have []string
		for f := range tc.typ.Fields() {
			have = append(have, f.Name)
			if !slices.Contains(tc.fields, f.Name) {
				t.Errorf("config.%s.%s is compared by no reload diff: add it to a table of daemon/changes.go", tc.typ.Name(), f.Name)
			}
		}
		for _, f := range tc.fields {
			if !slices.Contains(have, f) {
				t.Errorf("daemon/changes.go names config.%s.%s, which does not exist", tc.typ.Name(), f)
			}
		}
	}
}
