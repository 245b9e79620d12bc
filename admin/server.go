// Package admin is pairlb's admin API: the HTTP server (metrics, liveness and readiness, the
// status API and page, run-time server states, reload, pprof), the JSON it answers with, declared
// once here, and the one client that every command, the pair checker and the lab use to ask a
// running pairlb.
//
// It reports on and steers a running daemon through the Daemon interface; it holds no
// configuration of its own beyond what Configure gives it (the token and the names it answers
// to), and it changes nothing but through that interface.
//
// Authentication: when a token file is set, every endpoint needs `Authorization: Bearer TOKEN`
// except GET /healthz and GET /readyz (they say only "ok", "ready" or why not, and keepalived's
// track script calls /readyz with a plain curl) and the static status page at / and /ui/ (which
// holds no data: it asks for the token and sends it with each API call).
//
// Host rule (DNS rebinding): a page in a browser that can reach the admin address could
// otherwise read and change state through a name of its own that resolves to that address. A
// request is answered only when its Host is an IP address, localhost or a name under
// .localhost, a name /etc/hosts maps to loopback, or a name in global.admin_hosts; anything else
// gets 421 Misdirected Request on every endpoint, token or not.
package admin

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

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pairlb/pairlb/config"
	"github.com/pairlb/pairlb/health"
	"github.com/pairlb/pairlb/internal/httpbound"
	"github.com/pairlb/pairlb/lb"
	"github.com/pairlb/pairlb/routing"
)

//go:embed ui
var uiFiles embed.FS

// Daemon is what the admin API reports on and steers: the running pairlb.
type Daemon interface {
	// Running is the configuration in force; nil until the first one is applied.
	Running() *config.Config
	// Services is the balancer's view of every virtual service, in configuration order.
	Services() []lb.ServiceStatus
	// Health is the health monitor's view of every real server it probes.
	Health() []health.TargetStatus
	// Routing is the routing plan's units and those of them not installed; ok is false when
	// pairlb changes no kernel state (no CAP_NET_ADMIN and nothing to route).
	Routing() (units []routing.Unit, problems []routing.Problem, ok bool)
	// SetServerState sets a real server's run-time state (lb.ErrNotFound for an unknown name).
	SetServerState(service, server string, st lb.State) error
	// SetServerStateByAddr sets the run-time state of every real server addr names, in every
	// virtual service, at once (lb.ErrNotFound when none has it; nothing changes then).
	SetServerStateByAddr(addr lb.ServerAddr, st lb.State) ([]lb.ServerChange, error)
	// Reload reads the configuration file again and applies it, and returns the verdict (never
	// nil; Applied or Rejected), which LastReload answers from then on. On an error (a
	// config.Errors when the file does not validate) the running configuration stays as it was.
	Reload() (*Reload, error)
	// Reapply applies the running configuration again, reading nothing, and returns it; on an
	// error it stays as it was.
	Reapply() (*config.Config, error)
	// LastReload is the verdict on the last reading of the file, at start or by Reload; nil
	// before the first configuration is in force.
	LastReload() *Reload
	// ConfigOnDisk compares the file as it is now with the running configuration. It answers
	// in bounded time whatever the file system does (OnDiskUnknown when it cannot).
	ConfigOnDisk() ConfigOnDisk
}

// Options configure a Server.
type Options struct {
	Log     *slog.Logger
	Daemon  Daemon
	Version string              // pairlb's version, in the status
	Metrics prometheus.Gatherer // what /metrics exports
	// HostsFile is where the names that map to loopback are read (the Host rule);
	// /etc/hosts when empty.
	HostsFile string
}

// maxConns bounds the admin server's connections, as the redirector's: a browser opens six
// per tab, Prometheus, the peer and keepalived's checks one or two each. Beyond it, new
// connections wait in the kernel's accept queue until a place frees.
const maxConns = 128

// maxHostsFile bounds what is read of the hosts file.
const maxHostsFile = 1 << 20

// Server is the admin HTTP server. Its address is fixed by Listen until the process restarts;
// its token and the names it answers to follow Configure (at start and on every reload).
type Server struct {
	log       *slog.Logger
	d         Daemon
	version   string
	metrics   prometheus.Gatherer
	hostsFile string

	token atomic.Pointer[[]byte] // nil: no token required
	hosts atomic.Pointer[map[string]bool]
	// serving: Serve has started and its context has not ended. checked: the first round of
	// health checks is done and the balancer accepts (or is about to: connections queue in
	// the kernel until its loops run).
	serving atomic.Bool
	checked atomic.Bool

	mu   sync.Mutex
	addr netip.AddrPort // where the listener is bound
	// listeners are open from Listen until Serve serves them.
	listeners []net.Listener
}

// New returns a server for opt.Daemon that listens nowhere yet.
func New(opt Options) *Server {
	s := &Server{log: opt.Log, d: opt.Daemon, version: opt.Version, metrics: opt.Metrics, hostsFile: opt.HostsFile}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.hostsFile == "" {
		s.hostsFile = "/etc/hosts"
	}
	if s.metrics == nil {
		s.metrics = prometheus.NewRegistry()
	}
	return s
}

// Configure installs what of cfg the admin API follows: the token read for
// global.admin_token_file (none: no token required) and the names of the Host rule:
// global.admin_hosts and those the hosts file maps to loopback, read now. A changed
// global.admin is only logged: the listener stays where it is until pairlb restarts.
func (s *Server) Configure(cfg *config.Config) {
	if tok := cfg.Global.AdminToken; tok == nil {
		s.token.Store(nil)
	} else {
		s.token.Store(&tok)
	}
	s.setHosts(cfg.Global.AdminHosts)
	s.mu.Lock()
	addr := s.addr
	s.mu.Unlock()
	if addr.IsValid() && cfg.Global.Admin != addr {
		s.log.Warn("global.admin changed: the admin listener stays where it is until pairlb restarts",
			"listening", addr.String(), "configured", cfg.Global.Admin.String())
	}
}

// Listen opens the admin listeners: cfg's global.admin and, when valid, peer, this node's
// address for the pair peer (pair.nodes[].admin), so that global.admin can stay on loopback
// rather than listen on every VIP. The daemon opens them before the balancer opens any
// listener, so that a taken admin address stops pairlb at once, naming the address, before it
// has served anything. A second call does nothing.
func (s *Server) Listen(cfg *config.Config, peer netip.AddrPort) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.listeners != nil {
		return nil
	}
	addr := cfg.Global.Admin
	var lc net.ListenConfig
	ln, err := lc.Listen(context.Background(), "tcp", addr.String())
	if err != nil {
		return fmt.Errorf("admin listener (global.admin %s): %w", addr, err)
	}
	listeners := []net.Listener{ln}
	if peer.IsValid() && peer != addr && !covers(addr, peer) {
		pln, err := lc.Listen(context.Background(), "tcp", peer.String())
		if err != nil {
			ln.Close()
			return fmt.Errorf("admin listener for the pair peer (pair.nodes[].admin %s): %w", peer, err)
		}
		listeners = append(listeners, pln)
		if cfg.Global.AdminToken == nil {
			s.log.Warn("the admin API listens for the pair peer without a token; set global.admin_token_file", "addr", peer.String())
		}
	}
	s.addr = addr
	s.listeners = listeners
	return nil
}

// Close closes listeners that were opened but never served (the daemon failed to start).
func (s *Server) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.listeners {
		l.Close()
	}
	s.listeners = nil
}

// covers reports whether a listener on a also receives connections for b (a wildcard address on
// the same port).
func covers(a, b netip.AddrPort) bool {
	return a.Port() == b.Port() && a.Addr().IsUnspecified() && (a.Addr().Is6() || b.Addr().Is4())
}

// FirstChecksDone records that the first round of health checks is done: /readyz says ready
// from then on, while serving.
func (s *Server) FirstChecksDone() { s.checked.Store(true) }

// Ready is what the status says: serving, and the first round of checks done.
func (s *Server) Ready() bool { return s.serving.Load() && s.checked.Load() }

// Serve serves the listeners Listen opened until the returned stop is called. The daemon stops
// it after the balancer has drained, not when ctx ends, so that during the drain /readyz answers
// 503 and the status still shows the connections that are closing; serving follows ctx.
func (s *Server) Serve(ctx context.Context) (stop func(), err error) {
	s.mu.Lock()
	listeners := s.listeners
	s.listeners = nil
	s.mu.Unlock()
	if listeners == nil {
		return func() {}, errors.New("admin listener not open (Listen was not called or failed)")
	}

	// The bounds the redirector keeps: small headers, a header timeout, an error log on slog
	// that a client cannot flood. No write timeout: a pprof profile or trace takes its time.
	srv := httpbound.NewServer(s.Handler(), s.log, "admin")
	srv.IdleTimeout = 2 * time.Minute
	var serving sync.WaitGroup
	for _, l := range listeners {
		serving.Go(func() {
			if err := srv.Serve(httpbound.Limit(l, maxConns, nil)); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("admin server stopped", "addr", l.Addr().String(), "err", err)
			}
		})
	}
	s.serving.Store(true)
	unwatch := context.AfterFunc(ctx, func() { s.serving.Store(false) })
	for _, l := range listeners {
		s.log.Info("admin listener open", "addr", l.Addr().String(), "token", s.token.Load() != nil)
	}

	var once sync.Once
	return func() {
		once.Do(func() {
			unwatch()
			s.serving.Store(false)
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := srv.Shutdown(sctx); err != nil {
				_ = srv.Close() // a pprof profile or a slow client: cut it
			}
			serving.Wait()
		})
	}, nil
}

// Handler routes the admin endpoints, behind the Host rule and cross-origin protection.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	auth := s.requireToken

	ui, _ := fs.Sub(uiFiles, "ui")
	mux.Handle("GET /{$}", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeFileFS(w, r, ui, "index.html")
	}))
	mux.Handle("GET /ui/", http.StripPrefix("/ui/", http.FileServerFS(ui)))

	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", s.handleReady)
	mux.Handle("GET /metrics", auth(promhttp.HandlerFor(s.metrics, promhttp.HandlerOpts{
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelError),
		EnableOpenMetrics: true,
	})))

	// The API checks methods itself so that every answer under /api/ is JSON.
	mux.Handle(PathStatus, auth(method(http.MethodGet, s.handleStatus)))
	mux.Handle("/api/v1/virtual-services/{name}/real-servers/{address}/{action}", auth(method(http.MethodPost, s.handleServerAction)))
	mux.Handle(PathRealServers+"{address}", auth(method(http.MethodGet, s.handleAddress)))
	mux.Handle(PathRealServers+"{address}/{action}", auth(method(http.MethodPost, s.handleAddressAction)))
	mux.Handle(PathReload, auth(method(http.MethodPost, s.handleReload)))
	mux.Handle(PathReapply, auth(method(http.MethodPost, s.handleReapply)))
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
	return s.checkHost(http.NewCrossOriginProtection().Handler(mux))
}

// checkHost answers 421 to a request whose Host is not one of this API's (see the Host rule
// in the package comment), before anything else looks at it.
func (s *Server) checkHost(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.hostAllowed(r.Host) {
			writeError(w, http.StatusMisdirectedRequest, fmt.Sprintf(
				"host %q is not this admin API's: use its IP address, localhost, or a name listed in global.admin_hosts", r.Host))
			return
		}
		h.ServeHTTP(w, r)
	})
}

// hostAllowed applies the Host rule. A rebinding attack needs a name of its own, so every IP
// address passes; names pass only when they are the box's own by the hosts file or the
// configuration.
func (s *Server) hostAllowed(hostport string) bool {
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
	names := s.hosts.Load()
	return names != nil && (*names)[host]
}

// setHosts makes the names the admin API accepts: configured (global.admin_hosts) and the
// names the hosts file maps to loopback, read now. It never resolves a name: a rebinding name
// does resolve to 127.0.0.1, that is the attack.
func (s *Server) setHosts(configured []string) {
	names := map[string]bool{}
	for _, h := range configured {
		names[strings.TrimSuffix(strings.ToLower(h), ".")] = true
	}
	loop, err := loopbackNames(s.hostsFile)
	if err != nil {
		s.log.Warn("the admin API accepts no name from the hosts file", "file", s.hostsFile, "err", err)
	}
	for _, n := range loop {
		names[n] = true
	}
	s.hosts.Store(&names)
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
func (s *Server) requireToken(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if tok := s.token.Load(); tok != nil {
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

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, ErrorResponse{Error: msg})
}

// handleReady answers 200 while the configuration is loaded, its listeners are open and the
// first round of health checks is done, so that a client sent here as soon as it says ready
// finds the servers that passed; 503 before that and from the moment the daemon starts to stop.
func (s *Server) handleReady(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	switch {
	case !s.serving.Load() || s.d.Running() == nil:
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "not ready")
	case !s.checked.Load():
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "not ready: first health checks running")
	default:
		fmt.Fprintln(w, "ready")
	}
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.Status())
}

// handleServerAction is POST .../virtual-services/{name}/real-servers/{address}/{action}.
func (s *Server) handleServerAction(w http.ResponseWriter, r *http.Request) {
	vs, rs, action := r.PathValue("name"), r.PathValue("address"), r.PathValue("action")
	if action != "enable" && action != "disable" && action != "drain" {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("unknown action %q: want enable, disable or drain", action))
		return
	}
	st, _ := lb.ParseState(action)
	if err := s.d.SetServerState(vs, rs, st); err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, lb.ErrNotFound) {
			code = http.StatusNotFound
		}
		writeError(w, code, err.Error())
		return
	}
	s.log.Info("admin: real server state set", "virtual_service", vs, "real_server", rs, "state", st.String(), "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, ServerState{VirtualService: vs, RealServer: rs, State: st.String()})
}

// handleAddress is GET /api/v1/real-servers/{address}: every real server the address names,
// with what each has open; what `pairlb server wait-drained` polls.
func (s *Server) handleAddress(w http.ResponseWriter, r *http.Request) {
	a, ok := parseAddress(w, r.PathValue("address"))
	if !ok {
		return
	}
	st := AddressState{Address: a.String(), RealServers: []AddressServer{}}
	for _, vs := range s.d.Services() {
		for _, rs := range vs.RealServers {
			if a.MatchesKey(rs.Address) {
				st.RealServers = append(st.RealServers, AddressServer{VirtualService: vs.Name, RealServer: rs.Address,
					State: rs.State, Active: rs.Active, Drained: isDrained(rs.State, rs.Active)})
				st.Active += rs.Active
			}
		}
	}
	if len(st.RealServers) == 0 {
		writeError(w, http.StatusNotFound, fmt.Sprintf("real server address %s: in no virtual service", a))
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// handleAddressAction is POST /api/v1/real-servers/{address}/{action}: the state set on every
// real server the address names, in every virtual service, and the list of them.
func (s *Server) handleAddressAction(w http.ResponseWriter, r *http.Request) {
	action := r.PathValue("action")
	if action != "enable" && action != "disable" && action != "drain" {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("unknown action %q: want enable, disable or drain", action))
		return
	}
	st, _ := lb.ParseState(action)
	a, ok := parseAddress(w, r.PathValue("address"))
	if !ok {
		return
	}
	changed, err := s.d.SetServerStateByAddr(a, st)
	if err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, lb.ErrNotFound) {
			code = http.StatusNotFound
		}
		writeError(w, code, err.Error())
		return
	}
	out := AddressState{Address: a.String(), State: st.String(), RealServers: []AddressServer{}}
	services := make([]string, 0, len(changed))
	for _, c := range changed {
		out.RealServers = append(out.RealServers, AddressServer{VirtualService: c.Service, RealServer: c.Server,
			State: c.State.String(), Was: c.Was.String(), Active: c.Active, Drained: isDrained(c.State.String(), c.Active)})
		out.Active += c.Active
		services = append(services, c.Service)
	}
	s.log.Info("admin: real server state set by address", "address", a.String(), "state", st.String(),
		"virtual_services", strings.Join(services, ","), "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, out)
}

// parseAddress reads the {address} of a request, answering 400 when it is not one.
func parseAddress(w http.ResponseWriter, s string) (lb.ServerAddr, bool) {
	a, err := lb.ParseServerAddr(s)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error()+": want a real server's address as the file writes it, 10.11.1.11 (every port) or 10.11.1.12:4443")
		return lb.ServerAddr{}, false
	}
	return a, true
}

// handleReload is POST /api/v1/reload: the same as SIGHUP, with the verdict (a Reload) in the
// answer: what changed, or the errors. A file that does not validate is 422 with one entry per
// problem; a file that validates but cannot be applied (a port taken, say) is 500. Either way
// the running configuration stays.
func (s *Server) handleReload(w http.ResponseWriter, r *http.Request) {
	s.log.Info("admin: reload requested", "remote", r.RemoteAddr)
	v, err := s.d.Reload()
	code := http.StatusOK
	if err != nil {
		code = http.StatusInternalServerError
		var errs config.Errors
		if errors.As(err, &errs) {
			code = http.StatusUnprocessableEntity
		}
	}
	writeJSON(w, code, v)
}

// handleReapply is POST /api/v1/reapply: apply the running configuration again, reading no
// file: what keepalived's notify script asks for when this node becomes MASTER, so that the
// routing of the VIPs that just arrived is installed, and an edit of the file that nobody has
// reloaded is not applied by a failover. A failure is 500; the running configuration stays.
func (s *Server) handleReapply(w http.ResponseWriter, r *http.Request) {
	s.log.Info("admin: re-apply of the running configuration requested", "remote", r.RemoteAddr)
	cfg, err := s.d.Reapply()
	s.answerApply(w, cfg, err, "re-apply failed; the running configuration stays")
}

func (s *Server) answerApply(w http.ResponseWriter, cfg *config.Config, err error, rejected string) {
	if err != nil {
		var errs config.Errors
		resp := ErrorResponse{Error: rejected}
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
	writeJSON(w, http.StatusOK, ReloadResult{Result: "ok", ConfigHash: cfg.Hash, VirtualServices: len(cfg.VirtualServices)})
}
