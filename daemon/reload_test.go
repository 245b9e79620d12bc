package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pairlb/pairlb/admin"
	"github.com/pairlb/pairlb/config"
	"github.com/pairlb/pairlb/internal/testenv"
	"github.com/pairlb/pairlb/routing"
)

// TestReloadRefusesSpecialFiles: a reload whose token file is a FIFO, /dev/zero, a directory or
// a huge file fails at once with the reason, and the running configuration keeps serving.
func TestReloadRefusesSpecialFiles(t *testing.T) {
	be := testenv.EchoServer(t, "fe1")
	p := testenv.FreeTCPPort(t)
	td := startDaemon(t, "", testenv.LoopbackService("web", p, be))
	addr := fmt.Sprintf("127.0.0.1:%d", p)
	testenv.WaitGreeting(t, addr, "fe1")
	for kind, path := range testenv.HostileFiles(t) {
		head := strings.Replace(td.head, "virtual_services:\n", "  admin_token_file: "+path+"\nvirtual_services:\n", 1)
		if err := os.WriteFile(td.file, []byte(head+testenv.LoopbackService("web", p, be)), 0o644); err != nil {
			t.Fatal(err)
		}
		err := testenv.ReturnsWithin(t, 3*time.Second, "reload with a "+kind, func() error { _, err := td.d.Reload(); return err })
		if err == nil || !strings.Contains(err.Error(), kind) || !strings.Contains(err.Error(), "global.admin_token_file") {
			t.Errorf("reload with a %s token: %v", kind, err)
		}
		if got, err := testenv.Greeting(addr); err != nil || got != "fe1" {
			t.Fatalf("after the rejected reload: %q %v", got, err)
		}
	}
	// And the lock is free: a good file reloads.
	td.write(t, testenv.LoopbackService("web", p, be))
	if err := testenv.ReturnsWithin(t, 5*time.Second, "a good reload", func() error { _, err := td.d.Reload(); return err }); err != nil {
		t.Fatal(err)
	}
}

// TestReapplyReadsNoFile: POST /api/v1/reapply (what keepalived's notify script sends on
// MASTER) applies the running configuration again and never the file: an edit nobody reloaded
// stays out of force, it is no reload (the counters say so), and the running configuration is
// the same one. The reload that follows applies the edit.
func TestReapplyReadsNoFile(t *testing.T) {
	be := testenv.EchoServer(t, "fe1")
	p1, p2 := testenv.FreeTCPPort(t), testenv.FreeTCPPort(t)
	td := startDaemon(t, "", testenv.LoopbackService("web", p1, be))
	testenv.WaitGreeting(t, fmt.Sprintf("127.0.0.1:%d", p1), "fe1")
	running := td.d.Running()

	td.write(t, testenv.LoopbackService("web", p1, be)+testenv.LoopbackService("edited", p2, be))
	res, err := td.client().Reapply(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.ConfigHash != running.Hash || res.VirtualServices != 1 || td.d.Running() != running {
		t.Errorf("after the re-apply: %+v, running %s; want the running configuration %s", res, td.d.Running().Hash, running.Hash)
	}
	if _, err := testenv.Greeting(fmt.Sprintf("127.0.0.1:%d", p2)); err == nil {
		t.Error("the re-apply put the unreloaded edit in force: its new service answers")
	}
	if got := testutil.ToFloat64(td.d.metrics.reloads.WithLabelValues("success")) + testutil.ToFloat64(td.d.metrics.reloads.WithLabelValues("failure")); got != 0 {
		t.Errorf("the re-apply counted as %v reloads", got)
	}

	if _, err := td.client().Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	testenv.WaitGreeting(t, fmt.Sprintf("127.0.0.1:%d", p2), "fe1")
}

// fakePeer is the pair peer's admin API: it answers a status and counts the asks.
type fakePeer struct {
	addr  string
	asked atomic.Int32
}

func startFakePeer(t *testing.T, ip string) *fakePeer {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	f := &fakePeer{addr: ln.Addr().String()}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != admin.PathStatus {
			http.NotFound(w, r)
			return
		}
		f.asked.Add(1)
		st := admin.Status{Version: "dev", Ready: true, VirtualServices: []admin.VirtualService{}}
		_ = json.NewEncoder(w).Encode(st)
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return f
}

// pairSection makes this box node lb1 (it holds 127.0.0.1) and names peer as lb2's admin API.
func pairSection(peer string) string {
	return fmt.Sprintf(`pair:
  networks: [{name: lo, interface: lo, prefix: 127.0.0.0/8, vrid: 51}]
  nodes:
    - {name: lb1, priority: 150, addresses: {lo: 127.0.0.1}}
    - {name: lb2, priority: 100, addresses: {lo: 127.0.0.2}, admin: %q}
`, peer)
}

// TestPairWatcherFollowsReload: the pair watcher is the running configuration's. A daemon
// started without a pair exports no pair gauges; a reload that adds the pair starts watching
// its peer, and one that moves the peer's admin address asks the new address. (The watcher
// used to be made once, from the first configuration, and never again.)
func TestPairWatcherFollowsReload(t *testing.T) {
	be := testenv.EchoServer(t, "fe1")
	port := testenv.FreeTCPPort(t)
	svc := fmt.Sprintf("  - {name: web, vip: 127.0.0.9, ports: [\"%d/tcp\"], health: {type: none}, real_servers: [{address: %q}]}\n", port, be)
	td := startDaemon(t, "", svc)
	if lines := metricLines(t, td, "pairlb_pair_peer_"); len(lines) != 0 {
		t.Fatalf("pair gauges without a pair: %q", lines)
	}
	first, moved := startFakePeer(t, "127.0.0.3"), startFakePeer(t, "127.0.0.4")
	peerUp := func(f *fakePeer) bool {
		lines := metricLines(t, td, "pairlb_pair_peer_up ")
		return f.asked.Load() > 0 && len(lines) == 1 && lines[0] == "pairlb_pair_peer_up 1"
	}

	td.write(t, svc+pairSection(first.addr))
	if _, err := td.client().Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !testenv.Eventually(10*time.Second, func() bool { return peerUp(first) }) {
		t.Fatalf("the reload that added the pair did not start the watcher: asked %d, %q", first.asked.Load(), metricLines(t, td, "pairlb_pair_peer_"))
	}
	td.write(t, svc+pairSection(moved.addr))
	if _, err := td.client().Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !testenv.Eventually(10*time.Second, func() bool { return peerUp(moved) }) {
		t.Fatalf("the reload that moved the peer did not reach the watcher: asked %d", moved.asked.Load())
	}
}

// TestBoxBuildsFromTheSnapshot: the box's tables are built once per links snapshot, for the VIPs
// of the configuration being applied: planFor builds nothing (the reload's routing Set takes the
// snapshot that does), and a VIP keepalived added with its subnet's prefix is never a source.
func TestBoxBuildsFromTheSnapshot(t *testing.T) {
	vip := func(a string) *config.Config {
		return &config.Config{VirtualServices: []config.VirtualService{{Name: "web", VIP: netip.MustParseAddr(a)}}}
	}
	links := []routing.Link{{Index: 2, Name: "eth0", Up: true, Addrs: []netip.Prefix{
		netip.MustParsePrefix("198.51.100.10/24"), // a VIP of the new configuration, added with the subnet's prefix
		netip.MustParsePrefix("198.51.100.7/24"),  // the box's own
	}}}
	server := netip.MustParseAddr("198.51.100.50")
	var b box
	if _, ok := b.source(server); ok {
		t.Fatal("a source before any snapshot")
	}
	b.planFor(vip("198.51.100.20"))
	b.setLinks(links)
	if src, _ := b.source(server); src != netip.MustParseAddr("198.51.100.10") {
		t.Fatalf("for the running configuration (VIP .20): source %s, want the first own address .10", src)
	}
	b.planFor(vip("198.51.100.10"))
	if src, _ := b.source(server); src != netip.MustParseAddr("198.51.100.10") {
		t.Errorf("planFor rebuilt the table (source %s): the snapshot that follows it must", src)
	}
	b.setLinks(links)
	if src, _ := b.source(server); src != netip.MustParseAddr("198.51.100.7") {
		t.Errorf("for the configuration being applied (VIP .10): source %s, want .7", src)
	}
	// A failed apply puts the running configuration's VIPs back without a new snapshot.
	b.planFor(vip("198.51.100.20"))
	b.rebuild()
	if src, _ := b.source(server); src != netip.MustParseAddr("198.51.100.10") {
		t.Errorf("after the rebuild for the running configuration: source %s, want .10", src)
	}
}
