package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pairlb/pairlb/internal/netns"
	"github.com/pairlb/pairlb/internal/testenv"
)

// TestLoopThroughDNAT: a loop validate cannot see. The real server's address is one the box's
// own NAT turns into the VIP, so each connection pairlb makes to it comes back to its own
// listener. The loop guard reads the connection's original destination, recognises its own
// socket, and refuses the hop that has passed more listeners than there are; the loop ends
// after a few hops instead of at the descriptor limit. pairlb runs with 512 descriptors so
// that a guard that fails cannot take more.
func TestLoopThroughDNAT(t *testing.T) {
	lab := netns.ForTest(t)
	ns := lab.MustNamespace(t, "nat")
	peer := lab.MustNamespace(t, "peer")
	mustOK(t, lab.Veth(ns, "v0", peer, "v1"))
	mustOK(t, ns.AddAddr("v0", netip.MustParsePrefix("198.18.5.1/24")))
	mustOK(t, peer.AddAddr("v1", netip.MustParsePrefix("198.18.5.2/24")))
	mustOK(t, ns.SetLink("v0", true))
	mustOK(t, peer.SetLink("v1", true))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, cmd := range [][]string{
		{"add", "table", "ip", "plbtest"},
		{"add", "chain", "ip", "plbtest", "out", "{ type nat hook output priority -100 ; }"},
		{"add", "rule", "ip", "plbtest", "out", "ip", "daddr", "198.18.5.9", "tcp", "dport", "80", "dnat", "to", "198.18.5.1:8080"},
	} {
		if out, err := ns.Run(ctx, "nft", cmd...); err != nil {
			t.Fatalf("nft %v: %v\n%s", cmd, err, out)
		}
	}

	bin := testenv.Pairlb(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "pairlb.yaml")
	mustOK(t, os.WriteFile(file, []byte(`global:
  admin: 127.0.0.1:9090
  drain_timeout: 1s
virtual_services:
  - name: web
    vip: 198.18.5.1
    ports: ["8080/tcp"]
    health: {type: none}
    real_servers: [{address: "198.18.5.9:80"}]
`), 0o644))
	logFile := filepath.Join(dir, "pairlb.log")
	if _, err := ns.Start("sh", "-c", fmt.Sprintf("exec prlimit --nofile=512:512 %s run -c %s 2>%s", bin, file, logFile)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(logFile)
			t.Logf("pairlb stderr:\n%s", b)
		}
	})

	api := nsAdmin(ns, "127.0.0.1:9090")
	var err error
	if !testenv.Eventually(15*time.Second, func() bool { err = api.Ready(context.Background()); return err == nil }) {
		t.Fatalf("pairlb not ready within 15 s: %v", err)
	}

	// One client connection.
	mustOK(t, ns.Do(func() error {
		c, err := net.DialTimeout("tcp", "198.18.5.1:8080", 2*time.Second)
		if err != nil {
			return nil // refused at once is a result too: the status says why
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		_, _ = c.Write([]byte("x"))
		_, _ = io.Copy(io.Discard, c) // until the balancer gives up on it
		return nil
	}))

	var accepted, loops uint64
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		st, err := api.Status(context.Background())
		if err == nil {
			accepted, loops = st.VirtualServices[0].Accepted, 0
			for _, d := range st.VirtualServices[0].Dropped {
				if d.Reason == "loop" {
					loops = d.Count
				}
			}
			if loops > 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no loop refused within 10 s: %d connections accepted (%v)", accepted, err)
		}
	}
	if accepted > 6 {
		t.Errorf("one connection became %d before the loop was refused", accepted)
	}
	t.Logf("one connection: %d hops accepted, %d refused as a loop", accepted, loops)
}
