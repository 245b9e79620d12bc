package health

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/pairlb/pairlb/config"
)

// check runs c against addr with a timeout and returns the reason ("" when it passed).
func check(t *testing.T, c Checker, addr netip.AddrPort, source netip.Addr, timeout time.Duration) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	err := c.Check(ctx, addr, source)
	if err == nil {
		return "", nil
	}
	var pe *ProbeError
	if !errors.As(err, &pe) {
		t.Errorf("check error %v (%T) is not a *ProbeError", err, err)
	}
	return err.Error(), err
}

// closedPort returns a loopback TCP address nothing listens on.
func closedPort(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ap := addrPort(t, ln.Addr())
	ln.Close()
	return ap
}

func TestTCPCheck(t *testing.T) {
	srv := startTCP(t, "127.0.0.1:0", nil)
	c, err := NewChecker(config.Health{Type: config.HealthTCP}, CheckerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if reason, _ := check(t, c, srv.Addr(t), netip.Addr{}, time.Second); reason != "" {
		t.Errorf("check against a listening server: %q, want pass", reason)
	}
	reason, err := check(t, c, closedPort(t), netip.Addr{}, time.Second)
	if reason != "connection refused" || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("check against a closed port: %q (%v), want connection refused wrapping ECONNREFUSED", reason, err)
	}
	var pe *ProbeError
	if errors.As(err, &pe) && pe.Op != "tcp connect" {
		t.Errorf("Op = %q, want tcp connect", pe.Op)
	}
}

func TestTCPCheckSource(t *testing.T) {
	srv := startTCP(t, "127.0.0.1:0", nil)
	src := netip.MustParseAddr("127.0.0.2")
	c, _ := NewChecker(config.Health{Type: config.HealthTCP}, CheckerOptions{})
	if reason, _ := check(t, c, srv.Addr(t), src, time.Second); reason != "" {
		t.Fatalf("check from %s: %q, want pass", src, reason)
	}
	select {
	case got := <-srv.remotes:
		if got != src {
			t.Errorf("server saw the probe from %s, want %s", got, src)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("server saw no connection")
	}
}

func TestReasonOf(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{context.DeadlineExceeded, "timeout"},
		{&net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, "connection refused"},
		{&net.OpError{Op: "read", Err: syscall.ECONNRESET}, "connection reset"},
		{&net.OpError{Op: "dial", Err: syscall.EHOSTUNREACH}, "host unreachable"},
		{&net.OpError{Op: "dial", Err: syscall.EADDRNOTAVAIL}, "source address not available"},
		{errors.New("something else"), "something else"},
	}
	for _, tt := range tests {
		if got := reasonOf(tt.err); got != tt.want {
			t.Errorf("reasonOf(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}
