package lb

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pairlb/pairlb/config"
)

// loopChildEnv makes the test binary run loopChild instead of the tests: a loop must be tried in
// a process of its own, with few descriptors, so that a balancer without the guard exhausts
// only that process.
const loopChildEnv = "PAIRLB_LOOP_CHILD"

func TestMain(m *testing.M) {
	if proto := os.Getenv(loopChildEnv); proto != "" {
		os.Exit(loopChild(proto))
	}
	os.Exit(m.Run())
}

// loopChild serves a service whose real server is its own VIP:port (a file validate would
// refuse, built in Go), sends it one connection or datagram and prints how many connections or
// sessions the balancer accepted and how many it refused as a loop. It stops by itself at 50
// accepted, at the descriptor limit or after 10 s, whichever comes first.
func loopChild(mode string) int {
	lim := syscall.Rlimit{Cur: 256, Max: 256}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		fmt.Println("setrlimit:", err)
		return 2
	}
	// "tcp" and "udp": a service whose real server is its own VIP:port; "tcp2" and "udp2": two
	// services, each the other's real server.
	proto, pair := strings.CutSuffix(mode, "2")
	network := "tcp"
	if proto == "udp" {
		network = "udp"
	}
	svc := func(name string, port, to uint16) config.VirtualService {
		return config.VirtualService{
			Name:           name,
			VIP:            loopback,
			Ports:          []config.Port{{Listen: port, Target: port, Proto: config.Proto(proto)}},
			Scheduler:      config.RoundRobin,
			Persistence:    config.Persistence{Type: "none"},
			Health:         config.Health{Type: config.HealthNone},
			UDPIdleTimeout: time.Minute,
			UDPMaxSessions: 1000,
			RealServers:    []config.RealServer{{Address: loopback, Port: to, Weight: 1, Enabled: true}},
		}
	}
	port := freePortNoT(network)
	vip := netip.AddrPortFrom(loopback, port)
	services := []config.VirtualService{svc("self", port, port)}
	if pair {
		other := freePortNoT(network)
		services = []config.VirtualService{svc("a", port, other), svc("b", other, port)}
	}
	b := New(slog.New(slog.DiscardHandler))
	if err := b.Apply(testConfig(services...)); err != nil {
		fmt.Println("apply:", err)
		return 2
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { b.Run(ctx) }()

	// The client may see its connection reset even before Dial returns: the balancer finds
	// no server left once its own hop is refused.
	if c, err := net.Dial(network, vip.String()); err == nil {
		defer c.Close()
		_, _ = c.Write([]byte("x"))
	}
	var accepted, loops uint64
	var active int64
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		accepted, active, loops = 0, 0, 0
		for _, st := range b.Status() {
			accepted += st.Accepted
			active += st.Active
			for _, d := range st.Dropped {
				if d.Reason == "loop" {
					loops += d.Count
				}
			}
		}
		// Done once the loop was refused (the hops come one after another, and the refused
		// one is the last), or once it has clearly run away.
		if loops > 0 || accepted >= 50 {
			break
		}
	}
	fmt.Printf("accepted=%d loops=%d active=%d\n", accepted, loops, active)
	return 0
}

func freePortNoT(network string) uint16 {
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			panic(err)
		}
		defer c.Close()
		return addrPort(c.LocalAddr()).Port()
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return addrPort(ln.Addr()).Port()
}

// TestLoopRefused: a real server that is the balancer's own VIP:port turned one connection into
// thousands and one datagram into thousands of sessions, until descriptors ran out. Now a hop
// that has passed more listeners than there are is refused and counted as a loop: for one
// service the first hop back, for a cycle of two the hop that returns to the first.
func TestLoopRefused(t *testing.T) {
	for _, tc := range []struct {
		mode string
		most uint64 // connections or sessions accepted in all
	}{
		// TCP: the client's connection and the balancer's own hops (a rare race between
		// loops may let one more hop through before it is noted); UDP: the sessions before
		// the refused hop.
		{"tcp", 4}, {"udp", 1}, {"tcp2", 6}, {"udp2", 2},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), loopChildEnv+"="+tc.mode)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("child: %v\n%s", err, out)
			}
			var accepted, loops uint64
			var active int64
			if _, err := fmt.Sscanf(string(out), "accepted=%d loops=%d active=%d", &accepted, &loops, &active); err != nil {
				t.Fatalf("child said %q: %v", out, err)
			}
			if loops == 0 || accepted > tc.most {
				t.Fatalf("one client (%s): %d accepted, %d refused as a loop; want at most %d accepted and the loop refused", tc.mode, accepted, loops, tc.most)
			}
			t.Logf("%s: %d accepted, %d refused as a loop", tc.mode, accepted, loops)
		})
	}
}

// TestLoopGuardNeedsTheWholeConnection: the kernel gives one local port to TCP sockets that go
// to different places, so a local client may share its address with one of the balancer's
// sockets towards a local real server. Such a client is a first hop; only a connection that is
// the balancer's own socket arriving (at the listener it was sent to) counts as the next hop.
func TestLoopGuardNeedsTheWholeConnection(t *testing.T) {
	var b Balancer
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	f, err := sc.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	client, local := addrPort(c.LocalAddr()), addrPort(ln.Addr())
	fd := int(f.Fd())

	if hop, note := b.hopTCP(fd, client, local); hop != 1 || note {
		t.Fatalf("with an empty table: hop %d, note %v; want a first hop, not noted", hop, note)
	}
	b.self.add(client, selfConn{dst: netip.AddrPortFrom(loopback, local.Port()+1), hop: 3}) // the same source, elsewhere
	if hop, _ := b.hopTCP(fd, client, local); hop != 1 {
		t.Fatalf("a local client counted as hop %d because a socket of the balancer to another place had its address", hop)
	}
	b.self.add(client, selfConn{dst: local, hop: 3})
	if hop, note := b.hopTCP(fd, client, local); hop != 4 || !note {
		t.Fatalf("the balancer's own connection to this listener: hop %d, note %v; want hop 4, noted", hop, note)
	}
	b.self.remove(client)
	if hop, _ := b.hopTCP(fd, client, local); b.self.n.Load() != 0 || hop != 1 {
		t.Fatal("an entry outlived its removal")
	}
}

// TestChainIsNotALoop: an outer service whose real server is an inner service's VIP is a chain
// validate allows, and a connection from the balancer's own socket to its own listener is no
// loop by itself: it is served. A cycle of two services is refused after it has passed both.
func TestChainIsNotALoop(t *testing.T) {
	for _, proto := range []config.Proto{config.TCP, config.UDP} {
		t.Run(string(proto), func(t *testing.T) {
			var inner config.VirtualService
			var greeting string
			if proto == config.TCP {
				inner = testService(t, "inner", startBackend(t, "be").addr())
				greeting = "be"
			} else {
				e := startUDPEcho(t, "be")
				inner = udpService(t, "inner", e.addr())
				greeting = "be:ping"
			}
			innerVIP := netip.AddrPortFrom(inner.VIP, inner.Ports[0].Listen)
			outer := inner
			outer.Name = "outer"
			p := freePort(t, string(proto))
			outer.Ports = []config.Port{{Listen: p, Target: p, Proto: proto}}
			outer.RealServers = []config.RealServer{{Address: innerVIP.Addr(), Port: innerVIP.Port(), Weight: 1, Enabled: true}}
			bal, _ := startBalancer(t, testConfig(outer, inner))
			got := ""
			if proto == config.TCP {
				got, _ = exchange(t, vipAddr(outer, 0), "x")
			} else {
				got = udpAsk(t, dialUDP(t, vipAddr(outer, 0)), "ping")
			}
			if got != greeting {
				t.Fatalf("through the chain: %q, want %q", got, greeting)
			}
			for _, st := range bal.Status() {
				for _, d := range st.Dropped {
					if d.Reason == "loop" && d.Count > 0 {
						t.Errorf("%s counted %d loops for a chain", st.Name, d.Count)
					}
				}
			}
		})
	}
}
