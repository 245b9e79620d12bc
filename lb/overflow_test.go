package lb

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// droppedFor reads a drop counter of a service through Status, as the metrics do.
func droppedFor(bal *Balancer, vs, reason string) uint64 {
	for _, s := range bal.Status() {
		if s.Name != vs {
			continue
		}
		for _, d := range s.Dropped {
			if d.Reason == reason {
				return d.Count
			}
		}
	}
	return 0
}

// kernelDrops is the count of datagrams the kernel dropped on socket fd (SK_MEMINFO_DROPS).
func kernelDrops(t *testing.T, fd int) uint32 {
	t.Helper()
	var info [unix.SK_MEMINFO_VARS]uint32
	n := uint32(unsafe.Sizeof(info))
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_MEMINFO,
		uintptr(unsafe.Pointer(&info[0])), uintptr(unsafe.Pointer(&n)), 0); e != 0 {
		t.Fatalf("SO_MEMINFO: %v", e)
	}
	return info[unix.SK_MEMINFO_DROPS]
}

// holdLoop runs f on lp's goroutine and keeps the loop busy until the returned function is
// called, as a burst of other work would.
func holdLoop(lp *loop, f func()) (release func()) {
	held, hold := make(chan struct{}), make(chan struct{})
	lp.post(func() {
		f()
		close(held)
		<-hold
	})
	<-held
	return func() { close(hold) }
}

// pingUntilAnswered sends "last-N" with send until a reply "prefix+last-N" comes back on c: the
// queue the burst filled has drained, and the answered datagram, queued after every drop,
// carried the socket's final drop count.
func pingUntilAnswered(t *testing.T, c *net.UDPConn, send func([]byte) error, prefix string) {
	t.Helper()
	buf := make([]byte, 2048)
	deadline := time.Now().Add(5 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		msg := fmt.Sprint("last-", i)
		if err := send([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		for {
			k, err := c.Read(buf)
			if err != nil {
				break
			}
			if string(buf[:k]) == prefix+msg {
				return
			}
		}
	}
	t.Fatal("no datagram answered within 5s after the burst")
}

// TestUDPReceiveOverflowCounted: datagrams the kernel drops on a full receive queue, while the
// loop is busy, are counted as udp_receive_overflow, on the VIP socket and on a session's
// socket alike: exactly as many as the kernel dropped.
func TestUDPReceiveOverflowCounted(t *testing.T) {
	// A real server that answers "hello" and, when told, sends a burst to that client.
	srv, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	session := make(chan netip.AddrPort, 1)
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := srv.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if string(buf[:n]) == "hello" {
				session <- from
			}
			_, _ = srv.WriteToUDPAddrPort(append([]byte("a:"), buf[:n]...), from)
		}
	}()
	vs := udpService(t, "media", addrPort(srv.LocalAddr()))
	bal, _ := startBalancer(t, testConfig(vs))
	l := bal.listeners[listenerKey{kind: kindUDP, addr: netip.AddrPortFrom(vs.VIP, vs.Ports[0].Listen)}].(*udpListener)
	c := dialUDP(t, vipAddr(vs, 0))
	if got := udpAsk(t, c, "hello"); got != "a:hello" {
		t.Fatalf("hello: %q", got)
	}
	sessAddr := <-session
	payload := strings.Repeat("m", 200)

	t.Run("vip socket", func(t *testing.T) {
		// A small queue, so that a short burst overflows it while the loop is held.
		release := holdLoop(l.lp, func() {
			if err := unix.SetsockoptInt(l.fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4096); err != nil {
				t.Errorf("SO_RCVBUF: %v", err)
			}
		})
		for range 300 {
			if _, err := c.Write([]byte(payload)); err != nil {
				t.Fatal(err)
			}
		}
		release()
		// The count arrives with the first datagram queued after the drops.
		pingUntilAnswered(t, c, func(p []byte) error { _, err := c.Write(p); return err }, "a:")
		want := kernelDrops(t, l.fd)
		if want == 0 {
			t.Fatal("the kernel dropped nothing: the burst did not overflow the queue (the premise of this test)")
		}
		waitFor(t, "udp_receive_overflow counted", func() bool { return droppedFor(bal, "media", "udp_receive_overflow") == uint64(want) })
	})

	t.Run("session socket", func(t *testing.T) {
		before := droppedFor(bal, "media", "udp_receive_overflow")
		var fd int
		release := holdLoop(l.lp, func() {
			for _, s := range l.sessions {
				fd = s.fd
			}
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4096); err != nil {
				t.Errorf("SO_RCVBUF: %v", err)
			}
		})
		for range 300 {
			if _, err := srv.WriteToUDPAddrPort([]byte(payload), sessAddr); err != nil {
				t.Fatal(err)
			}
		}
		release()
		pingUntilAnswered(t, c, func(p []byte) error { _, err := srv.WriteToUDPAddrPort(p, sessAddr); return err }, "")
		want := kernelDrops(t, fd)
		if want == 0 {
			t.Fatal("the kernel dropped nothing on the session's socket (the premise of this test)")
		}
		waitFor(t, "udp_receive_overflow counted", func() bool {
			return droppedFor(bal, "media", "udp_receive_overflow")-before == uint64(want)
		})
	})
}

// TestUDPReceiveBuffer: a VIP socket gets the receive buffer asked for: as root past
// net.core.rmem_max (SO_RCVBUFFORCE), otherwise up to it. The kernel reports twice the size.
func TestUDPReceiveBuffer(t *testing.T) {
	fd, err := listenUDP(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	got, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF)
	if err != nil {
		t.Fatal(err)
	}
	want := udpReceiveBuffer
	if unix.Geteuid() != 0 {
		// Without CAP_NET_ADMIN the kernel caps the size at net.core.rmem_max.
		b, err := os.ReadFile("/proc/sys/net/core/rmem_max")
		if err != nil {
			t.Fatal(err)
		}
		rmemMax, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatal(err)
		}
		want = min(want, rmemMax)
	}
	if got/2 != want {
		t.Errorf("receive buffer %d bytes, want %d", got/2, want)
	}
	if on, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RXQ_OVFL); err != nil || on != 1 {
		t.Errorf("SO_RXQ_OVFL: %d %v", on, err)
	}
}

// TestRecvNowAllocatesNothing: reading a batch, drop counts included, costs no allocation.
func TestRecvNowAllocatesNothing(t *testing.T) {
	fd, err := listenUDP(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	c, err := dialSocket(unix.SOCK_DGRAM, netip.AddrPort{}, addrPortOf(sa), false, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(c)
	b := newMsgBatch(udpBatch, maxDatagram)
	var last uint32
	msg := []byte("x")
	allocs := testing.AllocsPerRun(200, func() {
		sysWrite(c, msg)
		n, err := b.recvNow(fd)
		if err == nil {
			b.overflow(n, &last)
		}
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations per receive", allocs)
	}
}
