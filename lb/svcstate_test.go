package lb

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pairlb/pairlb/config"
)

func TestServiceStateOf(t *testing.T) {
	up := ServerStatus{State: "enabled", Up: true, Weight: 1}
	down := ServerStatus{State: "enabled", Up: false, Weight: 1}
	draining := ServerStatus{State: "draining", Up: true, Weight: 1}
	disabled := ServerStatus{State: "disabled", Up: true, Weight: 1}
	zero := ServerStatus{State: "enabled", Up: true, Weight: 0}
	type want struct {
		State             string
		Available, InRota int
	}
	for _, tc := range []struct {
		name     string
		servers  []ServerStatus
		sorry    bool
		redirect bool
		want     want
	}{
		{"all up", []ServerStatus{up, up}, false, false, want{ServiceUp, 2, 2}},
		{"one down", []ServerStatus{up, down}, false, false, want{ServiceDegraded, 1, 2}},
		{"all down", []ServerStatus{down, down}, false, false, want{ServiceDown, 0, 2}},
		{"all down, sorry server", []ServerStatus{down, down}, true, false, want{ServiceDegraded, 0, 2}},
		{"one down, sorry server", []ServerStatus{up, down}, true, false, want{ServiceDegraded, 1, 2}},
		{"all up, sorry server", []ServerStatus{up, up}, true, false, want{ServiceUp, 2, 2}},
		// Taken out on purpose: not counted against the service.
		{"one draining", []ServerStatus{up, draining}, false, false, want{ServiceUp, 1, 1}},
		{"one disabled", []ServerStatus{up, disabled}, false, false, want{ServiceUp, 1, 1}},
		{"one weight 0", []ServerStatus{up, zero}, false, false, want{ServiceUp, 1, 1}},
		{"draining and down", []ServerStatus{draining, down}, false, false, want{ServiceDown, 0, 1}},
		// Nobody is served.
		{"all disabled", []ServerStatus{disabled, draining}, false, false, want{ServiceDown, 0, 0}},
		{"all disabled, sorry server", []ServerStatus{disabled}, true, false, want{ServiceDegraded, 0, 0}},
		{"no server", nil, false, false, want{ServiceDown, 0, 0}},
		{"redirector", nil, false, true, want{ServiceUp, 0, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got want
			got.State, got.Available, got.InRota = ServiceStateOf(tc.servers, tc.sorry, tc.redirect)
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("(-want +got)\n%s", d)
			}
		})
	}
}

// TestServiceStateFollowsServers: the status and pairlb_virtual_service_state follow the health
// and the administrative state of the servers, and each server says since when it is in its
// state.
func TestServiceStateFollowsServers(t *testing.T) {
	a, b := netip.MustParseAddrPort("127.0.0.1:1"), netip.MustParseAddrPort("127.0.0.1:2")
	web := testService(t, "web", a, b)
	web.Health = config.Health{Type: config.HealthTCP, InitialUp: true}
	sorry := testService(t, "sorry", a)
	sorry.Health = config.Health{Type: config.HealthTCP, InitialUp: true}
	sorry.SorryServer = netip.MustParseAddrPort("127.0.0.1:3")
	// Its one server never up, but clients are redirected: degraded throughout.
	redir := testService(t, "redir", a)
	redir.Health = config.Health{Type: config.HealthTCP}
	redir.UnavailableRedirect = "https://%h/sorry"
	start := time.Now()
	bal, _ := startBalancer(t, testConfig(web, sorry, redir))
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(bal))

	check := func(step, webState, sorryState string) {
		t.Helper()
		st := map[string]string{}
		for _, s := range bal.Status() {
			st[s.Name] = s.State
		}
		if st["web"] != webState || st["sorry"] != sorryState || st["redir"] != ServiceDegraded {
			t.Errorf("%s: web %s, sorry %s, redir %s; want %s, %s, degraded", step, st["web"], st["sorry"], st["redir"], webState, sorryState)
		}
		var want strings.Builder
		want.WriteString("# HELP pairlb_virtual_service_state State of a virtual service: 1 for its current state, 0 for the others. up: every real server in rotation (enabled, weight above 0) is available; degraded: some are, or none is and the sorry server stands in; down: none is and there is no sorry server.\n# TYPE pairlb_virtual_service_state gauge\n")
		for _, vs := range [][2]string{{"redir", ServiceDegraded}, {"sorry", sorryState}, {"web", webState}} {
			for _, s := range ServiceStates() {
				fmt.Fprintf(&want, "pairlb_virtual_service_state{state=%q,virtual_service=%q} %d\n", s, vs[0], map[bool]int{true: 1}[s == vs[1]])
			}
		}
		if err := testutil.GatherAndCompare(reg, strings.NewReader(want.String()), "pairlb_virtual_service_state"); err != nil {
			t.Errorf("%s: %v", step, err)
		}
	}
	server := func(vs, rs string) ServerStatus {
		t.Helper()
		for _, s := range bal.Status() {
			for _, r := range s.RealServers {
				if s.Name == vs && r.Address == rs {
					return r
				}
			}
		}
		t.Fatalf("no %s in %s", rs, vs)
		return ServerStatus{}
	}

	check("start", ServiceUp, ServiceUp)
	first := server("web", a.String())
	if first.UpSince.Before(start) || first.StateSince.Before(start) || first.UpSince.After(time.Now()) {
		t.Errorf("since at start: up %v, state %v; started %v", first.UpSince, first.StateSince, start)
	}
	if err := bal.SetServerHealth("web", a.String(), false); err != nil {
		t.Fatal(err)
	}
	if err := bal.SetServerHealth("sorry", a.String(), false); err != nil {
		t.Fatal(err)
	}
	check("a down", ServiceDegraded, ServiceDegraded)
	downed := server("web", a.String())
	if !downed.UpSince.After(first.UpSince) || !downed.StateSince.Equal(first.StateSince) {
		t.Errorf("a went down: up since %v (was %v), state since %v (was %v)", downed.UpSince, first.UpSince, downed.StateSince, first.StateSince)
	}
	// The same verdict again is no transition.
	if err := bal.SetServerHealth("web", a.String(), false); err != nil {
		t.Fatal(err)
	}
	if again := server("web", a.String()); !again.UpSince.Equal(downed.UpSince) {
		t.Errorf("a repeated down verdict moved up_since from %v to %v", downed.UpSince, again.UpSince)
	}
	if err := bal.SetServerHealth("web", b.String(), false); err != nil {
		t.Fatal(err)
	}
	check("a and b down", ServiceDown, ServiceDegraded)
	// Drained on purpose: b no longer counts, a alone is up again.
	if err := bal.SetServerState("web", b.String(), Draining); err != nil {
		t.Fatal(err)
	}
	if err := bal.SetServerHealth("web", a.String(), true); err != nil {
		t.Fatal(err)
	}
	check("a up, b draining", ServiceUp, ServiceDegraded)
	if drained := server("web", b.String()); !drained.StateSince.After(first.StateSince) {
		t.Errorf("b drained: state since %v, was %v", drained.StateSince, first.StateSince)
	}
}
