package lb

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
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
func loopChild(proto string) int {
	lim := syscall.Rlimit{Cur: 256, Max: 256}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		fmt.Println("setrlimit:", err)
		return 2
	}
	network := "tcp"
	if proto == "udp" {
		network = "udp"
	}
	port := freePortNoT(network)
	vip := netip.AddrPortFrom(loopback, port)
	vs := config.VirtualService{
		Name:           "self",
		VIP:            loopback,
		Ports:          []config.Port{{Listen: port, Target: port, Proto: config.Proto(proto)}},
		Scheduler:      config.RoundRobin,
		Persistence:    config.Persistence{Type: "none"},
		Health:         config.Health{Type: config.HealthNone},
		UDPIdleTimeout: time.Minute,
		UDPMaxSessions: 1000,
		RealServers:    []config.RealServer{{Address: loopback, Port: port, Weight: 1, Enabled: true}},
	}
	b := New(slog.New(slog.DiscardHandler))
	if err := b.Apply(testConfig(vs)); err != nil {
		fmt.Println("apply:", err)
		return 2
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = b.Run(ctx) }()

	// The client may see its connection reset even before Dial returns: the balancer finds
	// no server left once its own hop is refused.
	if c, err := net.Dial(network, vip.String()); err == nil {
		defer c.Close()
		_, _ = c.Write([]byte("x"))
	}
	var accepted, loops uint64
	var active int64
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		st := b.Status()[0]
		accepted, active, loops = st.Accepted, st.Active, 0
		for _, d := range st.Dropped {
			if d.Reason == "loop" {
				loops = d.Count
			}
		}
		// Done once the loop was refused and the connections it made have closed (a UDP
		// session stays until it idles out), or once it has clearly run away.
		if loops > 0 && (proto == "udp" || active == 0) || accepted >= 50 {
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
// thousands and one datagram into thousands of sessions, until descriptors ran out. Now the
// first hop back is refused and counted as a loop.
func TestLoopRefused(t *testing.T) {
	for _, proto := range []string{"tcp", "udp"} {
		t.Run(proto, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), loopChildEnv+"="+proto)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("child: %v\n%s", err, out)
			}
			var accepted, loops uint64
			var active int64
			if _, err := fmt.Sscanf(string(out), "accepted=%d loops=%d active=%d", &accepted, &loops, &active); err != nil {
				t.Fatalf("child said %q: %v", out, err)
			}
			// TCP: the client's connection and the balancer's own, refused (a rare race
			// between loops may let one more hop through); UDP: the client's session only.
			most := uint64(4)
			if proto == "udp" {
				most = 1
			}
			if loops == 0 || accepted > most {
				t.Fatalf("one client %s: %d accepted, %d refused as a loop; want at most %d accepted and the loop refused", proto, accepted, loops, most)
			}
		})
	}
}

// TestLoopGuardNeedsTheWholeConnection: the kernel gives one local port to TCP sockets that go
// to different places, so a local client may share its address with one of the balancer's
// sockets towards a local real server. Such a client is served; only a connection that is the
// balancer's own socket arriving (at the listener it was sent to) is refused.
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

	if b.tcpLoop(fd, client, local) {
		t.Fatal("a client refused with an empty table")
	}
	b.self.add(client, netip.AddrPortFrom(loopback, local.Port()+1)) // the same source, elsewhere
	if b.tcpLoop(fd, client, local) {
		t.Fatal("a local client refused because a socket of the balancer to another place had its address")
	}
	b.self.add(client, local)
	if !b.tcpLoop(fd, client, local) {
		t.Fatal("the balancer's own connection to this listener was not recognised")
	}
	b.self.remove(client)
	if b.self.n.Load() != 0 || b.tcpLoop(fd, client, local) {
		t.Fatal("an entry outlived its removal")
	}
}
