package lb

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// batchOf makes a batch carrying datagrams of the given sizes, datagram i filled with byte 'a'+i.
func batchOf(sizes ...int) *msgBatch {
	b := newMsgBatch(udpBatch, 0)
	for i, n := range sizes {
		b.carry(i, bytes.Repeat([]byte{byte('a' + i)}, n))
		b.iovs[i].SetLen(n)
	}
	return b
}

func TestPackRunsOfOneSize(t *testing.T) {
	sizes := []int{100, 100, 100, 50, 100, 100, gsoMaxSegment + 1, gsoMaxSegment + 1, 0, 0, 7, 9}
	b := batchOf(sizes...)
	m := b.pack(0, len(sizes), nil, 0, true)
	// A run ends after a shorter datagram; larger ones and empty ones go alone.
	want := []int{4, 2, 1, 1, 1, 1, 1, 1}
	if got := b.segs[:m]; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("datagrams per message %v, want %v", got, want)
	}
	for i, k := range b.segs[:m] {
		h := b.msgs[i].Hdr
		if int(h.Iovlen) != k || (k > 1) != (h.Control != nil) {
			t.Fatalf("message %d: %d iovecs, control %v; want %d iovecs and a control message only for a run", i, h.Iovlen, h.Control != nil, k)
		}
	}
	if m := b.pack(0, len(sizes), nil, 0, false); m != len(sizes) {
		t.Fatalf("without gso %d messages for %d datagrams", m, len(sizes))
	}
	if m := b.pack(4, len(sizes), nil, 0, true); fmt.Sprint(b.segs[:m]) != fmt.Sprint(want[1:]) {
		t.Fatalf("from datagram 4: %v", b.segs[:m])
	}
}

// sendPair returns a connected non-blocking datagram socket and the socket it sends to.
func sendPair(t *testing.T) (int, *net.UDPConn) {
	t.Helper()
	rc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rc.Close() })
	_ = rc.SetReadBuffer(1 << 20)
	fd, err := dialSocket(unix.SOCK_DGRAM, netip.AddrPort{}, addrPort(rc.LocalAddr()), false, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd, rc
}

// expectDatagrams reads the datagrams of sizes, in order and each whole.
func expectDatagrams(t *testing.T, rc *net.UDPConn, sizes []int) {
	t.Helper()
	buf := make([]byte, 2*maxDatagram)
	for i, n := range sizes {
		_ = rc.SetReadDeadline(time.Now().Add(2 * time.Second))
		got, err := rc.Read(buf)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if want := bytes.Repeat([]byte{byte('a' + i)}, n); !bytes.Equal(buf[:got], want) {
			t.Fatalf("datagram %d: %d bytes %.8q..., want %d bytes of %q", i, got, buf[:got], n, rune('a'+i))
		}
	}
}

func TestSendNowSegmentsRuns(t *testing.T) {
	fd, rc := sendPair(t)
	sizes := []int{100, 100, 100, 50, 1000, 1000, 1000, 3000, 0, 5}
	b := batchOf(sizes...)
	if sent, _, err := b.sendNow(fd, len(sizes), netip.AddrPort{}); sent != len(sizes) || err != nil {
		t.Fatalf("sent %d of %d: %v", sent, len(sizes), err)
	}
	expectDatagrams(t, rc, sizes)
}

// TestSendNowWithoutSegmentation: a socket the kernel refuses segmentation for (here one
// without UDP checksums) still gets every datagram, one a message.
func TestSendNowWithoutSegmentation(t *testing.T) {
	fd, rc := sendPair(t)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_NO_CHECK, 1); err != nil {
		t.Fatalf("SO_NO_CHECK: %v", err)
	}
	sizes := []int{100, 100, 100}
	b := batchOf(sizes...)
	b.pack(0, len(sizes), nil, 0, true)
	_, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&b.msgs[0])), 1, unix.MSG_DONTWAIT, 0, 0)
	// Linux refuses segmentation offload on a socket without checksums (udp_send_skb, since
	// UDP_SEGMENT came in 4.18): the refusal the fallback is for.
	if e != unix.EINVAL {
		t.Fatalf("segmented send without checksums: %v, want EINVAL (the refusal this test relies on)", e)
	}
	if sent, _, err := b.sendNow(fd, len(sizes), netip.AddrPort{}); sent != len(sizes) || err != nil {
		t.Fatalf("sent %d of %d: %v", sent, len(sizes), err)
	}
	expectDatagrams(t, rc, sizes)
}
