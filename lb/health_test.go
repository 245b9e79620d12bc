package lb

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pairlb/pairlb/config"
)

func TestDownServerGetsNoNewConnections(t *testing.T) {
	a, b2 := startBackend(t, "a"), startBackend(t, "b")
	vs := testService(t, "web", a.addr(), b2.addr())
	vs.Health.Type = config.HealthTCP // servers start down until health says otherwise
	bal, _ := startBalancer(t, testConfig(vs))

	expectReset(t, vipAddr(vs, 0)) // cold start: nothing is up yet
	for _, s := range []*backend{a, b2} {
		if err := bal.SetServerHealth("web", s.addr().String(), true); err != nil {
			t.Fatal(err)
		}
	}
	if err := bal.SetServerHealth("web", a.addr().String(), false); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		if server, _ := exchange(t, vipAddr(vs, 0), "x"); server != "b" {
			t.Fatalf("connection %d went to %q while a is down", i, server)
		}
	}
}

func TestPersistenceMovesOffADownServer(t *testing.T) {
	a, b2 := startBackend(t, "a"), startBackend(t, "b")
	vs := testService(t, "web", a.addr(), b2.addr())
	vs.Persistence = config.Persistence{Type: "source-ip", Timeout: time.Minute, MaxEntries: 100}
	bal, _ := startBalancer(t, testConfig(vs))

	src := netip.MustParseAddr("127.0.2.1")
	first := dialFrom(t, src, vipAddr(vs, 0))
	firstAddr, other := a.addr(), "b"
	if first == "b" {
		firstAddr, other = b2.addr(), "a"
	}
	if err := bal.SetServerHealth("web", firstAddr.String(), false); err != nil {
		t.Fatal(err)
	}
	if got := dialFrom(t, src, vipAddr(vs, 0)); got != other {
		t.Fatalf("with %s down the client went to %q", first, got)
	}
	// The entry now points at the other server and stays there when the first comes back.
	if err := bal.SetServerHealth("web", firstAddr.String(), true); err != nil {
		t.Fatal(err)
	}
	if got := dialFrom(t, src, vipAddr(vs, 0)); got != other {
		t.Fatalf("after %s returned the client moved back to %q; persistence should keep it", first, got)
	}
}

func TestCloseOnDown(t *testing.T) {
	for _, closeOnDown := range []bool{false, true} {
		name := "keeps"
		if closeOnDown {
			name = "closes"
		}
		t.Run(name, func(t *testing.T) {
			a := startBackend(t, "a")
			vs := testService(t, "web", a.addr())
			vs.CloseOnDown = closeOnDown
			bal, _ := startBalancer(t, testConfig(vs))
			c, err := net.Dial("tcp", vipAddr(vs, 0))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			r := bufio.NewReader(c)
			if _, err := r.ReadString('\n'); err != nil {
				t.Fatal(err)
			}
			if err := bal.SetServerHealth("web", a.addr().String(), false); err != nil {
				t.Fatal(err)
			}
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			if closeOnDown {
				// The close follows the health change at once, without any traffic.
				if _, err := r.ReadByte(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("connection to a down server still open with close_on_down: %v", err)
				}
				return
			}
			_, _ = io.WriteString(c, "ping")
			buf := make([]byte, 4)
			if _, err := io.ReadFull(r, buf); err != nil || string(buf) != "ping" {
				t.Fatalf("open connection cut by a health change: %q %v", buf, err)
			}
		})
	}
}

func TestStatusSnapshot(t *testing.T) {
	a := startBackend(t, "a")
	vs := testService(t, "web", a.addr())
	bal, _ := startBalancer(t, testConfig(vs))
	exchange(t, vipAddr(vs, 0), strings.Repeat("x", 1000))
	st := bal.Status()
	if len(st) != 1 || st[0].Name != "web" || len(st[0].RealServers) != 1 {
		t.Fatalf("status: %+v", st)
	}
	s := st[0]
	if s.Accepted != 1 || s.Ports[0].Accepted != 1 || s.RealServers[0].Total != 1 {
		t.Errorf("counts: accepted %d, port %d, server %d; want 1 each", s.Accepted, s.Ports[0].Accepted, s.RealServers[0].Total)
	}
	if s.BytesIn != 1000 || s.BytesOut != 1002 { // "a\n" greeting + echo
		t.Errorf("bytes: in %d out %d, want 1000 and 1002", s.BytesIn, s.BytesOut)
	}
}
