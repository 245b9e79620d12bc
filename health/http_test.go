package health

import (
	"crypto/tls"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/pairlb/pairlb/config"
)

// lyncHandler answers like a pool's web service: only for its own host name, 503 on /down.
type lyncHandler struct {
	mu      sync.Mutex
	methods []string
	remotes []string
}

func (h *lyncHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	h.methods = append(h.methods, r.Method+" "+r.URL.RequestURI())
	h.remotes = append(h.remotes, r.RemoteAddr)
	h.mu.Unlock()
	if r.Host != "pool.example.test" {
		http.Error(w, "misdirected", http.StatusMisdirectedRequest)
		return
	}
	switch r.URL.Path {
	case "/down":
		http.Error(w, "maintenance", http.StatusServiceUnavailable)
	case "/missing":
		http.NotFound(w, r)
	default:
		w.WriteHeader(http.StatusOK)
	}
}

func serverAddr(t *testing.T, s *httptest.Server) netip.AddrPort {
	t.Helper()
	return addrPort(t, s.Listener.Addr())
}

func TestHTTPCheck(t *testing.T) {
	h := &lyncHandler{}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	addr := serverAddr(t, srv)

	tests := []struct {
		name string
		hc   config.Health
		want string
	}{
		{"ok", config.Health{Path: "/", Host: "pool.example.test"}, ""},
		{"default path and method", config.Health{Host: "pool.example.test"}, ""},
		{"503", config.Health{Path: "/down", Host: "pool.example.test"}, "status 503"},
		{"wrong host", config.Health{Path: "/", Host: "other.example.test"}, "status 421"},
		{"no host header: the address", config.Health{Path: "/"}, "status 421"},
		{"404 by default fails", config.Health{Path: "/missing", Host: "pool.example.test"}, "status 404"},
		{"404 expected", config.Health{Path: "/missing", Host: "pool.example.test", Expect: []int{404}}, ""},
		{"200 not in expect", config.Health{Path: "/", Host: "pool.example.test", Expect: []int{204}}, "status 200"},
		{"HEAD", config.Health{Method: "HEAD", Path: "/?probe=1", Host: "pool.example.test"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.hc.Type = config.HealthHTTP
			c, err := NewChecker(tt.hc, CheckerOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := check(t, c, addr, netip.Addr{}, 2*time.Second); got != tt.want {
				t.Errorf("reason %q, want %q", got, tt.want)
			}
		})
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if last := h.methods[len(h.methods)-1]; last != "HEAD /?probe=1" {
		t.Errorf("last request %q, want HEAD /?probe=1", last)
	}
}

func TestHTTPCheckSource(t *testing.T) {
	h := &lyncHandler{}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	c, _ := NewChecker(config.Health{Type: config.HealthHTTP, Host: "pool.example.test"}, CheckerOptions{})
	if got, _ := check(t, c, serverAddr(t, srv), netip.MustParseAddr("127.0.0.3"), 2*time.Second); got != "" {
		t.Fatalf("reason %q, want pass", got)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if host, _, _ := net.SplitHostPort(h.remotes[0]); host != "127.0.0.3" {
		t.Errorf("request came from %s, want 127.0.0.3", h.remotes[0])
	}
}

func TestHTTPCheckHangingServer(t *testing.T) {
	srv := startTCP(t, "127.0.0.1:0", holdUntilClosed)
	c, _ := NewChecker(config.Health{Type: config.HealthHTTP}, CheckerOptions{})
	start := time.Now()
	got, _ := check(t, c, srv.Addr(t), netip.Addr{}, 150*time.Millisecond)
	if got != "timeout" {
		t.Errorf("reason %q, want timeout", got)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("check took %s with a 150ms timeout", d)
	}
}

func TestHTTPSCheck(t *testing.T) {
	pki := newTestPKI(t)
	newServer := func(cert tls.Certificate) (*httptest.Server, *sniLog) {
		sni := &sniLog{}
		srv := httptest.NewUnstartedServer(&lyncHandler{})
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, GetConfigForClient: sni.record}
		srv.Config.ErrorLog = log.New(io.Discard, "", 0) // failed handshakes are the point
		srv.StartTLS()
		t.Cleanup(srv.Close)
		return srv, sni
	}
	good, goodSNI := newServer(pki.valid)
	expired, _ := newServer(pki.expired)

	tests := []struct {
		name    string
		srv     *httptest.Server
		hc      config.Health
		want    string
		wantSNI string
	}{
		{"no verify", good, config.Health{Host: "pool.example.test"}, "", "pool.example.test"},
		{"verify", good, config.Health{Host: "pool.example.test", Verify: true}, "", "pool.example.test"},
		{"sni differs from host", good, config.Health{Host: "pool.example.test", SNI: "sni.example.test"}, "", "sni.example.test"},
		{"verify wrong sni name", good, config.Health{Host: "pool.example.test", SNI: "sni.example.test", Verify: true}, "certificate name mismatch", ""},
		{"expired without verify passes", expired, config.Health{Host: "pool.example.test"}, "", ""},
		{"expired with verify", expired, config.Health{Host: "pool.example.test", Verify: true}, "certificate expired", ""},
		{"503 over tls", good, config.Health{Host: "pool.example.test", Path: "/down"}, "status 503", ""},
		{"wrong host over tls", good, config.Health{Host: "other.example.test", SNI: "pool.example.test"}, "status 421", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.hc.Type = config.HealthHTTPS
			c, err := NewChecker(tt.hc, CheckerOptions{RootCAs: pki.pool})
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := check(t, c, serverAddr(t, tt.srv), netip.Addr{}, 2*time.Second); got != tt.want {
				t.Errorf("reason %q, want %q", got, tt.want)
			}
			if tt.wantSNI != "" {
				if got := goodSNI.last(); got != tt.wantSNI {
					t.Errorf("server saw SNI %q, want %q", got, tt.wantSNI)
				}
			}
		})
	}
}

// sniLog records the server name of each TLS ClientHello.
type sniLog struct {
	mu    sync.Mutex
	names []string
}

func (s *sniLog) record(h *tls.ClientHelloInfo) (*tls.Config, error) {
	s.mu.Lock()
	s.names = append(s.names, h.ServerName)
	s.mu.Unlock()
	return nil, nil
}

func (s *sniLog) last() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.names) == 0 {
		return ""
	}
	return s.names[len(s.names)-1]
}
