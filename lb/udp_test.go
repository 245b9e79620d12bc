package lb

import (
	"net"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestUDPSessionsHoldNoGoroutine: sessions live on the balancer's loop, not on goroutines of
// their own, and still carry datagrams both ways after a quiet while.
func TestUDPSessionsHoldNoGoroutine(t *testing.T) {
	a := startUDPEcho(t, "a")
	vs := udpService(t, "stun", a.addr())
	bal, _ := startBalancer(t, testConfig(vs))
	// The first session starts whatever the test needs; count after it.
	if got := udpAsk(t, dialUDP(t, vipAddr(vs, 0)), "x"); got != "a:x" {
		t.Fatalf("first client: %q", got)
	}
	before := runtime.NumGoroutine()
	var clients []*net.UDPConn
	for i := range 30 {
		c := dialUDP(t, vipAddr(vs, 0))
		if got := udpAsk(t, c, "x"); got != "a:x" {
			t.Fatalf("client %d: %q", i, got)
		}
		clients = append(clients, c)
	}
	if n := bal.services["stun"].stats.udpSessions.Load(); n != 31 {
		t.Fatalf("%d sessions, want 31", n)
	}
	if grown := runtime.NumGoroutine() - before; grown > 2 {
		t.Fatalf("%d goroutines more for 30 sessions", grown)
	}
	// The pause is the behaviour under test, not a wait for something: the sessions stay quiet
	// over two ticks of the loop, whose sweeps must keep them (5 s of idle timeout). Each ask
	// after it waits to a deadline.
	time.Sleep(2 * loopTick)
	for i, c := range clients {
		if got := udpAsk(t, c, "again"); got != "a:again" {
			t.Fatalf("quiet session %d after a pause: %q", i, got)
		}
	}
}

// TestUDPTooLargeDropped: a datagram larger than maxDatagram is dropped and counted either way,
// never forwarded truncated; the session carries on.
func TestUDPTooLargeDropped(t *testing.T) {
	// An echo with room for jumbo datagrams (startUDPEcho's would truncate them).
	a, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	_ = a.SetWriteBuffer(1 << 20)
	go func() {
		buf := make([]byte, 2*maxDatagram)
		for {
			n, from, err := a.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = a.WriteToUDPAddrPort(append([]byte("a:"), buf[:n]...), from)
		}
	}()
	vs := udpService(t, "media", addrPort(a.LocalAddr()))
	bal, _ := startBalancer(t, testConfig(vs))
	st := bal.services["media"].stats
	c := dialUDP(t, vipAddr(vs, 0))
	_ = c.SetWriteBuffer(1 << 20)
	if got := udpAsk(t, c, strings.Repeat("y", maxDatagram+1)); got != "" {
		t.Fatalf("a datagram of %d bytes came back as %d bytes", maxDatagram+1, len(got))
	}
	if n := st.dropped[DropUDPTooLarge].Load(); n != 1 {
		t.Fatalf("udp_too_large = %d after an oversized request, want 1", n)
	}
	// The largest datagram goes through; the echo's "a:" makes the reply too large.
	if got := udpAsk(t, c, strings.Repeat("z", maxDatagram)); got != "" {
		t.Fatalf("an oversized reply came back as %d bytes", len(got))
	}
	if n := st.dropped[DropUDPTooLarge].Load(); n != 2 {
		t.Fatalf("udp_too_large = %d after an oversized reply, want 2", n)
	}
	if got := udpAsk(t, c, "small"); got != "a:small" {
		t.Fatalf("after the drops: %q", got)
	}
	if in := st.bytesIn.Load(); in != maxDatagram+5 {
		t.Fatalf("bytes in = %d, want %d", in, maxDatagram+5)
	}
}

// TestUDPRefusedKeepsSession: ICMP port unreachable from a server whose port is closed for a
// moment does not end the session; health checks judge servers.
func TestUDPRefusedKeepsSession(t *testing.T) {
	// An address of this test's own: no other test binds on it, so the port is still free
	// when the server comes back.
	closed, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 78)})
	if err != nil {
		t.Fatal(err)
	}
	addr := addrPort(closed.LocalAddr())
	closed.Close()
	vs := udpService(t, "stun", addr)
	bal, _ := startBalancer(t, testConfig(vs))
	st := bal.services["stun"].stats
	c := dialUDP(t, vipAddr(vs, 0))
	for range 3 {
		if got := udpAsk(t, c, "x"); got != "" {
			t.Fatalf("answer from a closed port: %q", got)
		}
	}
	if n := st.udpSessions.Load(); n != 1 {
		t.Fatalf("%d sessions after refusals, want 1", n)
	}
	back, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
	if err != nil {
		t.Fatalf("the server's port %s, free a moment ago: %v", addr, err)
	}
	defer back.Close()
	go func() {
		buf := make([]byte, 64)
		n, from, err := back.ReadFromUDPAddrPort(buf)
		if err == nil {
			_, _ = back.WriteToUDPAddrPort(append([]byte("back:"), buf[:n]...), from)
		}
	}()
	if got := udpAsk(t, c, "y"); got != "back:y" {
		t.Fatalf("session after the server came back: %q", got)
	}
	if n := st.accepted.Load(); n != 1 {
		t.Fatalf("%d sessions accepted, want the one session kept throughout", n)
	}
}

// TestUDPCloseOnDown: with close_on_down, a server's sessions end as soon as health marks it
// down, without waiting for the idle timeout or for traffic.
func TestUDPCloseOnDown(t *testing.T) {
	for _, closeOnDown := range []bool{false, true} {
		name := "keeps"
		if closeOnDown {
			name = "closes"
		}
		t.Run(name, func(t *testing.T) {
			a := startUDPEcho(t, "a")
			vs := udpService(t, "media", a.addr())
			vs.CloseOnDown = closeOnDown
			vs.UDPIdleTimeout = time.Minute
			bal, _ := startBalancer(t, testConfig(vs))
			st := bal.services["media"].stats
			c := dialUDP(t, vipAddr(vs, 0))
			if got := udpAsk(t, c, "x"); got != "a:x" {
				t.Fatalf("before: %q", got)
			}
			if err := bal.SetServerHealth("media", a.addr().String(), false); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(2 * time.Second)
			for st.udpSessions.Load() != 0 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			n := st.udpSessions.Load()
			if closeOnDown {
				if n != 0 {
					t.Fatalf("%d sessions left 2s after their server went down with close_on_down", n)
				}
				if r := bal.services["media"].servers[0].active.Load(); r != 0 {
					t.Fatalf("server still counts %d active sessions", r)
				}
				return
			}
			if n != 1 {
				t.Fatalf("%d sessions after a health change without close_on_down, want 1", n)
			}
			if got := udpAsk(t, c, "y"); got != "a:y" {
				t.Fatalf("open session cut by a health change: %q", got)
			}
		})
	}
}

// TestUDPEmptyDatagram: a datagram with no payload is a datagram like any other, both ways.
func TestUDPEmptyDatagram(t *testing.T) {
	a, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	go func() {
		buf := make([]byte, 64)
		for {
			n, from, err := a.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = a.WriteToUDPAddrPort(buf[:n], from) // an empty one back for an empty one
		}
	}()
	vs := udpService(t, "stun", addrPort(a.LocalAddr()))
	bal, _ := startBalancer(t, testConfig(vs))
	c := dialUDP(t, vipAddr(vs, 0))
	if _, err := c.Write(nil); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 64)
	if n, err := c.Read(buf); err != nil || n != 0 {
		t.Fatalf("reply to an empty datagram: %d bytes, %v", n, err)
	}
	if got := udpAsk(t, c, "x"); got != "x" {
		t.Fatalf("after the empty datagram: %q", got)
	}
	if n := bal.services["stun"].stats.udpSessions.Load(); n != 1 {
		t.Fatalf("%d sessions, want 1", n)
	}
}
