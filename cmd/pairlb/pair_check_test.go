package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pairlb/pairlb/config"
)

// fakeAdmin serves a status document like admin.go's.
type fakeAdmin struct {
	version, hash string
	up            atomic.Bool // health of web/198.18.2.12
	notReady      bool
}

func (f *fakeAdmin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/api/v1/status" {
		http.NotFound(w, r)
		return
	}
	fmt.Fprintf(w, `{"version": %q, "config_file": "/etc/pairlb/pairlb.yaml", "config_hash": %q, "ready": %v,
		"virtual_services": [{"name": "web", "vip": "198.51.100.10", "real_servers": [
			{"address": "198.18.2.11", "state": "enabled", "up": true, "available": true},
			{"address": "198.18.2.12", "state": "enabled", "up": %v}]}]}`, f.version, f.hash, !f.notReady, f.up.Load())
}

func fakePair(t *testing.T, a, b *fakeAdmin) *pairChecker {
	t.Helper()
	sa, sb := httptest.NewServer(a), httptest.NewServer(b)
	t.Cleanup(sa.Close)
	t.Cleanup(sb.Close)
	return &pairChecker{self: "lb1", peer: "lb2", localAddr: sa.Listener.Addr().String(), peerAddr: sb.Listener.Addr().String(), client: sa.Client()}
}

func TestPairCompare(t *testing.T) {
	a := &fakeAdmin{version: "v1", hash: "aaaa"}
	b := &fakeAdmin{version: "v1", hash: "aaaa"}
	a.up.Store(true)
	b.up.Store(true)
	pc := fakePair(t, a, b)
	ctx := context.Background()
	if _, _, diffs := pc.compare(ctx); len(diffs) != 0 {
		t.Errorf("same nodes differ: %q", diffs)
	}
	b.hash, b.version, b.notReady = "bbbb", "v2", true
	b.up.Store(false)
	_, _, diffs := pc.compare(ctx)
	want := []string{
		"lb2 is not ready: it could not take over",
		"configuration: lb1 runs aaaa, lb2 runs bbbb",
		"version: lb1 runs v1, lb2 runs v2",
		"real server web/198.18.2.12: up on lb1, down on lb2",
	}
	if diff := cmp.Diff(want, diffs); diff != "" {
		t.Errorf("differences (-want +got):\n%s", diff)
	}
	pc.peerAddr = "127.0.0.1:1"
	if _, _, diffs := pc.compare(ctx); len(diffs) != 1 || !strings.Contains(diffs[0], "cannot ask lb2 at 127.0.0.1:1") {
		t.Errorf("unreachable peer: %q", diffs)
	}
}

func TestPairWatcherMetric(t *testing.T) {
	a := &fakeAdmin{version: "v1", hash: "aaaa"}
	b := &fakeAdmin{version: "v1", hash: "aaaa"}
	a.up.Store(true)
	b.up.Store(true)
	var logs bytes.Buffer
	w := &pairWatcher{check: fakePair(t, a, b), log: slog.New(slog.NewTextHandler(&logs, nil)), interval: DefaultPairCheckInterval}
	// The descriptors as newPairWatcher makes them.
	ref := newPairWatcher(&config.Config{Pair: nil}, "", slog.New(slog.DiscardHandler))
	if ref != nil {
		t.Fatal("a file without a pair has a watcher")
	}
	w.agreesDesc = prometheus.NewDesc("pairlb_pair_peer_agrees", "help", nil, nil)
	w.upDesc = prometheus.NewDesc("pairlb_pair_peer_up", "help", nil, nil)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(w)

	gauges := func() string {
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
	w.once(context.Background())
	if got := gauges(); got != "pairlb_pair_peer_agrees=1 pairlb_pair_peer_up=1" {
		t.Errorf("agreeing: %s", got)
	}
	b.up.Store(false)
	w.once(context.Background())
	w.once(context.Background())
	if got := gauges(); got != "pairlb_pair_peer_agrees=0 pairlb_pair_peer_up=1" {
		t.Errorf("differing: %s", got)
	}
	if n := strings.Count(logs.String(), "pair peer differs"); n != 1 {
		t.Errorf("difference logged %d times, want once:\n%s", n, logs.String())
	}
	if n, err := testutil.GatherAndCount(reg, "pairlb_pair_peer_agrees"); err != nil || n != 1 {
		t.Errorf("GatherAndCount = %d, %v", n, err)
	}
	var nilWatcher *pairWatcher
	if err := nilWatcher.Run(context.Background()); err != nil {
		t.Errorf("nil watcher Run: %v", err)
	}
}

// TestPairCheckCommand runs `pairlb pair check` against fake admin APIs named in the file.
func TestPairCheckCommand(t *testing.T) {
	a := &fakeAdmin{version: "v1"}
	b := &fakeAdmin{version: "v1"}
	a.up.Store(true)
	b.up.Store(true)
	sa, sb := httptest.NewServer(a), httptest.NewServer(b)
	t.Cleanup(sa.Close)
	t.Cleanup(sb.Close)
	file := filepath.Join(t.TempDir(), "pair.yaml")
	src := fmt.Sprintf(`global: {admin: %q}
virtual_services:
  - {name: web, vip: 198.51.100.10, ports: ["443/tcp"], real_servers: [{address: 198.18.2.11}, {address: 198.18.2.12}]}
pair:
  networks: [{name: front, interface: eth1, prefix: 198.51.100.0/24, vrid: 51}]
  nodes:
    - {name: lb1, priority: 150, addresses: {front: 198.51.100.2}}
    - {name: lb2, priority: 100, addresses: {front: 198.51.100.3}, admin: %q}
`, sa.Listener.Addr(), sb.Listener.Addr())
	if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	a.hash, b.hash = cfg.Hash, cfg.Hash
	var out, errOut bytes.Buffer
	if code := dispatch([]string{"pair", "check", "-c", file, "--node", "lb1"}, &out, &errOut); code != 0 {
		t.Errorf("exit %d, want 0:\n%s%s", code, out.String(), errOut.String())
	}
	if !strings.Contains(out.String(), "pair lb1/lb2 agrees") {
		t.Errorf("output:\n%s", out.String())
	}
	b.hash = "0123456789abcdef"
	out.Reset()
	if code := dispatch([]string{"pair", "check", "-c", file, "--node", "lb1"}, &out, io.Discard); code != 1 {
		t.Errorf("exit %d, want 1:\n%s", code, out.String())
	}
	if !strings.Contains(out.String(), "DIFFERENT: configuration: lb1 runs "+cfg.Hash[:12]+", lb2 runs 0123456789ab") {
		t.Errorf("output:\n%s", out.String())
	}

	// keepalived renders for the named node.
	out.Reset()
	if code := dispatch([]string{"keepalived", "-c", file, "--node", "lb2"}, &out, io.Discard); code != 0 || !strings.Contains(out.String(), "unicast_src_ip 198.51.100.3") {
		t.Errorf("keepalived: exit %d:\n%s", code, out.String())
	}
}

// TestKeepalivedCheck covers the track script against a fake /readyz.
func TestKeepalivedCheck(t *testing.T) {
	var ready atomic.Bool
	var reloads atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/readyz" && ready.Load() && r.Header.Get("Authorization") == "Bearer s3cret":
		case r.URL.Path == "/readyz":
			http.Error(w, "not ready", http.StatusServiceUnavailable)
		case r.URL.Path == "/api/v1/reload" && r.Method == http.MethodPost:
			reloads.Add(1)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := srv.Listener.Addr().String()
	check := []string{"keepalived", "check", "-admin", addr, "-token-file", tok}
	if code := dispatch(check, io.Discard, io.Discard); code != 1 {
		t.Errorf("not ready: exit %d, want 1", code)
	}
	ready.Store(true)
	if code := dispatch(check, io.Discard, io.Discard); code != 0 {
		t.Errorf("ready: exit %d, want 0", code)
	}
	if code := dispatch([]string{"keepalived", "check", "-admin", "127.0.0.1:1"}, io.Discard, io.Discard); code != 1 {
		t.Errorf("nothing listening: exit %d, want 1", code)
	}
	var errOut bytes.Buffer
	for _, state := range []string{"BACKUP", "MASTER"} {
		if code := dispatch([]string{"keepalived", "notify", "-admin", addr, "GROUP", "pairlb", state}, io.Discard, &errOut); code != 0 {
			t.Errorf("notify %s: exit %d", state, code)
		}
	}
	if reloads.Load() != 1 || !strings.Contains(errOut.String(), "pair transition: group pairlb is now MASTER") {
		t.Errorf("notify: %d reloads, output:\n%s", reloads.Load(), errOut.String())
	}
}
