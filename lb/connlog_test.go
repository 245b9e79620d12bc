package lb

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pairlb/pairlb/config"
)

// memSink is a connection log in memory.
type memSink struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	writes int
	closed bool
}

func (s *memSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, errors.New("write to a closed sink")
	}
	if len(p) == 0 || p[len(p)-1] != '\n' {
		return 0, errors.New("a write that does not end a line")
	}
	s.writes++
	return s.buf.Write(p)
}

func (s *memSink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}

func (s *memSink) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *memSink) text() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// logLine is a JSON line of the connection log.
type logLine struct {
	Start          string `json:"start"`
	VirtualService string `json:"virtual_service"`
	Port           uint16 `json:"port"`
	Proto          string `json:"proto"`
	Route          string `json:"route"`
	Client         string `json:"client"`
	Server         string `json:"server"`
	DurationMS     int64  `json:"duration_ms"`
	In             uint64 `json:"bytes_client_to_server"`
	Out            uint64 `json:"bytes_server_to_client"`
	End            string `json:"end"`
}

// lineFields are the keys every JSON line has, no more, no fewer.
var lineFields = []string{"start", "virtual_service", "port", "proto", "route", "client", "server",
	"duration_ms", "bytes_client_to_server", "bytes_server_to_client", "end"}

var startFormat = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d)$`)

// lines parses every JSON line the sink holds, failing the test on one that is not a complete
// line of the format.
func (s *memSink) lines(t *testing.T) []logLine {
	t.Helper()
	var out []logLine
	for _, l := range strings.SplitAfter(s.text(), "\n") {
		if l == "" {
			continue
		}
		var keys map[string]json.RawMessage
		if err := json.Unmarshal([]byte(l), &keys); err != nil {
			t.Fatalf("not JSON: %q: %v", l, err)
		}
		got := make([]string, 0, len(keys))
		for k := range keys {
			got = append(got, k)
		}
		slices.Sort(got)
		want := slices.Sorted(slices.Values(lineFields))
		if !slices.Equal(got, want) {
			t.Fatalf("line %q has the fields %v, want %v", l, got, want)
		}
		d := json.NewDecoder(strings.NewReader(l))
		d.DisallowUnknownFields()
		var ll logLine
		if err := d.Decode(&ll); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		if !startFormat.MatchString(ll.Start) {
			t.Fatalf("line %q: start %q is not ISO 8601 with milliseconds", l, ll.Start)
		}
		if ll.Route != "" {
			t.Fatalf("line %q: a route, but no service has routes yet", l)
		}
		out = append(out, ll)
	}
	return out
}

// waitLine waits for the line of the connection from client and returns it.
func (s *memSink) waitLine(t *testing.T, client string) logLine {
	t.Helper()
	var found logLine
	waitFor(t, "the connection log's line for "+client, func() bool {
		for _, l := range s.lines(t) {
			if l.Client == client {
				found = l
				return true
			}
		}
		return false
	})
	return found
}

// count is the number of lines for client.
func (s *memSink) count(t *testing.T, client string) int {
	n := 0
	for _, l := range s.lines(t) {
		if l.Client == client {
			n++
		}
	}
	return n
}

// startLogged runs a balancer for cfg whose connection log (JSON) goes to the sink returned.
func startLogged(t *testing.T, cfg *config.Config) (*Balancer, func(), *memSink) {
	t.Helper()
	bal, stop := startBalancer(t, cfg)
	sink := &memSink{}
	bal.SetConnectionLog(sink, config.ConnLogJSON)
	return bal, stop, sink
}

// dialVS connects to addr and returns the connection and its local address, as the log writes
// the client.
func dialVS(t *testing.T, addr string) (*net.TCPConn, string) {
	t.Helper()
	c, local, err := dialLocal(addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c, local
}

// expectRefused connects to addr, where the balancer refuses the client with a reset, which
// may come before the connect returns, and returns the client's address.
func expectRefused(t *testing.T, addr string) string {
	t.Helper()
	c, local, err := dialLocal(addr)
	if err == nil {
		readUntilEnd(t, c)
		c.Close()
	} else if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("dial %s: %v, want a reset", addr, err)
	}
	return local
}

// dialLocal connects to addr from a local address bound before the connect, so that it is
// known also when the connect fails.
func dialLocal(addr string) (*net.TCPConn, string, error) {
	var local string
	d := net.Dialer{Timeout: 2 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var err error
		cerr := rc.Control(func(fd uintptr) {
			if err = unix.Bind(int(fd), &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
				return
			}
			var sa unix.Sockaddr
			if sa, err = unix.Getsockname(int(fd)); err == nil {
				local = addrPortOf(sa).String()
			}
		})
		return cmp.Or(cerr, err)
	}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, local, err
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c.(*net.TCPConn), local, nil
}

func readLine(t *testing.T, c net.Conn) string {
	t.Helper()
	var b [1]byte
	var line []byte
	for {
		if _, err := c.Read(b[:]); err != nil {
			t.Fatalf("reading a line: %v (so far %q)", err, line)
		}
		line = append(line, b[0])
		if b[0] == '\n' {
			return string(line)
		}
	}
}

// readUntilEnd reads until the connection ends, by FIN or RST, and returns what came.
func readUntilEnd(t *testing.T, c net.Conn) string {
	t.Helper()
	all, err := io.ReadAll(c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the connection did not end (read %q)", all)
	}
	return string(all)
}

// scriptedServer is a real server on loopback running serve for each connection.
func scriptedServer(t *testing.T, serve func(c *net.TCPConn)) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				serve(c.(*net.TCPConn))
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return addrPort(ln.Addr())
}

// TestConnectionLogTCPEnds drives a TCP connection through a loopback balancer to each way it
// can end and reads its line: one line per connection, with the reason it ended, the real
// server, the bytes each way and the service and port it came in by.
func TestConnectionLogTCPEnds(t *testing.T) {
	type want struct {
		end     string
		server  string // "" for none
		in, out int64  // -1: not checked
	}
	for _, tc := range []struct {
		name string
		// setup returns the service; drive makes one connection end and returns the client's
		// address (stop ends the balancer, for the reasons of a stop).
		setup func(t *testing.T) (config.VirtualService, string)
		tune  func(cfg *config.Config)
		drive func(t *testing.T, bal *Balancer, vs config.VirtualService, stop func()) string
		want  want
	}{
		{
			name: "client closes first",
			setup: func(t *testing.T) (config.VirtualService, string) {
				be := startBackend(t, "a")
				return testService(t, "web", be.addr()), be.addr().String()
			},
			drive: func(t *testing.T, _ *Balancer, vs config.VirtualService, _ func()) string {
				c, local := dialVS(t, vipAddr(vs, 0))
				readLine(t, c) // the greeting: the relay is up
				if _, err := io.WriteString(c, "hello"); err != nil {
					t.Fatal(err)
				}
				_ = c.CloseWrite()
				if got := readUntilEnd(t, c); got != "hello" {
					t.Fatalf("echo %q", got)
				}
				return local
			},
			want: want{"client_closed", "server", 5, 7},
		},
		{
			name: "server closes first",
			setup: func(t *testing.T) (config.VirtualService, string) {
				srv := scriptedServer(t, func(c *net.TCPConn) { _, _ = io.WriteString(c, "bye\n") })
				return testService(t, "web", srv), srv.String()
			},
			drive: func(t *testing.T, _ *Balancer, vs config.VirtualService, _ func()) string {
				c, local := dialVS(t, vipAddr(vs, 0))
				if got := readUntilEnd(t, c); got != "bye\n" {
					t.Fatalf("read %q", got)
				}
				c.Close()
				return local
			},
			want: want{"server_closed", "server", 0, 4},
		},
		{
			name: "idle timeout",
			setup: func(t *testing.T) (config.VirtualService, string) {
				be := startBackend(t, "a")
				vs := testService(t, "web", be.addr())
				vs.IdleTimeout = 300 * time.Millisecond
				return vs, be.addr().String()
			},
			drive: func(t *testing.T, _ *Balancer, vs config.VirtualService, _ func()) string {
				c, local := dialVS(t, vipAddr(vs, 0))
				readLine(t, c)
				readUntilEnd(t, c) // the balancer closes it
				return local
			},
			want: want{"idle_timeout", "server", 0, 2},
		},
		{
			name: "client resets",
			setup: func(t *testing.T) (config.VirtualService, string) {
				be := startBackend(t, "a")
				return testService(t, "web", be.addr()), be.addr().String()
			},
			drive: func(t *testing.T, _ *Balancer, vs config.VirtualService, _ func()) string {
				c, local := dialVS(t, vipAddr(vs, 0))
				readLine(t, c)
				_ = c.SetLinger(0)
				c.Close()
				return local
			},
			want: want{"client_reset", "server", 0, 2},
		},
		{
			name: "server resets",
			setup: func(t *testing.T) (config.VirtualService, string) {
				srv := scriptedServer(t, func(c *net.TCPConn) {
					// Once the client's byte is here, the balancer is connected: the reset
					// comes in the relay, not in the dial.
					if _, err := c.Read(make([]byte, 1)); err == nil {
						_ = c.SetLinger(0)
					}
				})
				return testService(t, "web", srv), srv.String()
			},
			drive: func(t *testing.T, _ *Balancer, vs config.VirtualService, _ func()) string {
				c, local := dialVS(t, vipAddr(vs, 0))
				if _, err := io.WriteString(c, "x"); err != nil {
					t.Fatal(err)
				}
				readUntilEnd(t, c)
				return local
			},
			want: want{"server_reset", "server", 1, 0},
		},
		{
			name: "dial fails",
			setup: func(t *testing.T) (config.VirtualService, string) {
				closed := netip.AddrPortFrom(loopback, freePort(t, "tcp"))
				return testService(t, "web", closed), closed.String()
			},
			drive: func(t *testing.T, _ *Balancer, vs config.VirtualService, _ func()) string {
				return expectRefused(t, vipAddr(vs, 0))
			},
			want: want{"dial_failed", "server", 0, 0},
		},
		{
			name: "access denied",
			setup: func(t *testing.T) (config.VirtualService, string) {
				be := startBackend(t, "a")
				vs := testService(t, "web", be.addr())
				vs.Access.Allow = []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")} // the client is 127.0.0.1
				return vs, ""
			},
			drive: func(t *testing.T, _ *Balancer, vs config.VirtualService, _ func()) string {
				return expectRefused(t, vipAddr(vs, 0))
			},
			want: want{"access_denied", "", 0, 0},
		},
		{
			name: "no server",
			setup: func(t *testing.T) (config.VirtualService, string) {
				be := startBackend(t, "a")
				vs := testService(t, "web", be.addr())
				vs.RealServers[0].Enabled = false
				return vs, ""
			},
			drive: func(t *testing.T, _ *Balancer, vs config.VirtualService, _ func()) string {
				return expectRefused(t, vipAddr(vs, 0))
			},
			want: want{"no_server", "", 0, 0},
		},
		{
			name: "server marked down, close_on_down",
			setup: func(t *testing.T) (config.VirtualService, string) {
				be := startBackend(t, "a")
				vs := testService(t, "web", be.addr())
				vs.CloseOnDown = true
				return vs, be.addr().String()
			},
			drive: func(t *testing.T, bal *Balancer, vs config.VirtualService, _ func()) string {
				c, local := dialVS(t, vipAddr(vs, 0))
				readLine(t, c)
				if err := bal.SetServerHealth("web", vs.RealServers[0].Key(), false); err != nil {
					t.Fatal(err)
				}
				readUntilEnd(t, c)
				return local
			},
			want: want{"server_down", "server", 0, 2},
		},
		{
			name: "drain timeout at stop",
			setup: func(t *testing.T) (config.VirtualService, string) {
				be := startBackend(t, "a")
				return testService(t, "web", be.addr()), be.addr().String()
			},
			tune: func(cfg *config.Config) { cfg.Global.DrainTimeout = 300 * time.Millisecond },
			drive: func(t *testing.T, _ *Balancer, vs config.VirtualService, stop func()) string {
				c, local := dialVS(t, vipAddr(vs, 0))
				readLine(t, c)
				stop() // returns once the writer has written every line
				readUntilEnd(t, c)
				return local
			},
			want: want{"drain_timeout", "server", 0, 2},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vs, server := tc.setup(t)
			cfg := testConfig(vs)
			if tc.tune != nil {
				tc.tune(cfg)
			}
			bal, stop, sink := startLogged(t, cfg)
			client := tc.drive(t, bal, vs, stop)
			l := sink.waitLine(t, client)
			stop() // every line written: none more may come for this client
			if n := sink.count(t, client); n != 1 {
				t.Errorf("%d lines for the connection from %s, want 1:\n%s", n, client, sink.text())
			}
			if tc.want.server == "" {
				server = ""
			}
			if l.End != tc.want.end || l.Server != server || l.VirtualService != "web" || l.Port != vs.Ports[0].Listen || l.Proto != "tcp" ||
				(tc.want.in >= 0 && l.In != uint64(tc.want.in)) || (tc.want.out >= 0 && l.Out != uint64(tc.want.out)) {
				t.Errorf("line %+v, want end %s, server %q, virtual service web, port %d/tcp, bytes %d and %d", l, tc.want.end, server, vs.Ports[0].Listen, tc.want.in, tc.want.out)
			}
			if tc.want.end == "idle_timeout" && l.DurationMS < 300 {
				t.Errorf("idle timeout of 300ms after %d ms", l.DurationMS)
			}
			if !sink.isClosed() {
				t.Error("Run ended without closing the connection log")
			}
		})
	}
}

// TestConnectionLogLoopRefused: the balancer's own connection, come back to its listener
// through a real server that is its own VIP, is refused and logged as loop_refused; the
// connection that made it ends too, each with one line.
func TestConnectionLogLoopRefused(t *testing.T) {
	vs := testService(t, "web")
	vs.RealServers = []config.RealServer{{Address: loopback, Port: vs.Ports[0].Listen, Weight: 1, Enabled: true}}
	_, stop, sink := startLogged(t, testConfig(vs))
	local := expectRefused(t, vipAddr(vs, 0))
	outer := sink.waitLine(t, local)
	stop()
	lines := sink.lines(t)
	if len(lines) != 2 {
		t.Fatalf("%d lines, want 2 (the client's, the loop's):\n%s", len(lines), sink.text())
	}
	inner := lines[0]
	if inner.Client == local {
		inner = lines[1]
	}
	if inner.End != "loop_refused" || inner.Server != "" {
		t.Errorf("the loop's line: %+v, want loop_refused and no server", inner)
	}
	if outer.Server != vipAddr(vs, 0) || outer.End == "loop_refused" {
		t.Errorf("the client's line: %+v, want the VIP as its server", outer)
	}
}

// TestConnectionLogUDPEnds: a UDP session has one line when it ends: idle, moved to another
// server, its server marked down with close_on_down, quiet while the box stops, or still
// talking at the drain deadline.
func TestConnectionLogUDPEnds(t *testing.T) {
	for _, tc := range []struct {
		name  string
		tune  func(vs *config.VirtualService, cfg *config.Config)
		drive func(t *testing.T, bal *Balancer, c *net.UDPConn, stop func(), server string)
		end   string
	}{
		{"idle timeout", func(vs *config.VirtualService, _ *config.Config) { vs.UDPIdleTimeout = 300 * time.Millisecond },
			func(*testing.T, *Balancer, *net.UDPConn, func(), string) {}, "idle_timeout"},
		{"moved", nil, func(t *testing.T, bal *Balancer, _ *net.UDPConn, _ func(), server string) {
			if err := bal.SetServerState("media", server, Disabled); err != nil {
				t.Fatal(err)
			}
		}, "moved"},
		{"server down", func(vs *config.VirtualService, _ *config.Config) { vs.CloseOnDown = true },
			func(t *testing.T, bal *Balancer, _ *net.UDPConn, _ func(), server string) {
				if err := bal.SetServerHealth("media", server, false); err != nil {
					t.Fatal(err)
				}
			}, "server_down"},
		{"quiet at stop", func(_ *config.VirtualService, cfg *config.Config) { cfg.Global.DrainTimeout = 10 * time.Second },
			func(_ *testing.T, _ *Balancer, _ *net.UDPConn, stop func(), _ string) { stop() }, "shutdown"},
		{"drain timeout", func(_ *config.VirtualService, cfg *config.Config) { cfg.Global.DrainTimeout = 300 * time.Millisecond },
			func(_ *testing.T, _ *Balancer, c *net.UDPConn, stop func(), _ string) {
				// The client keeps talking through the drain, so that no quiet second ends the
				// session before the deadline does.
				done := make(chan struct{})
				var wg sync.WaitGroup
				wg.Go(func() {
					tick := time.NewTicker(50 * time.Millisecond)
					defer tick.Stop()
					for {
						select {
						case <-done:
							return
						case <-tick.C:
							_, _ = c.Write([]byte("more"))
						}
					}
				})
				stop()
				close(done)
				wg.Wait()
			}, "drain_timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := startUDPEcho(t, "a"), startUDPEcho(t, "b")
			vs := udpService(t, "media", a.addr(), b.addr())
			cfg := testConfig(vs)
			if tc.tune != nil {
				tc.tune(&cfg.VirtualServices[0], cfg)
				vs = cfg.VirtualServices[0]
			}
			bal, stop, sink := startLogged(t, cfg)
			c := dialUDP(t, vipAddr(vs, 0))
			client := c.LocalAddr().String()
			reply := udpAsk(t, c, "ping")
			server := a.addr().String()
			switch reply {
			case "a:ping":
			case "b:ping":
				server = b.addr().String()
			default:
				t.Fatalf("reply %q", reply)
			}
			tc.drive(t, bal, c, stop, server)
			if tc.end == "moved" {
				if got := udpAsk(t, c, "ping"); got == reply || got == "" {
					t.Fatalf("after disabling %s: reply %q", server, got)
				}
			}
			l := sink.waitLine(t, client)
			stop()
			exact := tc.end != "drain_timeout" // there the client kept sending
			if l.End != tc.end || l.Server != server || l.VirtualService != "media" || l.Port != vs.Ports[0].Listen || l.Proto != "udp" ||
				(exact && (l.In != 4 || l.Out != 6)) || l.In < 4 || l.Out < 6 {
				t.Errorf("line %+v, want end %s, server %s, media on %d/udp, bytes 4 and 6", l, tc.end, server, vs.Ports[0].Listen)
			}
			want := 1
			if tc.end == "moved" {
				want = 2 // and the session it moved to, ended by the stop
			}
			if n := sink.count(t, client); n != want {
				t.Errorf("%d lines for the client %s, want %d:\n%s", n, client, want, sink.text())
			}
		})
	}
}

// blockingSink is a connection log whose Write blocks until released: a disk or syslog that
// has stalled.
type blockingSink struct {
	entered chan struct{} // closed at the first Write
	release chan struct{}
	once    sync.Once
	memSink
}

func (s *blockingSink) Write(p []byte) (int, error) {
	s.once.Do(func() { close(s.entered) })
	<-s.release
	return s.memSink.Write(p)
}

// TestConnectionLogSlowWriter: a writer that blocks costs lines, counted on the registry, never
// forwarding: a batch of connections completes while the writer is stuck in a Write, and every
// connection is either written or counted once the writer is released.
func TestConnectionLogSlowWriter(t *testing.T) {
	defer func(n int) { queueSize = n }(queueSize)
	queueSize = 8
	be := startBackend(t, "a")
	vs := testService(t, "web", be.addr())
	bal, stop := startBalancer(t, testConfig(vs))
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(bal))
	metric := func(name string, labels ...string) float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
			for _, m := range mf.GetMetric() {
				if len(labels) == 0 || (len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == labels[0]) {
					return m.GetCounter().GetValue()
				}
			}
		}
		t.Fatalf("no series %s %v", name, labels)
		return 0
	}

	const batch = 200
	run := func() time.Duration {
		start := time.Now()
		for range batch {
			if server, echoed := exchange(t, vipAddr(vs, 0), "x"); server != "a" || echoed != "x" {
				t.Fatalf("exchange: %q %q", server, echoed)
			}
		}
		return time.Since(start)
	}
	unlogged := run()

	sink := &blockingSink{entered: make(chan struct{}), release: make(chan struct{})}
	bal.SetConnectionLog(sink, config.ConnLogText)
	exchange(t, vipAddr(vs, 0), "x")
	select {
	case <-sink.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the writer never wrote")
	}
	stuck := run() // exchange fails the test if a connection waits for the writer
	select {
	case <-sink.release:
		t.Fatal("released early")
	default: // the writer is still inside Write: the batch did not wait for it
	}
	t.Logf("%d connections: %v without the log, %v with its writer blocked", batch, unlogged, stuck)
	if lost := metric("pairlb_connection_log_dropped_total", "queue_full"); lost < batch-float64(queueSize) {
		t.Errorf("%v lines counted lost with the writer blocked and a queue of %d, want at least %d", lost, queueSize, batch-queueSize)
	}
	close(sink.release)
	stop()
	written, lost := metric("pairlb_connection_log_lines_total"), metric("pairlb_connection_log_dropped_total", "queue_full")
	if written+lost != batch+1 || int(written) != strings.Count(sink.text(), "\n") {
		t.Errorf("%v lines written (%d in the sink) and %v lost, want %d connections in all", written, strings.Count(sink.text(), "\n"), lost, batch+1)
	}
	if failed := metric("pairlb_connection_log_dropped_total", "write_failed"); failed != 0 {
		t.Errorf("%v lines counted as failed writes", failed)
	}
}

// TestConnectionLogSinkChanges: a new sink takes the lines from the next connection on and the
// one it replaces is closed; a nil sink turns the log off; Run's end closes the last one.
func TestConnectionLogSinkChanges(t *testing.T) {
	be := startBackend(t, "a")
	vs := testService(t, "web", be.addr())
	bal, stop := startBalancer(t, testConfig(vs))
	first, second := &memSink{}, &memSink{}
	bal.SetConnectionLog(first, config.ConnLogJSON)
	exchange(t, vipAddr(vs, 0), "x")
	waitFor(t, "a line in the first sink", func() bool { return len(first.lines(t)) == 1 })
	bal.SetConnectionLog(second, config.ConnLogText)
	waitFor(t, "the replaced sink closed", first.isClosed)
	exchange(t, vipAddr(vs, 0), "x")
	waitFor(t, "a line in the new sink", func() bool { return strings.Contains(second.text(), " client_closed\n") })
	bal.SetConnectionLog(nil, "")
	waitFor(t, "the sink of a log turned off closed", second.isClosed)
	lines := strings.Count(second.text(), "\n")
	exchange(t, vipAddr(vs, 0), "x")
	stop()
	if n := strings.Count(second.text(), "\n"); n != lines {
		t.Errorf("%d lines after the log was turned off, want %d", n, lines)
	}
	if bal.clog.on.Load() {
		t.Error("the log is on after SetConnectionLog(nil)")
	}
	late := &memSink{}
	bal.SetConnectionLog(late, config.ConnLogText) // after Run: nothing will ever write to it
	if !late.isClosed() {
		t.Error("a sink given after Run ended is not closed")
	}
}

// TestConnectionLogText: the text line has its fields in the documented order, apart by one
// space, with "-" for the empty route.
func TestConnectionLogText(t *testing.T) {
	be := startBackend(t, "a")
	vs := testService(t, "web", be.addr())
	bal, stop := startBalancer(t, testConfig(vs))
	sink := &memSink{}
	bal.SetConnectionLog(sink, config.ConnLogText)
	c, local := dialVS(t, vipAddr(vs, 0))
	readLine(t, c)
	_, _ = io.WriteString(c, "hello")
	_ = c.CloseWrite()
	readUntilEnd(t, c)
	stop()
	want := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d) web ` + regexp.QuoteMeta(
		strings.Join([]string{vs.Ports[0].String(), "-", local, be.addr().String()}, " ")) + ` \d+ 5 7 client_closed\n$`)
	if got := sink.text(); !want.MatchString(got) {
		t.Errorf("text line %q, want it to match %s", got, want)
	}
}

// TestConnectionLogFormats: both formats of a record without a server, over IPv6, and a JSON
// line stays JSON whatever the name holds.
func TestConnectionLogFormats(t *testing.T) {
	name := "fe-sip"
	at := time.Date(2025, 3, 4, 9, 14, 2, 123456789, time.UTC).UnixNano()
	r := connRecord{svc: &name, start: at, end: at + int64(5012*time.Millisecond) + 999, client: netip.MustParseAddrPort("[2001:db8::9]:51234"),
		in: 1234, out: 5678, port: 5061, reason: endNoServer}
	text := string(appendTextLine(nil, &r))
	stamp := time.Unix(0, at).Format("2006-01-02T15:04:05.000Z07:00")
	if want := stamp + " fe-sip 5061/tcp - [2001:db8::9]:51234 - 5012 1234 5678 no_server\n"; text != want {
		t.Errorf("text:\n%q\nwant\n%q", text, want)
	}
	r.udp, r.server = true, netip.MustParseAddrPort("[2001:db8::12]:3478")
	var got map[string]any
	line := appendJSONLine(nil, &r)
	if err := json.Unmarshal(line, &got); err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	want := map[string]any{"start": stamp, "virtual_service": "fe-sip", "port": 5061.0, "proto": "udp", "route": "",
		"client": "[2001:db8::9]:51234", "server": "[2001:db8::12]:3478", "duration_ms": 5012.0,
		"bytes_client_to_server": 1234.0, "bytes_server_to_client": 5678.0, "end": "no_server"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	odd := "a\"b\\c\x01d"
	r.svc = &odd
	if err := json.Unmarshal(appendJSONLine(nil, &r), &got); err != nil || got["virtual_service"] != odd {
		t.Errorf("name %q: %v, %v", odd, got["virtual_service"], err)
	}
}

// TestEndReasonsDocumented: the README lists every end reason a line can carry.
func TestEndReasonsDocumented(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range endReasonNames[1:] {
		if !bytes.Contains(readme, []byte("`"+r+"`")) {
			t.Errorf("README does not document the end reason %s", r)
		}
	}
	for _, r := range lostCauseNames {
		if !bytes.Contains(readme, []byte("`"+r+"`")) {
			t.Errorf("README does not document the lost-line reason %s", r)
		}
	}
}

// TestConnectionLogPutAllocatesNothing: handing a record over, queued or dropped, costs the
// loop no allocation.
func TestConnectionLogPutAllocatesNothing(t *testing.T) {
	name := "web"
	l := &connLog{q: make(chan connRecord, 4)}
	r := connRecord{svc: &name, client: netip.MustParseAddrPort("203.0.113.9:51234"), server: netip.MustParseAddrPort("198.51.100.12:5061")}
	if n := testing.AllocsPerRun(100, func() { l.put(&r) }); n != 0 { // 4 queued, the rest dropped
		t.Errorf("%v allocations per record", n)
	}
	if len(l.q) != 4 || l.lost[lostQueueFull].Load() < 96 {
		t.Errorf("%d queued, %d dropped", len(l.q), l.lost[lostQueueFull].Load())
	}
}
