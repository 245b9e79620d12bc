package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pairlb/pairlb/config"
	"github.com/pairlb/pairlb/health"
	"github.com/pairlb/pairlb/lb"
	"github.com/pairlb/pairlb/routing"
)

// fakeDaemon is a Daemon for the server's own tests: the service web with two servers (more
// with addService), calls counted.
type fakeDaemon struct {
	mu       sync.Mutex
	cfg      *config.Config
	services []fakeService
	states   map[string]lb.State // "service server" -> state set
	active   map[string]int64    // "service server" -> open connections
	reloads  int
	reapplys int
	applyErr error    // what Reload and Reapply answer
	changes  []Change // what an applied Reload changed
	last     *Reload
	onDisk   ConfigOnDisk
}

type fakeService struct {
	name    string
	servers []string
}

func newFakeDaemon(token string) *fakeDaemon {
	cfg := &config.Config{Path: "/etc/pairlb/pairlb.yaml", Hash: "0123456789abcdef0123",
		VirtualServices: []config.VirtualService{{Name: "web"}}}
	if token != "" {
		cfg.Global.AdminToken = []byte(token)
	}
	return &fakeDaemon{cfg: cfg, states: map[string]lb.State{}, active: map[string]int64{},
		services: []fakeService{{"web", []string{"198.18.2.11", "198.18.2.12"}}},
		onDisk:   ConfigOnDisk{State: OnDiskSame, Hash: cfg.Hash}}
}

// addService adds a service with servers (their keys) after the others.
func (f *fakeDaemon) addService(name string, servers ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.services = append(f.services, fakeService{name, servers})
}

// setActive sets what the server of service has open.
func (f *fakeDaemon) setActive(service, server string, n int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.active[service+" "+server] = n
}

func (f *fakeDaemon) Running() *config.Config {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cfg
}

func (f *fakeDaemon) Services() []lb.ServiceStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []lb.ServiceStatus
	for _, fs := range f.services {
		st := lb.ServiceStatus{Name: fs.name, VIP: "198.51.100.10", Scheduler: "roundrobin", Placement: "roundrobin",
			Ports: []lb.PortStatus{{Port: "443/tcp", Listen: 443, Proto: "tcp", Accepted: 7}}}
		for _, rs := range fs.servers {
			st.RealServers = append(st.RealServers, lb.ServerStatus{Address: rs, State: f.states[fs.name+" "+rs].String(),
				Up: true, Weight: 1, Active: f.active[fs.name+" "+rs]})
		}
		out = append(out, st)
	}
	return out
}

func (f *fakeDaemon) Health() []health.TargetStatus {
	return []health.TargetStatus{{Service: "web", Server: "198.18.2.11", Check: config.HealthTCP, Up: true}}
}

func (f *fakeDaemon) Routing() ([]routing.Unit, []routing.Problem, bool) { return nil, nil, false }

func (f *fakeDaemon) SetServerState(vs, rs string, st lb.State) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, fs := range f.services {
		if fs.name == vs && slices.Contains(fs.servers, rs) {
			f.states[vs+" "+rs] = st
			return nil
		}
	}
	return fmt.Errorf("real server %q of virtual service %q: %w", rs, vs, lb.ErrNotFound)
}

func (f *fakeDaemon) SetServerStateByAddr(a lb.ServerAddr, st lb.State) ([]lb.ServerChange, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []lb.ServerChange
	for _, fs := range f.services {
		for _, rs := range fs.servers {
			if a.MatchesKey(rs) {
				k := fs.name + " " + rs
				out = append(out, lb.ServerChange{Service: fs.name, Server: rs, State: st, Was: f.states[k], Active: f.active[k]})
				f.states[k] = st
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("real server address %s: in no virtual service: %w", a, lb.ErrNotFound)
	}
	return out, nil
}

func (f *fakeDaemon) Reload() (*Reload, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reloads++
	if f.applyErr != nil {
		f.last = Rejected(time.Now(), f.cfg.Path, "rejected-hash", f.cfg, f.applyErr)
	} else {
		f.last = Applied(time.Now(), TriggerReload, f.cfg, f.cfg, f.changes)
	}
	return f.last, f.applyErr
}

func (f *fakeDaemon) LastReload() *Reload {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last
}

func (f *fakeDaemon) ConfigOnDisk() ConfigOnDisk {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.onDisk
}

func (f *fakeDaemon) Reapply() (*config.Config, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reapplys++
	return f.cfg, f.applyErr
}

func (f *fakeDaemon) calls() (reloads, reapplys int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reloads, f.reapplys
}

// testServer is a Server on a loopback port, serving and past its first checks, until the
// test ends.
type testServer struct {
	s    *Server
	d    *fakeDaemon
	addr string // 127.0.0.1:PORT
}

func startServer(t *testing.T, d *fakeDaemon, hostsFile string) *testServer {
	t.Helper()
	s := New(Options{Log: slog.New(slog.DiscardHandler), Daemon: d, Version: "v-test", HostsFile: hostsFile})
	cfg := d.Running()
	cfg.Global.Admin = netip.MustParseAddrPort("127.0.0.1:0")
	if err := s.Listen(cfg, netip.AddrPort{}); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	addr := s.listeners[0].Addr().String()
	s.mu.Unlock()
	s.Configure(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	stop, err := s.Serve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.FirstChecksDone()
	t.Cleanup(func() { cancel(); stop() })
	return &testServer{s: s, d: d, addr: addr}
}

type apiResponse struct {
	code   int
	header http.Header
	body   []byte
}

func (r apiResponse) String() string { return fmt.Sprintf("%d %s", r.code, r.body) }

// call sends a request with the Host header given (the address when empty) and the token
// (when not empty).
func (ts *testServer) call(t *testing.T, method, path, host, token string) apiResponse {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+ts.addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s (Host %s): %v", method, path, host, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return apiResponse{code: resp.StatusCode, header: resp.Header, body: body}
}

// wantJSONError checks an answer's code and that its body is a JSON error mentioning want.
func wantJSONError(t *testing.T, what string, r apiResponse, code int, want string) {
	t.Helper()
	var e ErrorResponse
	if r.code != code || json.Unmarshal(r.body, &e) != nil || !strings.Contains(e.Error+strings.Join(e.Errors, "\n"), want) {
		t.Errorf("%s: got %v, want %d with a JSON error containing %q", what, r, code, want)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: Content-Type %q", what, ct)
	}
}

// errRefused is an apply failure of the fake daemon.
var errRefused = errors.New("listen tcp 198.51.100.10:443: bind: address already in use")
