package pair

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pairlb/pairlb/admin"
	"github.com/pairlb/pairlb/config"
	"github.com/pairlb/pairlb/lb"
)

// fakeAdmin serves a status document like the admin API's.
type fakeAdmin struct {
	version, hash string
	up            atomic.Bool // health of web/198.18.2.12
	notReady      bool
	asked         atomic.Int32
	gate          chan struct{} // if set, each answer waits for it to be closed
}

func (f *fakeAdmin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != admin.PathStatus {
		http.NotFound(w, r)
		return
	}
	f.asked.Add(1)
	if f.gate != nil {
		<-f.gate
	}
	server := func(addr string, up bool) admin.RealServer {
		return admin.RealServer{ServerStatus: lb.ServerStatus{Address: addr, State: "enabled", Up: up}, Available: up}
	}
	st := admin.Status{Version: f.version, ConfigFile: "/etc/pairlb/pairlb.yaml", ConfigHash: f.hash, Ready: !f.notReady,
		VirtualServices: []admin.VirtualService{{ServiceStatus: lb.ServiceStatus{Name: "web", VIP: "198.51.100.10"},
			RealServers: []admin.RealServer{server("198.18.2.11", true), server("198.18.2.12", f.up.Load())}}}}
	_ = json.NewEncoder(w).Encode(st)
}

func serve(t *testing.T, h http.Handler) string {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s.Listener.Addr().String()
}

func fakePair(t *testing.T, a, b *fakeAdmin) *Checker {
	t.Helper()
	c := &Checker{Self: "lb1", Peer: "lb2", Local: admin.NewClient(serve(t, a), nil), Remote: admin.NewClient(serve(t, b), nil)}
	c.SetTimeout(3 * time.Second)
	return c
}

func TestPairCompare(t *testing.T) {
	a := &fakeAdmin{version: "v1", hash: "aaaa"}
	b := &fakeAdmin{version: "v1", hash: "aaaa"}
	a.up.Store(true)
	b.up.Store(true)
	pc := fakePair(t, a, b)
	ctx := context.Background()
	if _, _, diffs := pc.Compare(ctx); len(diffs) != 0 {
		t.Errorf("same nodes differ: %q", diffs)
	}
	b.hash, b.version, b.notReady = "bbbb", "v2", true
	b.up.Store(false)
	_, _, diffs := pc.Compare(ctx)
	want := []string{
		"lb2 is not ready: it could not take over",
		"configuration: lb1 runs aaaa, lb2 runs bbbb",
		"version: lb1 runs v1, lb2 runs v2",
		"real server web/198.18.2.12: up on lb1, down on lb2",
	}
	if diff := cmp.Diff(want, diffs); diff != "" {
		t.Errorf("differences (-want +got):\n%s", diff)
	}
	pc.Remote.Addr = "127.0.0.1:1"
	if _, _, diffs := pc.Compare(ctx); len(diffs) != 1 || !strings.Contains(diffs[0], "cannot ask lb2 at 127.0.0.1:1") {
		t.Errorf("unreachable peer: %q", diffs)
	}
}

// gauges returns the pair gauges of reg as "name=value" in name order.
func gauges(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var s []string
	for _, mf := range mfs {
		s = append(s, fmt.Sprintf("%s=%v", mf.GetName(), mf.GetMetric()[0].GetGauge().GetValue()))
	}
	return strings.Join(s, " ")
}

func TestPairWatcherMetric(t *testing.T) {
	a := &fakeAdmin{version: "v1", hash: "aaaa"}
	b := &fakeAdmin{version: "v1", hash: "aaaa"}
	a.up.Store(true)
	b.up.Store(true)
	var logs bytes.Buffer
	w := NewWatcher(slog.New(slog.NewTextHandler(&logs, nil)), "")
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(w)
	// A file without a pair: nothing to watch, nothing exported.
	w.Set(&config.Config{Pair: nil})
	if got := gauges(t, reg); got != "" {
		t.Errorf("a file without a pair exports %s", got)
	}
	w.setChecker(fakePair(t, a, b), "fake")

	w.once(context.Background())
	if got := gauges(t, reg); got != "pairlb_pair_peer_agrees=1 pairlb_pair_peer_up=1" {
		t.Errorf("agreeing: %s", got)
	}
	b.up.Store(false)
	w.once(context.Background())
	w.once(context.Background())
	if got := gauges(t, reg); got != "pairlb_pair_peer_agrees=0 pairlb_pair_peer_up=1" {
		t.Errorf("differing: %s", got)
	}
	if n := strings.Count(logs.String(), "pair peer differs"); n != 1 {
		t.Errorf("difference logged %d times, want once:\n%s", n, logs.String())
	}
	if n, err := testutil.GatherAndCount(reg, "pairlb_pair_peer_agrees"); err != nil || n != 1 {
		t.Errorf("GatherAndCount = %d, %v", n, err)
	}
	// Without a pair to watch, Run asks nothing and returns when its context ends.
	idle := NewWatcher(slog.New(slog.DiscardHandler), "")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := idle.Run(ctx); err != context.Canceled {
		t.Errorf("Run of a watcher with nothing to watch: %v", err)
	}
}

// pairConfig writes a pair file whose lb2 admin API is peer, and loads it.
func pairConfig(t *testing.T, dir, name, localAdmin, peer string) *config.Config {
	t.Helper()
	file := filepath.Join(dir, name)
	src := fmt.Sprintf(`global: {admin: %q}
virtual_services:
  - {name: web, vip: 198.51.100.10, ports: ["443/tcp"], real_servers: [{address: 198.18.2.11}, {address: 198.18.2.12}]}
pair:
  networks: [{name: front, interface: eth1, prefix: 198.51.100.0/24, vrid: 51}]
  nodes:
    - {name: lb1, priority: 150, addresses: {front: 198.51.100.2}}
    - {name: lb2, priority: 100, addresses: {front: 198.51.100.3}, admin: %q}
`, localAdmin, peer)
	if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestWatcherFollowsReload: a reload that moves the peer's admin address makes the running
// watcher ask the new address at once, with its gauges started over; a reload that keeps the
// pair keeps its state; one that removes the pair stops the export.
func TestWatcherFollowsReload(t *testing.T) {
	local := &fakeAdmin{version: "v1", hash: "aaaa"}
	old, moved := &fakeAdmin{version: "v1", hash: "aaaa"}, &fakeAdmin{version: "v1", hash: "aaaa"}
	for _, f := range []*fakeAdmin{local, old, moved} {
		f.up.Store(true)
	}
	localAddr := serve(t, local)
	dir := t.TempDir()
	w := NewWatcher(slog.New(slog.DiscardHandler), "lb1")
	w.interval = time.Hour // only Set's wake-ups ask
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(w)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	waitGauges := func(want string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for got := gauges(t, reg); got != want; got = gauges(t, reg) {
			if time.Now().After(deadline) {
				t.Fatalf("gauges %q after 5s, want %q", got, want)
			}
			time.Sleep(10 * time.Millisecond) // polling to the deadline
		}
	}
	oldAddr := serve(t, old)
	w.Set(pairConfig(t, dir, "a.yaml", localAddr, oldAddr))
	waitGauges("pairlb_pair_peer_agrees=1 pairlb_pair_peer_up=1")
	if old.asked.Load() != 1 {
		t.Fatalf("the first peer was asked %d times, want 1", old.asked.Load())
	}

	// The same pair again (a reload that leaves the pair section): the state stays (a new
	// checker would start over at 0).
	w.Set(pairConfig(t, dir, "a.yaml", localAddr, oldAddr))
	if got := gauges(t, reg); got != "pairlb_pair_peer_agrees=1 pairlb_pair_peer_up=1" {
		t.Errorf("after a reload that keeps the pair: %s", got)
	}

	// The peer moved: the gauges start over, and the new address is asked at once (its
	// answer waits for the gate, so that the reset is seen before it).
	moved.gate = make(chan struct{})
	w.Set(pairConfig(t, dir, "b.yaml", localAddr, serve(t, moved)))
	if got := gauges(t, reg); got != "pairlb_pair_peer_agrees=0 pairlb_pair_peer_up=0" {
		t.Errorf("right after the peer moved: %s", got)
	}
	close(moved.gate)
	waitGauges("pairlb_pair_peer_agrees=1 pairlb_pair_peer_up=1")
	if moved.asked.Load() == 0 {
		t.Fatal("the gauges are set but the new address was not asked")
	}

	// No pair any more: nothing exported, and the old peer was asked once in all.
	w.Set(&config.Config{})
	if got := gauges(t, reg); got != "" {
		t.Errorf("without a pair: %s", got)
	}
	if n := old.asked.Load(); n != 1 {
		t.Errorf("the old peer was asked %d times, want once", n)
	}
}
