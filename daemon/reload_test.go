package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
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

func fileHash(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// TestReloadVerdict: a reload says what it changed, in its answer, its log line and the status;
// a rejected file gives every error, and the status keeps the running hash and shows the
// failure; a file edited and not reloaded shows as differing from the running configuration,
// and one that cannot be read as unknown.
func TestReloadVerdict(t *testing.T) {
	a, b := testenv.EchoServer(t, "a"), testenv.EchoServer(t, "b")
	p1, p2 := testenv.FreeTCPPort(t), testenv.FreeTCPPort(t)
	var log testenv.Buffer
	started := time.Now()
	td := startDaemonLog(t, "", testenv.LoopbackService("web", p1, a), &log)
	c := td.client()
	ctx := context.Background()

	st := td.status(t, "")
	if r := st.LastReload; r == nil || r.Result != admin.ReloadOK || r.Trigger != admin.TriggerStart || r.ConfigHash != st.ConfigHash ||
		r.File != td.file || r.Time.Before(started) || len(r.Changes) != 0 {
		t.Errorf("at start: last_reload %+v", r)
	}
	if d := st.ConfigOnDisk; d == nil || *d != (admin.ConfigOnDisk{State: admin.OnDiskSame, Hash: st.ConfigHash}) {
		t.Errorf("at start: config_on_disk %+v, want same as %s", d, st.ConfigHash)
	}

	// A good reload: a service added, a real server added to another; re-weighted below.
	first := st.ConfigHash
	web := strings.Replace(testenv.LoopbackService("web", p1, a), `real_servers: [{address: "`+a+`"}]`, `real_servers: [{address: "`+a+`"}, {address: "`+b+`", weight: 2}]`, 1)
	td.write(t, web+testenv.LoopbackService("web2", p2, b))
	before := time.Now()
	v, err := c.Reload(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []admin.Change{
		{Kind: admin.ChangeServerAdded, VirtualService: "web", RealServer: b},
		{Kind: admin.ChangeServiceAdded, VirtualService: "web2"},
	}
	for i := range want {
		want[i].Text = want[i].String()
	}
	if diff := cmp.Diff(want, v.Changes); diff != "" || v.Result != admin.ReloadOK || v.Trigger != admin.TriggerReload ||
		v.ConfigHash != fileHash(t, td.file) || v.PreviousHash != first || v.VirtualServices != 2 || v.Time.Before(before) {
		t.Errorf("reload verdict %+v; changes (-want +got):\n%s", v, diff)
	}
	line := "changes=\"real server " + b + " added to web; virtual service web2 added\""
	if !testenv.Eventually(5*time.Second, func() bool { return strings.Contains(log.String(), line) }) {
		t.Errorf("the reload's log line lacks %s:\n%s", line, log.String())
	}
	testenv.WaitGreeting(t, fmt.Sprintf("127.0.0.1:%d", p2), "b")
	st = td.status(t, "")
	if r := st.LastReload; r == nil || !cmp.Equal(*r, *v) || st.ConfigHash != v.ConfigHash {
		t.Errorf("status after the reload: last_reload %+v, config %s; want %+v", r, st.ConfigHash, v)
	}
	if d := st.ConfigOnDisk; d == nil || d.State != admin.OnDiskSame {
		t.Errorf("after the reload: config_on_disk %+v", d)
	}
	running := v.ConfigHash

	// The same file again changes nothing, and says so.
	if v, err := c.Reload(ctx); err != nil || len(v.Changes) != 0 || v.ConfigHash != running {
		t.Errorf("reload of the same file: %+v, %v", v, err)
	}
	if !testenv.Eventually(5*time.Second, func() bool {
		return strings.Contains(log.String(), `changes="nothing changed (the file is the one in force)"`)
	}) {
		t.Errorf("the log does not say that the reload changed nothing:\n%s", log.String())
	}

	// A rejected file: every error, the running configuration stays, the status says so.
	td.write(t, web+testenv.LoopbackService("web2", p2, b)+"    bogus_key: 1\n  - name: broken\n    vip: 127.0.0.1\n    ports: [\"70000/tcp\"]\n")
	rejected := fileHash(t, td.file)
	v, err = c.Reload(ctx)
	var he *admin.HTTPError
	if !errors.As(err, &he) || he.Code != http.StatusUnprocessableEntity || v == nil {
		t.Fatalf("rejected reload: %+v, %v", v, err)
	}
	if v.Result != admin.ReloadFailed || v.ConfigHash != running || v.RejectedHash != rejected || len(v.Errors) != 3 ||
		!strings.Contains(v.Errors[0], "bogus_key") || !strings.Contains(v.Errors[1], "real_servers") || !strings.Contains(v.Errors[2], "70000/tcp") {
		t.Errorf("rejected reload verdict: %+v", v)
	}
	for _, e := range v.Errors {
		if !strings.HasPrefix(e, td.file+":") {
			t.Errorf("error %q does not start with the file and line", e)
		}
	}
	st = td.status(t, "")
	if r := st.LastReload; r == nil || r.Result != admin.ReloadFailed || !slices.Equal(r.Errors, v.Errors) || r.RejectedHash != rejected || st.ConfigHash != running {
		t.Errorf("status after the rejected reload: last_reload %+v, config %s; want failed, running %s", r, st.ConfigHash, running)
	}
	if d := st.ConfigOnDisk; d == nil || *d != (admin.ConfigOnDisk{State: admin.OnDiskDiffers, Hash: rejected}) {
		t.Errorf("after the rejected reload: config_on_disk %+v, want differs (%s)", d, rejected)
	}

	// Edited and not reloaded: the file differs from the running configuration; written back
	// as it runs, it is the same again.
	td.write(t, web+testenv.LoopbackService("web2", p2, b)+"# edited\n")
	if d := td.status(t, "").ConfigOnDisk; d == nil || d.State != admin.OnDiskDiffers || d.Hash != fileHash(t, td.file) {
		t.Errorf("edited, not reloaded: config_on_disk %+v", d)
	}
	td.write(t, web+testenv.LoopbackService("web2", p2, b))
	if d := td.status(t, "").ConfigOnDisk; d == nil || d.State != admin.OnDiskSame {
		t.Errorf("written back as it runs: config_on_disk %+v", d)
	}
	// A re-weighting reload, then a file that cannot be read.
	td.write(t, strings.Replace(web, "weight: 2", "weight: 5", 1)+testenv.LoopbackService("web2", p2, b))
	if v, err := c.Reload(ctx); err != nil || len(v.Changes) != 1 || v.Changes[0].String() != "real server "+b+" of web re-weighted 2 -> 5" {
		t.Errorf("re-weighting reload: %+v, %v", v, err)
	}
	if err := os.Remove(td.file); err != nil {
		t.Fatal(err)
	}
	if d := td.status(t, "").ConfigOnDisk; d == nil || d.State != admin.OnDiskUnknown || !strings.Contains(d.Error, td.file) || !strings.Contains(d.Error, "no such file") {
		t.Errorf("file removed: config_on_disk %+v", d)
	}
}

// TestDiskCheckBounded: a status never waits on the file beyond its bound, and however many
// statuses ask while the file system holds a read, that read is the only one.
func TestDiskCheckBounded(t *testing.T) {
	release := make(chan struct{})
	var reads atomic.Int32
	c := diskCheck{read: func(string) (string, error) {
		if reads.Add(1) == 1 {
			<-release // a hung mount
		}
		return "h", nil
	}}
	for range 5 {
		start := time.Now()
		_, err := c.hash("/etc/pairlb/pairlb.yaml", 20*time.Millisecond)
		if err == nil || !strings.Contains(err.Error(), "no answer within 20ms") || !strings.Contains(err.Error(), "/etc/pairlb/pairlb.yaml") {
			t.Fatalf("a held read: %v", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("a held read took %s to give up", d)
		}
	}
	if n := reads.Load(); n != 1 {
		t.Errorf("%d reads while the first was held, want 1", n)
	}
	close(release)
	// The callers that come as it ends may still share it; the next ones read afresh.
	if !testenv.Eventually(5*time.Second, func() bool {
		h, err := c.hash("x", time.Second)
		return err == nil && h == "h" && reads.Load() >= 2
	}) {
		t.Fatalf("no fresh read after the held one ended (%d reads)", reads.Load())
	}
}
