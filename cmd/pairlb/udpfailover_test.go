package main

import (
	"bytes"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/pairlb/pairlb/internal/testenv"
)

// TestUDPClientLeavesAKilledServer is the STUN client of issue 12: it keeps sending from one
// port, so its session never idles out. When its server is killed, the ICMP port unreachable
// its datagrams draw is evidence that speeds up the server's health checks (the default 9 s
// interval, fall 3, would take 18-27 s), the server is marked down, and the client's next
// datagram moves the session to the other server.
func TestUDPClientLeavesAKilledServer(t *testing.T) {
	a := startSoakUDP(t, "127.0.0.2:0", "udp1")
	b := startSoakUDP(t, "127.0.0.3:0", "udp2")
	port := testenv.FreeUDPPort(t)
	servePairlb(t, testenv.Pairlb(t), "t0ken", fmt.Sprintf(`  - name: media
    vip: 127.0.0.1
    ports: ["%d/udp"]
    health: {type: stun}
    real_servers: [{address: "%s"}, {address: "%s"}]
`, port, a.addr, b.addr))
	c, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ask := func(n int) string {
		msg := fmt.Sprintf("q-%d", n)
		_, _ = c.Write([]byte(msg))
		_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		buf := make([]byte, 1500)
		for {
			k, err := c.Read(buf)
			if err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					return ""
				}
				continue // an ICMP error relayed from an earlier datagram
			}
			name, body, _ := bytes.Cut(buf[:k], []byte(" "))
			if string(body) == msg {
				return string(name)
			}
		}
	}
	var first string
	for n := 0; first == "" && n < 25; n++ {
		first = ask(n)
	}
	servers := map[string]*soakUDPServer{"udp1": a, "udp2": b}
	if servers[first] == nil {
		t.Fatalf("no answer before the kill (got %q)", first)
	}
	servers[first].kill()
	killed := time.Now()
	const within = 8 * time.Second
	for n := 100; time.Since(killed) < within; n++ {
		if got := ask(n); got != "" && got != first {
			t.Logf("answered by %s %s after %s was killed", got, time.Since(killed).Round(10*time.Millisecond), first)
			return
		}
	}
	t.Fatalf("no answer from the other server within %s of killing %s", within, first)
}
