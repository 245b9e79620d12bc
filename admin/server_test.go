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
	"time"

	"github.com/google/go-cmp/cmp"

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

// TestRealServersByAddress: POST /api/v1/real-servers/{address}/{action} sets the state of
// every real server the address names in every service and lists them; GET shows what each has
// open; both want the token; a bad address is 400 and an unknown one 404, naming it.
func TestRealServersByAddress(t *testing.T) {
	d := newFakeDaemon("tok")
	d.addService("sip", "198.18.2.11:5061", "198.18.2.13")
	d.setActive("sip", "198.18.2.11:5061", 2)
	ts := startServer(t, d, filepath.Join(t.TempDir(), "no-hosts"))
	c := NewClient(ts.addr, []byte("tok"))
	ctx := context.Background()

	for _, tok := range []string{"", "wrong"} {
		r := ts.call(t, http.MethodPost, PathRealServers+"198.18.2.11/drain", "", tok)
		wantJSONError(t, "POST by address with token "+tok, r, http.StatusUnauthorized, "bearer token")
		r = ts.call(t, http.MethodGet, PathRealServers+"198.18.2.11", "", tok)
		wantJSONError(t, "GET by address with token "+tok, r, http.StatusUnauthorized, "bearer token")
	}
	if st, _ := c.Status(ctx); st.Find("web", "198.18.2.11").State != "enabled" {
		t.Fatal("a refused request changed a state")
	}

	got, err := c.SetAddressState(ctx, "198.18.2.11", "drain")
	want := &AddressState{Address: "198.18.2.11", State: "draining", Active: 2, RealServers: []AddressServer{
		{VirtualService: "web", RealServer: "198.18.2.11", State: "draining", Was: "enabled", Active: 0, Drained: true},
		{VirtualService: "sip", RealServer: "198.18.2.11:5061", State: "draining", Was: "enabled", Active: 2},
	}}
	if d := cmp.Diff(want, got); err != nil || d != "" {
		t.Fatalf("drain 198.18.2.11: %v (-want +got):\n%s", err, d)
	}
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []struct {
		vs, rs, state string
		drained       bool
	}{
		{"web", "198.18.2.11", "draining", true},
		{"web", "198.18.2.12", "enabled", false},
		{"sip", "198.18.2.11:5061", "draining", false}, // draining, two left
		{"sip", "198.18.2.13", "enabled", false},
	} {
		if rs := st.Find(w.vs, w.rs); rs == nil || rs.State != w.state || rs.Drained != w.drained {
			t.Errorf("%s %s after the drain: %+v, want %s, drained %v", w.vs, w.rs, rs, w.state, w.drained)
		}
	}
	raw, _ := c.StatusJSON(ctx)
	if n := strings.Count(string(raw), `"drained": true`); n != 1 {
		t.Errorf("the status JSON says drained %d times, want once:\n%s", n, raw)
	}

	// GET: what each has open.
	got, err = c.AddressState(ctx, "198.18.2.11")
	want.State = ""
	for i := range want.RealServers {
		want.RealServers[i].Was = ""
	}
	if d := cmp.Diff(want, got); err != nil || d != "" {
		t.Errorf("GET 198.18.2.11: %v (-want +got):\n%s", err, d)
	}

	// IP:port names only the server written with that port.
	got, err = c.SetAddressState(ctx, "198.18.2.11:5061", "enable")
	if err != nil || len(got.RealServers) != 1 || got.RealServers[0] != (AddressServer{VirtualService: "sip", RealServer: "198.18.2.11:5061", State: "enabled", Was: "draining", Active: 2}) {
		t.Errorf("enable 198.18.2.11:5061: %+v, %v", got, err)
	}
	if st, _ := c.Status(ctx); st.Find("web", "198.18.2.11").State != "draining" {
		t.Error("enable of 198.18.2.11:5061 changed web's 198.18.2.11")
	}

	for _, bad := range []struct {
		method, path string
		code         int
		want         string
	}{
		{http.MethodPost, "fe-pool-sip/drain", 400, `real server address "fe-pool-sip": not an IP address: want a real server's address as the file writes it`},
		{http.MethodPost, "198.18.2.11:0/drain", 400, `real server address "198.18.2.11:0": port out of range`},
		{http.MethodGet, "fe-pool-sip", 400, `real server address "fe-pool-sip": not an IP address`},
		{http.MethodPost, "198.18.2.11/explode", 400, `unknown action "explode": want enable, disable or drain`},
		{http.MethodPost, "198.18.2.99/drain", 404, "real server address 198.18.2.99: in no virtual service"},
		{http.MethodGet, "198.18.2.99", 404, "real server address 198.18.2.99: in no virtual service"},
		{http.MethodPost, "%5B2001:db8::1%5D:4443/disable", 404, "real server address [2001:db8::1]:4443: in no virtual service"},
		{http.MethodGet, "198.18.2.11/drain", 405, "use POST"},
		{http.MethodPost, "198.18.2.11", 405, "use GET"},
	} {
		r := ts.call(t, bad.method, PathRealServers+bad.path, "", "tok")
		wantJSONError(t, bad.method+" "+bad.path, r, bad.code, bad.want)
	}
	_, err = c.SetAddressState(ctx, "198.18.2.99", "drain")
	var he *HTTPError
	if !errors.As(err, &he) || he.Code != http.StatusNotFound || !strings.Contains(err.Error(), "198.18.2.99") {
		t.Errorf("client, unknown address: %v", err)
	}
}

// TestWaitDrained: the client's WaitDrained reports the count as it changes and returns when
// nothing is left open; a server still enabled somewhere, an unknown address and the end of
// its context are errors.
func TestWaitDrained(t *testing.T) {
	d := newFakeDaemon("")
	d.addService("sip", "198.18.2.11:5061")
	d.setActive("web", "198.18.2.11", 1)
	d.setActive("sip", "198.18.2.11:5061", 2)
	ts := startServer(t, d, filepath.Join(t.TempDir(), "no-hosts"))
	c := NewClient(ts.addr, nil)
	ctx := context.Background()

	// Enabled in both: refused at once, naming them.
	_, err := c.WaitDrained(ctx, "198.18.2.11", 10*time.Millisecond, nil)
	if !errors.Is(err, ErrNotDraining) || !strings.Contains(err.Error(), "198.18.2.11 in web, sip") {
		t.Errorf("enabled: %v", err)
	}
	if _, err := c.SetAddressState(ctx, "198.18.2.11", "drain"); err != nil {
		t.Fatal(err)
	}

	// Still open when the context ends: its error, with what was left.
	tctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	last, err := c.WaitDrained(tctx, "198.18.2.11", 10*time.Millisecond, nil)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || last == nil || last.Active != 3 {
		t.Errorf("timeout: %+v, %v", last, err)
	}

	// The count goes down as connections close; each change is reported once.
	counts := make(chan int64, 10)
	type result struct {
		st  *AddressState
		err error
	}
	done := make(chan result, 1)
	go func() {
		st, err := c.WaitDrained(ctx, "198.18.2.11", 10*time.Millisecond, func(st *AddressState) { counts <- st.Active })
		done <- result{st, err}
	}()
	next := func() int64 {
		select {
		case n := <-counts:
			return n
		case r := <-done:
			t.Fatalf("WaitDrained returned early: %+v, %v", r.st, r.err)
		case <-time.After(10 * time.Second):
			t.Fatal("no progress within 10s")
		}
		return -1
	}
	if n := next(); n != 3 {
		t.Fatalf("first progress %d, want 3", n)
	}
	d.setActive("sip", "198.18.2.11:5061", 0)
	if n := next(); n != 1 {
		t.Fatalf("progress %d, want 1", n)
	}
	d.setActive("web", "198.18.2.11", 0)
	if n := next(); n != 0 {
		t.Fatalf("progress %d, want 0", n)
	}
	select {
	case r := <-done:
		if r.err != nil || r.st.Active != 0 || !r.st.RealServers[0].Drained || !r.st.RealServers[1].Drained {
			t.Errorf("drained: %+v, %v", r.st, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WaitDrained did not return within 10s of the last connection closing")
	}
	if len(counts) != 0 {
		t.Errorf("progress reported more than each change: %d more", len(counts))
	}

	_, err = c.WaitDrained(ctx, "198.18.2.99", 10*time.Millisecond, nil)
	var he *HTTPError
	if !errors.As(err, &he) || he.Code != http.StatusNotFound {
		t.Errorf("unknown address: %v", err)
	}
}
