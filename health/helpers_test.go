package health

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestMain fails the run if any goroutine running this package's code (a probe loop, a test
// server) outlives the tests: every goroutine must be owned and stopped.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if leaked := waitGoroutines(func(s string) bool {
			return strings.Contains(s, "pairlb/health.") && !strings.Contains(s, "health.TestMain")
		}, 0, 3*time.Second); leaked != "" {
			fmt.Fprintf(os.Stderr, "goroutines leaked by package health:\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

// goroutineStacks returns the stacks of all goroutines, one per element.
func goroutineStacks() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Split(string(buf[:n]), "\n\n")
		}
		buf = make([]byte, 2*len(buf))
	}
}

// waitGoroutines polls until at most want goroutines match, up to limit. It returns "" on
// success and the matching stacks otherwise.
func waitGoroutines(match func(string) bool, want int, limit time.Duration) string {
	deadline := time.Now().Add(limit)
	for {
		var found []string
		for _, s := range goroutineStacks() {
			if match(s) {
				found = append(found, s)
			}
		}
		if len(found) <= want {
			return ""
		}
		if time.Now().After(deadline) {
			return strings.Join(found, "\n\n")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// probeLoops counts the Monitor's probe loop goroutines alive now.
func probeLoops() int {
	n := 0
	for _, s := range goroutineStacks() {
		if strings.Contains(s, "health.(*Monitor).probeLoop(") {
			n++
		}
	}
	return n
}

// eventually polls cond every 5ms until it holds or limit passes.
func eventually(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func addrPort(t *testing.T, a net.Addr) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		t.Fatalf("parsing %s: %v", a, err)
	}
	return ap
}

// tcpServer is a loopback TCP listener whose connections are handled by handle, each on a
// goroutine the server owns. It counts concurrent connections and remembers the peak.
type tcpServer struct {
	ln     net.Listener
	handle func(net.Conn)

	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   map[net.Conn]bool
	closed  bool
	cur     atomic.Int64
	peak    atomic.Int64
	total   atomic.Int64
	remotes chan netip.Addr // source addresses of accepted connections, when not full
}

// startTCP listens on addr ("127.0.0.1:0" or a fixed port to reopen) and serves until Close or
// the end of the test.
func startTCP(t *testing.T, addr string, handle func(net.Conn)) *tcpServer {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	s := &tcpServer{ln: ln, handle: handle, conns: map[net.Conn]bool{}, remotes: make(chan netip.Addr, 64)}
	s.wg.Add(1)
	go s.accept()
	t.Cleanup(s.Close)
	return s
}

func (s *tcpServer) Addr(t *testing.T) netip.AddrPort { return addrPort(t, s.ln.Addr()) }

func (s *tcpServer) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = true
		s.wg.Add(1)
		s.mu.Unlock()
		if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
			select {
			case s.remotes <- ap.Addr():
			default:
			}
		}
		s.total.Add(1)
		if n := s.cur.Add(1); n > s.peak.Load() {
			s.peak.Store(n) // only the accept goroutine raises it
		}
		go s.serve(c)
	}
}

func (s *tcpServer) serve(c net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.cur.Add(-1)
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	if s.handle != nil {
		s.handle(c)
	}
}

// Close stops accepting, closes open connections and waits for every server goroutine.
func (s *tcpServer) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.ln.Close()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// holdUntilClosed reads and discards until the peer closes: a server that accepts and never
// answers.
func holdUntilClosed(c net.Conn) {
	buf := make([]byte, 512)
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
	}
}

// testPKI is a CA with leaf certificates issued by it.
type testPKI struct {
	pool    *x509.CertPool
	valid   tls.Certificate // pool.example.test and 127.0.0.1, valid now
	expired tls.Certificate // same names, expired yesterday
	other   tls.Certificate // valid but self-signed: not from the CA
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	now := time.Now()
	caKey := newKey(t)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "pairlb test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatalf("creating CA: %v", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatalf("parsing CA: %v", err)
	}
	p := &testPKI{pool: x509.NewCertPool()}
	p.pool.AddCert(ca)
	p.valid = issue(t, ca, caKey, 2, now.Add(-time.Hour), now.Add(time.Hour))
	p.expired = issue(t, ca, caKey, 3, now.Add(-48*time.Hour), now.Add(-24*time.Hour))
	p.other = issue(t, nil, nil, 4, now.Add(-time.Hour), now.Add(time.Hour))
	return p
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("generating key: %v", err)
	}
	return k
}

// issue makes a server certificate for pool.example.test and 127.0.0.1, signed by ca (self-signed
// when ca is nil).
func issue(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, serial int64, from, until time.Time) tls.Certificate {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: "pool.example.test"},
		DNSNames:     []string{"pool.example.test"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    from,
		NotAfter:     until,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	parent, signer := ca, caKey
	if ca == nil {
		parent, signer = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		t.Fatalf("issuing certificate: %v", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
