package routing

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/pairlb/pairlb/config"
)

// TestUDPPerVIPGatewayInNamespaces is the UDP counterpart of TestUseDefaultRouteOnlyInNamespaces
// with a real balancer. The router publishes the internal VIP to the DMZ (DNAT from its own DMZ
// address, as a firewall in front of an internal pool does), so the client's datagrams reach the
// VIP through it. Without pairlb's rule the balancer's replies leave the box straight through
// dmz0, from the VIP: the router never sees them, cannot undo its translation, and the client,
// which talks to the router's address, drops them. With the rule they leave through the VIP's
// gateway: pairlb's UDP socket is bound to the VIP, so `from VIP` matches.
func TestUDPPerVIPGatewayInNamespaces(t *testing.T) {
	l := newLab(t)
	const port = 3478
	published := netip.AddrPortFrom(netip.MustParseAddr("198.18.2.1"), port) // the router's DMZ address
	nat := `table ip plbnat {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		iifname "dmz0" udp dport 3478 dnat to 198.18.1.100:3478
	}
}
`
	f := filepath.Join(t.TempDir(), "nat.nft")
	if err := os.WriteFile(f, []byte(nat), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := l.router.Run(context.Background(), "nft", "-f", f); err != nil {
		t.Fatalf("installing the router's DNAT: %v\n%s", err, out)
	}

	// The real server: a UDP service in the box itself, on loopback.
	serveUDP(t, l.box, "127.0.0.1:3479", "server")

	h := l.box.Handle()
	before := kernelState(t, h)
	m := New(h, testLogger(t), WithNamespace(l.box.NsHandle()))
	withoutGW := labConfig(false) // the VIPs, no gateway
	if err := m.Set(withoutGW); err != nil {
		t.Fatal(err)
	}
	lbCfg := udpConfig(labConfig(true), port)
	startLB(t, l.box, lbCfg)

	if got, err := udpExchange(l.clientN, published.String()); err == nil {
		t.Errorf("UDP exchange through %s worked without pairlb's rule (%q); the lab does not reproduce the asymmetry", published, got)
	}
	if n := l.counter(t, "from "+vip4.String()); n != 0 {
		t.Errorf("router forwarded %d packets from %s without the rule; want 0", n, vip4)
	}

	if err := m.Set(lbCfg); err != nil {
		t.Fatal(err)
	}
	// A fresh client socket is a fresh session (and a fresh translation on the router).
	if got, err := udpExchange(l.clientN, published.String()); err != nil || got != "server sees 127.0.0.1" {
		t.Errorf("UDP exchange through %s with pairlb's rule: %q, %v", published, got, err)
	}
	if n := l.counter(t, "from "+vip4.String()); n == 0 {
		t.Errorf("router saw no replies from %s", vip4)
	}

	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(before, kernelState(t, h)); d != "" {
		t.Errorf("kernel after Close differs from before pairlb (-before +after):\n%s", d)
	}
}

// udpConfig gives the first service of cfg (the IPv4 VIP) a UDP port forwarding to the box's
// loopback server, and drops the others.
func udpConfig(cfg *config.Config, port uint16) *config.Config {
	vs := cfg.VirtualServices[0]
	vs.Ports = []config.Port{{Listen: port, Target: port + 1, Proto: config.UDP}}
	vs.Scheduler = config.RoundRobin
	vs.Persistence = config.Persistence{Type: "none"}
	vs.Health = config.Health{Type: config.HealthNone}
	vs.RealServers = []config.RealServer{{Address: netip.MustParseAddr("127.0.0.1"), Weight: 1, Enabled: true}}
	vs.UDPIdleTimeout = 5 * time.Second
	vs.UDPMaxSessions = 100
	cfg.VirtualServices = []config.VirtualService{vs}
	cfg.Global.IdleTimeout = config.DefaultIdleTimeout
	cfg.Global.DrainTimeout = 2 * time.Second
	cfg.Global.DialTimeout = 2 * time.Second
	return cfg
}
