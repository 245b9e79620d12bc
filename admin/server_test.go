package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pairlb/pairlb/config"
)

// TestAdminRefusesForeignHost: a page that reaches the admin API through a rebinding name of
// its own (Host: evil.example) is refused on every endpoint, token or not; IP addresses,
// localhost, names the hosts file maps to loopback and global.admin_hosts are served.
func TestAdminRefusesForeignHost(t *testing.T) {
	hosts := filepath.Join(t.TempDir(), "hosts")
	if err := os.WriteFile(hosts, []byte("127.0.0.1 localhost\n127.0.1.1 lb1.example.test lb1 # this box\n10.0.0.9 other.example.test\n::1 ip6-localhost\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, token := range []string{"", "s3cret"} {
		t.Run(fmt.Sprintf("token %q", token), func(t *testing.T) {
			ts := startServer(t, newFakeDaemon(token), hosts)
			// global.admin_hosts as the configuration gives it (config parses the key).
			cfg := *ts.d.Running()
			cfg.Global.AdminHosts = []string{"LB.Admin.Example.Test"}
			ts.s.Configure(&cfg)

			port := ts.addr[strings.LastIndex(ts.addr, ":")+1:]
			for _, path := range []string{"/healthz", "/readyz", "/", "/metrics", "/api/v1/status"} {
				for _, host := range []string{"evil.example", "evil.example:" + port, "other.example.test", "127.0.0.1.evil.example", "localhost.evil.example"} {
					if r := ts.call(t, http.MethodGet, path, host, token); r.code != http.StatusMisdirectedRequest {
						t.Errorf("GET %s with Host %s: %d, want 421", path, host, r.code)
					}
				}
				for _, host := range []string{"127.0.0.1:" + port, "127.0.0.1", "[::1]:" + port, "localhost:" + port, "LOCALHOST",
					"ui.localhost:" + port, "lb1.example.test:" + port, "lb1", "lb.admin.example.test:" + port} {
					if r := ts.call(t, http.MethodGet, path, host, token); r.code != http.StatusOK {
						t.Errorf("GET %s with Host %s: %v, want 200", path, host, r)
					}
				}
			}
			r := ts.call(t, http.MethodPost, PathReload, "evil.example", token)
			wantJSONError(t, "POST reload with Host evil.example", r, http.StatusMisdirectedRequest, "global.admin_hosts")
			if reloads, _ := ts.d.calls(); reloads != 0 {
				t.Errorf("the refused POST reloaded %d times", reloads)
			}
		})
	}
}

// TestLoopbackNamesBounded: the hosts file is read with a bound, and never from something
// that is not a regular file.
func TestLoopbackNamesBounded(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, []byte(strings.Repeat("127.0.0.1 x\n", maxHostsFile/12+1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := loopbackNames(big); err == nil {
		t.Error("a hosts file larger than the bound was read")
	}
	if _, err := loopbackNames(dir); err == nil {
		t.Error("a directory was read as a hosts file")
	}
	if names, err := loopbackNames(filepath.Join(dir, "missing")); err != nil || names != nil {
		t.Errorf("a missing hosts file: %v %v", names, err)
	}
}

// TestReapplyIsNotReload: POST /api/v1/reapply re-applies the running configuration and reads
// no file (the daemon's Reapply, never its Reload); the client's Reapply asks it, and a
// failure is 500 with the reason, which the client's error carries.
func TestReapplyIsNotReload(t *testing.T) {
	d := newFakeDaemon("tok")
	ts := startServer(t, d, filepath.Join(t.TempDir(), "no-hosts"))
	c := NewClient(ts.addr, []byte("tok"))
	res, err := c.Reapply(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if want := (ReloadResult{Result: "ok", ConfigHash: d.cfg.Hash, VirtualServices: 1}); *res != want {
		t.Errorf("reapply answered %+v, want %+v", *res, want)
	}
	if reloads, reapplys := d.calls(); reloads != 0 || reapplys != 1 {
		t.Errorf("after POST reapply: %d reloads, %d re-applies; want 0 and 1", reloads, reapplys)
	}
	if r := ts.call(t, http.MethodGet, PathReapply, "", "tok"); r.code != http.StatusMethodNotAllowed {
		t.Errorf("GET reapply: %v", r)
	}
	if r := ts.call(t, http.MethodPost, PathReapply, "", ""); r.code != http.StatusUnauthorized {
		t.Errorf("POST reapply without the token: %v", r)
	}

	d.mu.Lock()
	d.applyErr = errRefused
	d.mu.Unlock()
	_, err = c.Reapply(context.Background())
	var he *HTTPError
	if !errors.As(err, &he) || he.Code != http.StatusInternalServerError || !strings.Contains(err.Error(), "address already in use") ||
		!strings.Contains(err.Error(), "re-apply failed; the running configuration stays") {
		t.Errorf("a failed re-apply: %v", err)
	}
	// A reload that does not validate is 422, one entry per problem.
	d.mu.Lock()
	d.applyErr = config.Errors{{File: "pairlb.yaml", Line: 3, Msg: "bad port"}}
	d.mu.Unlock()
	_, err = c.Reload(context.Background())
	if !errors.As(err, &he) || he.Code != http.StatusUnprocessableEntity || len(he.Body.Errors) != 1 {
		t.Errorf("an invalid reload: %v", err)
	}
}

// TestClientStatusAndStates: the client decodes the status the server answers with (one schema,
// both ends), sets states, and turns an error answer into the API's message.
func TestClientStatusAndStates(t *testing.T) {
	ts := startServer(t, newFakeDaemon(""), filepath.Join(t.TempDir(), "no-hosts"))
	c := NewClient(ts.addr, nil)
	ctx := context.Background()
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Ready || st.Version != "v-test" || st.ConfigFile != "/etc/pairlb/pairlb.yaml" || st.Routing != nil || len(st.VirtualServices) != 1 {
		t.Fatalf("status: %+v", st)
	}
	if rs := st.Find("web", "198.18.2.11"); rs == nil || !rs.Available || rs.Health == nil || rs.Health.Check != "tcp" {
		t.Errorf("198.18.2.11: %+v", rs)
	}
	if rs := st.Find("web", "198.18.2.12"); rs == nil || rs.Health != nil {
		t.Errorf("198.18.2.12 (not probed): %+v", rs)
	}
	raw, err := c.StatusJSON(ctx)
	if err != nil || !json.Valid(raw) || !strings.Contains(string(raw), `"config_hash": "0123456789abcdef0123"`) {
		t.Errorf("status as JSON: %v\n%s", err, raw)
	}
	got, err := c.SetServerState(ctx, "web", "198.18.2.12", "drain")
	if err != nil || *got != (ServerState{VirtualService: "web", RealServer: "198.18.2.12", State: "draining"}) {
		t.Errorf("drain: %+v, %v", got, err)
	}
	if st, _ := c.Status(ctx); st.Find("web", "198.18.2.12").State != "draining" || st.Find("web", "198.18.2.12").Available {
		t.Errorf("after the drain: %+v", st.Find("web", "198.18.2.12"))
	}
	_, err = c.SetServerState(ctx, "nope", "198.18.2.12", "drain")
	if err == nil || err.Error() != `admin API: real server "198.18.2.12" of virtual service "nope": not found (404 Not Found)` {
		t.Errorf("unknown service: %v", err)
	}
	if err := c.Ready(ctx); err != nil {
		t.Errorf("ready: %v", err)
	}
	if err := NewClient("127.0.0.1:1", nil).Ready(ctx); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("nothing listening: %v", err)
	}
}

// TestDialAddr: the one rule for reaching a local admin listener.
func TestDialAddr(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:9090":  "127.0.0.1:9090",
		"0.0.0.0:9090":    "127.0.0.1:9090",
		"[::]:9191":       "[::1]:9191",
		"10.11.0.2:9090":  "10.11.0.2:9090",
		"[2001:db8::1]:1": "[2001:db8::1]:1",
	} {
		if got := DialAddr(mustAddrPort(t, in)).String(); got != want {
			t.Errorf("DialAddr(%s) = %s, want %s", in, got, want)
		}
	}
}
