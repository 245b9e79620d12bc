package admin

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pairlb/pairlb/lb"
)

func TestReadyText(t *testing.T) {
	for _, tc := range []struct {
		ready          bool
		down, degraded int
		want           string
	}{
		{true, 0, 0, "ready"},
		{true, 2, 0, "ready, 2 services down"},
		{true, 1, 0, "ready, 1 service down"},
		{true, 0, 1, "ready, 1 service degraded"},
		{true, 0, 3, "ready, 3 services degraded"},
		{true, 1, 2, "ready, 1 service down, 2 degraded"},
		{false, 0, 0, "NOT READY"},
		{false, 4, 0, "NOT READY, 4 services down"},
	} {
		st := Status{Ready: tc.ready, ServicesDown: tc.down, ServicesDegraded: tc.degraded}
		if got := st.ReadyText(); got != tc.want {
			t.Errorf("ready %v, down %d, degraded %d: %q, want %q", tc.ready, tc.down, tc.degraded, got, tc.want)
		}
	}
}

// TestStatusCountsServiceStates: the status counts the services down and degraded, and gives
// each real server its condition and since when it is in it.
func TestStatusCountsServiceStates(t *testing.T) {
	t0 := time.Date(2026, 3, 4, 9, 14, 2, 0, time.UTC)
	t1 := t0.Add(time.Minute)
	srv := func(addr, state string, up bool, weight int32, active int64) lb.ServerStatus {
		return lb.ServerStatus{Address: addr, State: state, Up: up, Weight: weight, Active: active, StateSince: t0, UpSince: t1}
	}
	services := []lb.ServiceStatus{
		{Name: "a", State: lb.ServiceUp},
		{Name: "b", State: lb.ServiceDown},
		{Name: "c", State: lb.ServiceDegraded, RealServers: []lb.ServerStatus{
			srv("198.18.2.11", "enabled", true, 1, 0),
			srv("198.18.2.12", "enabled", false, 1, 0),
			srv("198.18.2.13", "enabled", true, 0, 0),
			srv("198.18.2.14", "draining", true, 1, 2),
			srv("198.18.2.15", "draining", false, 1, 0),
			srv("198.18.2.16", "disabled", true, 1, 0),
		}},
		{Name: "d", State: lb.ServiceDown},
	}
	st := newStatus("dev", true, services, nil)
	if st.ServicesDown != 2 || st.ServicesDegraded != 1 {
		t.Errorf("down %d, degraded %d; want 2, 1", st.ServicesDown, st.ServicesDegraded)
	}
	type cond struct {
		Condition string
		Since     time.Time
	}
	var got []cond
	for _, rs := range st.VirtualServices[2].RealServers {
		got = append(got, cond{rs.Condition, rs.Since})
	}
	want := []cond{{ServerAvailable, t1}, {ServerDown, t1}, {ServerZeroWeight, t1}, {ServerDraining, t0}, {ServerDrained, t0}, {ServerDisabled, t0}}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("conditions (-want +got)\n%s", d)
	}
}

func TestShortDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Second: "0s", 0: "0s", 45 * time.Second: "45s", 12*time.Minute + 5*time.Second: "12m5s",
		2*time.Hour + 13*time.Minute + 59*time.Second: "2h13m", 76 * time.Hour: "3d4h",
	} {
		if got := shortDuration(d); got != want {
			t.Errorf("shortDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

// TestPrintStatusServiceState: the table says each service's state and why under its line, the
// header says how many are down, and each server since when it is in its condition, in 24-hour
// ISO form.
func TestPrintStatusServiceState(t *testing.T) {
	now := time.Date(2026, 3, 4, 11, 27, 2, 0, time.Local)
	since := now.Add(-(2*time.Hour + 13*time.Minute))
	rs := func(addr, cond string, at time.Time) RealServer {
		return RealServer{ServerStatus: lb.ServerStatus{Address: addr, State: "enabled", Weight: 1}, Condition: cond, Since: at}
	}
	svc := func(name, state string, avail, rot int, sorry string, servers ...RealServer) VirtualService {
		return VirtualService{ServiceStatus: lb.ServiceStatus{Name: name, VIP: "198.51.100.10", Scheduler: "leastconn", Ports: []lb.PortStatus{{Port: "443/tcp"}},
			State: state, Available: avail, InRotation: rot, SorryServer: sorry}, RealServers: servers}
	}
	st := &Status{Version: "dev", Ready: true, ConfigFile: "/etc/pairlb.yaml", ServicesDown: 2, ServicesDegraded: 2, VirtualServices: []VirtualService{
		svc("fe", lb.ServiceDegraded, 1, 2, "", rs("198.18.2.11", ServerAvailable, now.Add(-26*time.Hour)), rs("198.18.2.12", ServerDown, since)),
		svc("edge", lb.ServiceDown, 0, 2, ""),
		svc("web", lb.ServiceDegraded, 0, 1, "198.18.9.9:8080"),
		svc("all", lb.ServiceUp, 3, 3, ""),
		func() VirtualService {
			v := svc("http", lb.ServiceDegraded, 0, 2, "")
			v.UnavailableRedirect = "https://sorry.example.net/"
			return v
		}(),
		svc("none", lb.ServiceDown, 0, 0, ""),
	}}
	var b strings.Builder
	WriteTable(&b, st, now)
	out := b.String()
	for _, want := range []string{
		"pairlb dev, ready, 2 services down, 2 degraded, config /etc/pairlb.yaml",
		"]  main table  leastconn  active 0  connections 0  in 0 B  out 0 B\n  DEGRADED: 1 of 2 real servers in rotation available\n  REAL SERVER",
		"\n  DOWN: none of 2 real servers in rotation available, new clients are refused\n",
		"\n  DEGRADED: none of 1 real server in rotation available, the sorry server 198.18.9.9:8080 takes new clients\n",
		"\n  up: 3 of 3 real servers in rotation available\n",
		"\n  DEGRADED: none of 2 real servers in rotation available, new clients are redirected to https://sorry.example.net/\n",
		"\n  DOWN: none of 0 real servers in rotation available, new clients are refused\n",
		"  REAL SERVER  STATE    HEALTH  WEIGHT  ACTIVE  TOTAL  SINCE                                          LAST CHECK\n",
		"  198.18.2.11  enabled  down    1       0       0      available for 1d2h, since 2026-03-03 09:27:02",
		"  198.18.2.12  enabled  down    1       0       0      down for 2h13m, since 09:14:02",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status table lacks %q:\n%s", want, out)
		}
	}
}
