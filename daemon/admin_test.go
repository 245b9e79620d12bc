package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/pairlb/pairlb/admin"
	"github.com/pairlb/pairlb/internal/testenv"
)

// testDaemon is an in-process `pairlb run` on loopback.
type testDaemon struct {
	d      *Daemon
	file   string
	admin  string // http://127.0.0.1:PORT
	head   string // the global section, for rewriting the file
	cancel context.CancelFunc
	done   chan error
}

// adminHead returns a global section with a free admin port and, when token is set, a token
// file holding it.
func adminHead(t *testing.T, dir, token string) (head, adminAddr string) {
	t.Helper()
	adminAddr = fmt.Sprintf("127.0.0.1:%d", testenv.FreeTCPPort(t))
	head = fmt.Sprintf("global:\n  admin: %s\n  drain_timeout: 5s\n", adminAddr)
	if token != "" {
		tf := filepath.Join(dir, "token")
		if err := os.WriteFile(tf, []byte(token+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		head += fmt.Sprintf("  admin_token_file: %s\n", tf)
	}
	return head + "virtual_services:\n", adminAddr
}

// startDaemon serves services (the virtual_services entries as YAML) until the test ends;
// global are more lines of the global section ("  key: value\n").
func startDaemon(t *testing.T, token, services string, global ...string) *testDaemon {
	t.Helper()
	return startDaemonLog(t, token, services, nil, global...)
}

// startDaemonLog is startDaemon with the daemon's log, from level info, written to logTo too
// (when not nil).
func startDaemonLog(t *testing.T, token, services string, logTo io.Writer, global ...string) *testDaemon {
	t.Helper()
	dir := t.TempDir()
	head, addr := adminHead(t, dir, token)
	head = strings.Replace(head, "virtual_services:\n", strings.Join(global, "")+"virtual_services:\n", 1)
	td := &testDaemon{file: filepath.Join(dir, "pairlb.yaml"), admin: "http://" + addr, head: head}
	td.write(t, services)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	switch {
	case logTo != nil && testing.Verbose():
		log = slog.New(slog.NewTextHandler(io.MultiWriter(logTo, os.Stderr), nil))
	case logTo != nil:
		log = slog.New(slog.NewTextHandler(logTo, nil))
	case testing.Verbose():
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	d, err := New(Options{Log: log, Path: td.file, Version: "dev"})
	if err != nil {
		t.Fatal(err)
	}
	td.d = d
	ctx, cancel := context.WithCancel(context.Background())
	td.cancel, td.done = cancel, make(chan error, 1)
	go func() { td.done <- d.Run(ctx) }()
	t.Cleanup(func() { td.stop(t) })
	if !testenv.Eventually(10*time.Second, func() bool {
		err = td.client().Ready(context.Background())
		return err == nil
	}) {
		t.Fatalf("the daemon is not ready after 10s: %v", err)
	}
	return td
}

// client is the admin client for td, with token.
func (td *testDaemon) client(token ...string) *admin.Client {
	c := admin.NewClient(strings.TrimPrefix(td.admin, "http://"), nil)
	if len(token) > 0 && token[0] != "" {
		c.Token = []byte(token[0])
	}
	return c
}

func (td *testDaemon) write(t *testing.T, services string) {
	t.Helper()
	if err := os.WriteFile(td.file, []byte(td.head+services), 0o644); err != nil {
		t.Fatal(err)
	}
}

// stop ends run and waits for it; a second call does nothing.
func (td *testDaemon) stop(t *testing.T) {
	t.Helper()
	if td.cancel == nil {
		return
	}
	td.cancel()
	td.cancel = nil
	select {
	case err := <-td.done:
		if err != nil {
			t.Errorf("run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return within 15s")
	}
}

type apiResponse struct {
	code   int
	header http.Header
	body   []byte
}

func (r apiResponse) String() string { return fmt.Sprintf("%d %s", r.code, r.body) }

// call sends a request with the token (when not empty) and returns the answer.
func (td *testDaemon) call(t *testing.T, method, path, token string, hdr ...string) apiResponse {
	t.Helper()
	req, err := http.NewRequest(method, td.admin+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return apiResponse{code: resp.StatusCode, header: resp.Header, body: body}
}

func (td *testDaemon) status(t *testing.T, token string) *admin.Status {
	t.Helper()
	st, err := td.client(token).Status(context.Background())
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	return st
}

// wantJSONError checks an answer's code and that its body is a JSON error mentioning want.
func wantJSONError(t *testing.T, what string, r apiResponse, code int, want string) {
	t.Helper()
	var e admin.ErrorResponse
	if r.code != code || json.Unmarshal(r.body, &e) != nil || !strings.Contains(e.Error+strings.Join(e.Errors, "\n"), want) {
		t.Errorf("%s: got %v, want %d with a JSON error containing %q", what, r, code, want)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: Content-Type %q", what, ct)
	}
}

func tcpHealthService(name string, port int, servers ...string) string {
	s := fmt.Sprintf(`  - name: %s
    vip: 127.0.0.1
    ports: ["%d/tcp"]
    health: {type: tcp, interval: 1s, timeout: 500ms, rise: 1, fall: 1}
    real_servers:
`, name, port)
	for _, a := range servers {
		s += fmt.Sprintf("      - {address: %q}\n", a)
	}
	return s
}

func TestAdminStatusAndServerActions(t *testing.T) {
	a, b := testenv.EchoServer(t, "a"), testenv.EchoServer(t, "b")
	// A port nobody listens on: its health check fails.
	dead := fmt.Sprintf("127.0.0.1:%d", testenv.FreeTCPPort(t))
	port := testenv.FreeTCPPort(t)
	td := startDaemon(t, "", tcpHealthService("web", port, a, b, dead)+testenv.LoopbackService("other", testenv.FreeTCPPort(t), a))

	testenv.WaitGreeting(t, fmt.Sprintf("127.0.0.1:%d", port), "a")
	// Health: a and b come up on their first passed check, dead stays down with a reason.
	deadline := time.Now().Add(10 * time.Second)
	var st *admin.Status
	for {
		st = td.status(t, "")
		sa, sb, sd := st.Find("web", a), st.Find("web", b), st.Find("web", dead)
		if sa != nil && sa.Up && sa.Health != nil && sa.Health.LastCheck != nil && sb != nil && sb.Up &&
			sd != nil && sd.Health != nil && sd.Health.LastError != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("health not in the status after 10s: %+v", st)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !st.Ready || st.ConfigHash == "" || st.ConfigFile != td.file || len(st.VirtualServices) != 2 {
		t.Errorf("status header: ready %v hash %q file %q services %d", st.Ready, st.ConfigHash, st.ConfigFile, len(st.VirtualServices))
	}
	web := st.VirtualServices[0]
	if web.Name != "web" || len(web.Ports) != 1 || web.Ports[0].Listen != uint16(port) || len(web.RealServers) != 3 {
		t.Fatalf("web: %+v", web)
	}
	if sa := st.Find("web", a); sa.State != "enabled" || !sa.Available || sa.Health.Check != "tcp" || sa.Health.Address != a || sa.Total < 1 {
		t.Errorf("server a: %+v health %+v", sa, sa.Health)
	}
	if sd := st.Find("web", dead); sd.Up || sd.Available {
		t.Errorf("the dead server is up: %+v", sd)
	}
	if so := st.Find("other", a); so == nil || !so.Up || so.Health == nil || so.Health.Check != "none" {
		t.Errorf("other's server: %+v", so)
	}

	// Drain through the API, then disable with the address's colon escaped.
	if r := td.call(t, http.MethodPost, "/api/v1/virtual-services/web/real-servers/"+a+"/drain", ""); r.code != http.StatusOK {
		t.Fatalf("drain: %v", r)
	}
	r := td.call(t, http.MethodPost, "/api/v1/virtual-services/web/real-servers/"+strings.ReplaceAll(a, ":", "%3A")+"/disable", "")
	var got admin.ServerState
	if r.code != http.StatusOK || json.Unmarshal(r.body, &got) != nil || got != (admin.ServerState{VirtualService: "web", RealServer: a, State: "disabled"}) {
		t.Errorf("disable with an escaped colon: %v", r)
	}
	if s := td.status(t, "").Find("web", a); s.State != "disabled" || s.Available {
		t.Errorf("after disable: %+v", s)
	}
	r = td.call(t, http.MethodPost, "/api/v1/virtual-services/web/real-servers/"+a+"/drain", "")
	if r.code != http.StatusOK || td.status(t, "").Find("web", a).State != "draining" {
		t.Errorf("drain: %v", r)
	}
	// New connections go to b now.
	for range 3 {
		if g, err := testenv.Greeting(fmt.Sprintf("127.0.0.1:%d", port)); err != nil || g != "b" {
			t.Errorf("with a draining: greeting %q, %v", g, err)
		}
	}
	r = td.call(t, http.MethodPost, "/api/v1/virtual-services/web/real-servers/"+a+"/enable", "")
	if r.code != http.StatusOK || td.status(t, "").Find("web", a).State != "enabled" {
		t.Errorf("enable: %v", r)
	}

	// Bad input and unknown names.
	cases := []struct {
		method, path string
		code         int
		want         string
	}{
		{"POST", "/api/v1/virtual-services/nope/real-servers/" + a + "/drain", 404, `virtual service "nope"`},
		{"POST", "/api/v1/virtual-services/web/real-servers/10.9.9.9/drain", 404, `real server "10.9.9.9"`},
		{"POST", "/api/v1/virtual-services/web/real-servers/" + a + "/explode", 400, `unknown action "explode"`},
		{"GET", "/api/v1/virtual-services/web/real-servers/" + a + "/drain", 405, "use POST"},
		{"POST", "/api/v1/status", 405, "use GET"},
		{"GET", "/api/v1/reload", 405, "use POST"},
		{"GET", "/api/v1/nothing", 404, "no such endpoint"},
		{"POST", "/api/v1/virtual-services/web/real-servers/" + a, 404, "no such endpoint"},
	}
	for _, c := range cases {
		wantJSONError(t, c.method+" "+c.path, td.call(t, c.method, c.path, ""), c.code, c.want)
	}

	// A cross-origin browser POST is refused.
	r = td.call(t, http.MethodPost, "/api/v1/virtual-services/web/real-servers/"+a+"/drain", "",
		"Origin", "http://attacker.example", "Sec-Fetch-Site", "cross-site")
	if r.code != http.StatusForbidden {
		t.Errorf("cross-origin POST: %v", r)
	}
	r = td.call(t, http.MethodPost, "/api/v1/real-servers/127.0.0.1/drain", "",
		"Origin", "http://attacker.example", "Sec-Fetch-Site", "cross-site")
	if r.code != http.StatusForbidden {
		t.Errorf("cross-origin POST by address: %v", r)
	}
	if s := td.status(t, "").Find("web", a); s.State != "enabled" {
		t.Errorf("the cross-origin POST changed the state: %+v", s)
	}
}

func TestAdminPlainEndpoints(t *testing.T) {
	td := startDaemon(t, "", testenv.LoopbackService("web", testenv.FreeTCPPort(t), testenv.EchoServer(t, "a")))
	for _, c := range []struct {
		path, want, ctype string
	}{
		{"/healthz", "ok\n", "text/plain"},
		{"/readyz", "ready\n", "text/plain"},
		{"/", "<title>pairlb status</title>", "text/html"},
		{"/ui/app.js", "/api/v1/status", "javascript"},
		{"/ui/style.css", "--green", "text/css"},
		{"/metrics", "pairlb_connections_total", ""},
		{"/debug/pprof/", "goroutine", "text/html"},
		{"/debug/pprof/cmdline", "", ""},
	} {
		r := td.call(t, http.MethodGet, c.path, "")
		if r.code != http.StatusOK || !strings.Contains(string(r.body), c.want) || !strings.Contains(r.header.Get("Content-Type"), c.ctype) {
			t.Errorf("GET %s: %d %q, body %.200q", c.path, r.code, r.header.Get("Content-Type"), r.body)
		}
	}
	if r := td.call(t, http.MethodGet, "/nope", ""); r.code != http.StatusNotFound {
		t.Errorf("GET /nope: %v", r)
	}
}

func TestAdminToken(t *testing.T) {
	const token = "s3cret-token"
	a := testenv.EchoServer(t, "a")
	td := startDaemon(t, token, testenv.LoopbackService("web", testenv.FreeTCPPort(t), a))
	guarded := []struct{ method, path string }{
		{"GET", "/metrics"},
		{"GET", "/api/v1/status"},
		{"POST", "/api/v1/virtual-services/web/real-servers/" + a + "/drain"},
		{"POST", "/api/v1/real-servers/127.0.0.1/drain"},
		{"GET", "/api/v1/real-servers/127.0.0.1"},
		{"POST", "/api/v1/reload"},
		{"GET", "/api/v1/nothing"},
		{"GET", "/debug/pprof/"},
		{"GET", "/debug/pprof/cmdline"},
	}
	for _, g := range guarded {
		for _, tok := range []string{"", "wrong"} {
			r := td.call(t, g.method, g.path, tok)
			wantJSONError(t, fmt.Sprintf("%s %s with token %q", g.method, g.path, tok), r, http.StatusUnauthorized, "bearer token")
			if r.header.Get("WWW-Authenticate") == "" {
				t.Errorf("%s %s: 401 without WWW-Authenticate", g.method, g.path)
			}
		}
		r := td.call(t, g.method, g.path, token)
		if r.code == http.StatusUnauthorized || r.code >= 500 {
			t.Errorf("%s %s with the token: %v", g.method, g.path, r)
		}
	}
	for _, open := range []string{"/healthz", "/readyz", "/", "/ui/app.js"} {
		if r := td.call(t, http.MethodGet, open, ""); r.code != http.StatusOK {
			t.Errorf("GET %s without a token: %v", open, r)
		}
	}
	// The drain above went through.
	if s := td.status(t, token).Find("web", a); s == nil || s.State != "draining" {
		t.Errorf("after the drain with the token: %+v", s)
	}

	// A reload reads the token file again: the old token stops working.
	tf := filepath.Join(filepath.Dir(td.file), "token")
	if err := os.WriteFile(tf, []byte("new-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := td.call(t, http.MethodPost, "/api/v1/reload", token); r.code != http.StatusOK {
		t.Fatalf("reload: %v", r)
	}
	if r := td.call(t, http.MethodGet, "/api/v1/status", token); r.code != http.StatusUnauthorized {
		t.Errorf("the old token after the reload: %v", r)
	}
	if r := td.call(t, http.MethodGet, "/api/v1/status", "new-token"); r.code != http.StatusOK {
		t.Errorf("the new token after the reload: %v", r)
	}
	// An empty token file is a rejected reload; the token in force stays.
	if err := os.WriteFile(tf, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := td.call(t, http.MethodPost, "/api/v1/reload", "new-token")
	wantJSONError(t, "reload with an empty token file", r, http.StatusUnprocessableEntity, "global.admin_token_file")
	if r := td.call(t, http.MethodGet, "/api/v1/status", "new-token"); r.code != http.StatusOK {
		t.Errorf("the token after a rejected reload: %v", r)
	}
}

// metricLines returns the exposition lines of /metrics that start with prefix.
func metricLines(t *testing.T, td *testDaemon, prefix string) []string {
	t.Helper()
	r := td.call(t, http.MethodGet, "/metrics", "")
	if r.code != http.StatusOK {
		t.Fatalf("metrics: %v", r)
	}
	var out []string
	for _, l := range strings.Split(string(r.body), "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return out
}

func TestAdminReloadAndDaemonMetrics(t *testing.T) {
	a, b := testenv.EchoServer(t, "a"), testenv.EchoServer(t, "b")
	p1, p2 := testenv.FreeTCPPort(t), testenv.FreeTCPPort(t)
	td := startDaemon(t, "", tcpHealthService("web", p1, a, b))
	testenv.WaitGreeting(t, fmt.Sprintf("127.0.0.1:%d", p1), "a")

	// Health checks of both servers are observed.
	deadline := time.Now().Add(10 * time.Second)
	for n := 0; n < 2; {
		n = testutil.CollectAndCount(td.d.metrics.healthDuration)
		if time.Now().After(deadline) {
			t.Fatalf("health histogram has %d series after 10s, want 2", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	hash1 := td.d.Running().Hash
	if got := testutil.ToFloat64(td.d.metrics.configHash.WithLabelValues(hash1)); got != 1 {
		t.Errorf("pairlb_config_hash{hash=%q} = %v", hash1, got)
	}

	// A file that does not validate: 422 with every problem, counted as a failure.
	td.write(t, tcpHealthService("web", p1, a, b)+"  - name: broken\n    vip: 127.0.0.1\n    ports: [\"70000/tcp\"]\n")
	r := td.call(t, http.MethodPost, "/api/v1/reload", "")
	wantJSONError(t, "invalid reload", r, http.StatusUnprocessableEntity, "70000")
	if got := testutil.ToFloat64(td.d.metrics.reloads.WithLabelValues("failure")); got != 1 {
		t.Errorf("failed reloads = %v, want 1", got)
	}
	if got := testutil.ToFloat64(td.d.metrics.reloadOK); got != 0 {
		t.Errorf("pairlb_config_last_reload_successful = %v after a failure", got)
	}

	// A valid file removing b and adding a service: 200, new hash, b's health series gone.
	td.write(t, tcpHealthService("web", p1, a)+testenv.LoopbackService("other", p2, b))
	r = td.call(t, http.MethodPost, "/api/v1/reload", "")
	var rr admin.ReloadResult
	if r.code != http.StatusOK || json.Unmarshal(r.body, &rr) != nil || rr.Result != "ok" || rr.VirtualServices != 2 || rr.ConfigHash == hash1 {
		t.Fatalf("valid reload: %v", r)
	}
	testenv.WaitGreeting(t, fmt.Sprintf("127.0.0.1:%d", p2), "b")
	if got := testutil.ToFloat64(td.d.metrics.reloads.WithLabelValues("success")); got != 1 {
		t.Errorf("successful reloads = %v, want 1", got)
	}
	if lines := metricLines(t, td, "pairlb_config_hash{"); len(lines) != 1 || !strings.Contains(lines[0], rr.ConfigHash) {
		t.Errorf("pairlb_config_hash after the reload: %q", lines)
	}
	for _, l := range metricLines(t, td, "pairlb_health_check_duration_seconds") {
		if strings.Contains(l, `real_server="`+b+`"`) {
			t.Errorf("a removed target's health series remains: %s", l)
		}
	}
	if lines := metricLines(t, td, `pairlb_real_server_up{real_server="`+b+`",virtual_service="web"}`); len(lines) != 0 {
		t.Errorf("a removed real server's series remain: %q", lines)
	}
	if lines := metricLines(t, td, `pairlb_connections_total{port="`); len(lines) != 2 {
		t.Errorf("pairlb_connections_total: %q", lines)
	}

	// Every family of the daemon's registry, Go and process collectors included, passes promlint.
	for _, want := range []string{"go_goroutines", "process_cpu_seconds_total", "go_build_info", "pairlb_build_info",
		"pairlb_config_reloads_total", "pairlb_health_check_duration_seconds_bucket"} {
		if len(metricLines(t, td, want)) == 0 {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	mfs, err := td.d.reg.Gather()
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

// TestReadyzDuringDrain: once the daemon is told to stop, /readyz answers 503 (so keepalived
// moves the VIPs) while the admin server stays up until the open connections have finished.
func TestReadyzDuringDrain(t *testing.T) {
	port := testenv.FreeTCPPort(t)
	td := startDaemon(t, "", testenv.LoopbackService("web", port, testenv.EchoServer(t, "a")))
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 2)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	td.cancel()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := td.call(t, http.MethodGet, "/readyz", "")
		if r.code == http.StatusServiceUnavailable {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz while draining: %v", r)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st := td.status(t, ""); st.Ready || st.VirtualServices[0].Active != 1 {
		t.Errorf("status while draining: ready %v active %d", st.Ready, st.VirtualServices[0].Active)
	}
	c.Close()
	select {
	case err := <-td.done:
		if err != nil {
			t.Errorf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after the last connection closed")
	}
	td.cancel = nil
	if _, err := http.Get(td.admin + "/healthz"); err == nil {
		t.Error("the admin server still answers after run returned")
	}
}

// TestAdminListenerTaken: a daemon whose admin address is taken fails to start, naming the
// address, before it opens any VIP listener; the VIP's port stays free.
func TestAdminListenerTaken(t *testing.T) {
	dir := t.TempDir()
	head, addr := adminHead(t, dir, "")
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	file := filepath.Join(dir, "pairlb.yaml")
	vip := testenv.FreeTCPPort(t)
	if err := os.WriteFile(file, []byte(head+testenv.LoopbackService("web", vip, testenv.EchoServer(t, "a"))), 0o644); err != nil {
		t.Fatal(err)
	}
	d, err := New(Options{Log: slog.New(slog.DiscardHandler), Path: file})
	if err == nil {
		d.admin.Close()
		t.Fatal("New succeeded with its admin address taken")
	}
	if !strings.Contains(err.Error(), "global.admin "+addr) {
		t.Errorf("the error does not name global.admin and %s: %v", addr, err)
	}
	vl, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", vip))
	if err != nil {
		t.Fatalf("the VIP port is held after the failed start: %v", err)
	}
	vl.Close()
}

// TestGrafanaDashboardMetrics: every pairlb metric the dashboard in deploy/ queries is one the
// daemon exports, so that a rename cannot leave the dashboard blank.
func TestGrafanaDashboardMetrics(t *testing.T) {
	raw, err := os.ReadFile("../deploy/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash map[string]any
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("deploy/grafana-dashboard.json: %v", err)
	}
	td := startDaemon(t, "", tcpHealthService("web", testenv.FreeTCPPort(t), testenv.EchoServer(t, "a")))
	deadline := time.Now().Add(10 * time.Second)
	for testutil.CollectAndCount(td.d.metrics.healthDuration) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no health check observed after 10s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	mfs, err := td.d.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	for _, mf := range mfs {
		exported[mf.GetName()] = true
	}
	used := regexp.MustCompile(`\b((?:pairlb|process|go)_[a-z_]+)`).FindAllStringSubmatch(string(raw), -1)
	if len(used) < 10 {
		t.Fatalf("the dashboard queries only %d metrics", len(used))
	}
	for _, m := range used {
		name := m[1]
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")
		switch {
		case exported[name] || exported[base]:
		case strings.HasPrefix(name, "pairlb_pair_"): // the pair watcher's, registered when the file has a pair
		default:
			t.Errorf("the dashboard queries %s, which the daemon does not export", name)
		}
	}
}

// TestAdminAddressFixedUntilRestart: a reload that moves global.admin is applied otherwise; the
// admin listener stays where it is (and says so in the log) until pairlb restarts.
func TestAdminAddressFixedUntilRestart(t *testing.T) {
	be := testenv.EchoServer(t, "a")
	td := startDaemon(t, "", testenv.LoopbackService("web", testenv.FreeTCPPort(t), be))
	old := strings.TrimPrefix(td.admin, "http://")
	moved := fmt.Sprintf("127.0.0.1:%d", testenv.FreeTCPPort(t))
	td.head = strings.Replace(td.head, "admin: "+old, "admin: "+moved, 1)
	p2 := testenv.FreeTCPPort(t)
	td.write(t, testenv.LoopbackService("web", p2, be))
	if r := td.call(t, http.MethodPost, "/api/v1/reload", ""); r.code != http.StatusOK {
		t.Fatalf("reload: %v", r)
	}
	testenv.WaitGreeting(t, fmt.Sprintf("127.0.0.1:%d", p2), "a")
	if r := td.call(t, http.MethodGet, "/readyz", ""); r.code != http.StatusOK {
		t.Errorf("the admin listener after the reload: %v", r)
	}
	if c, err := net.DialTimeout("tcp", moved, time.Second); err == nil {
		c.Close()
		t.Errorf("something listens on the new admin address %s", moved)
	}
}
