package lb

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/pairlb/pairlb/config"
)

// asRedirector turns vs into a port-80 redirector on the same address.
func asRedirector(vs config.VirtualService) config.VirtualService {
	vs.Redirect = "https://%h%s"
	vs.RealServers = nil
	return vs
}

// expectRedirect sends a GET to addr and wants a 302.
func expectRedirect(t *testing.T, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(c, "GET /x HTTP/1.1\r\nHost: lync.example.test\r\n\r\n")
	resp, err := readResponse(c)
	if err != nil {
		t.Fatalf("redirector %s: %v", addr, err)
	}
	if resp.StatusCode != 302 {
		t.Fatalf("redirector %s answered %d", addr, resp.StatusCode)
	}
}

// busyPort returns a loopback TCP port something else listens on until the test ends.
func busyPort(t *testing.T) uint16 {
	t.Helper()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { busy.Close() })
	return addrPort(busy.Addr()).Port()
}

// TestRejectedKindChangeKeepsListener: a reload that changes a listener's kind (TCP to
// redirector, or back) and fails on another listener is rejected; the old listener must still
// serve, no descriptor may be left behind, and a later good reload must make the change.
func TestRejectedKindChangeKeepsListener(t *testing.T) {
	be := startBackend(t, "a")
	for _, tc := range []struct {
		name     string
		from, to func(config.VirtualService) config.VirtualService
	}{
		{name: "tcp to redirect",
			from: func(vs config.VirtualService) config.VirtualService { return vs },
			to:   asRedirector},
		{name: "redirect to tcp",
			from: asRedirector,
			to:   func(vs config.VirtualService) config.VirtualService { return vs }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			web := testService(t, "web", be.addr())
			before, after := tc.from(web), tc.to(web)
			serves := func(vs config.VirtualService) {
				t.Helper()
				if vs.Redirect != "" {
					expectRedirect(t, vipAddr(vs, 0))
				} else if server, _ := exchange(t, vipAddr(vs, 0), "x"); server != "a" {
					t.Fatalf("forwarding listener: got %q", server)
				}
			}
			bal, _ := startBalancer(t, testConfig(before))
			clash := testService(t, "clash", be.addr())
			clash.Ports[0].Listen = busyPort(t)
			fds := countFDs(t)
			if err := bal.Apply(testConfig(after, clash)); err == nil {
				t.Fatal("Apply with a port in use succeeded")
			}
			waitFDs(t, fds)
			serves(before)
			if err := bal.Apply(testConfig(after)); err != nil {
				t.Fatalf("a good reload after the rejected one: %v", err)
			}
			serves(after)
		})
	}
}

// TestRejectedReloadLeaksNoRedirector: a rejected reload that would have added a redirector
// must close its socket. It used to stay open, unserved: clients connected and waited for
// ever, and every later reload that wanted the port failed with EADDRINUSE.
func TestRejectedReloadLeaksNoRedirector(t *testing.T) {
	be := startBackend(t, "a")
	web := testService(t, "web", be.addr())
	bal, _ := startBalancer(t, testConfig(web))
	redir := asRedirector(testService(t, "owa-http", be.addr()))
	clash := testService(t, "clash", be.addr())
	clash.Ports[0].Listen = busyPort(t)
	fds := countFDs(t)
	// Listeners open in no fixed order; ten tries make it all but certain that the redirector
	// was opened before the clash failed at least once.
	for range 10 {
		if err := bal.Apply(testConfig(web, redir, clash)); err == nil {
			t.Fatal("Apply with a port in use succeeded")
		}
	}
	waitFDs(t, fds)
	if c, err := net.DialTimeout("tcp", vipAddr(redir, 0), time.Second); err == nil {
		c.Close()
		t.Fatal("the rejected reload's redirector still accepts connections")
	}
	if err := bal.Apply(testConfig(web, redir)); err != nil {
		t.Fatalf("a good reload wanting the port: %v", err)
	}
	expectRedirect(t, vipAddr(redir, 0))
}

// TestKindChangeKeepsQueuedConnections: a reload that turns a TCP listener into a redirector
// hands the listening socket over, so a connection the kernel has queued but no loop has
// accepted yet is served by the successor instead of being reset with the old socket.
func TestKindChangeKeepsQueuedConnections(t *testing.T) {
	be := startBackend(t, "a")
	web := testService(t, "web", be.addr())
	bal, _ := startBalancer(t, testConfig(web))

	// Hold every loop, so that nothing accepts on the forwarding listener.
	release := make(chan struct{})
	held := make(chan struct{}, len(bal.loops))
	for _, lp := range bal.loops {
		lp.post(func() { held <- struct{}{}; <-release })
	}
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	for range bal.loops {
		<-held
	}
	c, err := net.DialTimeout("tcp", vipAddr(web, 0), 2*time.Second) // queued in the backlog
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := bal.Apply(testConfig(asRedirector(web))); err != nil {
		t.Fatal(err)
	}
	close(release)

	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(c, "GET /x HTTP/1.1\r\nHost: lync.example.test\r\n\r\n")
	resp, err := readResponse(c)
	if err != nil {
		t.Fatalf("the connection queued during the change: %v", err)
	}
	if resp.StatusCode != 302 {
		t.Fatalf("the connection queued during the change got %d, want the redirector's 302", resp.StatusCode)
	}
	expectRedirect(t, vipAddr(web, 0))
}

// TestRejectedReloadKeepsServerStates: a rejected reload must not change the running real
// servers either: a server the new file disables, or weighs 0, still serves.
func TestRejectedReloadKeepsServerStates(t *testing.T) {
	be := startBackend(t, "a")
	web := testService(t, "web", be.addr())
	bal, _ := startBalancer(t, testConfig(web))
	clash := testService(t, "clash", be.addr())
	clash.Ports[0].Listen = busyPort(t)
	changed := web
	changed.RealServers = []config.RealServer{web.RealServers[0]}
	changed.RealServers[0].Enabled = false
	if err := bal.Apply(testConfig(changed, clash)); err == nil {
		t.Fatal("Apply with a port in use succeeded")
	}
	if server, _ := exchange(t, vipAddr(web, 0), "x"); server != "a" {
		t.Fatalf("after a rejected reload that disabled the only server: got %q", server)
	}
	changed.RealServers[0].Enabled, changed.RealServers[0].Weight = true, 0
	if err := bal.Apply(testConfig(changed, clash)); err == nil {
		t.Fatal("Apply with a port in use succeeded")
	}
	if server, _ := exchange(t, vipAddr(web, 0), "x"); server != "a" {
		t.Fatalf("after a rejected reload that set the only server's weight to 0: got %q", server)
	}
	if err := bal.Apply(testConfig(changed)); err != nil {
		t.Fatal(err)
	}
	expectReset(t, vipAddr(web, 0)) // accepted: weight 0 takes no connection
}
