package lb

// The helpers every test of the package uses: real servers on loopback (TCP and UDP), services
// and configurations for them, a balancer run for the length of a test, clients, and waiting
// for a condition to a deadline.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pairlb/pairlb/config"
	"golang.org/x/sys/unix"
)

// backend is a TCP real server on loopback: it greets every connection with its name, then
// echoes what it reads until the client half-closes, then closes its own side.
type backend struct {
	name string
	ln   net.Listener
	wg   sync.WaitGroup
	mu   sync.Mutex
	seen []netip.Addr // client addresses, as the real server sees them
}

func startBackend(t *testing.T, name string) *backend {
	t.Helper()
	return startBackendOn(t, name, "127.0.0.1:0")
}

func startBackendOn(t *testing.T, name, addr string) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{name: name, ln: ln}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.seen = append(b.seen, addrPort(c.RemoteAddr()).Addr())
			b.mu.Unlock()
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				defer c.Close()
				fmt.Fprintf(c, "%s\n", name)
				// Plain reads and writes: Go's own splice would hold a pipe per connection here
				// and blur the pipe count of TestIdleConnectionsHoldNoPipes.
				_, _ = io.Copy(struct{ io.Writer }{c}, struct{ io.Reader }{c})
				_ = c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	t.Cleanup(b.stop)
	return b
}

func (b *backend) stop() {
	_ = b.ln.Close()
	b.wg.Wait()
}

func (b *backend) addr() netip.AddrPort { return addrPort(b.ln.Addr()) }

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T, network string) uint16 {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return addrPort(c.LocalAddr()).Port()
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return addrPort(ln.Addr()).Port()
}

var loopback = netip.MustParseAddr("127.0.0.1")

// testService returns a TCP service on a free loopback port forwarding to servers.
func testService(t *testing.T, name string, servers ...netip.AddrPort) config.VirtualService {
	t.Helper()
	p := freePort(t, "tcp")
	vs := config.VirtualService{
		Name:           name,
		VIP:            loopback,
		Ports:          []config.Port{{Listen: p, Target: p, Proto: config.TCP}},
		Scheduler:      config.RoundRobin,
		Persistence:    config.Persistence{Type: "none"},
		Health:         config.Health{Type: config.HealthNone},
		UDPIdleTimeout: 5 * time.Second,
		UDPMaxSessions: 1000,
	}
	for _, s := range servers {
		vs.RealServers = append(vs.RealServers, config.RealServer{Address: s.Addr(), Port: s.Port(), Weight: 1, Enabled: true})
	}
	return vs
}

func testConfig(services ...config.VirtualService) *config.Config {
	return &config.Config{
		Global: config.Global{
			IdleTimeout:  config.DefaultIdleTimeout,
			DrainTimeout: 2 * time.Second,
			DialTimeout:  time.Second,
		},
		VirtualServices: services,
	}
}

// startBalancer applies cfg and runs the balancer until the test ends, then checks that no
// goroutine of the balancer outlived Run.
func startBalancer(t *testing.T, cfg *config.Config) (*Balancer, context.CancelFunc) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	b := New(log)
	if err := b.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.Run(ctx)
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not return within 10s of cancel")
			}
			checkNoBalancerGoroutines(t)
		})
	}
	t.Cleanup(stop)
	return b, stop
}

// checkNoBalancerGoroutines fails if a goroutine running balancer code is still alive.
func checkNoBalancerGoroutines(t *testing.T) {
	t.Helper()
	markers := []string{"lb.(*tcpListener)", "lb.(*udpListener)", "lb.(*udpSession)", "lb.(*tcpConn)",
		"lb.(*Balancer)", "lb.(*redirectListener)", "lb.(*loop)", "lb.(*connLog)"}
	var last string
	for range 50 {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		last = ""
		for _, g := range strings.Split(stacks, "\n\n") {
			for _, m := range markers {
				if strings.Contains(g, m) {
					last = g
				}
			}
		}
		if last == "" {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("a balancer goroutine outlived Run:\n%s", last)
}

func vipAddr(vs config.VirtualService, i int) string {
	return netip.AddrPortFrom(vs.VIP, vs.Ports[i].Listen).String()
}

// exchange connects through the VIP, sends msg, half-closes and returns the server's greeting
// and the echoed text.
func exchange(t *testing.T, addr, msg string) (server, echoed string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	all, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read through %s: %v", addr, err)
	}
	server, echoed, _ = strings.Cut(string(all), "\n")
	return server, echoed
}

// expectReset dials addr and asserts the connection is refused or reset at once, never left
// hanging.
func expectReset(t *testing.T, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	start := time.Now()
	_, err = c.Read(make([]byte, 1))
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("connection to %s not reset: read returned %v after %v", addr, err, time.Since(start))
	}
	if !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("connection to %s: read error %v, want a reset", addr, err)
	}
}

// dialFrom connects from a chosen loopback source address and returns the server's name.
func dialFrom(t *testing.T, src netip.Addr, addr string) string {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src.AsSlice()}, Timeout: 2 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	name, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("from %s: %v", src, err)
	}
	return strings.TrimSpace(name)
}

// addrPortOf is the address in sa (from unix.Getsockname).
func addrPortOf(sa unix.Sockaddr) netip.AddrPort {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port))
	}
	return netip.AddrPort{}
}

// addrPort is the address of a net.Addr of either transport.
func addrPort(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.AddrPort()
	case *net.UDPAddr:
		return a.AddrPort()
	}
	return netip.AddrPort{}
}

// eventually polls cond every few milliseconds until it holds, and reports false if it does not
// within d: the caller fails the test saying what it last saw.
func eventually(d time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(d); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			return cond()
		}
	}
	return true
}

// waitFor polls cond until it holds, failing the test after five seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// countFDs is the number of descriptors this process holds.
func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// waitFDs waits until the process holds want descriptors again (connections of the test close
// asynchronously) and fails if it does not within 5 s.
func waitFDs(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := countFDs(t)
		if n == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d descriptors open, %d before: the rejected reload leaked %d", n, want, n-want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// countPipes counts the pipes this process holds open.
func countPipes(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(target, "pipe:") {
			n++
		}
	}
	return n
}

func readResponse(c net.Conn) (*http.Response, error) {
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return nil, err
	}
	resp.Body.Close()
	return resp, nil
}

// udpEcho is a UDP real server answering every datagram with "NAME:payload".
type udpEcho struct {
	conn *net.UDPConn
	wg   sync.WaitGroup
}

func startUDPEcho(t *testing.T, name string) *udpEcho {
	t.Helper()
	return startUDPEchoOn(t, name, loopback)
}

// startUDPEchoOn is startUDPEcho on a free port of the loopback address ip.
func startUDPEchoOn(t *testing.T, name string, ip netip.Addr) *udpEcho {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, 0)))
	if err != nil {
		t.Fatal(err)
	}
	e := &udpEcho{conn: c}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = c.WriteToUDPAddrPort([]byte(name+":"+string(buf[:n])), from)
		}
	}()
	t.Cleanup(func() { c.Close(); e.wg.Wait() })
	return e
}

func (e *udpEcho) addr() netip.AddrPort { return addrPort(e.conn.LocalAddr()) }

func udpService(t *testing.T, name string, servers ...netip.AddrPort) config.VirtualService {
	vs := testService(t, name, servers...)
	p := freePort(t, "udp")
	vs.Ports = []config.Port{{Listen: p, Target: p, Proto: config.UDP}}
	return vs
}

// udpAsk sends msg on c and returns the reply, or "" after a second of silence.
func udpAsk(t *testing.T, c *net.UDPConn, msg string) string {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err != nil {
		return ""
	}
	return string(buf[:n])
}

func dialUDP(t *testing.T, addr string) *net.UDPConn {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.UDPConn)
}

// onLoops runs f on the goroutine of each of bal's loops in turn, where it may read what the
// loop owns, and returns when it has run on all of them.
func onLoops(bal *Balancer, f func(lp *loop)) {
	for _, lp := range bal.loops {
		done := make(chan struct{})
		lp.post(func() { f(lp); close(done) })
		<-done
	}
}
