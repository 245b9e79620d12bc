package routing

import (
	"context"
	"fmt"
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
	for _, tc := range []struct {
		name      string
		service   int // of labConfig: 0 the IPv4 VIP, 1 the IPv6 one
		vip       netip.Addr
		published netip.AddrPort // the router's DMZ address
		family    string         // of the router's DNAT table
		natTo     string         // the VIP, as nft writes it
		server    string         // the real server, in the box on loopback
		sees      string
	}{
		{"ipv4", 0, vip4, netip.MustParseAddrPort("198.18.2.1:3478"),
			"ip", "198.18.1.100:3478",
			"127.0.0.1:3479", "server sees 127.0.0.1"},
		{"ipv6", 1, vip6, netip.MustParseAddrPort("[2001:db8:2::1]:3478"),
			"ip6", "[2001:db8:1::100]:3478",
			"[::1]:3479", "server sees ::1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLab(t)
			f := filepath.Join(t.TempDir(), "nat.nft")
			nat := fmt.Sprintf(`table %s plbnat {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		iifname "dmz0" udp dport 3478 dnat to %s
	}
}
`, tc.family, tc.natTo)
			if err := os.WriteFile(f, []byte(nat), 0o600); err != nil {
				t.Fatal(err)
			}
			if out, err := l.router.Run(context.Background(), "nft", "-f", f); err != nil {
				t.Fatalf("installing the router's DNAT: %v\n%s", err, out)
			}
			serveUDP(t, l.box, tc.server, "server")

			h := l.box.Handle()
			before := kernelState(t, h)
			m := New(h, testLogger(t), WithNamespace(l.box.NsHandle()))
			if err := m.Set(labConfig(false)); err != nil { // the VIPs, no gateway
				t.Fatal(err)
			}
			lbCfg := udpConfig(labConfig(true), tc.service, tc.published.Port(), netip.MustParseAddrPort(tc.server).Addr())
			startLB(t, l.box, lbCfg)

			from := "from " + tc.vip.String()
			if got, err := udpExchange(l.clientN, tc.published.String()); err == nil {
				t.Errorf("UDP exchange through %s worked without pairlb's rule (%q); the lab does not reproduce the asymmetry", tc.published, got)
			}
			if n := l.counter(t, from); n != 0 {
				t.Errorf("router forwarded %d packets from %s without the rule; want 0", n, tc.vip)
			}
			if err := m.Set(lbCfg); err != nil {
				t.Fatal(err)
			}
			// A fresh client socket is a fresh session (and a fresh translation on the router).
			if got, err := udpExchange(l.clientN, tc.published.String()); err != nil || got != tc.sees {
				t.Errorf("UDP exchange through %s with pairlb's rule: %q, %v", tc.published, got, err)
			}
			if n := l.counter(t, from); n == 0 {
				t.Errorf("router saw no replies from %s", tc.vip)
			}
			if err := m.Close(); err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(before, kernelState(t, h)); d != "" {
				t.Errorf("kernel after Close differs from before pairlb (-before +after):\n%s", d)
			}
		})
	}
}

// udpConfig keeps service i of cfg, with a UDP port forwarding to the box's loopback server.
func udpConfig(cfg *config.Config, i int, port uint16, server netip.Addr) *config.Config {
	vs := cfg.VirtualServices[i]
	vs.Ports = []config.Port{{Listen: port, Target: port + 1, Proto: config.UDP}}
	vs.Scheduler = config.RoundRobin
	vs.Persistence = config.Persistence{Type: "none"}
	vs.Health = config.Health{Type: config.HealthNone}
	vs.RealServers = []config.RealServer{{Address: server, Weight: 1, Enabled: true}}
	vs.UDPIdleTimeout = 5 * time.Second
	vs.UDPMaxSessions = 100
	cfg.VirtualServices = []config.VirtualService{vs}
	cfg.Global.IdleTimeout = config.DefaultIdleTimeout
	cfg.Global.DrainTimeout = 2 * time.Second
	cfg.Global.DialTimeout = 2 * time.Second
	return cfg
}
