package lb

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pairlb/pairlb/config"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

// waitGathered polls reg until the named metrics read as want (text exposition format, HELP
// and TYPE lines included) or five seconds pass: a connection leaves the active gauges when it
// closes, a moment after the client has seen its end, and UDP bytes are counted once their
// batch has been sent, a moment after the peer may have read it.
func waitGathered(t *testing.T, reg prometheus.Gatherer, want string, names ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestCollectorCountsTCPAndUDPTraffic(t *testing.T) {
	be := startBackend(t, "a")
	web := testService(t, "web", be.addr())
	ue := startUDPEcho(t, "u")
	stun := udpService(t, "stun", ue.addr())
	empty := testService(t, "empty") // no real server: every connection is a no_server drop
	bal, _ := startBalancer(t, testConfig(web, stun, empty))

	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(bal))

	for range 2 {
		if srv, echoed := exchange(t, vipAddr(web, 0), "hello"); srv != "a" || echoed != "hello" {
			t.Fatalf("exchange: %q %q", srv, echoed)
		}
	}
	c := dialUDP(t, vipAddr(stun, 0))
	if got := udpAsk(t, c, "ping"); got != "u:ping" {
		t.Fatalf("udp: got %q", got)
	}
	if got := udpAsk(t, c, "ping2"); got != "u:ping2" {
		t.Fatalf("udp: got %q", got)
	}
	if ec, err := net.DialTimeout("tcp", vipAddr(empty, 0), time.Second); err == nil {
		_ = ec.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, _ = ec.Read(make([]byte, 1)) // closed by the balancer
		ec.Close()
	}

	webRS, stunRS := be.addr().String(), ue.addr().String()
	want := fmt.Sprintf(`
# HELP pairlb_connections_total Connections accepted and UDP sessions created, by virtual service and listening port.
# TYPE pairlb_connections_total counter
pairlb_connections_total{port="%d",proto="tcp",virtual_service="empty"} 1
pairlb_connections_total{port="%d",proto="udp",virtual_service="stun"} 1
pairlb_connections_total{port="%d",proto="tcp",virtual_service="web"} 2
# HELP pairlb_active_connections Open TCP connections and UDP sessions of a virtual service.
# TYPE pairlb_active_connections gauge
pairlb_active_connections{virtual_service="empty"} 0
pairlb_active_connections{virtual_service="stun"} 1
pairlb_active_connections{virtual_service="web"} 0
# HELP pairlb_udp_sessions UDP sessions in the session table of a virtual service.
# TYPE pairlb_udp_sessions gauge
pairlb_udp_sessions{virtual_service="empty"} 0
pairlb_udp_sessions{virtual_service="stun"} 1
pairlb_udp_sessions{virtual_service="web"} 0
# HELP pairlb_bytes_total Bytes forwarded, by direction (client_to_server, server_to_client).
# TYPE pairlb_bytes_total counter
pairlb_bytes_total{direction="client_to_server",virtual_service="empty"} 0
pairlb_bytes_total{direction="client_to_server",virtual_service="stun"} 9
pairlb_bytes_total{direction="client_to_server",virtual_service="web"} 10
pairlb_bytes_total{direction="server_to_client",virtual_service="empty"} 0
pairlb_bytes_total{direction="server_to_client",virtual_service="stun"} 13
pairlb_bytes_total{direction="server_to_client",virtual_service="web"} 14
# HELP pairlb_real_server_connections_total Connections and UDP sessions sent to a real server.
# TYPE pairlb_real_server_connections_total counter
pairlb_real_server_connections_total{real_server="%[4]s",virtual_service="web"} 2
pairlb_real_server_connections_total{real_server="%[5]s",virtual_service="stun"} 1
# HELP pairlb_real_server_active_connections Open connections and UDP sessions on a real server.
# TYPE pairlb_real_server_active_connections gauge
pairlb_real_server_active_connections{real_server="%[4]s",virtual_service="web"} 0
pairlb_real_server_active_connections{real_server="%[5]s",virtual_service="stun"} 1
# HELP pairlb_real_server_up 1 when the health check says the real server is up, 0 when it is down.
# TYPE pairlb_real_server_up gauge
pairlb_real_server_up{real_server="%[4]s",virtual_service="web"} 1
pairlb_real_server_up{real_server="%[5]s",virtual_service="stun"} 1
`, empty.Ports[0].Listen, stun.Ports[0].Listen, web.Ports[0].Listen, webRS, stunRS)
	waitGathered(t, reg, want, "pairlb_connections_total", "pairlb_active_connections", "pairlb_udp_sessions",
		"pairlb_bytes_total", "pairlb_real_server_connections_total", "pairlb_real_server_active_connections",
		"pairlb_real_server_up")

	// Every drop reason has a series, zero or not.
	var drops strings.Builder
	drops.WriteString("# HELP pairlb_dropped_total Connections and datagrams not forwarded, by reason.\n# TYPE pairlb_dropped_total counter\n")
	for _, svc := range []string{"empty", "stun", "web"} {
		for _, r := range DropReasons() {
			n := 0
			if svc == "empty" && r == "no_server" {
				n = 1
			}
			fmt.Fprintf(&drops, "pairlb_dropped_total{reason=%q,virtual_service=%q} %d\n", r, svc, n)
		}
	}
	waitGathered(t, reg, drops.String(), "pairlb_dropped_total")

	// An administrative state change shows at the next scrape.
	if err := bal.SetServerState("web", webRS, Draining); err != nil {
		t.Fatal(err)
	}
	waitGathered(t, reg, fmt.Sprintf(`
# HELP pairlb_real_server_state Administrative state of a real server: 1 for its current state (enabled, disabled, draining), 0 for the others.
# TYPE pairlb_real_server_state gauge
pairlb_real_server_state{real_server="%[1]s",state="disabled",virtual_service="web"} 0
pairlb_real_server_state{real_server="%[1]s",state="draining",virtual_service="web"} 1
pairlb_real_server_state{real_server="%[1]s",state="enabled",virtual_service="web"} 0
pairlb_real_server_state{real_server="%[2]s",state="disabled",virtual_service="stun"} 0
pairlb_real_server_state{real_server="%[2]s",state="draining",virtual_service="stun"} 0
pairlb_real_server_state{real_server="%[2]s",state="enabled",virtual_service="stun"} 1
`, webRS, stunRS), "pairlb_real_server_state")
}

func TestCollectorSeriesVanishOnReload(t *testing.T) {
	a, b2 := startBackend(t, "a"), startBackend(t, "b")
	web := testService(t, "web", a.addr(), b2.addr())
	ue := startUDPEcho(t, "u")
	stun := udpService(t, "stun", ue.addr())
	bal, _ := startBalancer(t, testConfig(web, stun))
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(bal))

	exchange(t, vipAddr(web, 0), "x")
	exchange(t, vipAddr(web, 0), "y")
	if got := udpAsk(t, dialUDP(t, vipAddr(stun, 0)), "ping"); got != "u:ping" {
		t.Fatalf("udp: got %q", got)
	}
	series := func() (services, servers map[string]bool) {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		services, servers = map[string]bool{}, map[string]bool{}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					switch l.GetName() {
					case "virtual_service":
						services[l.GetValue()] = true
					case "real_server":
						servers[l.GetValue()] = true
					}
				}
			}
		}
		return services, servers
	}
	svcs, srvs := series()
	if !svcs["web"] || !svcs["stun"] || !srvs[a.addr().String()] || !srvs[b2.addr().String()] || !srvs[ue.addr().String()] {
		t.Fatalf("before the reload: services %v, servers %v", svcs, srvs)
	}

	// The reload drops the UDP service and one real server of web; web's counters carry on.
	web2 := web
	web2.RealServers = web.RealServers[:1]
	if err := bal.Apply(testConfig(web2)); err != nil {
		t.Fatal(err)
	}
	svcs, srvs = series()
	if svcs["stun"] || srvs[ue.addr().String()] || srvs[b2.addr().String()] {
		t.Errorf("after the reload, removed series remain: services %v, servers %v", svcs, srvs)
	}
	want := fmt.Sprintf(`
# HELP pairlb_connections_total Connections accepted and UDP sessions created, by virtual service and listening port.
# TYPE pairlb_connections_total counter
pairlb_connections_total{port="%d",proto="tcp",virtual_service="web"} 2
`, web.Ports[0].Listen)
	waitGathered(t, reg, want, "pairlb_connections_total")
	if n := testutil.CollectAndCount(NewCollector(bal), "pairlb_real_server_up"); n != 1 {
		t.Errorf("pairlb_real_server_up has %d series after the reload, want 1", n)
	}
}

func TestCollectorLint(t *testing.T) {
	be := startBackend(t, "a")
	web := testService(t, "web", be.addr())
	bal, _ := startBalancer(t, testConfig(web))
	exchange(t, vipAddr(web, 0), "x")
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(bal))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

func TestCollectorBeforeApply(t *testing.T) {
	if n := testutil.CollectAndCount(NewCollector(New(nil))); n != 0 {
		t.Errorf("a balancer without configuration exports %d series", n)
	}
}

// TestCollectorPersistenceTable: the table's fill, bound and evictions are exported per service
// with persistence, and the status says what places a new client.
func TestCollectorPersistenceTable(t *testing.T) {
	a, b2 := startBackend(t, "a"), startBackend(t, "b")
	web := testService(t, "web", a.addr(), b2.addr())
	web.Scheduler = config.LeastConn
	web.Persistence = config.Persistence{Type: "source-ip", Timeout: time.Minute, MaxEntries: 2}
	plain := testService(t, "plain", a.addr())
	bal, _ := startBalancer(t, testConfig(web, plain))
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(bal))
	for i := range 3 {
		dialFrom(t, netip.AddrFrom4([4]byte{127, 0, 4, byte(10 + i)}), vipAddr(web, 0))
	}
	waitGathered(t, reg, `
# HELP pairlb_persistence_entries Clients in the source-IP persistence table of a virtual service.
# TYPE pairlb_persistence_entries gauge
pairlb_persistence_entries{virtual_service="web"} 2
# HELP pairlb_persistence_max_entries Bound of the source-IP persistence table of a virtual service (persistence.max_entries).
# TYPE pairlb_persistence_max_entries gauge
pairlb_persistence_max_entries{virtual_service="web"} 2
# HELP pairlb_persistence_evictions_total Persistence entries forgotten to make room for a new client while the table was full (not expiries).
# TYPE pairlb_persistence_evictions_total counter
pairlb_persistence_evictions_total{virtual_service="web"} 1
`, "pairlb_persistence_entries", "pairlb_persistence_max_entries", "pairlb_persistence_evictions_total")

	st := bal.Status()
	if st[0].Scheduler != "leastconn" || st[0].Placement != "hash" || st[0].Persistence == nil || st[0].Persistence.PlaceBy != "hash" {
		t.Errorf("persistent service: scheduler %q, placement %q, persistence %+v; want leastconn, hash, place_by hash", st[0].Scheduler, st[0].Placement, st[0].Persistence)
	}
	if st[1].Scheduler != "roundrobin" || st[1].Placement != "roundrobin" || st[1].Persistence != nil {
		t.Errorf("plain service: scheduler %q, placement %q, persistence %+v", st[1].Scheduler, st[1].Placement, st[1].Persistence)
	}
	// place_by scheduler: the scheduler places, and the table, still good, is kept.
	web.Persistence.PlaceBy = config.PlaceByScheduler
	if err := bal.Apply(testConfig(web, plain)); err != nil {
		t.Fatal(err)
	}
	st = bal.Status()
	if st[0].Placement != "leastconn" || st[0].Persistence.PlaceBy != "scheduler" || st[0].Persistence.Evictions != 1 || st[0].Persistence.Entries != 2 {
		t.Errorf("after place_by scheduler: placement %q, persistence %+v; want leastconn, place_by scheduler, the table kept", st[0].Placement, st[0].Persistence)
	}
	// A new bound makes a new table; the evictions counted carry on.
	web.Persistence.MaxEntries = 10
	if err := bal.Apply(testConfig(web, plain)); err != nil {
		t.Fatal(err)
	}
	if p := bal.Status()[0].Persistence; p.Evictions != 1 || p.Entries != 0 || p.MaxEntries != 10 {
		t.Errorf("after max_entries 10: %+v; want a new empty table of 10 and 1 eviction kept", p)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

// TestDialRetriesCounted: a dial that fails and moves on to another real server or the sorry
// server counts one retry on the server that failed; a failed dial with nowhere left to go is
// not a retry. The count reaches the status and the metric.
func TestDialRetriesCounted(t *testing.T) {
	dead1 := netip.AddrPortFrom(loopback, freePort(t, "tcp"))
	dead2 := netip.AddrPortFrom(loopback, freePort(t, "tcp"))
	sorry := startBackend(t, "sorry")
	withSorry := testService(t, "with-sorry", dead1, dead2)
	withSorry.SorryServer = sorry.addr()
	alone := testService(t, "alone", dead1)
	bal, _ := startBalancer(t, testConfig(withSorry, alone))
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(bal))

	const conns = 3
	for i := range conns {
		if server, _ := exchange(t, vipAddr(withSorry, 0), "x"); server != "sorry" {
			t.Fatalf("connection %d: got %q, want the sorry server", i, server)
		}
	}
	expectReset(t, vipAddr(alone, 0))
	waitGathered(t, reg, fmt.Sprintf(`
# HELP pairlb_real_server_dial_retries_total Dials to a real server that failed and were retried on another real server or the sorry server.
# TYPE pairlb_real_server_dial_retries_total counter
pairlb_real_server_dial_retries_total{real_server="%[1]s",virtual_service="alone"} 0
pairlb_real_server_dial_retries_total{real_server="%[1]s",virtual_service="with-sorry"} %[3]d
pairlb_real_server_dial_retries_total{real_server="%[2]s",virtual_service="with-sorry"} %[3]d
`, dead1, dead2, conns), "pairlb_real_server_dial_retries_total")
	for _, s := range bal.Status() {
		if s.Name != "with-sorry" {
			continue
		}
		for _, r := range s.RealServers {
			if r.DialRetries != conns {
				t.Errorf("status of %s: dial_retries_total %d, want %d", r.Address, r.DialRetries, conns)
			}
		}
	}
}
