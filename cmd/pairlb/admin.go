package main

// The admin HTTP server: metrics, liveness and readiness, the status API and page, run-time
// server states, reload and pprof. It listens on global.admin, which is fixed until the process
// restarts (a reload that changes it is applied otherwise and logs a warning); the token of
// global.admin_token_file is read at start and again on every reload.
//
// Authentication: when a token file is set, every endpoint needs `Authorization: Bearer TOKEN`
// except GET /healthz and GET /readyz (they say only "ok", "ready" or why not, and keepalived's track
// script calls /readyz with a plain curl) and the static status page at / and /ui/ (which holds
// no data: it asks for the token and sends it with each API call).
//
// Host rule (DNS rebinding): a page in a browser that can reach the admin address could
// otherwise read and change state through a name of its own that resolves to that address. A
// request is answered only when its Host is an IP address, localhost or a name under
// .localhost, a name /etc/hosts maps to loopback, or a name in global.admin_hosts; anything else
// gets 421 Misdirected Request on every endpoint, token or not.

import (
	"context"
	"crypto/subtle"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pairlb/pairlb/config"
	"github.com/pairlb/pairlb/health"
	"github.com/pairlb/pairlb/internal/httpbound"
	"github.com/pairlb/pairlb/lb"
	"github.com/pairlb/pairlb/routing"
)

//go:embed ui
var uiFiles embed.FS

// adminState is what the admin server shares with the rest of the daemon.
type adminState struct {
	token atomic.Pointer[[]byte] // nil: no token required
	ready atomic.Bool            // serving: run has started and its context has not ended
	// checked: the first round of health checks is done and the balancer accepts (or is
	// about to: connections queue in the kernel until its loops run).
	checked atomic.Bool
	addr    netip.AddrPort // where the listener is bound; guarded by daemon.mu
	hosts   atomic.Pointer[map[string]bool]
	// listeners are open from listenAdmin until startAdmin serves them; guarded by daemon.mu.
	listeners []net.Listener
}

// readAdminToken is the bearer token of cfg's global.admin_token_file; none is nil. config.Load
// has read it, with its checks, so that validate reports the same problems as run.
func readAdminToken(cfg *config.Config) ([]byte, error) {
	if cfg.Global.AdminTokenFile != "" && cfg.Global.AdminToken == nil {
		return nil, fmt.Errorf("%s: global.admin_token_file %s was not read (the configuration was not loaded with config.Load)", cfg.Path, cfg.Global.AdminTokenFile)
	}
	return cfg.Global.AdminToken, nil
}

// setAdminToken installs the token read for cfg and warns about what a reload cannot change.
// d.mu is held.
func (d *daemon) setAdminToken(cfg *config.Config, tok []byte) {
	if tok == nil {
		d.admin.token.Store(nil)
	} else {
		d.admin.token.Store(&tok)
	}
	d.setAdminHosts(cfg)
	if d.admin.addr.IsValid() && cfg.Global.Admin != d.admin.addr {
		d.log.Warn("global.admin changed: the admin listener stays where it is until pairlb restarts",
			"listening", d.admin.addr.String(), "configured", cfg.Global.Admin.String())
	}
}

// listenAdmin opens the admin listeners: global.admin and, in a pair, this node's address
// for the peer. newDaemon opens them before the balancer opens any listener, so that a taken
// admin address stops pairlb at once, naming the address, before it has served anything.
func (d *daemon) listenAdmin() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.admin.listeners != nil {
		return nil
	}
	addr := d.cfg.Global.Admin
	var lc net.ListenConfig
	ln, err := lc.Listen(context.Background(), "tcp", addr.String())
	if err != nil {
		return fmt.Errorf("admin listener (global.admin %s): %w", addr, err)
	}
	listeners := []net.Listener{ln}
	// The pair peer reaches this node's API on its own address (pair.nodes[].admin), so
	// global.admin can stay on loopback rather than listen on every VIP.
	if pa := pairAdminAddr(d.cfg); pa.IsValid() && pa != addr && !covers(addr, pa) {
		pln, err := lc.Listen(context.Background(), "tcp", pa.String())
		if err != nil {
			ln.Close()
			return fmt.Errorf("admin listener for the pair peer (pair.nodes[].admin %s): %w", pa, err)
		}
		listeners = append(listeners, pln)
		if d.admin.token.Load() == nil {
			d.log.Warn("the admin API listens for the pair peer without a token; set global.admin_token_file", "addr", pa.String())
		}
	}
	d.admin.addr = addr
	d.admin.listeners = listeners
	return nil
}

// closeAdmin closes admin listeners that were opened but never served (newDaemon failed).
func (d *daemon) closeAdmin() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, l := range d.admin.listeners {
		l.Close()
	}
	d.admin.listeners = nil
}

// adminMaxConns bounds the admin server's connections, as the redirector's: a browser opens six
// per tab, Prometheus, the peer and keepalived's checks one or two each. Beyond it, new
// connections wait in the kernel's accept queue until a place frees.
const adminMaxConns = 128

// startAdmin serves the admin listeners (opening them if newDaemon did not) until the returned
// stop is called. It is stopped after the balancer has drained, not when ctx ends, so that
// during the drain /readyz answers 503 and the status still shows the connections that are
// closing. ready follows ctx.
func (d *daemon) startAdmin(ctx context.Context) (stop func(), err error) {
	if err := d.listenAdmin(); err != nil {
		return func() {}, err
	}
	d.mu.Lock()
	listeners := d.admin.listeners
	d.admin.listeners = nil
	d.mu.Unlock()

	// The bounds the redirector keeps (httpbound): small headers, a header timeout, an error
	// log on slog that a client cannot flood. No write timeout: a pprof profile or trace takes
	// its time.
	srv := httpbound.NewServer(d.adminHandler(), d.log, "admin")
	srv.IdleTimeout = 2 * time.Minute
	var serving sync.WaitGroup
	for _, l := range listeners {
		serving.Add(1)
		go func() {
			defer serving.Done()
			if err := srv.Serve(httpbound.Limit(l, adminMaxConns, nil)); err != nil && !errors.Is(err, http.ErrServerClosed) {
				d.log.Error("admin server stopped", "addr", l.Addr().String(), "err", err)
			}
		}()
	}
	done := make(chan struct{})
	go func() {
		serving.Wait()
		close(done)
	}()
	d.admin.ready.Store(true)
	unwatch := context.AfterFunc(ctx, func() { d.admin.ready.Store(false) })
	for _, l := range listeners {
		d.log.Info("admin listener open", "addr", l.Addr().String(), "token", d.admin.token.Load() != nil)
	}

	var once sync.Once
	return func() {
		once.Do(func() {
			unwatch()
			d.admin.ready.Store(false)
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := srv.Shutdown(sctx); err != nil {
				_ = srv.Close() // a pprof profile or a slow client: cut it
			}
			<-done
		})
	}, nil
}

// covers reports whether a listener on a also receives connections for b (a wildcard address on
// the same port).
func covers(a, b netip.AddrPort) bool {
	return a.Port() == b.Port() && a.Addr().IsUnspecified() && (a.Addr().Is6() || b.Addr().Is4())
}

// pairAdminAddr is this node's admin address in the pair section, if the file has a pair and
// this box holds one of a node's addresses.
func pairAdminAddr(cfg *config.Config) netip.AddrPort {
	if cfg == nil || cfg.Pair == nil {
		return netip.AddrPort{}
	}
	name, err := pairNode(cfg, "")
	if err != nil {
		return netip.AddrPort{}
	}
	for _, n := range cfg.Pair.Nodes {
		if n.Name == name {
			return n.Admin
		}
	}
	return netip.AddrPort{}
}

// adminHandler routes the admin endpoints.
func (d *daemon) adminHandler() http.Handler {
	mux := http.NewServeMux()
	auth := d.requireToken

	ui, _ := fs.Sub(uiFiles, "ui")
	mux.Handle("GET /{$}", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeFileFS(w, r, ui, "index.html")
	}))
	mux.Handle("GET /ui/", http.StripPrefix("/ui/", http.FileServerFS(ui)))

	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", d.handleReady)
	mux.Handle("GET /metrics", auth(promhttp.HandlerFor(d.reg, promhttp.HandlerOpts{
		ErrorLog:          slog.NewLogLogger(d.log.Handler(), slog.LevelError),
		EnableOpenMetrics: true,
	})))

	// The API checks methods itself so that every answer under /api/ is JSON.
	mux.Handle("/api/v1/status", auth(method(http.MethodGet, d.handleStatus)))
	mux.Handle("/api/v1/virtual-services/{name}/real-servers/{address}/{action}", auth(method(http.MethodPost, d.handleServerAction)))
	mux.Handle("/api/v1/reload", auth(method(http.MethodPost, d.handleReload)))
	mux.Handle("/api/", auth(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path)
	})))

	mux.Handle("/debug/pprof/", auth(http.HandlerFunc(pprof.Index)))
	mux.Handle("/debug/pprof/cmdline", auth(http.HandlerFunc(pprof.Cmdline)))
	mux.Handle("/debug/pprof/profile", auth(http.HandlerFunc(pprof.Profile)))
	mux.Handle("/debug/pprof/symbol", auth(http.HandlerFunc(pprof.Symbol)))
	mux.Handle("/debug/pprof/trace", auth(http.HandlerFunc(pprof.Trace)))

	// Browsers may not POST here from another origin: without a token, a page elsewhere could
	// otherwise drain servers through an operator's browser. Nor may a page reach the API by a
	// name of its own (checkHost).
	return d.checkHost(http.NewCrossOriginProtection().Handler(mux))
}

// checkHost answers 421 to a request whose Host is not one of this API's (see the Host rule
// at the top of the file), before anything else looks at it.
func (d *daemon) checkHost(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !d.hostAllowed(r.Host) {
			writeError(w, http.StatusMisdirectedRequest, fmt.Sprintf(
				"host %q is not this admin API's: use its IP address, localhost, or a name listed in global.admin_hosts", r.Host))
			return
		}
		h.ServeHTTP(w, r)
	})
}

// hostAllowed applies the Host rule. A rebinding attack needs a name of its own, so every IP
// address passes; names pass only when they are the box's own by /etc/hosts or the file.
func (d *daemon) hostAllowed(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")), ".")
	if host == "" {
		return false
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return true
	}
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	names := d.admin.hosts.Load()
	return names != nil && (*names)[host]
}

// hostsFile is where the names that map to loopback are read; a variable for the tests.
var hostsFile = "/etc/hosts"

// maxHostsFile bounds what is read of it.
const maxHostsFile = 1 << 20

// setAdminHosts makes the names the admin API accepts: global.admin_hosts and the names
// hostsFile maps to loopback, read now (at start and on every reload). It never resolves a
// name: a rebinding name does resolve to 127.0.0.1, that is the attack.
func (d *daemon) setAdminHosts(cfg *config.Config) {
	names := map[string]bool{}
	for _, h := range cfg.Global.AdminHosts {
		names[strings.TrimSuffix(strings.ToLower(h), ".")] = true
	}
	loop, err := loopbackNames(hostsFile)
	if err != nil {
		d.log.Warn("the admin API accepts no name from the hosts file", "file", hostsFile, "err", err)
	}
	for _, n := range loop {
		names[n] = true
	}
	d.admin.hosts.Store(&names)
}

// loopbackNames returns the names a hosts file maps to a loopback address. A missing file has
// none; one that is not a regular file or is larger than maxHostsFile is refused.
func loopbackNames(path string) ([]string, error) {
	b, err := config.ReadFile(path, maxHostsFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, line := range strings.Split(string(b), "\n") {
		line, _, _ = strings.Cut(line, "#")
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		if a, err := netip.ParseAddr(fields[0]); err != nil || !a.Unmap().IsLoopback() {
			continue
		}
		for _, n := range fields[1:] {
			names = append(names, strings.TrimSuffix(strings.ToLower(n), "."))
		}
	}
	return names, nil
}

// requireToken answers 401 unless the request carries the configured bearer token.
func (d *daemon) requireToken(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if tok := d.admin.token.Load(); tok != nil {
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), *tok) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="pairlb"`)
				writeError(w, http.StatusUnauthorized, "missing or wrong bearer token (see global.admin_token_file)")
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

func method(m string, f http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != m {
			w.Header().Set("Allow", m)
			writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed; use %s", r.Method, m))
			return
		}
		f(w, r)
	})
}

type apiError struct {
	Error  string   `json:"error"`
	Errors []string `json:"errors,omitempty"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, apiError{Error: msg})
}

// handleReady answers 200 while the configuration is loaded, its listeners are open and the
// first round of health checks is done, so that a client sent here as soon as it says ready
// finds the servers that passed; 503 before that and from the moment the daemon starts to stop.
func (d *daemon) handleReady(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	switch {
	case !d.admin.ready.Load() || d.lb.Config() == nil:
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "not ready")
	case !d.admin.checked.Load():
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "not ready: first health checks running")
	default:
		fmt.Fprintln(w, "ready")
	}
}

// statusResponse is GET /api/v1/status: the balancer's view of every service merged with the
// health monitor's view of every real server.
type statusResponse struct {
	Version         string        `json:"version"`
	ConfigFile      string        `json:"config_file"`
	ConfigHash      string        `json:"config_hash"`
	Ready           bool          `json:"ready"`
	VirtualServices []serviceView `json:"virtual_services"`
	// Routing is nil when pairlb changes no kernel state (no CAP_NET_ADMIN, nothing to route).
	Routing *routingView `json:"routing,omitempty"`
}

// routingView is the routing plan's state: how many units it has, and those not installed.
type routingView struct {
	Units    int              `json:"units"`
	Problems []routingProblem `json:"problems"`
}

type routingProblem struct {
	Kind     string    `json:"kind"` // gateway, address, transparency, cleanup
	Unit     string    `json:"unit"` // "gateway 198.18.1.1", "VIP address 198.18.1.100", "ipv6 transparency"
	Gateway  string    `json:"gateway,omitempty"`
	VIP      string    `json:"vip,omitempty"`
	Family   string    `json:"family,omitempty"`
	Services []string  `json:"virtual_services"`
	Reason   string    `json:"reason"`
	Since    time.Time `json:"since"`
}

func newRoutingView(m *routing.Manager) *routingView {
	v := &routingView{Units: len(m.Units()), Problems: []routingProblem{}}
	for _, p := range m.Problems() {
		rp := routingProblem{Kind: string(p.Kind), Unit: p.UnitID.String(), Family: string(p.Family),
			Services: p.Services, Reason: p.Reason, Since: p.Since}
		switch p.Kind {
		case routing.UnitGateway:
			rp.Gateway = p.Addr.String()
		case routing.UnitAddress:
			rp.VIP = p.Addr.String()
		}
		if rp.Services == nil {
			rp.Services = []string{}
		}
		v.Problems = append(v.Problems, rp)
	}
	return v
}

type serviceView struct {
	lb.ServiceStatus
	RealServers []serverView `json:"real_servers"` // shadows lb.ServiceStatus.RealServers
}

type serverView struct {
	lb.ServerStatus
	// Available: takes new connections (enabled, up and with a weight).
	Available bool        `json:"available"`
	Health    *healthView `json:"health,omitempty"` // nil: not probed
}

type healthView struct {
	Check               string     `json:"check"`
	Address             string     `json:"address"` // where the probe goes
	Up                  bool       `json:"up"`
	Since               time.Time  `json:"since"`
	LastCheck           *time.Time `json:"last_check,omitempty"` // nil before the first
	LastError           string     `json:"last_error,omitempty"`
	LastDurationSeconds float64    `json:"last_duration_seconds"`
	// Data-plane evidence against the server (health.Monitor.Suspect).
	Evidence       uint64     `json:"evidence,omitempty"`         // reports since the server was added
	LastEvidence   string     `json:"last_evidence,omitempty"`    // the latest recorded
	LastEvidenceAt *time.Time `json:"last_evidence_at,omitempty"` // nil without evidence
	Suspect        bool       `json:"suspect,omitempty"`          // probed at the fast interval until its state settles
}

func (d *daemon) status() statusResponse {
	type key struct{ vs, rs string }
	hs := map[key]health.TargetStatus{}
	for _, h := range d.health.Status() {
		hs[key{h.Service, h.Server}] = h
	}
	out := statusResponse{Version: version, Ready: d.admin.ready.Load() && d.admin.checked.Load(), VirtualServices: []serviceView{}}
	if cfg := d.lb.Config(); cfg != nil {
		out.ConfigFile, out.ConfigHash = cfg.Path, cfg.Hash
	}
	if d.routes != nil {
		out.Routing = newRoutingView(d.routes)
	}
	for _, s := range d.lb.Status() {
		v := serviceView{ServiceStatus: s, RealServers: []serverView{}}
		for _, r := range s.RealServers {
			sv := serverView{ServerStatus: r, Available: r.State == "enabled" && r.Up && r.Weight > 0}
			if h, ok := hs[key{s.Name, r.Address}]; ok {
				hv := &healthView{Check: string(h.Check), Address: h.Addr.String(), Up: h.Up, Since: h.Since,
					LastError: h.LastError, LastDurationSeconds: h.LastDuration.Seconds(),
					Evidence: h.Evidence, LastEvidence: h.LastEvidence, Suspect: h.Suspect}
				if !h.LastCheck.IsZero() {
					lc := h.LastCheck
					hv.LastCheck = &lc
				}
				if !h.LastEvidenceAt.IsZero() {
					le := h.LastEvidenceAt
					hv.LastEvidenceAt = &le
				}
				sv.Health = hv
			}
			v.RealServers = append(v.RealServers, sv)
		}
		if v.Ports == nil {
			v.Ports = []lb.PortStatus{}
		}
		out.VirtualServices = append(out.VirtualServices, v)
	}
	return out
}

func (d *daemon) handleStatus(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, d.status())
}

type serverActionResponse struct {
	VirtualService string `json:"virtual_service"`
	RealServer     string `json:"real_server"`
	State          string `json:"state"`
}

// handleServerAction is POST .../virtual-services/{name}/real-servers/{address}/{action}.
func (d *daemon) handleServerAction(w http.ResponseWriter, r *http.Request) {
	vs, rs, action := r.PathValue("name"), r.PathValue("address"), r.PathValue("action")
	if action != "enable" && action != "disable" && action != "drain" {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("unknown action %q: want enable, disable or drain", action))
		return
	}
	st, _ := lb.ParseState(action)
	if err := d.lb.SetServerState(vs, rs, st); err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, lb.ErrNotFound) {
			code = http.StatusNotFound
		}
		writeError(w, code, err.Error())
		return
	}
	d.log.Info("admin: real server state set", "virtual_service", vs, "real_server", rs, "state", st.String(), "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, serverActionResponse{VirtualService: vs, RealServer: rs, State: st.String()})
}

type reloadResponse struct {
	Result          string `json:"result"`
	ConfigHash      string `json:"config_hash"`
	VirtualServices int    `json:"virtual_services"`
}

// handleReload is POST /api/v1/reload: the same as SIGHUP, with the verdict in the answer.
// A file that does not validate is 422 with one entry per problem; a file that validates but
// cannot be applied (a port taken, say) is 500. Either way the running configuration stays.
func (d *daemon) handleReload(w http.ResponseWriter, r *http.Request) {
	d.log.Info("admin: reload requested", "remote", r.RemoteAddr)
	if err := d.reload(); err != nil {
		var errs config.Errors
		resp := apiError{Error: "reload rejected; the running configuration stays"}
		code := http.StatusInternalServerError
		if errors.As(err, &errs) {
			code = http.StatusUnprocessableEntity
			for _, e := range errs {
				resp.Errors = append(resp.Errors, e.Error())
			}
		} else {
			resp.Errors = []string{err.Error()}
		}
		writeJSON(w, code, resp)
		return
	}
	cfg := d.lb.Config()
	writeJSON(w, http.StatusOK, reloadResponse{Result: "ok", ConfigHash: cfg.Hash, VirtualServices: len(cfg.VirtualServices)})
}
