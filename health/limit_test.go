package health

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pairlb/pairlb/config"
)

// hostileTimeout is the timeout of a check against a hostile server: long enough that a check
// ended by a bound is told apart from one ended by its timeout.
const hostileTimeout = 5 * time.Second

// hostileCap bounds what a hostile server sends in one test, so that the code before the bounds
// (which read all of it) fails the test without taking the machine's memory.
const hostileCap = 64 << 20

// hostileHTTP answers each request with head and then repeats filler until the client stops
// reading or hostileCap is sent. written counts what the client's kernel took; wrapped with tls
// the same holds in TLS records.
type hostileHTTP struct {
	head, filler string
	tls          *tls.Config // nil: plain
	written      atomic.Int64
	finished     chan struct{} // closed when the server stopped writing, for whatever reason
}

func startHostileHTTP(t *testing.T, h *hostileHTTP) netip.AddrPort {
	t.Helper()
	h.finished = make(chan struct{})
	var once atomic.Bool
	srv := startTCP(t, "127.0.0.1:0", func(c net.Conn) {
		if once.Swap(true) {
			return // one victim is enough
		}
		defer close(h.finished)
		// A small send buffer keeps what sits in kernel buffers, and so the slack of the
		// count, small.
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetWriteBuffer(16 << 10)
		}
		var conn net.Conn = c
		if h.tls != nil {
			conn = tls.Server(c, h.tls)
		}
		_ = conn.SetDeadline(time.Now().Add(2 * hostileTimeout))
		if _, err := http.ReadRequest(bufio.NewReader(conn)); err != nil {
			return
		}
		n, err := io.WriteString(conn, h.head)
		h.written.Add(int64(n))
		if err != nil {
			return
		}
		chunk := strings.Repeat(h.filler, max(1, (16<<10)/len(h.filler)))
		for h.written.Load() < hostileCap {
			n, err := io.WriteString(conn, chunk)
			h.written.Add(int64(n))
			if err != nil {
				return
			}
		}
		holdUntilClosed(conn)
	})
	return srv.Addr(t)
}

// checkHostile runs c against addr and wants it to fail with reason well before its timeout.
func checkHostile(t *testing.T, c Checker, addr netip.AddrPort, want string) {
	t.Helper()
	start := time.Now()
	got, err := check(t, c, addr, netip.Addr{}, hostileTimeout)
	took := time.Since(start)
	if got != want {
		t.Errorf("reason %q, want %q (detail: %v)", got, want, detailOf(err))
	}
	if took > hostileTimeout/2 {
		t.Errorf("check took %s (timeout %s): the bound did not end it", took, hostileTimeout)
	}
}

// wantStoppedReading waits for the hostile server to stop writing and checks that the client
// took little more than limit: what it read plus what the two sockets' buffers hold.
func wantStoppedReading(t *testing.T, h *hostileHTTP, limit int64) {
	t.Helper()
	select {
	case <-h.finished:
	case <-time.After(2 * hostileTimeout):
		t.Fatalf("the hostile server was still writing after %s (%d bytes)", 2*hostileTimeout, h.written.Load())
	}
	const buffers = 2 << 20 // the client's receive buffer as loopback autotunes it, the server's send buffer
	if n := h.written.Load(); n > limit+buffers {
		t.Errorf("the client took %d bytes from the hostile server, want at most %d read + %d in kernel buffers", n, limit, buffers)
	} else {
		t.Logf("the client took %d bytes (limit %d)", n, limit)
	}
}

func TestHTTPCheckBoundsTheResponseHeader(t *testing.T) {
	pki := newTestPKI(t)
	tests := []struct {
		name         string
		head, filler string
		secure       bool
		want         string
	}{
		{"endless header line", "HTTP/1.1 200 OK\r\nX-Endless: ", "a", false, "response header too large"},
		{"endless status line", "HTTP/1.1 200 ", "O", false, "response header too large"},
		{"endless headers", "HTTP/1.1 200 OK\r\n", "X-A: 1\r\n", false, "too many response headers"},
		{"endless big headers", "HTTP/1.1 200 OK\r\n", "X-Big: " + strings.Repeat("b", 1000) + "\r\n", false, "response header too large"},
		{"endless header line over tls", "HTTP/1.1 200 OK\r\nX-Endless: ", "a", true, "response header too large"},
		{"endless headers over tls", "HTTP/1.1 200 OK\r\n", "X-A: 1\r\n", true, "too many response headers"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := &hostileHTTP{head: tt.head, filler: tt.filler}
			hc := config.Health{Type: config.HealthHTTP}
			if tt.secure {
				h.tls = &tls.Config{Certificates: []tls.Certificate{pki.valid}}
				hc.Type = config.HealthHTTPS
			}
			addr := startHostileHTTP(t, h)
			c, err := NewChecker(hc, CheckerOptions{})
			if err != nil {
				t.Fatal(err)
			}
			checkHostile(t, c, addr, tt.want)
			wantStoppedReading(t, h, maxResponseHeaderBytes+httpReadBuffer+tlsReadAhead)
		})
	}
}

func TestMonitorShowsTheBoundExceeded(t *testing.T) {
	h := &hostileHTTP{head: "HTTP/1.1 200 OK\r\nX-Endless: ", filler: "a"}
	addr := startHostileHTTP(t, h)
	m := NewMonitor(Options{})
	m.Set([]Target{{Service: "web", Server: "hostile", Addr: addr,
		Check: config.Health{Type: config.HealthHTTP, Interval: hostileTimeout, Timeout: hostileTimeout}}})
	run(t, m)
	eventually(t, 2*hostileTimeout, "the first check done", func() bool { return !m.Status()[0].LastCheck.IsZero() })
	if st := m.Status()[0]; st.Up || st.LastError != "response header too large" {
		t.Errorf("status: up %v, last error %q; want down with %q", st.Up, st.LastError, "response header too large")
	}
}

func TestHTTPCheckHeadersNearTheLimitPass(t *testing.T) {
	// A generous but real answer: many headers and a long cookie pass.
	head := "HTTP/1.1 200 OK\r\nSet-Cookie: s=" + strings.Repeat("c", 8000) + "\r\n"
	for range maxResponseHeaders - 1 {
		head += "X-Powered-By: ASP.NET\r\n"
	}
	head += "\r\n"
	srv := startTCP(t, "127.0.0.1:0", func(c net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
			_, _ = io.WriteString(c, head)
		}
		holdUntilClosed(c)
	})
	c, _ := NewChecker(config.Health{Type: config.HealthHTTP}, CheckerOptions{})
	if got, err := check(t, c, srv.Addr(t), netip.Addr{}, 2*time.Second); got != "" {
		t.Errorf("reason %q, want pass (detail: %v)", got, detailOf(err))
	}
}

func TestReadResponseHead(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string // the head, or the error's text
	}{
		{"crlf", "HTTP/1.1 200 OK\r\nA: 1\r\n\r\nbody", "HTTP/1.1 200 OK\r\nA: 1\r\n\r\n"},
		{"bare lf", "HTTP/1.0 204 No Content\nA: 1\n\nbody", "HTTP/1.0 204 No Content\nA: 1\n\n"},
		{"no headers", "HTTP/1.1 200 OK\r\n\r\n", "HTTP/1.1 200 OK\r\n\r\n"},
		{"closed mid-header", "HTTP/1.1 200 OK\r\nA: 1\r\n", "EOF"},
		{"header line split by the buffer ends only at its newline", "HTTP/1.1 200 OK\r\nA: " + strings.Repeat("x", httpReadBuffer-1) + "\r\n\r\n",
			"HTTP/1.1 200 OK\r\nA: " + strings.Repeat("x", httpReadBuffer-1) + "\r\n\r\n"},
		{"exactly the header limit", "HTTP/1.1 200 OK\r\nA: " + strings.Repeat("x", maxResponseHeaderBytes-len("HTTP/1.1 200 OK\r\nA: \r\n\r\n")) + "\r\n\r\n",
			"HTTP/1.1 200 OK\r\nA: " + strings.Repeat("x", maxResponseHeaderBytes-len("HTTP/1.1 200 OK\r\nA: \r\n\r\n")) + "\r\n\r\n"},
		{"one byte over", "HTTP/1.1 200 OK\r\nA: " + strings.Repeat("x", maxResponseHeaderBytes-len("HTTP/1.1 200 OK\r\nA: \r\n\r\n")+1) + "\r\n\r\n",
			"response header too large"},
		{"too many", "HTTP/1.1 200 OK\r\n" + strings.Repeat("A: 1\r\n", maxResponseHeaders+1) + "\r\n", "too many response headers"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			head, err := readResponseHead(bufio.NewReaderSize(strings.NewReader(tt.in), httpReadBuffer))
			got := string(head)
			if err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Errorf("got %.80q, want %.80q", got, tt.want)
			}
		})
	}
}

// endless is a reader that never ends and counts what was taken from it.
type endless struct {
	b    byte
	read int64
}

func (e *endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = e.b
	}
	e.read += int64(len(p))
	return len(p), nil
}

func TestReadResponseHeadMemoryIsBounded(t *testing.T) {
	src := &endless{b: 'a'}
	r := bufio.NewReaderSize(io.MultiReader(strings.NewReader("HTTP/1.1 200 OK\r\nX: "), src), httpReadBuffer)
	var before, after runtimeMem
	before.read()
	_, err := readResponseHead(r)
	after.read()
	if !errors.Is(err, errResponseHeaderTooLarge) {
		t.Fatalf("err %v, want %v", err, errResponseHeaderTooLarge)
	}
	if src.read > maxResponseHeaderBytes+httpReadBuffer {
		t.Errorf("read %d bytes of an endless header, want at most %d", src.read, maxResponseHeaderBytes+httpReadBuffer)
	}
	if grew := after.total - before.total; grew > 1<<20 {
		t.Errorf("allocated %d bytes reading a header bounded at %d", grew, maxResponseHeaderBytes)
	}
}

// endlessConn is a net.Conn whose reads never end.
type endlessConn struct {
	net.Conn
	endless
}

func (c *endlessConn) Read(p []byte) (int, error) { return c.endless.Read(p) }

func TestBudgetConn(t *testing.T) {
	raw := &endlessConn{endless: endless{b: 'x'}}
	c := newBudgetConn(raw, 10000, errTLSHandshakeTooLarge)
	n, err := io.Copy(io.Discard, c)
	if n != 10000 || !errors.Is(err, errTLSHandshakeTooLarge) {
		t.Errorf("copied %d bytes, err %v; want 10000 and %v", n, err, errTLSHandshakeTooLarge)
	}
	c.limit(300, errResponseHeaderTooLarge)
	n, err = io.Copy(io.Discard, c)
	if n != 300 || !errors.Is(err, errResponseHeaderTooLarge) {
		t.Errorf("after limit: copied %d bytes, err %v; want 300 and %v", n, err, errResponseHeaderTooLarge)
	}
	if raw.read != 10300 || c.read != 10300 {
		t.Errorf("took %d bytes from the connection (counted %d), want 10300", raw.read, c.read)
	}
}

// hugeChain is the valid leaf followed by random blobs that make the certificate message about
// size bytes long, under Go's own 256 KiB limit for that message: only our budget stops it
// before the end. (The client would refuse the blobs, but only once it has read them.)
func hugeChain(leaf tls.Certificate, size int) tls.Certificate {
	out := leaf
	out.Certificate = [][]byte{leaf.Certificate[0]}
	for total := len(leaf.Certificate[0]); total < size; {
		blob := make([]byte, min(60<<10, size-total))
		_, _ = rand.Read(blob)
		out.Certificate = append(out.Certificate, blob)
		total += len(blob) + 3
	}
	return out
}

// bigChain is the valid leaf followed by n real (self-signed) certificates with a long SAN list,
// about 12 KiB each: the size of a large real chain.
func bigChain(t *testing.T, leaf tls.Certificate, n int) tls.Certificate {
	t.Helper()
	out := leaf
	out.Certificate = [][]byte{leaf.Certificate[0]}
	key := newKey(t)
	for i := range n {
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(int64(100 + i)),
			Subject:      pkix.Name{CommonName: "intermediate.example.test"},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(time.Hour),
		}
		for j := range 400 {
			tmpl.DNSNames = append(tmpl.DNSNames, fmt.Sprintf("sip-%04d.pool.example.test", j))
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			t.Fatal(err)
		}
		out.Certificate = append(out.Certificate, der)
	}
	return out
}

func TestTLSCheckBoundsTheHandshake(t *testing.T) {
	pki := newTestPKI(t)
	const chain = 250 << 10
	if chain <= maxTLSHandshakeBytes || chain >= 256<<10 {
		t.Fatalf("the test chain (%d bytes) must lie between our budget and Go's limit", chain)
	}
	var written atomic.Int64
	cert := hugeChain(pki.valid, chain)
	srv := startTCP(t, "127.0.0.1:0", func(c net.Conn) {
		tc := tls.Server(countingConn{c, &written}, &tls.Config{Certificates: []tls.Certificate{cert}})
		_ = tc.SetDeadline(time.Now().Add(2 * hostileTimeout))
		if tc.Handshake() == nil {
			holdUntilClosed(tc)
		}
	})
	for _, typ := range []config.HealthType{config.HealthTLS, config.HealthHTTPS} {
		t.Run(string(typ), func(t *testing.T) {
			c, err := NewChecker(config.Health{Type: typ}, CheckerOptions{})
			if err != nil {
				t.Fatal(err)
			}
			checkHostile(t, c, srv.Addr(t), "TLS handshake too large")
		})
	}
	if n := written.Load(); n < chain {
		t.Errorf("the server sent %d bytes, less than its chain of %d: the test proves nothing", n, chain)
	}

	// A large real chain passes well below the budget.
	big := bigChain(t, pki.valid, 4)
	size := 0
	for _, c := range big.Certificate {
		size += len(c)
	}
	if size < 40<<10 || size > maxTLSHandshakeBytes/2 {
		t.Fatalf("the large real chain is %d bytes, want 40 KiB to half the budget", size)
	}
	c, _ := NewChecker(config.Health{Type: config.HealthTLS}, CheckerOptions{})
	if got, err := check(t, c, startTLS(t, big), netip.Addr{}, 2*time.Second); got != "" {
		t.Errorf("a chain of %d bytes: reason %q, want pass (detail: %v)", size, got, detailOf(err))
	}
}

// countingConn counts what is written to it.
type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// startUDPFlood answers each datagram with count copies of answer (a bounded flood).
func startUDPFlood(t *testing.T, answer func(req []byte) []byte, count int) *udpServer {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	s := &udpServer{conn: conn}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		buf := make([]byte, 1500)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			out := answer(buf[:n])
			for range count {
				if _, err := conn.WriteToUDPAddrPort(out, from); err != nil {
					if errors.Is(err, net.ErrClosed) {
						return
					}
					if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ENOBUFS) {
						break
					}
				}
			}
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		s.wg.Wait()
	})
	return s
}

func TestSTUNCheckBoundsWhatItReads(t *testing.T) {
	valid := func(req []byte) []byte {
		return stunResponse(req, stunBindingSuccess, stunAttr(0x0020, xorMapped(3478)))
	}
	// A success response to our transaction, padded with an attribute to size bytes.
	padded := func(size int) func([]byte) []byte {
		return func(req []byte) []byte {
			return stunResponse(req, stunBindingSuccess, stunAttr(0x0020, xorMapped(3478)),
				stunAttr(0x8022, make([]byte, size-stunHeaderLen-12-4)))
		}
	}
	tests := []struct {
		name  string
		srv   *udpServer
		want  string
		quick bool // must end well before the timeout
	}{
		{"oversized answer", startUDPFlood(t, padded(9000), 1), "answer too large", true},
		{"answer of the largest size passes", startUDPFlood(t, padded(maxSTUNAnswer), 1), "", true},
		{"flood of garbage", startUDPFlood(t, func([]byte) []byte { return bytes.Repeat([]byte("x"), 100) }, 2000),
			"32 unusable answers: not a STUN response", true},
		{"flood of other transactions", startUDPFlood(t, func(req []byte) []byte {
			resp := valid(req)
			resp[19] ^= 0xff
			return resp
		}, 2000), "32 unusable answers: wrong transaction id", true},
		{"a few stray datagrams do not end it", startUDPFlood(t, func([]byte) []byte { return []byte("stray") }, 3),
			"not a STUN response", false},
	}
	c, err := NewChecker(config.Health{Type: config.HealthSTUN}, CheckerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			timeout := hostileTimeout
			if !tt.quick {
				timeout = 1200 * time.Millisecond // two retransmissions' worth
			}
			start := time.Now()
			got, err := check(t, c, tt.srv.Addr(t), netip.Addr{}, timeout)
			took := time.Since(start)
			if got != tt.want {
				t.Errorf("reason %q, want %q (detail: %v)", got, tt.want, detailOf(err))
			}
			if tt.quick && took > timeout/2 {
				t.Errorf("check took %s (timeout %s): the bound did not end it", took, timeout)
			}
		})
	}
}

// runtimeMem is the process's allocation total at one moment.
type runtimeMem struct{ total uint64 }

func (m *runtimeMem) read() {
	var s runtime.MemStats
	runtime.ReadMemStats(&s)
	m.total = s.TotalAlloc
}

func TestClip(t *testing.T) {
	long := strings.Repeat("é", maxReasonLen)
	got := clip(long)
	if len(got) > maxReasonLen+3 || !strings.HasSuffix(got, "...") || !strings.HasPrefix(got, "éé") {
		t.Errorf("clip of %d bytes gave %d bytes: %q", len(long), len(got), got)
	}
	if got := clip("bad \x00\x1b[31m\xff reply\r\n"); got != "bad ??[31m? reply??" {
		t.Errorf("clip of control bytes gave %q", got)
	}
}
