package admin

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func mustAddrPort(t *testing.T, s string) netip.AddrPort {
	t.Helper()
	a, err := netip.ParseAddrPort(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestAdminBoundsHeader: the admin server keeps the redirector's bounds: an endless header is
// answered (431) after a few kilobytes instead of being read up to a megabyte.
func TestAdminBoundsHeader(t *testing.T) {
	ts := startServer(t, newFakeDaemon(""), filepath.Join(t.TempDir(), "no-hosts"))
	c, err := net.DialTimeout("tcp", ts.addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: "+strings.Repeat("a", 64<<10)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer to a 64 KiB header line: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("a 64 KiB header line: %d, want 431", resp.StatusCode)
	}
}
