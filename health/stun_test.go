package health

import (
	"encoding/binary"
	"fmt"
	mathrand "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/pairlb/pairlb/config"
	"github.com/pairlb/pairlb/internal/testenv"
)

// udpServer answers each datagram with reply(request); a nil answer sends nothing. It records
// the source addresses it saw.
type udpServer struct {
	conn *net.UDPConn
	wg   sync.WaitGroup

	mu   sync.Mutex
	from []netip.AddrPort
}

func startUDP(t *testing.T, reply func(req []byte) []byte) *udpServer {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	s := &udpServer{conn: conn}
	s.wg.Add(1)
	go s.serve(reply)
	t.Cleanup(func() {
		conn.Close()
		s.wg.Wait()
	})
	return s
}

func (s *udpServer) serve(reply func([]byte) []byte) {
	defer s.wg.Done()
	buf := make([]byte, 1500)
	for {
		n, from, err := s.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		s.mu.Lock()
		s.from = append(s.from, from)
		s.mu.Unlock()
		if out := reply(buf[:n]); out != nil {
			_, _ = s.conn.WriteToUDPAddrPort(out, from)
		}
	}
}

func (s *udpServer) Addr(t *testing.T) netip.AddrPort { return addrPort(t, s.conn.LocalAddr()) }

// stunResponse builds a response of type typ to req with the attributes given (type, value).
func stunResponse(req []byte, typ uint16, attrs ...[]byte) []byte {
	var body []byte
	for _, a := range attrs {
		body = append(body, a...)
	}
	b := make([]byte, stunHeaderLen, stunHeaderLen+len(body))
	binary.BigEndian.PutUint16(b[0:2], typ)
	binary.BigEndian.PutUint16(b[2:4], uint16(len(body)))
	binary.BigEndian.PutUint32(b[4:8], stunMagicCookie)
	if len(req) >= stunHeaderLen {
		copy(b[8:20], req[8:20])
	}
	return append(b, body...)
}

func stunAttr(typ uint16, v []byte) []byte {
	a := make([]byte, 4, 4+len(v)+3)
	binary.BigEndian.PutUint16(a[0:2], typ)
	binary.BigEndian.PutUint16(a[2:4], uint16(len(v)))
	a = append(a, v...)
	for len(a)%4 != 0 {
		a = append(a, 0)
	}
	return a
}

// xorMapped is an XOR-MAPPED-ADDRESS value for 127.0.0.1:port.
func xorMapped(port uint16) []byte {
	v := []byte{0, 1, 0, 0, 127, 0, 0, 1}
	binary.BigEndian.PutUint16(v[2:4], port^uint16(stunMagicCookie>>16))
	binary.BigEndian.PutUint32(v[4:8], binary.BigEndian.Uint32(v[4:8])^stunMagicCookie)
	return v
}

func isBindingRequest(req []byte) bool {
	return len(req) == stunHeaderLen && binary.BigEndian.Uint16(req[0:2]) == stunBindingRequest &&
		binary.BigEndian.Uint16(req[2:4]) == 0 && binary.BigEndian.Uint32(req[4:8]) == stunMagicCookie
}

func TestSTUNCheckFakeServers(t *testing.T) {
	ok := startUDP(t, func(req []byte) []byte {
		if !isBindingRequest(req) {
			return nil
		}
		return stunResponse(req, stunBindingSuccess, stunAttr(0x0020, xorMapped(3478)))
	})
	garbage := startUDP(t, func([]byte) []byte { return []byte("HTTP/1.0 400 Bad Request\r\n\r\n") })
	wrongTx := startUDP(t, func(req []byte) []byte {
		resp := stunResponse(req, stunBindingSuccess)
		resp[19] ^= 0xff
		return resp
	})
	errResp := startUDP(t, func(req []byte) []byte {
		return stunResponse(req, stunBindingError, stunAttr(stunAttrErrorCode, append([]byte{0, 0, 4, 20}, "Unknown Attribute"...)))
	})
	badAttrs := startUDP(t, func(req []byte) []byte {
		resp := stunResponse(req, stunBindingSuccess, []byte{0, 0x20, 0, 12, 1, 2, 3, 4})
		return resp
	})
	request := startUDP(t, func(req []byte) []byte { return stunResponse(req, stunBindingRequest) })
	silent := startUDP(t, func([]byte) []byte { return nil })

	// A port that was bound and closed: the kernel answers with ICMP port unreachable.
	closed, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := addrPort(t, closed.LocalAddr())
	closed.Close()

	tests := []struct {
		name string
		addr netip.AddrPort
		want string
	}{
		{"binding success", ok.Addr(t), ""},
		{"garbage", garbage.Addr(t), "not a STUN response"},
		{"wrong transaction id", wrongTx.Addr(t), "wrong transaction id"},
		{"error response", errResp.Addr(t), "stun error 420 Unknown Attribute"},
		{"malformed attributes", badAttrs.Addr(t), "malformed STUN attributes"},
		{"a request instead of a response", request.Addr(t), "unexpected STUN message type 0x0001"},
		{"silence", silent.Addr(t), "timeout"},
		{"port unreachable", closedAddr, "port unreachable"},
	}
	c, err := NewChecker(config.Health{Type: config.HealthSTUN}, CheckerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := check(t, c, tt.addr, netip.Addr{}, 200*time.Millisecond)
			if got != tt.want {
				t.Errorf("reason %q, want %q (detail: %v)", got, tt.want, detailOf(err))
			}
		})
	}
}

func TestSTUNCheckRetransmits(t *testing.T) {
	var mu sync.Mutex
	seen := 0
	srv := startUDP(t, func(req []byte) []byte {
		mu.Lock()
		defer mu.Unlock()
		seen++
		if seen == 1 {
			return nil // the first request is "lost"
		}
		return stunResponse(req, stunBindingSuccess)
	})
	c, _ := NewChecker(config.Health{Type: config.HealthSTUN}, CheckerOptions{})
	got, err := check(t, c, srv.Addr(t), netip.Addr{}, 2*time.Second)
	if got != "" {
		t.Fatalf("reason %q, want pass after a retransmission (detail: %v)", got, detailOf(err))
	}
	mu.Lock()
	defer mu.Unlock()
	if seen != 2 {
		t.Errorf("server saw %d requests, want 2", seen)
	}
}

func TestSTUNCheckSource(t *testing.T) {
	srv := startUDP(t, func(req []byte) []byte { return stunResponse(req, stunBindingSuccess) })
	c, _ := NewChecker(config.Health{Type: config.HealthSTUN}, CheckerOptions{})
	src := netip.MustParseAddr("127.0.0.4")
	if got, _ := check(t, c, srv.Addr(t), src, time.Second); got != "" {
		t.Fatalf("reason %q, want pass", got)
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if len(srv.from) == 0 || srv.from[0].Addr() != src {
		t.Errorf("server saw requests from %v, want %s", srv.from, src)
	}
}

func TestParseSTUNResponse(t *testing.T) {
	tx := [12]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	req := stunBindingRequestMsg(tx)
	if !isBindingRequest(req) || [12]byte(req[8:20]) != tx {
		t.Fatalf("binding request % x is malformed", req)
	}
	ok := stunResponse(req, stunBindingSuccess, stunAttr(0x0020, xorMapped(1)))
	badCookie := append([]byte(nil), ok...)
	badCookie[4] = 0
	badLen := append([]byte(nil), ok...)
	badLen[3] = 4
	tests := []struct {
		name   string
		b      []byte
		want   stunVerdict
		reason string
	}{
		{"success", ok, stunOK, ""},
		{"success without attributes", stunResponse(req, stunBindingSuccess), stunOK, ""},
		{"short", ok[:19], stunIgnore, "not a STUN response"},
		{"bad cookie", badCookie, stunIgnore, "not a STUN response"},
		{"length mismatch", badLen, stunIgnore, "malformed STUN response"},
		{"first bits set", append([]byte{0xc1}, ok[1:]...), stunIgnore, "not a STUN response"},
		{"error without code", stunResponse(req, stunBindingError), stunFatal, "stun error"},
	}
	for _, tt := range tests {
		got, reason := parseSTUNResponse(tt.b, tx)
		if got != tt.want || reason != tt.reason {
			t.Errorf("%s: got (%d, %q), want (%d, %q)", tt.name, got, reason, tt.want, tt.reason)
		}
	}
}

// startCoturn runs coturn's turnserver as a STUN-only server on a free loopback port and returns
// its address once it answers a binding request. Without coturn the test is skipped, except under
// CI=true where coturn is required.
func startCoturn(t *testing.T) netip.AddrPort {
	t.Helper()
	bin := testenv.Program(t, "coturn", "turnserver")
	c, _ := NewChecker(config.Health{Type: config.HealthSTUN}, CheckerOptions{})
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		addr, err := freeUDPAndTCPPort()
		if err != nil {
			t.Fatal(err)
		}

		dir := t.TempDir()
		logf, err := os.Create(filepath.Join(dir, "turnserver.log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "-n",
			"--listening-ip=127.0.0.1", "--listening-port="+strconv.Itoa(int(addr.Port())),
			"--relay-ip=127.0.0.1", "--no-tls", "--no-dtls", "--stun-only", "--no-cli",
			"--log-file=stdout", "--simple-log", "--pidfile="+filepath.Join(dir, "turnserver.pid"))
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			logf.Close()
			t.Fatalf("starting turnserver: %v", err)
		}
		exited := make(chan struct{})
		go func() { // owned: ends when the process does, which Cleanup ensures
			_ = cmd.Wait()
			close(exited)
		}()
		t.Cleanup(func() {
			_ = cmd.Process.Kill() // by PID: the process this test started
			<-exited
			logf.Close()
		})

		// Wait, bounded, until it answers a binding request or exits.
		deadline := time.Now().Add(10 * time.Second)
	wait:
		for time.Now().Before(deadline) {
			select {
			case <-exited:
				lastErr = errExited
				break wait
			default:
			}
			got, err := check(t, c, addr, netip.Addr{}, 200*time.Millisecond)
			if got == "" {
				return addr
			}
			lastErr = err
			time.Sleep(50 * time.Millisecond)
		}
		log, _ := os.ReadFile(filepath.Join(dir, "turnserver.log"))
		t.Logf("turnserver on %s did not answer (%v); its log:\n%s", addr, lastErr, tail(log, 2000))
	}
	t.Fatalf("could not start turnserver: %v", lastErr)
	return netip.AddrPort{}
}

// freeUDPAndTCPPort finds a loopback port free for both UDP and TCP (coturn listens on both).
// It picks below the kernel's ephemeral range, where outgoing connections of other tests and
// benchmarks on the machine do not take ports at random.
func freeUDPAndTCPPort() (netip.AddrPort, error) {
	var err error
	for range 50 {
		addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(20000+mathrand.IntN(12000)))
		var u *net.UDPConn
		if u, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr)); err != nil {
			continue
		}
		var l net.Listener
		l, err = net.Listen("tcp", addr.String())
		u.Close()
		if err != nil {
			continue
		}
		l.Close()
		return addr, nil
	}
	return netip.AddrPort{}, fmt.Errorf("no free loopback port for coturn: %w", err)
}

var errExited = &ProbeError{Reason: "turnserver exited"}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func TestSTUNCheckCoturn(t *testing.T) {
	addr := startCoturn(t)
	c, _ := NewChecker(config.Health{Type: config.HealthSTUN}, CheckerOptions{})
	for i := 0; i < 3; i++ {
		if got, err := check(t, c, addr, netip.Addr{}, time.Second); got != "" {
			t.Fatalf("check %d against coturn: %q (detail: %v)", i, got, detailOf(err))
		}
	}
	// From another loopback source as well.
	if got, err := check(t, c, addr, netip.MustParseAddr("127.0.0.5"), time.Second); got != "" {
		t.Fatalf("check from 127.0.0.5 against coturn: %q (detail: %v)", got, detailOf(err))
	}
}
