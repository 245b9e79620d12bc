package lb

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pairlb/pairlb/config"
	"golang.org/x/sys/unix"
)

func TestUDPForwardingConcurrentClientsAndExpiry(t *testing.T) {
	a, b2 := startUDPEcho(t, "a"), startUDPEcho(t, "b")
	vs := udpService(t, "stun", a.addr(), b2.addr())
	vs.UDPIdleTimeout = 300 * time.Millisecond
	bal, _ := startBalancer(t, testConfig(vs))
	st := bal.services["stun"].stats

	var wg sync.WaitGroup
	servers := make([]string, 8)
	for i := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("udp", vipAddr(vs, 0))
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			for j := range 20 {
				msg := fmt.Sprintf("client%d-%d", i, j)
				if _, err := c.Write([]byte(msg)); err != nil {
					t.Error(err)
					return
				}
				_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
				buf := make([]byte, 256)
				n, err := c.Read(buf)
				if err != nil {
					t.Errorf("client %d datagram %d: %v", i, j, err)
					return
				}
				name, payload, _ := strings.Cut(string(buf[:n]), ":")
				if payload != msg {
					t.Errorf("client %d got %q for %q", i, buf[:n], msg)
				}
				// A session sticks to one server.
				if servers[i] != "" && servers[i] != name {
					t.Errorf("client %d moved from %s to %s within a session", i, servers[i], name)
				}
				servers[i] = name
			}
		}()
	}
	wg.Wait()
	if n := st.udpSessions.Load(); n != 8 {
		t.Fatalf("%d sessions, want 8", n)
	}
	seen := map[string]bool{}
	for _, s := range servers {
		seen[s] = true
	}
	if len(seen) != 2 {
		t.Fatalf("8 clients used servers %v, want both", seen)
	}
	// Idle sessions expire.
	deadline := time.Now().Add(3 * time.Second)
	for st.udpSessions.Load() != 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := st.udpSessions.Load(); n != 0 {
		t.Fatalf("%d sessions left 3s after the clients went quiet (idle timeout 300ms)", n)
	}
}

func TestUDPSessionTableBound(t *testing.T) {
	a := startUDPEcho(t, "a")
	vs := udpService(t, "bounded", a.addr())
	vs.UDPMaxSessions = 2
	bal, _ := startBalancer(t, testConfig(vs))
	for i := range 2 {
		if got := udpAsk(t, dialUDP(t, vipAddr(vs, 0)), "x"); got != "a:x" {
			t.Fatalf("client %d: %q", i, got)
		}
	}
	if got := udpAsk(t, dialUDP(t, vipAddr(vs, 0)), "x"); got != "" {
		t.Fatalf("third client answered %q beyond the bound of 2", got)
	}
	if n := bal.services["bounded"].stats.dropped[DropUDPTableFull].Load(); n != 1 {
		t.Fatalf("udp_table_full drops = %d, want 1", n)
	}
}

func TestUDPDeadServerDoesNotStallOthers(t *testing.T) {
	// A server that never answers: its sessions wait, the others' datagrams flow.
	silent, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	a := startUDPEcho(t, "a")
	vs := udpService(t, "mixed", addrPort(silent.LocalAddr()), a.addr())
	startBalancer(t, testConfig(vs))
	answered := 0
	for range 6 {
		if udpAsk(t, dialUDP(t, vipAddr(vs, 0)), "x") == "a:x" {
			answered++
		}
	}
	if answered != 3 {
		t.Fatalf("%d of 6 clients answered, want the 3 sent to the live server", answered)
	}
}

// TestReloadKeepsConnections reloads with a listener added and one removed while a TCP
// connection and a UDP session are open on a kept listener, and on the removed ones.
func TestReloadKeepsConnections(t *testing.T) {
	be := startBackend(t, "a")
	ue := startUDPEcho(t, "u")
	kept := testService(t, "kept", be.addr())
	keptUDP := udpService(t, "kept-udp", ue.addr())
	removed := testService(t, "removed", be.addr())
	removedUDP := udpService(t, "removed-udp", ue.addr())
	keptUDP.UDPIdleTimeout = time.Minute
	removedUDP.UDPIdleTimeout = time.Minute
	bal, _ := startBalancer(t, testConfig(kept, keptUDP, removed, removedUDP))

	openTCP := func(vs config.VirtualService) (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", vipAddr(vs, 0))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		r := bufio.NewReader(c)
		if g, err := r.ReadString('\n'); err != nil || g != "a\n" {
			t.Fatalf("greeting %q %v", g, err)
		}
		return c, r
	}
	echo := func(c net.Conn, r *bufio.Reader, msg string) {
		t.Helper()
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprint(c, msg)
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(r, buf); err != nil || string(buf) != msg {
			t.Fatalf("echo after reload: %q %v", buf, err)
		}
	}
	keptConn, keptR := openTCP(kept)
	removedConn, removedR := openTCP(removed)
	keptSess := dialUDP(t, vipAddr(keptUDP, 0))
	removedSess := dialUDP(t, vipAddr(removedUDP, 0))
	for _, c := range []*net.UDPConn{keptSess, removedSess} {
		if got := udpAsk(t, c, "1"); got != "u:1" {
			t.Fatalf("udp before reload: %q", got)
		}
	}

	added := testService(t, "added", be.addr())
	kept.Scheduler = config.LeastConn // a changed setting on a kept listener
	if err := bal.Apply(testConfig(kept, keptUDP, added)); err != nil {
		t.Fatal(err)
	}

	echo(keptConn, keptR, "kept")
	echo(removedConn, removedR, "removed")
	for _, c := range []*net.UDPConn{keptSess, removedSess} {
		if got := udpAsk(t, c, "2"); got != "u:2" {
			t.Fatalf("udp session after reload: %q", got)
		}
	}
	if server, _ := exchange(t, vipAddr(added, 0), "x"); server != "a" {
		t.Fatalf("added listener: %q", server)
	}
	if server, _ := exchange(t, vipAddr(kept, 0), "x"); server != "a" {
		t.Fatalf("kept listener, new connection: %q", server)
	}
	if _, err := net.DialTimeout("tcp", vipAddr(removed, 0), time.Second); err == nil {
		t.Fatal("removed listener still accepts")
	}
	// A new client of the removed UDP service is not served.
	if got := udpAsk(t, dialUDP(t, vipAddr(removedUDP, 0)), "3"); got != "" {
		t.Fatalf("removed UDP service answered a new client: %q", got)
	}
}

func TestApplyFailureChangesNothing(t *testing.T) {
	be := startBackend(t, "a")
	vs := testService(t, "web", be.addr())
	bal, _ := startBalancer(t, testConfig(vs))

	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	clash := testService(t, "clash", be.addr())
	clash.Ports[0].Listen = addrPort(busy.Addr()).Port()
	other := testService(t, "other", be.addr())
	if err := bal.Apply(testConfig(vs, other, clash)); err == nil {
		t.Fatal("Apply with a port in use succeeded")
	}
	if server, _ := exchange(t, vipAddr(vs, 0), "x"); server != "a" {
		t.Fatalf("old listener after a failed Apply: %q", server)
	}
	if c, err := net.DialTimeout("tcp", vipAddr(other, 0), time.Second); err == nil {
		c.Close()
		t.Fatal("a listener of the failed Apply was left open")
	}
	if cfg := bal.served(); cfg.VirtualServices[0].Name != "web" || len(cfg.VirtualServices) != 1 {
		t.Fatal("failed Apply replaced the configuration")
	}
}

func TestGracefulStop(t *testing.T) {
	be := startBackend(t, "a")
	vs := testService(t, "web", be.addr())
	cfg := testConfig(vs)
	cfg.Global.DrainTimeout = 5 * time.Second
	_, stop := startBalancer(t, cfg)

	c, err := net.Dial("tcp", vipAddr(vs, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if _, err := r.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()

	// New connections are refused soon after the stop begins...
	deadline := time.Now().Add(2 * time.Second)
	for {
		nc, err := net.DialTimeout("tcp", vipAddr(vs, 0), 200*time.Millisecond)
		if err != nil {
			break
		}
		nc.Close()
		if time.Now().After(deadline) {
			t.Fatal("listener still accepting 2s after stop")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// ...while the open connection still works, and the stop waits for it.
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	fmt.Fprint(c, "bye")
	buf := make([]byte, 3)
	if _, err := io.ReadFull(r, buf); err != nil || string(buf) != "bye" {
		t.Fatalf("open connection during drain: %q %v", buf, err)
	}
	select {
	case <-stopped:
		t.Fatal("stop returned while a connection was open and within the drain timeout")
	default:
	}
	_ = c.(*net.TCPConn).CloseWrite()
	_, _ = io.ReadAll(r)
	select {
	case <-stopped:
	case <-time.After(3 * time.Second):
		t.Fatal("stop did not return after the last connection closed")
	}
}

func TestDrainTimeoutClosesConnections(t *testing.T) {
	be := startBackend(t, "a")
	vs := testService(t, "web", be.addr())
	cfg := testConfig(vs)
	cfg.Global.DrainTimeout = 300 * time.Millisecond
	_, stop := startBalancer(t, cfg)
	c, err := net.Dial("tcp", vipAddr(vs, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	stop()
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("stop took %v with a 300ms drain timeout", d)
	}
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("connection not closed at the drain deadline: %v", err)
	}
}

// TestStopEndsQuietUDPSessions: a UDP session has no end of its own; a stop must not wait the
// whole drain timeout for sessions whose exchange is over, while a session still in use may
// go on until it too goes quiet.
func TestStopEndsQuietUDPSessions(t *testing.T) {
	e := startUDPEcho(t, "u")
	vs := udpService(t, "stun", e.addr())
	vs.UDPIdleTimeout = time.Minute
	cfg := testConfig(vs)
	cfg.Global.DrainTimeout = 20 * time.Second
	_, stop := startBalancer(t, cfg)
	if got := udpAsk(t, dialUDP(t, vipAddr(vs, 0)), "x"); got != "u:x" {
		t.Fatalf("udp: %q", got)
	}
	start := time.Now()
	stop()
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("stop took %v with one quiet UDP session (drain timeout 20s)", d)
	}
}

// TestFailedApplyKeepsRetiringUDPSessions: a reload that would take back a removed UDP service
// but fails on another listener must leave the removed service's open sessions working.
func TestFailedApplyKeepsRetiringUDPSessions(t *testing.T) {
	e := startUDPEcho(t, "u")
	be := startBackend(t, "a")
	web := testService(t, "web", be.addr())
	stun := udpService(t, "stun", e.addr())
	stun.UDPIdleTimeout = time.Minute
	bal, _ := startBalancer(t, testConfig(web, stun))
	sess := dialUDP(t, vipAddr(stun, 0))
	if got := udpAsk(t, sess, "1"); got != "u:1" {
		t.Fatalf("udp: %q", got)
	}
	if err := bal.Apply(testConfig(web)); err != nil { // stun removed: its session drains
		t.Fatal(err)
	}
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	clash := testService(t, "clash", be.addr())
	clash.Ports[0].Listen = addrPort(busy.Addr()).Port()
	if err := bal.Apply(testConfig(web, stun, clash)); err == nil {
		t.Fatal("Apply with a port in use succeeded")
	}
	if got := udpAsk(t, sess, "2"); got != "u:2" {
		t.Fatalf("the removed service's session after a failed reload: %q", got)
	}
	if err := bal.Apply(testConfig(web, stun)); err != nil {
		t.Fatal(err)
	}
	if got := udpAsk(t, dialUDP(t, vipAddr(stun, 0)), "3"); got != "u:3" {
		t.Fatalf("re-added UDP service, new client: %q", got)
	}
}

// TestRetiringListenerServesQueuedConnections: connections completed by the kernel but not yet
// accepted when a listener retires (a stop, or a reload removing it) are served, not reset.
func TestRetiringListenerServesQueuedConnections(t *testing.T) {
	be := startBackend(t, "a")
	vs := testService(t, "web", be.addr())
	bal, _ := startBalancer(t, testConfig(vs))
	bnd := bal.listeners[listenerKey{kind: kindTCP, addr: netip.AddrPortFrom(vs.VIP, vs.Ports[0].Listen)}].(*tcpListener).cur.Load()

	// A second listener of the same service that has not started accepting: connections to
	// it wait in its backlog until the listener starts and at once retires.
	fd, err := listenTCP(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	l := &tcpListener{b: bal, fd: fd}
	l.rebind(bnd)
	var conns []net.Conn
	for range 5 {
		c, err := net.Dial("tcp", addrPortOf(sa).String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	l.start()
	l.retire()
	for i, c := range conns {
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		if g, err := bufio.NewReader(c).ReadString('\n'); err != nil || g != "a\n" {
			t.Fatalf("queued connection %d: %q %v", i, g, err)
		}
		c.Close()
	}
}
