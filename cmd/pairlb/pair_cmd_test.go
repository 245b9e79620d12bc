package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/pairlb/pairlb/admin"
	"github.com/pairlb/pairlb/config"
	"github.com/pairlb/pairlb/lb"
)

// fakeAdmin serves a node's status document (the admin API's types).
type fakeAdmin struct {
	version, hash string
	up            atomic.Bool // health of web/198.18.2.12
}

func (f *fakeAdmin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != admin.PathStatus {
		http.NotFound(w, r)
		return
	}
	server := func(addr string, up bool) admin.RealServer {
		return admin.RealServer{ServerStatus: lb.ServerStatus{Address: addr, State: "enabled", Up: up}, Available: up}
	}
	st := admin.Status{Version: f.version, ConfigFile: "/etc/pairlb/pairlb.yaml", ConfigHash: f.hash, Ready: true,
		VirtualServices: []admin.VirtualService{{ServiceStatus: lb.ServiceStatus{Name: "web", VIP: "198.51.100.10"},
			RealServers: []admin.RealServer{server("198.18.2.11", true), server("198.18.2.12", f.up.Load())}}}}
	_ = json.NewEncoder(w).Encode(st)
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

// TestKeepalivedCheck covers the track script against a fake /readyz, and the notify script:
// on MASTER it asks for a re-apply of the running configuration, never a reload of the file.
func TestKeepalivedCheck(t *testing.T) {
	var ready atomic.Bool
	var reloads, reapplies atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/readyz" && ready.Load() && r.Header.Get("Authorization") == "Bearer s3cret":
		case r.URL.Path == "/readyz":
			http.Error(w, "not ready", http.StatusServiceUnavailable)
		case r.URL.Path == "/api/v1/reload" && r.Method == http.MethodPost:
			reloads.Add(1)
		case r.URL.Path == "/api/v1/reapply" && r.Method == http.MethodPost && r.Header.Get("Authorization") == "Bearer s3cret":
			reapplies.Add(1)
			fmt.Fprintln(w, `{"result": "ok", "config_hash": "abc", "virtual_services": 1}`)
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
		if code := dispatch([]string{"keepalived", "notify", "-admin", addr, "-token-file", tok, "GROUP", "pairlb", state}, io.Discard, &errOut); code != 0 {
			t.Errorf("notify %s: exit %d", state, code)
		}
	}
	if reapplies.Load() != 1 || reloads.Load() != 0 || !strings.Contains(errOut.String(), "pair transition: group pairlb is now MASTER") ||
		strings.Contains(errOut.String(), "FAULT") || strings.Contains(errOut.String(), "re-apply its running configuration:") {
		t.Errorf("notify: %d re-applies and %d reloads (want 1 and 0), output:\n%s", reapplies.Load(), reloads.Load(), errOut.String())
	}
	// Without the token the re-apply is refused; notify still exits 0 and says why.
	errOut.Reset()
	if code := dispatch([]string{"keepalived", "notify", "-admin", addr, "INSTANCE", "dmz", "MASTER", "150"}, io.Discard, &errOut); code != 0 ||
		!strings.Contains(errOut.String(), "asking pairlb at "+addr+" to re-apply its running configuration: admin API: POST /api/v1/reapply: 404 Not Found") {
		t.Errorf("notify without the token: exit %d, output:\n%s", code, errOut.String())
	}
}
