package routing

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/pairlb/pairlb/config"
	plbns "github.com/pairlb/pairlb/internal/netns"
)

// The environment of the balancer helper, as lbhelper_test.go (package routing_test) reads it.
const (
	lbHelperEnv      = "PAIRLB_TEST_LB_CONFIG"
	lbHelperReadyEnv = "PAIRLB_TEST_LB_READY"
	lbHelperLogEnv   = "PAIRLB_TEST_LB_LOG"
)

// startLB runs a balancer serving cfg inside n: the test binary itself, started again in the
// namespace (see lbhelper_test.go). It stops with SIGTERM when the test ends; its log is shown
// when the test failed.
func startLB(t *testing.T, n *plbns.NS, cfg *config.Config) {
	t.Helper()
	js, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ready, logPath := filepath.Join(dir, "ready"), filepath.Join(dir, "lb.log")
	t.Setenv(lbHelperEnv, string(js))
	t.Setenv(lbHelperReadyEnv, ready)
	t.Setenv(lbHelperLogEnv, logPath)
	cmd, err := n.Start(os.Args[0], "-test.run=^$")
	for _, k := range []string{lbHelperEnv, lbHelperReadyEnv, lbHelperLogEnv} {
		_ = os.Unsetenv(k) // t.Setenv puts the old (unset) value back at the end
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopLB(t, cmd, logPath) })
	for range 200 {
		b, err := os.ReadFile(ready)
		if err == nil && len(b) > 0 {
			if s := string(b); s != "ok" {
				t.Fatalf("balancer in %s: %s", n.Name(), s)
			}
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("balancer in %s not ready within 5s", n.Name())
}

func stopLB(t *testing.T, cmd *exec.Cmd, logPath string) {
	_ = cmd.Process.Signal(syscall.SIGTERM) // the process this test started, by its PID
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("balancer exited: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("balancer did not stop within 10s of SIGTERM; the lab's cleanup kills it")
	}
	if t.Failed() {
		b, _ := os.ReadFile(logPath)
		t.Logf("balancer log:\n%s", b)
	}
}

// serveTCP answers every connection on addr inside n with "<name> sees <client address>\n".
func serveTCP(t *testing.T, n *plbns.NS, addr, name string) {
	t.Helper()
	var ln net.Listener
	if err := n.Do(func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				fmt.Fprintf(c, "%s sees %s\n", name, c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap())
			})
		}
	})
}

// serveUDP answers every datagram on addr inside n with "<name> sees <client address>".
func serveUDP(t *testing.T, n *plbns.NS, addr, name string) {
	t.Helper()
	var pc net.PacketConn
	if err := n.Do(func() (err error) { pc, err = net.ListenPacket("udp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { pc.Close(); wg.Wait() })
	wg.Go(func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = fmt.Fprintf(writerTo{pc, from}, "%s sees %s", name, from.(*net.UDPAddr).AddrPort().Addr().Unmap())
		}
	})
}

type writerTo struct {
	pc net.PacketConn
	to net.Addr
}

func (w writerTo) Write(p []byte) (int, error) { return w.pc.WriteTo(p, w.to) }

// tcpLine connects from inside n to addr and returns the first line the server sends.
func tcpLine(n *plbns.NS, addr string) (string, error) {
	var line string
	err := n.Do(func() error {
		c, err := net.DialTimeout("tcp", addr, 3*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(4 * time.Second))
		line, err = bufio.NewReader(c).ReadString('\n')
		return err
	})
	return strings.TrimSuffix(line, "\n"), err
}

// udpExchange sends one datagram from inside n to addr (from a fresh socket, so a fresh
// session) and returns the answer.
func udpExchange(n *plbns.NS, addr string) (string, error) {
	var got string
	err := n.Do(func() error {
		c, err := net.Dial("udp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		for range 3 { // the first datagram may wait for neighbour resolution
			_ = c.SetDeadline(time.Now().Add(700 * time.Millisecond))
			if _, err = c.Write([]byte("ping")); err != nil {
				continue
			}
			buf := make([]byte, 1500)
			var k int
			if k, err = c.Read(buf); err == nil {
				got = string(buf[:k])
				return nil
			}
		}
		return err
	})
	return got, err
}

// The transparency lab: a client, the box, and a real server whose default route is the box.
//
//	client eth0 198.18.10.10/24 2001:db8:10::10/64 ── cli0 .1 box srv0 198.18.20.1 ── eth0 198.18.20.10 server
//	VIPs 198.18.10.100 and 2001:db8:10::100 on cli0 (pairlb adds them)
var (
	tVIP4    = netip.MustParseAddr("198.18.10.100")
	tVIP6    = netip.MustParseAddr("2001:db8:10::100")
	tClient4 = netip.MustParseAddr("198.18.10.10")
	tClient6 = netip.MustParseAddr("2001:db8:10::10")
	tSrv4    = netip.MustParseAddr("198.18.20.10")
	tSrv6    = netip.MustParseAddr("2001:db8:20::10")
)

type tlab struct {
	lab                 *plbns.Lab
	client, box, server *plbns.NS
}

func newTransparencyLab(t *testing.T) *tlab {
	t.Helper()
	l := &tlab{lab: plbns.ForTest(t)}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	ns := func(name string) *plbns.NS { return l.lab.MustNamespace(t, name) }
	l.client, l.box, l.server = ns("tcli"), ns("tbox"), ns("tsrv")
	must(l.lab.Veth(l.box, "cli0", l.client, "eth0"))
	must(l.lab.Veth(l.box, "srv0", l.server, "eth0"))
	must(l.client.AddAddr("eth0", netip.MustParsePrefix("198.18.10.10/24"), netip.MustParsePrefix("2001:db8:10::10/64")))
	must(l.box.AddAddr("cli0", netip.MustParsePrefix("198.18.10.1/24"), netip.MustParsePrefix("2001:db8:10::1/64")))
	must(l.box.AddAddr("srv0", netip.MustParsePrefix("198.18.20.1/24"), netip.MustParsePrefix("2001:db8:20::1/64")))
	must(l.server.AddAddr("eth0", netip.MustParsePrefix("198.18.20.10/24"), netip.MustParsePrefix("2001:db8:20::10/64")))
	for _, n := range []struct {
		ns     *plbns.NS
		v4, v6 string
	}{{l.client, "198.18.10.1", "2001:db8:10::1"}, {l.server, "198.18.20.1", "2001:db8:20::1"}} {
		must(n.ns.AddRoute(netip.MustParsePrefix("0.0.0.0/0"), netip.MustParseAddr(n.v4)))
		must(n.ns.AddRoute(netip.MustParsePrefix("::/0"), netip.MustParseAddr(n.v6)))
	}
	must(l.box.Sysctl("net.ipv4.ip_forward", "1"))
	must(l.box.Sysctl("net.ipv6.conf.all.forwarding", "1"))
	// Strict reverse-path filtering, as a hardened box has it: the marked replies pass it.
	for _, k := range []string{"all", "default", "cli0", "srv0"} {
		must(l.box.Sysctl("net.ipv4.conf."+k+".rp_filter", "1"))
	}
	return l
}

func transparentConfig(transparent bool) *config.Config {
	svc := func(name string, vip netip.Addr, port uint16, proto config.Proto, server netip.Addr) config.VirtualService {
		return config.VirtualService{
			Name:           name,
			VIP:            vip,
			Ports:          []config.Port{{Listen: port, Target: port, Proto: proto}},
			Scheduler:      config.RoundRobin,
			Persistence:    config.Persistence{Type: "none"},
			Health:         config.Health{Type: config.HealthNone},
			Transparent:    transparent,
			RealServers:    []config.RealServer{{Address: server, Weight: 1, Enabled: true}},
			UDPIdleTimeout: 5 * time.Second,
			UDPMaxSessions: 100,
		}
	}
	return &config.Config{
		Global: config.Global{ManageAddresses: true, IdleTimeout: config.DefaultIdleTimeout,
			DrainTimeout: 2 * time.Second, DialTimeout: 2 * time.Second},
		VirtualServices: []config.VirtualService{
			svc("av-tcp", tVIP4, 8080, config.TCP, tSrv4),
			svc("av-udp", tVIP4, 3478, config.UDP, tSrv4),
			svc("av-tcp6", tVIP6, 8080, config.TCP, tSrv6),
		},
	}
}

func nftList(t *testing.T, n *plbns.NS) string {
	t.Helper()
	out, err := n.Run(context.Background(), "nft", "-a", "list", "ruleset")
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// TestTransparencyInNamespaces runs a transparent virtual service in a real balancer: the real
// server sees the client's address only with pairlb's nftables table, rule and route in place,
// and everything else the real server sends through the box keeps working.
func TestTransparencyInNamespaces(t *testing.T) {
	l := newTransparencyLab(t)
	h := l.box.Handle()
	plantForeign4Transparency(t, l)
	before := kernelState(t, h)
	nftBefore := nftList(t, l.box)

	serveTCP(t, l.server, ":8080", "server")
	serveUDP(t, l.server, ":3478", "server")
	serveTCP(t, l.client, ":9000", "client")
	serveUDP(t, l.client, ":9001", "client")

	m := New(h, testLogger(t), WithNamespace(l.box.NsHandle()))
	// The VIPs, without the transparency state.
	if err := m.Set(transparentConfig(false)); err != nil {
		t.Fatal(err)
	}
	cfg := transparentConfig(true)
	startLB(t, l.box, cfg)

	vipTCP4 := netip.AddrPortFrom(tVIP4, 8080).String()
	vipTCP6 := netip.AddrPortFrom(tVIP6, 8080).String()
	vipUDP4 := netip.AddrPortFrom(tVIP4, 3478).String()
	// Without the state the real server's SYN-ACK to the client's address is forwarded to the
	// client, which resets it: the balancer's dial fails and the client gets nothing.
	if line, err := tcpLine(l.client, vipTCP4); err == nil {
		t.Errorf("transparent TCP through %s worked without pairlb's state: %q", vipTCP4, line)
	}

	if err := m.Set(cfg); err != nil {
		t.Fatal(err)
	}
	plan, err := m.Plan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("plan:\n%s", strings.Join(plan.Lines(), "\n"))
	if d, err := m.pending(cfg); err != nil || len(d) != 0 {
		t.Errorf("Diff after Set = %q, %v; want nothing", d, err)
	}

	for _, c := range []struct{ what, addr, want string }{
		{"TCP over IPv4", vipTCP4, "server sees " + tClient4.String()},
		{"TCP over IPv6", vipTCP6, "server sees " + tClient6.String()},
	} {
		if got, err := tcpLine(l.client, c.addr); err != nil || got != c.want {
			t.Errorf("%s through %s: %q, %v; want %q", c.what, c.addr, got, err, c.want)
		}
	}
	if got, err := udpExchange(l.client, vipUDP4); err != nil || got != "server sees "+tClient4.String() {
		t.Errorf("UDP through %s: %q, %v; want the server to see %s", vipUDP4, got, err, tClient4)
	}

	// Everything else the real server sends through the box is forwarded as before: a TCP
	// service and a UDP exchange on the client's side, a ping; and the client still reaches
	// the real server's service port directly.
	others := []struct {
		what string
		f    func() (string, error)
		want string
	}{
		{"real server to a TCP service beyond the box", func() (string, error) {
			return tcpLine(l.server, netip.AddrPortFrom(tClient4, 9000).String())
		}, "client sees " + tSrv4.String()},
		{"real server to a TCP service beyond the box over IPv6", func() (string, error) {
			return tcpLine(l.server, netip.AddrPortFrom(tClient6, 9000).String())
		}, "client sees " + tSrv6.String()},
		{"real server to a UDP service beyond the box", func() (string, error) {
			return udpExchange(l.server, netip.AddrPortFrom(tClient4, 9001).String())
		}, "client sees " + tSrv4.String()},
		{"client to the real server's service port directly", func() (string, error) {
			return tcpLine(l.client, netip.AddrPortFrom(tSrv4, 8080).String())
		}, "server sees " + tClient4.String()},
		{"client to the real server's UDP port directly", func() (string, error) {
			return udpExchange(l.client, netip.AddrPortFrom(tSrv4, 3478).String())
		}, "server sees " + tClient4.String()},
	}
	for _, o := range others {
		if got, err := o.f(); err != nil || got != o.want {
			t.Errorf("%s: %q, %v; want %q", o.what, got, err, o.want)
		}
	}
	if err := ping(l.server, tClient4); err != nil {
		t.Errorf("ping from the real server to the client: %v", err)
	}
	ruleset := nftList(t, l.box)
	t.Logf("box ruleset:\n%s", ruleset)

	// A second Set changes nothing: no route or address event, the same nftables handles.
	state := kernelState(t, h)
	if ev := eventsDuring(t, l.box, "cli0", anyEvent, func() {
		if err := m.Set(cfg); err != nil {
			t.Fatal(err)
		}
	}); len(ev) != 0 {
		t.Errorf("second Set caused %d route/address notifications; want 0: %q", len(ev), ev)
	}
	if d := cmp.Diff(state, kernelState(t, h)); d != "" {
		t.Errorf("second Set changed the kernel (-first +second):\n%s", d)
	}
	if d := cmp.Diff(ruleset, nftList(t, l.box)); d != "" {
		t.Errorf("second Set changed the nftables ruleset (-first +second):\n%s", d)
	}

	// Turning transparency off removes its state and keeps the rest.
	if err := m.Set(transparentConfig(false)); err != nil {
		t.Fatal(err)
	}
	if st, err := m.State(); err != nil || st.Transparency != nil || len(st.Rules) != 0 || len(st.Routes) != 0 {
		t.Errorf("state without transparent services = %+v, %v; want none", st, err)
	}

	// A crashed instance's state is found and removed by the next one.
	crashed := New(h, testLogger(t), WithNamespace(l.box.NsHandle()))
	if err := crashed.Set(cfg); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(before, kernelState(t, h)); d != "" {
		t.Errorf("kernel after Close differs from before pairlb (-before +after):\n%s", d)
	}
	if got := nftList(t, l.box); got != nftBefore {
		t.Errorf("nftables after Close:\n%s\nwant as before pairlb:\n%s", got, nftBefore)
	}
}

// plantForeign4Transparency adds objects that look like pairlb's transparency state but are not:
// an nftables table of another name with the same rule, and a fwmark rule with another protocol
// in pairlb's priority. None may be touched.
func plantForeign4Transparency(t *testing.T, l *tlab) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "foreign.nft")
	ruleset := `table inet other {
	chain prerouting {
		type filter hook prerouting priority mangle; policy accept;
		socket transparent 1 meta mark set meta mark | 0x100
	}
}
`
	if err := os.WriteFile(f, []byte(ruleset), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := l.box.Run(context.Background(), "nft", "-f", f); err != nil {
		t.Fatalf("planting a foreign nftables table: %v\n%s", err, out)
	}
	if out, err := l.box.Run(context.Background(), "ip", "rule", "add", "fwmark", "0x1", "lookup", "100", "priority", fmt.Sprint(TransparentPriority)); err != nil {
		t.Fatalf("planting a foreign fwmark rule: %v\n%s", err, out)
	}
}

// ping sends one ICMP echo request from inside n to dst and waits for the reply.
func ping(n *plbns.NS, dst netip.Addr) error {
	return n.Do(func() error {
		c, err := net.Dial("ip4:icmp", dst.String())
		if err != nil {
			return err
		}
		defer c.Close()
		req := []byte{8, 0, 0, 0, 0x70, 0x6c, 0, 1, 'p', 'l', 'b'} // echo request, id 0x706c, seq 1
		sum := 0
		for i := 0; i < len(req); i += 2 {
			w := int(req[i]) << 8
			if i+1 < len(req) {
				w |= int(req[i+1])
			}
			sum += w
		}
		for sum > 0xffff {
			sum = sum>>16 + sum&0xffff
		}
		req[2], req[3] = byte(^sum>>8), byte(^sum)
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write(req); err != nil {
			return err
		}
		buf := make([]byte, 1500)
		for {
			k, err := c.Read(buf) // the IPv4 header, then the ICMP message
			if err != nil {
				return err
			}
			if k < 20 || k < int(buf[0]&0xf)*4+8 {
				continue
			}
			icmp := buf[int(buf[0]&0xf)*4 : k]
			if icmp[0] == 0 && icmp[4] == 0x70 && icmp[5] == 0x6c {
				return nil
			}
		}
	})
}
