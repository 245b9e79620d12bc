package lb

import (
	"bufio"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseServerAddr(t *testing.T) {
	for _, c := range []struct {
		in, want string // want: String() of the result, or the error's text
		port     uint16
		bad      bool
	}{
		{in: "10.11.1.11", want: "10.11.1.11"},
		{in: "10.11.1.12:4443", want: "10.11.1.12:4443", port: 4443},
		{in: "2001:db8::1", want: "2001:db8::1"},
		{in: "2001:DB8:0::1", want: "2001:db8::1"},
		{in: "[2001:db8::1]:4443", want: "[2001:db8::1]:4443", port: 4443},
		{in: "", bad: true, want: `real server address "": not an IP address`},
		{in: "fe-pool-sip", bad: true, want: `real server address "fe-pool-sip": not an IP address`},
		{in: "10.11.1.11:0", bad: true, want: `real server address "10.11.1.11:0": port out of range 1-65535`},
		{in: "10.11.1.11:70000", bad: true, want: "port out of range"},
		{in: "[2001:db8::1]", bad: true, want: "want address or address:port"},
		{in: "::ffff:10.11.1.11", bad: true, want: "write it as 10.11.1.11"},
		{in: "fe80::1%eth0", bad: true, want: "zones are not supported"},
	} {
		a, err := ParseServerAddr(c.in)
		switch {
		case c.bad && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("ParseServerAddr(%q) = %v, %v; want an error containing %q", c.in, a, err, c.want)
		case !c.bad && (err != nil || a.String() != c.want || a.Port != c.port):
			t.Errorf("ParseServerAddr(%q) = %v (port %d), %v; want %s", c.in, a, a.Port, err, c.want)
		}
	}
}

// TestServerAddrMatches: an IP names its servers whatever their port; IP:port only those the
// file writes with that port.
func TestServerAddrMatches(t *testing.T) {
	for _, c := range []struct {
		addr, key string
		want      bool
	}{
		{"10.11.1.11", "10.11.1.11", true},
		{"10.11.1.11", "10.11.1.11:4443", true},
		{"10.11.1.11", "10.11.1.111", false},
		{"10.11.1.11", "10.11.1.1", false},
		{"10.11.1.11:4443", "10.11.1.11:4443", true},
		{"10.11.1.11:4443", "10.11.1.11:443", false},
		{"10.11.1.11:4443", "10.11.1.11", false},
		{"2001:db8::1", "[2001:db8::1]:4443", true},
		{"2001:db8:0::1", "2001:db8::1", true},
		{"[2001:db8::1]:4443", "2001:db8::1", false},
		{"10.11.1.11", "not a key", false},
	} {
		a, err := ParseServerAddr(c.addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := a.MatchesKey(c.key); got != c.want {
			t.Errorf("%s matches %s: %v, want %v", c.addr, c.key, got, c.want)
		}
	}
	if (ServerAddr{}).MatchesKey("10.11.1.11") {
		t.Error("the zero ServerAddr matches a server")
	}
}

// TestSetServerStateByAddr: one call drains an address in every service that has it, TCP and
// UDP, whatever port the file gives it; the answer names each server with its state before and
// what it has open; new connections avoid it everywhere; IP:port narrows to one; an address no
// service has changes nothing and says which address and, for IP:port, what the file has.
func TestSetServerStateByAddr(t *testing.T) {
	fe1 := netip.MustParseAddr("127.0.41.11")
	sip1, web1 := startBackendOn(t, "sip1", "127.0.41.11:0"), startBackendOn(t, "web1", "127.0.41.11:0")
	sip2 := startBackendOn(t, "sip2", "127.0.41.12:0")
	media1 := startUDPEchoOn(t, "media1", fe1)
	sip := testService(t, "sip", sip1.addr(), sip2.addr())
	web := testService(t, "web", web1.addr())
	media := udpService(t, "media", media1.addr())
	media.UDPIdleTimeout = time.Minute
	other := testService(t, "other", sip2.addr())
	bal, _ := startBalancer(t, testConfig(sip, web, media, other))

	// Something open on fe1 in web (a TCP connection) and media (a UDP session).
	held, err := net.Dial("tcp", vipAddr(web, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if g, err := bufio.NewReader(held).ReadString('\n'); err != nil || g != "web1\n" {
		t.Fatalf("greeting through web: %q, %v", g, err)
	}
	if got := udpAsk(t, dialUDP(t, vipAddr(media, 0)), "x"); got != "media1:x" {
		t.Fatalf("through media: %q", got)
	}

	a, err := ParseServerAddr("127.0.41.11")
	if err != nil {
		t.Fatal(err)
	}
	got, err := bal.SetServerStateByAddr(a, Draining)
	if err != nil {
		t.Fatal(err)
	}
	want := []ServerChange{
		{Service: "sip", Server: sip1.addr().String(), State: Draining, Was: Enabled, Active: 0},
		{Service: "web", Server: web1.addr().String(), State: Draining, Was: Enabled, Active: 1},
		{Service: "media", Server: media1.addr().String(), State: Draining, Was: Enabled, Active: 1},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("drain 127.0.41.11 (-want +got):\n%s", d)
	}
	states := map[string]string{}
	for _, s := range bal.Status() {
		for _, r := range s.RealServers {
			states[s.Name+" "+r.Address] = r.State
		}
	}
	if d := cmp.Diff(map[string]string{
		"sip " + sip1.addr().String(): "draining", "sip " + sip2.addr().String(): "enabled",
		"web " + web1.addr().String(): "draining", "media " + media1.addr().String(): "draining",
		"other " + sip2.addr().String(): "enabled",
	}, states); d != "" {
		t.Errorf("status after the drain (-want +got):\n%s", d)
	}
	for i := range 4 {
		if server, _ := exchange(t, vipAddr(sip, 0), "x"); server != "sip2" {
			t.Fatalf("new connection %d to sip went to %q while fe1 drains", i, server)
		}
	}

	// Again: nothing new, the answer says it was draining already.
	got, err = bal.SetServerStateByAddr(a, Draining)
	if err != nil || len(got) != 3 || got[0].Was != Draining {
		t.Errorf("second drain: %+v, %v", got, err)
	}

	// IP:port: only the server the file writes with that port.
	ap, _ := ParseServerAddr(web1.addr().String())
	got, err = bal.SetServerStateByAddr(ap, Enabled)
	if d := cmp.Diff([]ServerChange{{Service: "web", Server: web1.addr().String(), State: Enabled, Was: Draining, Active: 1}}, got); err != nil || d != "" {
		t.Errorf("enable %s: %v (-want +got):\n%s", ap, err, d)
	}
	if s := bal.services["sip"].byKey[sip1.addr().String()]; State(s.state.Load()) != Draining {
		t.Errorf("enable of %s changed sip's %s", ap, sip1.addr())
	}

	// Unknown addresses: ErrNotFound, naming the address; nothing changed.
	for _, c := range []struct{ addr, want string }{
		{"127.0.41.13", "real server address 127.0.41.13: in no virtual service: not found"},
		{"127.0.41.11:1", "real server address 127.0.41.11:1: in no virtual service with that port (the file has " +
			sip1.addr().String() + " in sip, " + web1.addr().String() + " in web, " + media1.addr().String() + " in media; 127.0.41.11 names all of them): not found"},
	} {
		u, _ := ParseServerAddr(c.addr)
		got, err := bal.SetServerStateByAddr(u, Disabled)
		if !errors.Is(err, ErrNotFound) || err.Error() != c.want || got != nil {
			t.Errorf("%s: %v, %v; want %q", c.addr, got, err, c.want)
		}
	}
	for _, s := range bal.Status() {
		for _, r := range s.RealServers {
			if r.State == "disabled" {
				t.Errorf("a failed call disabled %s in %s", r.Address, s.Name)
			}
		}
	}
}

// TestSetServerStateByAddrAtomic: a status taken while an address is switched back and forth
// never shows it in one state in one service and in the other state in another.
func TestSetServerStateByAddrAtomic(t *testing.T) {
	fe := startBackendOn(t, "fe", "127.0.41.21:0")
	var services = testConfig()
	for _, name := range []string{"s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8"} {
		services.VirtualServices = append(services.VirtualServices, testService(t, name, fe.addr()))
	}
	bal, _ := startBalancer(t, services)
	a, _ := ParseServerAddr("127.0.41.21")

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mixed []string
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			seen := map[string]bool{}
			for _, s := range bal.Status() {
				for _, r := range s.RealServers {
					seen[r.State] = true
				}
			}
			if len(seen) > 1 && len(mixed) < 5 {
				mixed = append(mixed, strings.Join(keys(seen), "+"))
			}
		}
	})
	for i := range 2000 {
		st := Draining
		if i%2 == 1 {
			st = Enabled
		}
		if _, err := bal.SetServerStateByAddr(a, st); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if len(mixed) > 0 {
		t.Errorf("a status saw the address half switched: %v", mixed)
	}
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
