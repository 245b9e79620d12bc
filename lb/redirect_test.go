package lb

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pairlb/pairlb/config"
)

// redirectService is a port-80 redirector on a free loopback port.
func redirectService(t *testing.T, name, template string) config.VirtualService {
	t.Helper()
	p := freePort(t, "tcp")
	return config.VirtualService{
		Name:     name,
		VIP:      loopback,
		Ports:    []config.Port{{Listen: p, Target: p, Proto: config.TCP}},
		Redirect: template,
	}
}

// ask sends a raw request to addr and returns the answer's status and Location.
func ask(t *testing.T, addr, request string) (int, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, request); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("%q: %v", request, err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Location")
}

// redirectCases are requests and what both the redirector and unavailable_redirect must answer
// for a template; an empty Location means 400.
var redirectCases = []struct {
	name, template, request, location string
}{
	{"host with port", "https://%h%s", "GET /meet?id=1 HTTP/1.1\r\nHost: x.example:80\r\n\r\n", "https://x.example/meet?id=1"},
	{"host without port", "https://%h%s", "GET /p HTTP/1.1\r\nHost: x.example\r\n\r\n", "https://x.example/p"},
	{"IPv6 host", "https://%h%s", "GET /p HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n", "https://[2001:db8::1]/p"},
	{"HTTP/1.0 without Host", "https://%h%s", "GET /p HTTP/1.0\r\n\r\n", ""},
	{"empty Host", "https://%h%s", "GET /p HTTP/1.1\r\nHost: \r\n\r\n", ""},
	{"userinfo in Host", "https://%h%s", "GET /p HTTP/1.1\r\nHost: evil.example@x.example\r\n\r\n", ""},
	{"path in Host", "https://%h%s", "GET /p HTTP/1.1\r\nHost: evil.example/x\r\n\r\n", ""},
	{"backslash in Host", "https://%h%s", "GET /p HTTP/1.1\r\nHost: evil.example\\x\r\n\r\n", ""},
	{"bad port", "https://%h%s", "GET /p HTTP/1.1\r\nHost: x.example:8o\r\n\r\n", ""},
	{"absolute-form target", "https://%h%s", "GET http://abs.example/p?q HTTP/1.1\r\nHost: abs.example\r\n\r\n", "https://abs.example/p?q"},
	{"opaque target after a fixed host", "https://fixed.example%s", "GET http:.evil.example/p HTTP/1.1\r\nHost: x\r\n\r\n", ""},
	{"absolute-form target after a fixed host", "https://fixed.example%s", "GET http://other.example/p HTTP/1.1\r\nHost: other.example\r\n\r\n", "https://fixed.example/p"},
	{"two slashes", "https://fixed.example%s", "GET //evil.example/p HTTP/1.1\r\nHost: x\r\n\r\n", ""},
	{"fixed host needs no Host", "https://fixed.example%s", "GET /p HTTP/1.0\r\n\r\n", "https://fixed.example/p"},
}

func checkRedirectCase(t *testing.T, addr, request, want string) {
	t.Helper()
	code, loc := ask(t, addr, request)
	switch {
	case want == "" && code != http.StatusBadRequest:
		t.Errorf("%q: %d %q, want 400", request, code, loc)
	case want != "" && (code != http.StatusFound || loc != want):
		t.Errorf("%q: %d %q, want 302 %q", request, code, loc, want)
	}
}

// TestRedirectTemplateExpansion: %h is the request's host without its port and only a host; %s
// is always an absolute path. Nothing a client sends may change the host the template fixes.
func TestRedirectTemplateExpansion(t *testing.T) {
	services := map[string]config.VirtualService{}
	var all []config.VirtualService
	for _, tc := range redirectCases {
		if _, ok := services[tc.template]; !ok {
			vs := redirectService(t, fmt.Sprintf("r%d", len(all)), tc.template)
			services[tc.template] = vs
			all = append(all, vs)
		}
	}
	startBalancer(t, testConfig(all...))
	for _, tc := range redirectCases {
		t.Run(tc.name, func(t *testing.T) {
			checkRedirectCase(t, vipAddr(services[tc.template], 0), tc.request, tc.location)
		})
	}
}

// TestUnavailableRedirectExpansion: unavailable_redirect fills %h and %s as the redirector does.
func TestUnavailableRedirectExpansion(t *testing.T) {
	dead := netip.AddrPortFrom(loopback, freePort(t, "tcp"))
	services := map[string]config.VirtualService{}
	var all []config.VirtualService
	for _, tc := range redirectCases {
		if _, ok := services[tc.template]; !ok {
			vs := testService(t, fmt.Sprintf("u%d", len(all)), dead)
			vs.UnavailableRedirect = tc.template
			services[tc.template] = vs
			all = append(all, vs)
		}
	}
	startBalancer(t, testConfig(all...))
	for _, tc := range redirectCases {
		t.Run(tc.name, func(t *testing.T) {
			checkRedirectCase(t, vipAddr(services[tc.template], 0), tc.request, tc.location)
		})
	}
}

// TestRedirectorBoundsHeader: a client holding a connection with an unfinished megabyte of
// header cost a megabyte each (1,000 of them 1.1 GB). The redirector answers and stops reading
// after one small request's worth of bytes or lines.
func TestRedirectorBoundsHeader(t *testing.T) {
	vs := redirectService(t, "r", "https://%h%s")
	bal, _ := startBalancer(t, testConfig(vs))
	r := redirectorOf(t, bal, vs)
	for _, tc := range []struct {
		name, request string
	}{
		{"long header", "GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + strings.Repeat("a", 64<<10)},
		{"many header lines", "GET / HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-A: b\r\n", 2*requestBudgetLines) + "\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.DialTimeout("tcp", vipAddr(vs, 0), 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(3 * time.Second))
			if _, err := io.WriteString(c, tc.request); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("no answer to an oversized header: %v", err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge && resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("oversized header answered %d, want 431 or 400", resp.StatusCode)
			}
		})
	}
	if n := r.readPeak.Load(); n > requestBudgetBytes {
		t.Fatalf("the redirector read %d bytes from one connection, more than its budget of %d", n, requestBudgetBytes)
	}
}

func redirectorOf(t *testing.T, bal *Balancer, vs config.VirtualService) *redirectListener {
	t.Helper()
	bal.mu.Lock()
	defer bal.mu.Unlock()
	r, ok := bal.listeners[listenerKey{kind: kindRedirect, addr: netip.AddrPortFrom(vs.VIP, vs.Ports[0].Listen)}].(*redirectListener)
	if !ok {
		t.Fatal("no redirector")
	}
	return r
}

// TestRedirectorConnectionCap: beyond its cap the redirector leaves new connections in the
// kernel's queue; they are served as soon as a place frees.
func TestRedirectorConnectionCap(t *testing.T) {
	defer func(n int) { redirectMaxConns = n }(redirectMaxConns)
	redirectMaxConns = 4
	vs := redirectService(t, "r", "https://%h%s")
	bal, _ := startBalancer(t, testConfig(vs))
	r := redirectorOf(t, bal, vs)

	var silent []net.Conn
	for range redirectMaxConns {
		c, err := net.DialTimeout("tcp", vipAddr(vs, 0), 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		silent = append(silent, c)
	}
	for deadline := time.Now().Add(5 * time.Second); r.lim.Peak() < int64(redirectMaxConns); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections held after 5s, want %d", r.lim.Peak(), redirectMaxConns)
		}
	}
	answered := make(chan error, 1)
	go func() {
		c, err := net.DialTimeout("tcp", vipAddr(vs, 0), 2*time.Second)
		if err != nil {
			answered <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprint(c, "GET /p HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusFound {
				err = fmt.Errorf("status %d", resp.StatusCode)
			}
		}
		answered <- err
	}()
	silent[0].Close()
	if err := <-answered; err != nil {
		t.Fatalf("the client beyond the cap, once a place freed: %v", err)
	}
	if n := r.lim.Peak(); n != int64(redirectMaxConns) {
		t.Fatalf("the redirector held %d connections at once, cap %d", n, redirectMaxConns)
	}
}

// TestRedirectorDropsSilentClients: a client that connects and sends nothing holds its place
// only for the header timeout.
func TestRedirectorDropsSilentClients(t *testing.T) {
	vs := redirectService(t, "r", "https://%h%s")
	startBalancer(t, testConfig(vs))
	c, err := net.DialTimeout("tcp", vipAddr(vs, 0), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	_ = c.SetReadDeadline(start.Add(15 * time.Second))
	_, _ = io.Copy(io.Discard, c)
	if d := time.Since(start); d > httpReadHeaderTimeout+3*time.Second {
		t.Fatalf("a silent client was held for %v", d.Round(time.Millisecond))
	}
}
