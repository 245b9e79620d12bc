package admin

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/pairlb/pairlb/lb"
)

func TestHumanBytes(t *testing.T) {
	for n, want := range map[uint64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 5 << 20: "5.0 MiB", 3 << 40: "3.0 TiB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestPrintStatusPlacement: the status table says what places a new client: the scheduler, or
// the consistent hash of persistence with the scheduler named as unused, and the table's fill.
func TestPrintStatusPlacement(t *testing.T) {
	svc := func(name, sched, placement string, p *lb.PersistenceStatus) VirtualService {
		return VirtualService{ServiceStatus: lb.ServiceStatus{Name: name, VIP: "198.51.100.10", Scheduler: sched, Placement: placement, Persistence: p,
			Ports: []lb.PortStatus{{Port: "443/tcp"}}}}
	}
	st := &Status{Version: "dev", Ready: true, VirtualServices: []VirtualService{
		svc("plain", "leastconn", "leastconn", nil),
		svc("hashed", "leastconn", "hash", &lb.PersistenceStatus{Type: "source-ip", PlaceBy: "hash", Entries: 12, MaxEntries: 1048576}),
		svc("scheduled", "roundrobin", "roundrobin", &lb.PersistenceStatus{Type: "source-ip", PlaceBy: "scheduler", Entries: 3, MaxEntries: 4, Evictions: 9}),
	}}
	st.VirtualServices[0].UDPSessions, st.VirtualServices[0].UDPMoves = 4, 2
	var out bytes.Buffer
	WriteTable(&out, st, time.Now())
	for _, want := range []string{
		"\nplain  198.51.100.10  [443/tcp]  main table  leastconn  active 0 (udp sessions 4, moved 2)  ",
		"\nhashed  198.51.100.10  [443/tcp]  main table  hash (scheduler leastconn unused) + persistence 12/1048576  active 0  ",
		"\nscheduled  198.51.100.10  [443/tcp]  main table  roundrobin + persistence 3/4 (9 evicted)  active 0  ",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status table lacks %q:\n%s", want, out.String())
		}
	}
}

func TestPrintStatusRoutingProblems(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	st := &Status{Version: "dev", Ready: true, VirtualServices: []VirtualService{}, Routing: &Routing{Units: 3, Problems: []RoutingProblem{{
		Kind: "gateway", Unit: "gateway 2001:db8:1::1", Gateway: "2001:db8:1::1", Family: "ipv6", Services: []string{"fe-web-v6", "fe-sip-v6"},
		Reason: "the gateway is on no connected subnet of this box", Since: now.Add(-90 * time.Second),
	}}}}
	var b strings.Builder
	WriteTable(&b, st, now)
	want := "routing: parts of the plan not installed (retried when links or addresses change):\n" +
		"  gateway 2001:db8:1::1 (fe-web-v6, fe-sip-v6): the gateway is on no connected subnet of this box, for 1m30s\n"
	if !strings.Contains(b.String(), want) {
		t.Errorf("status lacks\n%s\ngot\n%s", want, b.String())
	}
	b.Reset()
	st.Routing.Problems = nil
	WriteTable(&b, st, now)
	if strings.Contains(b.String(), "routing") {
		t.Errorf("status without routing problems mentions routing:\n%s", b.String())
	}
}

// TestPrintStatusDrained: a draining server with nothing open shows as drained (safe to stop),
// one with connections left as draining.
func TestPrintStatusDrained(t *testing.T) {
	rs := func(addr, state string, active int64) RealServer {
		return RealServer{ServerStatus: lb.ServerStatus{Address: addr, State: state, Up: true, Weight: 1, Active: active},
			Drained: isDrained(state, active)}
	}
	st := &Status{Version: "dev", Ready: true, VirtualServices: []VirtualService{{
		ServiceStatus: lb.ServiceStatus{Name: "fe", VIP: "198.51.100.10", Scheduler: "leastconn", Ports: []lb.PortStatus{{Port: "443/tcp"}}},
		RealServers:   []RealServer{rs("198.18.2.11", "draining", 0), rs("198.18.2.12", "draining", 3), rs("198.18.2.13", "disabled", 0), rs("198.18.2.14", "enabled", 0)},
	}}}
	var b strings.Builder
	WriteTable(&b, st, time.Now())
	for _, want := range []string{"198.18.2.11  drained   up", "198.18.2.12  draining  up      1       3", "198.18.2.13  disabled  up", "198.18.2.14  enabled   up"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status table lacks %q:\n%s", want, b.String())
		}
	}
}
