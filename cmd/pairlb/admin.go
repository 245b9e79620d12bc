package main

// The admin HTTP server: metrics, liveness and readiness, the status API and page, run-time
// server states, reload and pprof. It listens on global.admin, which is fixed until the process
// restarts (a reload that changes it is applied otherwise and logs a warning); the token of
// global.admin_token_file is read at start and again on every reload.
//
// Authentication: when a token file is set, every endpoint needs `Authorization: Bearer TOKEN`
// except GET /healthz and GET /readyz (they say only "ok" or "not ready", and keepalived's track
// script calls /readyz with a plain curl) and the static status page at / and /ui/ (which holds
// no data: it asks for the token and sends it with each API call).

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
	"github.com/pairlb/pairlb/lb"
)

//go:embed ui
var uiFiles embed.FS

// adminState is what the admin server shares with the rest of the daemon.
type adminState struct {
	token atomic.Pointer[[]byte] // nil: no token required
	ready atomic.Bool            // serving: run has started and its context has not ended
	addr  netip.AddrPort         // where the listener is bound; guarded by daemon.mu
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
	if d.admin.addr.IsValid() && cfg.Global.Admin != d.admin.addr {
		d.log.Warn("global.admin changed: the admin listener stays where it is until pairlb restarts",
			"listening", d.admin.addr.String(), "configured", cfg.Global.Admin.String())
	}
}

// startAdmin opens the admin listener and serves it until the returned stop is called. It is
// stopped after the balancer has drained, not when ctx ends, so that during the drain /readyz
// answers 503 and the status still shows the connections that are closing. ready follows ctx.
func (d *daemon) startAdmin(ctx context.Context) (stop func(), err error) {
	d.mu.Lock()
	addr := d.cfg.Global.Admin
	d.mu.Unlock()
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr.String())
	if err != nil {
		return func() {}, fmt.Errorf("admin listener (global.admin): %w", err)
	}
	listeners := []net.Listener{ln}
	// The pair peer reaches this node's API on its own address (pair.nodes[].admin), so
	// global.admin can stay on loopback rather than listen on every VIP.
	if pa := pairAdminAddr(d.cfg); pa.IsValid() && pa != addr && !covers(addr, pa) {
		pln, err := lc.Listen(ctx, "tcp", pa.String())
		if err != nil {
			ln.Close()
			return func() {}, fmt.Errorf("admin listener for the pair peer (pair.nodes[].admin): %w", err)
		}
		listeners = append(listeners, pln)
		if d.admin.token.Load() == nil {
			d.log.Warn("the admin API listens for the pair peer without a token; set global.admin_token_file", "addr", pa.String())
		}
	}
	d.mu.Lock()
	d.admin.addr = addr
	d.mu.Unlock()

	srv := &http.Server{
		Handler:           d.adminHandler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(d.log.Handler(), slog.LevelWarn),
	}
	var serving sync.WaitGroup
	for _, l := range listeners {
		serving.Add(1)
		go func() {
			defer serving.Done()
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
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
	// otherwise drain servers through an operator's browser.
	return http.NewCrossOriginProtection().Handler(mux)
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

// handleReady answers 200 while the configuration is loaded and its listeners are open, 503
// before that and from the moment the daemon starts to stop.
func (d *daemon) handleReady(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if !d.admin.ready.Load() || d.lb.Config() == nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "not ready")
		return
	}
	fmt.Fprintln(w, "ready")
}

// statusResponse is GET /api/v1/status: the balancer's view of every service merged with the
// health monitor's view of every real server.
type statusResponse struct {
	Version         string        `json:"version"`
	ConfigFile      string        `json:"config_file"`
	ConfigHash      string        `json:"config_hash"`
	Ready           bool          `json:"ready"`
	VirtualServices []serviceView `json:"virtual_services"`
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
}

func (d *daemon) status() statusResponse {
	type key struct{ vs, rs string }
	hs := map[key]health.TargetStatus{}
	for _, h := range d.health.Status() {
		hs[key{h.Service, h.Server}] = h
	}
	out := statusResponse{Version: version, Ready: d.admin.ready.Load(), VirtualServices: []serviceView{}}
	if cfg := d.lb.Config(); cfg != nil {
		out.ConfigFile, out.ConfigHash = cfg.Path, cfg.Hash
	}
	for _, s := range d.lb.Status() {
		v := serviceView{ServiceStatus: s, RealServers: []serverView{}}
		for _, r := range s.RealServers {
			sv := serverView{ServerStatus: r, Available: r.State == "enabled" && r.Up && r.Weight > 0}
			if h, ok := hs[key{s.Name, r.Address}]; ok {
				hv := &healthView{Check: string(h.Check), Address: h.Addr.String(), Up: h.Up, Since: h.Since,
					LastError: h.LastError, LastDurationSeconds: h.LastDuration.Seconds()}
				if !h.LastCheck.IsZero() {
					lc := h.LastCheck
					hv.LastCheck = &lc
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
