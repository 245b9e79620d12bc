package lb

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pairlb/pairlb/config"
)

func TestTCPForwardingWithHalfClose(t *testing.T) {
	be := startBackend(t, "a")
	vs := testService(t, "web", be.addr())
	startBalancer(t, testConfig(vs))

	msg := strings.Repeat("lync ", 200000) // 1 MB: several splice rounds are not needed, but bulk is
	server, echoed := exchange(t, vipAddr(vs, 0), msg)
	if server != "a" || echoed != msg {
		t.Fatalf("got server %q and %d echoed bytes, want a and %d", server, len(echoed), len(msg))
	}
}

func TestPortTranslation(t *testing.T) {
	be := startBackend(t, "translated")
	vs := testService(t, "rp", netip.AddrPortFrom(loopback, 0))
	vs.RealServers[0].Port = 0
	vs.Ports[0].Target = be.addr().Port() // 'LISTEN/tcp->TARGET'
	startBalancer(t, testConfig(vs))
	if server, _ := exchange(t, vipAddr(vs, 0), "x"); server != "translated" {
		t.Fatalf("got %q through the translated port", server)
	}
}

func TestDeadFirstServerSkipped(t *testing.T) {
	dead := netip.AddrPortFrom(loopback, freePort(t, "tcp"))
	be := startBackend(t, "alive")
	vs := testService(t, "fe", dead, be.addr())
	startBalancer(t, testConfig(vs))
	for i := range 4 {
		if server, echoed := exchange(t, vipAddr(vs, 0), "hi"); server != "alive" || echoed != "hi" {
			t.Fatalf("connection %d: got %q %q", i, server, echoed)
		}
	}
}

func TestSorryServerAndReset(t *testing.T) {
	dead := netip.AddrPortFrom(loopback, freePort(t, "tcp"))
	sorry := startBackend(t, "sorry")
	withSorry := testService(t, "with-sorry", dead)
	withSorry.SorryServer = sorry.addr()
	without := testService(t, "without", dead)
	b, _ := startBalancer(t, testConfig(withSorry, without))

	if server, _ := exchange(t, vipAddr(withSorry, 0), "x"); server != "sorry" {
		t.Fatalf("all servers down: got %q, want the sorry server", server)
	}
	expectReset(t, vipAddr(without, 0))

	// All disabled (not dead) also goes to the sorry server, counted as no server.
	if err := b.SetServerState("without", dead.String(), Disabled); err != nil {
		t.Fatal(err)
	}
	expectReset(t, vipAddr(without, 0))
	st := b.services["without"].stats
	if st.dropped[DropDialFailed].Load() != 1 || st.dropped[DropNoServer].Load() != 1 {
		t.Fatalf("drops: dial_failed %d, no_server %d; want 1 and 1",
			st.dropped[DropDialFailed].Load(), st.dropped[DropNoServer].Load())
	}
}

func TestAccessControl(t *testing.T) {
	be := startBackend(t, "a")
	vs := testService(t, "acl", be.addr())
	vs.Access = config.Access{
		Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		Deny:  []netip.Prefix{netip.MustParsePrefix("127.0.0.66/32")},
	}
	b, _ := startBalancer(t, testConfig(vs))

	if server, _ := exchange(t, vipAddr(vs, 0), "x"); server != "a" {
		t.Fatalf("allowed client got %q", server)
	}
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 66)}, Timeout: 2 * time.Second}
	c, err := d.Dial("tcp", vipAddr(vs, 0))
	if err == nil {
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("denied client was not reset: %v", err)
	}
	if n := b.services["acl"].stats.dropped[DropAccessDenied].Load(); n != 1 {
		t.Fatalf("access_denied drops = %d, want 1", n)
	}
}

func TestIdleTimeout(t *testing.T) {
	for _, resetOnClose := range []bool{false, true} {
		t.Run(fmt.Sprintf("reset_on_close=%v", resetOnClose), func(t *testing.T) {
			be := startBackend(t, "a")
			vs := testService(t, "idle", be.addr())
			vs.IdleTimeout = 400 * time.Millisecond
			vs.ResetOnClose = resetOnClose
			startBalancer(t, testConfig(vs))

			c, err := net.Dial("tcp", vipAddr(vs, 0))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			r := bufio.NewReader(c)
			_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
			if greeting, err := r.ReadString('\n'); err != nil || greeting != "a\n" {
				t.Fatalf("greeting %q, %v", greeting, err)
			}
			// Traffic keeps it open past the timeout... The pauses are the behaviour under
			// test: twice the idle timeout goes by, a quarter of it at a time (leaving room for
			// a pause that oversleeps on a loaded machine), on the loops' clock, which is the
			// wall clock. Each echo read to a deadline shows the connection still open.
			for i := range 8 {
				time.Sleep(100 * time.Millisecond)
				fmt.Fprint(c, "ping\n")
				_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
				if echo, err := r.ReadString('\n'); err != nil || echo != "ping\n" {
					t.Fatalf("ping %d, %v into a connection kept busy: %q, %v", i, time.Duration(i+1)*100*time.Millisecond, echo, err)
				}
			}
			_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
			// ...and silence closes it.
			start := time.Now()
			_, err = io.ReadAll(r)
			waited := time.Since(start)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal("idle connection still open after 3s")
			}
			if resetOnClose && (err == nil || !strings.Contains(err.Error(), "reset")) {
				t.Fatalf("reset_on_close: read ended with %v, want a reset", err)
			}
			if !resetOnClose && err != nil {
				t.Fatalf("graceful idle close ended with %v", err)
			}
			if waited > 2*time.Second {
				t.Fatalf("closed after %v, want about 400ms of silence", waited)
			}
		})
	}
}

func TestPersistenceKeepsClientOnItsServer(t *testing.T) {
	a, b2, c := startBackend(t, "a"), startBackend(t, "b"), startBackend(t, "c")
	vs := testService(t, "persist", a.addr(), b2.addr(), c.addr())
	vs.Persistence = config.Persistence{Type: "source-ip", Timeout: time.Minute, MaxEntries: 100}
	startBalancer(t, testConfig(vs))

	first := map[netip.Addr]string{}
	used := map[string]bool{}
	for i := range 6 {
		src := netip.AddrFrom4([4]byte{127, 0, 1, byte(10 + i)})
		first[src] = dialFrom(t, src, vipAddr(vs, 0))
		used[first[src]] = true
	}
	if len(used) < 2 {
		t.Fatalf("round robin spread 6 clients over %d servers", len(used))
	}
	for round := range 3 {
		for src, want := range first {
			if got := dialFrom(t, src, vipAddr(vs, 0)); got != want {
				t.Fatalf("round %d: client %s went to %s, first to %s", round, src, got, want)
			}
		}
	}
}

func TestDrainingServerKeepsOpenConnections(t *testing.T) {
	a, b2 := startBackend(t, "a"), startBackend(t, "b")
	vs := testService(t, "drain", a.addr(), b2.addr())
	bal, _ := startBalancer(t, testConfig(vs))

	// One open connection to each server.
	open := map[string]net.Conn{}
	for len(open) < 2 {
		c, err := net.Dial("tcp", vipAddr(vs, 0))
		if err != nil {
			t.Fatal(err)
		}
		name, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		open[strings.TrimSpace(name)] = c
		defer c.Close()
	}
	if err := bal.SetServerState("drain", a.addr().String(), Draining); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		if server, _ := exchange(t, vipAddr(vs, 0), "x"); server != "b" {
			t.Fatalf("new connection %d went to %q while a drains", i, server)
		}
	}
	// The connection to the draining server still works both ways.
	c := open["a"]
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	fmt.Fprint(c, "still here")
	buf := make([]byte, len("still here"))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "still here" {
		t.Fatalf("open connection to the draining server: %q, %v", buf, err)
	}
	if n := bal.services["drain"].byKey[a.addr().String()].active.Load(); n != 1 {
		t.Fatalf("draining server has %d active connections, want 1", n)
	}
}

func TestRedirectLocation(t *testing.T) {
	p := freePort(t, "tcp")
	vs := config.VirtualService{
		Name:     "redirect",
		VIP:      loopback,
		Ports:    []config.Port{{Listen: p, Target: p, Proto: config.TCP}},
		Redirect: "https://%h%s",
	}
	startBalancer(t, testConfig(vs))
	c, err := net.Dial("tcp", vipAddr(vs, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprint(c, "GET /abs/path?x=1&y=2 HTTP/1.1\r\nHost: lyncweb.example.test\r\n\r\n")
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	resp, err := readResponse(c)
	if err != nil {
		t.Fatal(err)
	}
	want := "https://lyncweb.example.test/abs/path?x=1&y=2"
	if resp.StatusCode != 302 || resp.Header.Get("Location") != want {
		t.Fatalf("got %d Location %q, want 302 %q", resp.StatusCode, resp.Header.Get("Location"), want)
	}
}

func TestUnavailableRedirect(t *testing.T) {
	dead := netip.AddrPortFrom(loopback, freePort(t, "tcp"))
	vs := testService(t, "web", dead)
	vs.UnavailableRedirect = "https://sorry.example.test%s"
	startBalancer(t, testConfig(vs))
	c, err := net.Dial("tcp", vipAddr(vs, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprint(c, "GET /meet HTTP/1.1\r\nHost: x\r\n\r\n")
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := readResponse(c)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 302 || resp.Header.Get("Location") != "https://sorry.example.test/meet" {
		t.Fatalf("got %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
}

// TestIdleConnectionsHoldNoPipes opens connections that moved bulk data (through splice) and
// then went quiet: none of them may keep a pipe, or idle connections would cost four
// descriptors each instead of two.
func TestIdleConnectionsHoldNoPipes(t *testing.T) {
	be := startBackend(t, "a")
	vs := testService(t, "idle", be.addr())
	bal, _ := startBalancer(t, testConfig(vs))
	before := countPipes(t)
	const conns = 40
	bulk := strings.Repeat("0123456789abcdef", 64<<10) // 1 MiB: splice territory
	for i := range conns {
		c, err := net.Dial("tcp", vipAddr(vs, 0))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		r := bufio.NewReader(c)
		if _, err := r.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		go func() { _, _ = io.WriteString(c, bulk) }()
		got := make([]byte, len(bulk))
		if _, err := io.ReadFull(r, got); err != nil || string(got) != bulk {
			t.Fatalf("connection %d: bulk echo corrupted or short: %v", i, err)
		}
	}
	// A direction gives its pipe back once it has been quiet for a tick: no connection on any
	// loop holds one...
	holding := 0
	if !eventually(5*time.Second, func() bool {
		holding = 0
		onLoops(bal, func(lp *loop) {
			lp.timers.eachConn(func(c *tcpConn) {
				for d := range c.dir {
					if c.dir[d].pipe != nil {
						holding++
					}
				}
			})
		})
		return holding == 0
	}) {
		t.Fatalf("%d idle connections hold %d pipes 5s after their last byte", conns, holding)
	}
	// ...and the process holds no more pipes than before, but for some resting in the pool:
	// collections empty the pool and its cleanups close them, at a time of their own.
	held := 0
	if !eventually(5*time.Second, func() bool {
		runtime.GC()
		held = countPipes(t) - before
		return held < conns/4
	}) {
		t.Fatalf("%d idle connections hold %d pipes", conns, held)
	}
}

func TestSubnetOriginatingSource(t *testing.T) {
	be := startBackend(t, "a")
	vs := testService(t, "so", be.addr())
	vs.SubnetOriginating = true
	bal, _ := startBalancer(t, testConfig(vs))
	own := netip.MustParseAddr("127.0.0.77")
	bal.SetSourceFunc(func(dst netip.Addr) (netip.Addr, bool) { return own, dst == loopback })
	exchange(t, vipAddr(vs, 0), "x")
	be.mu.Lock()
	defer be.mu.Unlock()
	if len(be.seen) != 1 || be.seen[0] != own {
		t.Fatalf("the real server saw %v, want the box's address on its subnet %s", be.seen, own)
	}
}

func TestSourceAddressesSpreadConnections(t *testing.T) {
	be := startBackend(t, "a")
	vs := testService(t, "alt", be.addr())
	vs.SourceAddresses = []netip.Addr{netip.MustParseAddr("127.0.0.81"), netip.MustParseAddr("127.0.0.82")}
	startBalancer(t, testConfig(vs))
	for range 4 {
		exchange(t, vipAddr(vs, 0), "x")
	}
	be.mu.Lock()
	defer be.mu.Unlock()
	n := map[netip.Addr]int{}
	for _, a := range be.seen {
		n[a]++
	}
	if n[vs.SourceAddresses[0]] != 2 || n[vs.SourceAddresses[1]] != 2 {
		t.Fatalf("sources seen by the real server: %v, want two connections from each alternate address", n)
	}
}

// TestQuietConnectionsHoldNoGoroutine: open connections live on the balancer's loops, not on
// goroutines of their own, and still carry data after a quiet while.
func TestQuietConnectionsHoldNoGoroutine(t *testing.T) {
	be := startBackend(t, "a")
	vs := testService(t, "sip", be.addr())
	startBalancer(t, testConfig(vs))
	// The first connection starts whatever the backend and the test need; count after it.
	first, err := net.Dial("tcp", vipAddr(vs, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	_ = first.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := bufio.NewReader(first).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	var conns []net.Conn
	var readers []*bufio.Reader
	for range 20 {
		c, err := net.Dial("tcp", vipAddr(vs, 0))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		r := bufio.NewReader(c)
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := r.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		conns, readers = append(conns, c), append(readers, r)
	}
	// The test backend runs a goroutine per connection; the balancer must add none.
	if grown := runtime.NumGoroutine() - before; grown > 20+2 {
		t.Fatalf("%d goroutines more for 20 connections; the backend accounts for 20", grown)
	}
	// The pause is the behaviour under test, not a wait for something: the connections stay
	// quiet over a tick of every loop (the loops park with nothing to do, and their sweeps
	// run). The reads after it wait to a deadline.
	time.Sleep(300 * time.Millisecond)
	for i, c := range conns {
		msg := fmt.Sprintf("register %d\n", i)
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatal(err)
		}
		if got, err := readers[i].ReadString('\n'); err != nil || got != msg {
			t.Fatalf("quiet connection %d after a pause: %q %v", i, got, err)
		}
	}
}

func TestParkedConnectionIdleTimeout(t *testing.T) {
	be := startBackend(t, "a")
	vs := testService(t, "sip", be.addr())
	vs.IdleTimeout = 1500 * time.Millisecond
	startBalancer(t, testConfig(vs))
	c, err := net.Dial("tcp", vipAddr(vs, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(6 * time.Second))
	start := time.Now()
	all, err := io.ReadAll(c)
	if err != nil || string(all) != "a\n" {
		t.Fatalf("idle parked connection: read %q, %v", all, err)
	}
	if d := time.Since(start); d < 1400*time.Millisecond || d > 4*time.Second {
		t.Fatalf("idle connection closed after %v, want about 1.5s", d)
	}
}

// TestDialLeavesPortChoiceToConnect: a dial towards a real server must not reserve a local
// port at bind time (that would cap the box at one ephemeral range of connections in all).
func TestDialLeavesPortChoiceToConnect(t *testing.T) {
	vs := testService(t, "x", netip.MustParseAddrPort("127.0.0.1:1"))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fd, err := dialTCP(netip.MustParseAddrPort("127.0.0.2:0"), addrPort(ln.Addr()), vs.Transparent, false)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	v, err := unix.GetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT)
	if err != nil || v != 1 {
		t.Fatalf("IP_BIND_ADDRESS_NO_PORT = %d, %v; want 1", v, err)
	}
}

// TestBytesCountedWhileOpen: byte counters move while a long connection is still open, not
// only when it closes (a SIP connection lives for hours), and count what a peer has received.
func TestBytesCountedWhileOpen(t *testing.T) {
	be := startBackend(t, "a")
	vs := testService(t, "sip", be.addr())
	bal, _ := startBalancer(t, testConfig(vs))
	c, err := net.Dial("tcp", vipAddr(vs, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := strings.Repeat("x", 1000)
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 2+len(msg))); err != nil { // greeting + echo
		t.Fatal(err)
	}
	// Bytes are counted before they are written on, so once the client has read the echo both
	// directions are counted already: no waiting.
	if st := bal.Status()[0]; st.BytesIn != 1000 || st.BytesOut != 1002 || st.Active != 1 {
		t.Fatalf("open connection: bytes in %d out %d, active %d; want 1000, 1002 and 1 before it closes", st.BytesIn, st.BytesOut, st.Active)
	}
}

// TestKeepaliveFollowsService: both sockets of a connection carry the service's keepalive
// setting; the client's inherits it from the listener, which a reload changes.
func TestKeepaliveFollowsService(t *testing.T) {
	be := startBackend(t, "a")
	vs := testService(t, "sip", be.addr())
	vs.TCPKeepalive = true
	bal, _ := startBalancer(t, testConfig(vs))
	keepalive := func() [2][2]int {
		t.Helper()
		c, err := net.Dial("tcp", vipAddr(vs, 0))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		client := addrPort(c.LocalAddr())
		got := make(chan [2][2]int, len(bal.loops))
		for _, lp := range bal.loops {
			lp.post(func() {
				var r [2][2]int
				lp.timers.eachConn(func(conn *tcpConn) {
					if conn.plan.client != client {
						return // an earlier connection, not yet seen closing
					}
					for side, fd := range conn.fd {
						r[side][0], _ = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE)
						r[side][1], _ = unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
					}
				})
				got <- r
			})
		}
		var r [2][2]int
		for range bal.loops {
			if g := <-got; g != ([2][2]int{}) {
				r = g
			}
		}
		return r
	}
	if got, want := keepalive(), [2][2]int{{1, 60}, {1, 60}}; got != want {
		t.Fatalf("keepalive on (client, server) sockets: %v, want %v", got, want)
	}
	vs.TCPKeepalive = false
	if err := bal.Apply(testConfig(vs)); err != nil {
		t.Fatal(err)
	}
	if got := keepalive(); got[0][0] != 0 || got[1][0] != 0 {
		t.Fatalf("keepalive after a reload turned it off: %v, want off on both sockets", got)
	}
}

// TestBackpressureKeepsEveryByte: a client that reads slowly, through a small receive buffer,
// makes the balancer's writes stop short in both directions (the echo server stops reading
// when its own writes stall). Every byte must still arrive once and in order, over the
// buffered path (small writes) and the spliced one (large writes) alike.
func TestBackpressureKeepsEveryByte(t *testing.T) {
	be := startBackend(t, "a")
	vs := testService(t, "bulk", be.addr())
	bal, _ := startBalancer(t, testConfig(vs))
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
				return c.Control(func(fd uintptr) { _ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<10) })
			}}
			c, err := d.Dial("tcp", vipAddr(vs, 0))
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(20 * time.Second))
			r := bufio.NewReader(c)
			if _, err := r.ReadString('\n'); err != nil {
				t.Error(err)
				return
			}
			rng := rand.New(rand.NewPCG(uint64(i), 1))
			data := make([]byte, 6<<20)
			for j := range data {
				data[j] = byte(rng.Uint32())
			}
			go func() {
				for off := 0; off < len(data); {
					n := min(len(data)-off, []int{1, 100, 3000, 70000, 1 << 20}[rng.IntN(5)])
					if _, err := c.Write(data[off : off+n]); err != nil {
						return
					}
					off += n
				}
				_ = c.(*net.TCPConn).CloseWrite()
			}()
			// Read nothing until the balancer holds bytes for this client that its socket would
			// not take: the writes have stalled on the way back.
			client := addrPort(c.LocalAddr())
			if !eventually(10*time.Second, func() bool {
				stalled := false
				onLoops(bal, func(lp *loop) {
					lp.timers.eachConn(func(conn *tcpConn) {
						stalled = stalled || conn.plan.client == client && conn.dir[sideServer].pending()
					})
				})
				return stalled
			}) {
				t.Errorf("connection %d: the balancer's writes to a client that reads nothing never stalled", i)
				return
			}
			got := sha256.New()
			buf := make([]byte, 4096)
			total := 0
			for {
				n, err := r.Read(buf)
				got.Write(buf[:n])
				total += n
				if total < 1<<20 && n > 0 {
					time.Sleep(time.Millisecond) // slow at first: the scenario, not a wait
				}
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Errorf("connection %d after %d bytes: %v", i, total, err)
					return
				}
			}
			if want := sha256.Sum256(data); total != len(data) || !bytes.Equal(got.Sum(nil), want[:]) {
				t.Errorf("connection %d: %d bytes back of %d, or not the same bytes", i, total, len(data))
			}
		}()
	}
	wg.Wait()
}

// TestSilentServerTimesOut: a real server that never answers the handshake (its accept queue
// is full, so the kernel drops the SYNs) costs the client the dial timeout, then the next
// server serves it.
func TestSilentServerTimesOut(t *testing.T) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(fd)
	silent := addrPortOf(sa)
	// Fill the accept queue (backlog 0 holds one) so that further SYNs go unanswered.
	for range 2 {
		c, err := net.DialTimeout("tcp", silent.String(), 500*time.Millisecond)
		if err == nil {
			defer c.Close()
		}
	}
	be := startBackend(t, "alive")
	vs := testService(t, "fe", silent, be.addr())
	cfg := testConfig(vs)
	cfg.Global.DialTimeout = 500 * time.Millisecond
	bal, _ := startBalancer(t, cfg)
	start := time.Now()
	if server, echoed := exchange(t, vipAddr(vs, 0), "hi"); server != "alive" || echoed != "hi" {
		t.Fatalf("got %q %q, want the alive server after the silent one timed out", server, echoed)
	}
	// Round robin starts with the silent server; the loop's tick is 250 ms.
	if d := time.Since(start); d < 450*time.Millisecond || d > 2*time.Second {
		t.Fatalf("served after %v, want the dial timeout (500ms) plus at most a tick or two", d)
	}
	// Nothing stays counted: not the client, not the attempt at the silent server.
	deadline := time.Now().Add(3 * time.Second)
	for {
		st := bal.Status()[0]
		busy := st.Active
		for _, r := range st.RealServers {
			busy += r.Active
		}
		if busy == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the exchange: %+v, want no active connection anywhere", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestTCPOverIPv6: a VIP on ::1 forwards to IPv6 and IPv4 real servers alike, and the real
// server sees the balancer's address of its own family.
func TestTCPOverIPv6(t *testing.T) {
	v6 := startBackendOn(t, "six", "[::1]:0")
	v4 := startBackend(t, "four")
	for _, be := range []*backend{v6, v4} {
		vs := testService(t, "web6", be.addr())
		ln, err := net.Listen("tcp", "[::1]:0")
		if err != nil {
			t.Fatal(err)
		}
		p := addrPort(ln.Addr()).Port()
		ln.Close()
		vs.VIP = netip.IPv6Loopback()
		vs.Ports = []config.Port{{Listen: p, Target: p, Proto: config.TCP}}
		_, stop := startBalancer(t, testConfig(vs))
		msg := strings.Repeat("v6 ", 30000)
		if server, echoed := exchange(t, vipAddr(vs, 0), msg); server != be.name || echoed != msg {
			t.Fatalf("through [::1]:%d to %s: server %q, %d bytes echoed of %d", p, be.addr(), server, len(echoed), len(msg))
		}
		stop()
		be.mu.Lock()
		seen := be.seen[len(be.seen)-1]
		be.mu.Unlock()
		if seen.Is6() != be.addr().Addr().Is6() {
			t.Fatalf("real server %s saw the balancer as %s", be.addr(), seen)
		}
	}
}

// TestDeferAccept: with defer_accept the listener takes connections once the client has sent
// something; a client that waits for the server to speak first is served late, not lost; a
// reload turns it off again.
func TestDeferAccept(t *testing.T) {
	be := startBackend(t, "a")
	vs := testService(t, "sip", be.addr())
	vs.DeferAccept = true
	bal, _ := startBalancer(t, testConfig(vs))
	l := bal.listeners[listenerKey{kind: kindTCP, addr: netip.AddrPortFrom(vs.VIP, vs.Ports[0].Listen)}].(*tcpListener)
	if v, err := unix.GetsockoptInt(l.fd, unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT); err != nil || v == 0 {
		t.Fatalf("TCP_DEFER_ACCEPT on the listener: %d, %v; want it set", v, err)
	}
	if server, echoed := exchange(t, vipAddr(vs, 0), "INVITE"); server != "a" || echoed != "INVITE" {
		t.Fatalf("client speaking first: %q %q", server, echoed)
	}
	// A client that waits for the greeting: the kernel hands the connection over once the
	// deferral has run out.
	c, err := net.Dial("tcp", vipAddr(vs, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(8 * time.Second))
	start := time.Now()
	if g, err := bufio.NewReader(c).ReadString('\n'); err != nil || g != "a\n" {
		t.Fatalf("server speaking first, after %v: %q %v", time.Since(start), g, err)
	}
	vs.DeferAccept = false
	if err := bal.Apply(testConfig(vs)); err != nil {
		t.Fatal(err)
	}
	if v, err := unix.GetsockoptInt(l.fd, unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT); err != nil || v != 0 {
		t.Fatalf("TCP_DEFER_ACCEPT after a reload without it: %d, %v; want 0", v, err)
	}
}

// TestSeveralLoops: with three loops sharing a listener, connections work on whichever loop
// took them, and a reload that moves the port retires the listener on every loop: it closes
// only when the last loop has let go, and the stop then finds nothing left.
func TestSeveralLoops(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(3))
	be := startBackend(t, "a")
	vs := testService(t, "web", be.addr())
	bal, _ := startBalancer(t, testConfig(vs))
	if len(bal.loops) != 3 {
		t.Fatalf("%d loops with GOMAXPROCS 3", len(bal.loops))
	}
	var wg sync.WaitGroup
	for i := range 30 {
		wg.Go(func() {
			msg := fmt.Sprintf("hello %d", i)
			if server, echoed := exchange(t, vipAddr(vs, 0), msg); server != "a" || echoed != msg {
				t.Errorf("connection %d: %q %q", i, server, echoed)
			}
		})
	}
	wg.Wait()
	moved := testService(t, "web", be.addr())
	if err := bal.Apply(testConfig(moved)); err != nil {
		t.Fatal(err)
	}
	if server, echoed := exchange(t, vipAddr(moved, 0), "moved"); server != "a" || echoed != "moved" {
		t.Fatalf("after the port moved: %q %q", server, echoed)
	}
	// Retiring is handed to the loops; it completes within moments, on all of them.
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		c, err := net.DialTimeout("tcp", vipAddr(vs, 0), time.Second)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("the old port still accepts 2s after the reload retired it")
		}
	}
}

// TestTCPRelayAllocatesNothing: a message through an open connection costs no allocation: the
// loop reads it into its own buffer and writes it on at once. It is measured over the whole
// process (the client and the echo server allocate nothing per message either), so a relay that
// allocated would show.
func TestTCPRelayAllocatesNothing(t *testing.T) {
	be := startBackend(t, "a")
	vs := testService(t, "sip", be.addr())
	startBalancer(t, testConfig(vs))
	c, err := net.Dial("tcp", vipAddr(vs, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, 2)); err != nil { // the greeting
		t.Fatal(err)
	}
	msg := []byte("REGISTER sip:pool.example.test SIP/2.0\r\nContent-Length: 0\r\n\r\n")
	echo := make([]byte, len(msg))
	var failed error
	allocs := testing.AllocsPerRun(1000, func() {
		if _, err := c.Write(msg); err != nil && failed == nil {
			failed = err
		}
		if _, err := io.ReadFull(c, echo); err != nil && failed == nil {
			failed = err
		}
	})
	if failed != nil {
		t.Fatal(failed)
	}
	if allocs != 0 {
		t.Errorf("%.0f allocations per message relayed both ways", allocs)
	}
}
