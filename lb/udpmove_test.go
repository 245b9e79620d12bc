package lb

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pairlb/pairlb/config"
)

// TestUDPSessionMovesOffAGoneServer: a client that keeps sending from one port (as every STUN,
// ICE and TURN client does) stays on its server only while that server is there. Once health
// marks it down (here it is also killed) or it is disabled, the client's very next datagram is
// answered by the other server: the session moved, its old socket closed and its count
// released, nothing lost. A draining server keeps its sessions.
func TestUDPSessionMovesOffAGoneServer(t *testing.T) {
	for _, tc := range []struct {
		name    string
		persist bool
		gone    func(bal *Balancer, e *udpEcho, key string) error
		moves   bool
	}{
		{"down and killed", false, func(bal *Balancer, e *udpEcho, key string) error {
			e.conn.Close()
			return bal.SetServerHealth("media", key, false)
		}, true},
		{"down, persistent", true, func(bal *Balancer, e *udpEcho, key string) error {
			return bal.SetServerHealth("media", key, false)
		}, true},
		{"disabled", false, func(bal *Balancer, e *udpEcho, key string) error {
			return bal.SetServerState("media", key, Disabled)
		}, true},
		{"draining", false, func(bal *Balancer, e *udpEcho, key string) error {
			return bal.SetServerState("media", key, Draining)
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			echoes := map[string]*udpEcho{"a": startUDPEcho(t, "a"), "b": startUDPEcho(t, "b")}
			vs := udpService(t, "media", echoes["a"].addr(), echoes["b"].addr())
			vs.UDPIdleTimeout = time.Minute
			if tc.persist {
				vs.Persistence = config.Persistence{Type: "source-ip", Timeout: time.Minute, MaxEntries: 100}
			}
			bal, _ := startBalancer(t, testConfig(vs))
			svc := bal.services["media"]
			st := svc.stats
			c := dialUDP(t, vipAddr(vs, 0))
			got := udpAsk(t, c, "1")
			first, _, _ := strings.Cut(got, ":")
			other := map[string]string{"a": "b", "b": "a"}[first]
			if other == "" {
				t.Fatalf("first answer %q", got)
			}
			e := echoes[first]
			key := e.addr().String()
			if err := tc.gone(bal, e, key); err != nil {
				t.Fatal(err)
			}
			want := first
			if tc.moves {
				want = other
			}
			// One datagram, one answer: the datagram that finds the server gone is not lost.
			if got := udpAsk(t, c, "2"); got != want+":2" {
				t.Fatalf("next datagram answered %q, want %q", got, want+":2")
			}
			if got := udpAsk(t, c, "3"); got != want+":3" {
				t.Fatalf("the one after: %q, want %q", got, want+":3")
			}
			if n := st.udpSessions.Load(); n != 1 {
				t.Errorf("%d sessions, want 1", n)
			}
			if !tc.moves {
				if n := svc.byKey[key].active.Load(); n != 1 {
					t.Errorf("draining server counts %d active sessions, want its 1", n)
				}
				return
			}
			if n := svc.byKey[key].active.Load(); n != 0 {
				t.Errorf("the server left behind still counts %d active sessions", n)
			}
			if n := st.udpMoves.Load(); n != 1 {
				t.Errorf("%d moves counted, want 1", n)
			}
			if n := st.accepted.Load(); n != 1 {
				t.Errorf("%d sessions counted as accepted, want 1: a move is not a new client", n)
			}
			if n := st.active.Load(); n != 1 {
				t.Errorf("service counts %d active, want 1", n)
			}
			if tc.persist {
				// The persistence entry followed: another port of the same address goes there too.
				if got := udpAsk(t, dialUDP(t, vipAddr(vs, 0)), "4"); got != other+":4" {
					t.Errorf("a new session of the same client address went to %q, want %s", got, other)
				}
			}
		})
	}
}

// TestUDPSessionMovesOffARemovedServer: a reload that takes the session's server out of the
// pool moves the session with its client's next datagram. Nothing checks the removed server's
// health any more, so without the move a client that keeps sending would stay on it for good.
func TestUDPSessionMovesOffARemovedServer(t *testing.T) {
	echoes := map[string]*udpEcho{"a": startUDPEcho(t, "a"), "b": startUDPEcho(t, "b")}
	vs := udpService(t, "media", echoes["a"].addr(), echoes["b"].addr())
	vs.UDPIdleTimeout = time.Minute
	bal, _ := startBalancer(t, testConfig(vs))
	c := dialUDP(t, vipAddr(vs, 0))
	first, _, _ := strings.Cut(udpAsk(t, c, "1"), ":")
	other := map[string]string{"a": "b", "b": "a"}[first]
	if other == "" {
		t.Fatalf("first answer from %q", first)
	}
	kept := vs
	kept.RealServers = []config.RealServer{{Address: echoes[other].addr().Addr(), Port: echoes[other].addr().Port(), Weight: 1, Enabled: true}}
	if err := bal.Apply(testConfig(kept)); err != nil {
		t.Fatal(err)
	}
	if got := udpAsk(t, c, "2"); got != other+":2" {
		t.Fatalf("after the reload that removed %s: answered %q, want %s:2", first, got, other)
	}
	if n := bal.services["media"].stats.udpSessions.Load(); n != 1 {
		t.Errorf("%d sessions, want 1", n)
	}
}

// TestUDPSessionStaysWithNowhereToGo: the only server down, no sorry server: the session stays
// (health may be wrong; a dead server loses nothing more) and nothing is counted as a drop.
func TestUDPSessionStaysWithNowhereToGo(t *testing.T) {
	a := startUDPEcho(t, "a")
	vs := udpService(t, "media", a.addr())
	bal, _ := startBalancer(t, testConfig(vs))
	st := bal.services["media"].stats
	c := dialUDP(t, vipAddr(vs, 0))
	if got := udpAsk(t, c, "1"); got != "a:1" {
		t.Fatalf("before: %q", got)
	}
	if err := bal.SetServerHealth("media", a.addr().String(), false); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if got := udpAsk(t, c, "x"); got != "a:x" {
			t.Fatalf("datagram %d after the only server went down: %q", i, got)
		}
	}
	for r := range numDropReasons {
		if n := st.dropped[r].Load(); n != 0 {
			t.Errorf("%s = %d", r, n)
		}
	}
}

// TestUDPSessionLeavesAndReturnsFromSorryServer: with every real server down, a session moves to
// the sorry server; once a real server is back, it moves back to it.
func TestUDPSessionLeavesAndReturnsFromSorryServer(t *testing.T) {
	a, sorry := startUDPEcho(t, "a"), startUDPEcho(t, "sorry")
	vs := udpService(t, "media", a.addr())
	vs.SorryServer = sorry.addr()
	bal, _ := startBalancer(t, testConfig(vs))
	c := dialUDP(t, vipAddr(vs, 0))
	if got := udpAsk(t, c, "1"); got != "a:1" {
		t.Fatalf("before: %q", got)
	}
	if err := bal.SetServerHealth("media", a.addr().String(), false); err != nil {
		t.Fatal(err)
	}
	if got := udpAsk(t, c, "2"); got != "sorry:2" {
		t.Fatalf("with the only server down: %q, want the sorry server", got)
	}
	if err := bal.SetServerHealth("media", a.addr().String(), true); err != nil {
		t.Fatal(err)
	}
	// The sorry session looks for a real server at most every moveRetry.
	deadline := time.Now().Add(time.Duration(moveRetry) + 3*time.Second)
	for {
		got := udpAsk(t, c, "3")
		if got == "a:3" {
			break
		}
		if got != "sorry:3" || time.Now().After(deadline) {
			t.Fatalf("after the server came back: %q", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// evidenceLog collects the evidence a balancer reports.
type evidenceLog struct {
	mu    sync.Mutex
	calls []string
}

func (e *evidenceLog) add(service, server, reason string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.calls = append(e.calls, service+" "+server+" "+reason)
}

func (e *evidenceLog) get() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.calls...)
}

// TestEvidenceFromUDPPortUnreachable: ICMP port unreachable on a session is reported as
// evidence against its server, at most once per second however many datagrams meet it.
func TestEvidenceFromUDPPortUnreachable(t *testing.T) {
	closed, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	dead := addrPort(closed.LocalAddr())
	closed.Close()
	vs := udpService(t, "stun", dead)
	bal, _ := startBalancer(t, testConfig(vs))
	var ev evidenceLog
	bal.SetEvidenceFunc(ev.add)
	c := dialUDP(t, vipAddr(vs, 0))
	start := time.Now()
	for range 20 {
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond) // let each one draw its own ICMP error
	}
	want := "stun " + dead.String() + " " + evidenceUDPRefused
	waitFor(t, "evidence reported", func() bool { return len(ev.get()) > 0 })
	calls := ev.get()
	elapsed := time.Since(start)
	if max := 1 + int(elapsed/time.Second); len(calls) > max {
		t.Errorf("%d reports in %v, want at most %d (one per second): %q", len(calls), elapsed, max, calls)
	}
	for _, got := range calls {
		if got != want {
			t.Errorf("evidence %q, want %q", got, want)
		}
	}
}

// TestEvidenceFromRefusedDial: a refused TCP dial is evidence against its server; the client
// is served by the next one.
func TestEvidenceFromRefusedDial(t *testing.T) {
	dead := startBackend(t, "dead")
	deadAddr := dead.addr()
	dead.stop()
	alive := startBackend(t, "alive")
	vs := testService(t, "fe", deadAddr, alive.addr())
	bal, _ := startBalancer(t, testConfig(vs))
	var ev evidenceLog
	bal.SetEvidenceFunc(ev.add)
	for range 4 {
		if server, _ := exchange(t, vipAddr(vs, 0), "x"); server != "alive" {
			t.Fatalf("served by %q", server)
		}
	}
	want := "fe " + deadAddr.String() + " " + evidenceDialRefused
	if calls := ev.get(); len(calls) != 1 || calls[0] != want {
		t.Errorf("evidence %q, want one %q (round robin tried the dead server twice within a second)", calls, want)
	}
}

// TestSuspectRateLimit: one report per server per second, servers apart.
func TestSuspectRateLimit(t *testing.T) {
	b := New(nil)
	var ev evidenceLog
	b.SetEvidenceFunc(ev.add)
	r1, r2 := &realServer{key: "r1"}, &realServer{key: "r2"}
	t0 := time.Unix(1700000000, 0).UnixNano()
	sec := int64(time.Second)
	for _, at := range []int64{0, sec / 2, sec - 1, sec, sec + 1, 3 * sec} {
		b.suspect("vs", r1, "why", t0+at)
	}
	b.suspect("vs", r2, "why", t0+sec/2)
	want := []string{"vs r1 why", "vs r1 why", "vs r1 why", "vs r2 why"} // r1 at 0, 1s and 3s; r2 apart
	if got := ev.get(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("reports %q, want %q", got, want)
	}
	b.suspect("vs", nil, "sorry server", t0) // no real server: nothing to report
}

// TestUDPSweepWalksOnlyExpiredSessions: the idle sweep looks at the sessions that expire, in
// the order they went quiet, and not at the live ones, however many there are; a session that
// keeps talking outlives the quiet ones.
func TestUDPSweepWalksOnlyExpiredSessions(t *testing.T) {
	a := startUDPEcho(t, "a")
	vs := udpService(t, "media", a.addr())
	vs.UDPIdleTimeout = time.Hour
	bal, _ := startBalancer(t, testConfig(vs))
	l := bal.listeners[listenerKey{kind: kindUDP, addr: netip.AddrPortFrom(vs.VIP, vs.Ports[0].Listen)}].(*udpListener)
	var clients []*net.UDPConn
	for i := range 100 {
		c := dialUDP(t, vipAddr(vs, 0))
		if got := udpAsk(t, c, "x"); got != "a:x" {
			t.Fatalf("client %d: %q", i, got)
		}
		clients = append(clients, c)
	}
	// Client 0, the oldest, talks again: it becomes the newest.
	if got := udpAsk(t, clients[0], "y"); got != "a:y" {
		t.Fatalf("again: %q", got)
	}
	onLoop := func(f func()) {
		done := make(chan struct{})
		l.lp.post(func() { f(); close(done) })
		<-done
	}
	var visited uint64
	var order []netip.AddrPort
	onLoop(func() {
		before := l.swept
		l.sweep(l.lp.now) // nothing has been quiet for an hour
		visited = l.swept - before
		for s := l.oldest; s != nil; s = s.newer {
			order = append(order, s.client)
		}
	})
	if visited != 0 {
		t.Errorf("a sweep with nothing expired looked at %d of 100 sessions", visited)
	}
	local := func(c *net.UDPConn) netip.AddrPort { return addrPort(c.LocalAddr()) }
	if len(order) != 100 || order[0] != local(clients[1]) || order[99] != local(clients[0]) {
		t.Fatalf("sessions by activity: %d, first %v, last %v; want client 1 first and client 0 last", len(order), order[0], order[len(order)-1])
	}
	// An hour and a moment later for the first 50 (by activity) only: those go, the rest stay.
	onLoop(func() {
		cut := l.oldest
		for range 50 {
			cut = cut.newer
		}
		now := cut.last + int64(time.Hour) - 1 // cut and the sessions after it are not yet expired
		for s := l.oldest; s != cut; s = s.newer {
			s.last = cut.last - 1
		}
		before := l.swept
		l.sweep(now)
		visited = l.swept - before
	})
	if n := bal.services["media"].stats.udpSessions.Load(); n != 50 {
		t.Errorf("%d sessions after the sweep, want 50", n)
	}
	if visited != 50 {
		t.Errorf("the sweep went through %d sessions to expire 50, want 50 (it stops at the first live one)", visited)
	}
}

// TestDialEvidence: which dial failures say something about the server, and which only about
// this box.
func TestDialEvidence(t *testing.T) {
	for err, want := range map[error]string{
		fmt.Errorf("connect 198.18.1.1:443: %w", unix.ECONNREFUSED):      evidenceDialRefused,
		fmt.Errorf("connect 198.18.1.1:443: %w", os.ErrDeadlineExceeded): evidenceDialTimeout,
		fmt.Errorf("connect 198.18.1.1:443: %w", unix.ETIMEDOUT):         evidenceDialTimeout,
		fmt.Errorf("connect 198.18.1.1:443: %w", unix.EHOSTUNREACH):      evidenceDialNoHost,
		fmt.Errorf("socket: %w", unix.EMFILE):                            "",
		fmt.Errorf("bind 198.51.100.77:0: %w", unix.EADDRNOTAVAIL):       "",
		fmt.Errorf("setsockopt IP_TRANSPARENT: %w", unix.EPERM):          "",
	} {
		if got := dialEvidence(err); got != want {
			t.Errorf("dialEvidence(%v) = %q, want %q", err, got, want)
		}
	}
}
