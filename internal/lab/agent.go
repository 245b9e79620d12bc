package lab

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"
)

// The agents are the lab's real servers and clients. They run as `pairlb lab-agent ...` inside
// the lab's namespaces, so the lab needs nothing but the pairlb binary, iproute2 and nft.
//
//	lab-agent serve -name NAME -l KIND@ADDR:PORT ...   serve until SIGTERM; prints "ready"
//	lab-agent client -plan FILE -out FILE              run the probes of FILE, write results
//	lab-agent probe -kind KIND -target ADDR:PORT [-source ADDR] [-host NAME]
//	                                                   one probe, printed (for exploring)

// Hello is what a lab server answers: who it is and the connection as it saw it.
type Hello struct {
	Server string `json:"server"` // the server's name: its address
	Local  string `json:"local"`  // address:port it was reached on
	Peer   string `json:"peer"`   // address:port the connection came from
	Echo   string `json:"echo,omitempty"`
	TLS    string `json:"tls,omitempty"` // name of the certificate's subject, for TLS probes
}

// Probe is one request a client sends.
type Probe struct {
	Row    int    `json:"row"`
	Kind   Kind   `json:"kind"`
	Target string `json:"target"`           // VIP:port
	Source string `json:"source,omitempty"` // local address to send from
	Host   string `json:"host,omitempty"`   // Host header for HTTP
	Path   string `json:"path,omitempty"`   // request path and query for HTTP
}

// Result is what one probe saw.
type Result struct {
	Probe
	Hello    Hello  `json:"hello"`
	From     string `json:"from,omitempty"` // where a UDP answer came from
	Status   int    `json:"status,omitempty"`
	Location string `json:"location,omitempty"`
	Err      string `json:"err,omitempty"`
}

const (
	probeTimeout     = 3 * time.Second
	clientParallel   = 8
	serverConnLimit  = 5 * time.Second
	maxLine          = 4096
	defaultHTTPHost  = "lync.lab.test"
	defaultProbePath = "/lab/probe?check=1"
)

// Agent runs the lab-agent subcommand given by args and returns the exit code.
func Agent(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: pairlb lab-agent serve|client|probe ...")
		return 2
	}
	var err error
	switch args[0] {
	case "serve":
		err = agentServe(ctx, args[1:], stdout, stderr)
	case "client":
		err = agentClient(ctx, args[1:], stderr)
	case "probe":
		err = agentProbe(ctx, args[1:], stdout, stderr)
	default:
		err = fmt.Errorf("unknown lab-agent command %q", args[0])
	}
	if errors.Is(err, flag.ErrHelp) {
		return 2
	}
	if err != nil {
		fmt.Fprintln(stderr, "lab-agent:", err)
		return 1
	}
	return 0
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, " ") }
func (m *multiFlag) Set(s string) error { *m = append(*m, s); return nil }

func agentServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("lab-agent serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("name", "", "the server's name in answers")
	var listens multiFlag
	fs.Var(&listens, "l", "KIND@ADDR:PORT to serve (tcp, tls, http, stun); repeatable")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *name == "" || len(listens) == 0 {
		return errors.New("serve needs -name and at least one -l")
	}
	s := &server{name: *name, log: stderr}
	defer s.close()
	for _, l := range listens {
		kind, addr, ok := strings.Cut(l, "@")
		ap, err := netip.ParseAddrPort(addr)
		if !ok || err != nil {
			return fmt.Errorf("listener %q: want KIND@ADDR:PORT", l)
		}
		if err := s.open(Kind(kind), ap); err != nil {
			return err
		}
	}
	fmt.Fprintln(stdout, "ready")
	<-ctx.Done()
	return nil
}

// server is one lab real server: several listeners answering with the server's name.
type server struct {
	name string
	log  io.Writer

	mu      sync.Mutex
	cert    *tls.Certificate
	closers []io.Closer
	wg      sync.WaitGroup
}

func (s *server) close() {
	s.mu.Lock()
	for _, c := range s.closers {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *server) open(kind Kind, ap netip.AddrPort) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch kind {
	case KindSTUN:
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
		if err != nil {
			return fmt.Errorf("listening on %s/udp: %w", ap, err)
		}
		s.closers = append(s.closers, c)
		s.wg.Go(func() { s.serveSTUN(c) })
		return nil
	case KindTCP, KindTLS, KindHTTP:
	default:
		return fmt.Errorf("unknown listener kind %q", kind)
	}
	ln, err := net.Listen("tcp", ap.String())
	if err != nil {
		return fmt.Errorf("listening on %s/tcp: %w", ap, err)
	}
	s.closers = append(s.closers, ln)
	switch kind {
	case KindHTTP:
		hs := &http.Server{Handler: http.HandlerFunc(s.serveHTTP), ReadHeaderTimeout: serverConnLimit}
		s.closers = append(s.closers, hs) // closes its connections too
		s.wg.Go(func() { _ = hs.Serve(ln) })
	case KindTLS:
		if s.cert == nil {
			cert, err := selfSigned(s.name)
			if err != nil {
				return err
			}
			s.cert = cert
		}
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{*s.cert}, MinVersion: tls.VersionTLS12})
		s.wg.Go(func() { s.acceptLoop(ln) })
	default:
		s.wg.Go(func() { s.acceptLoop(ln) })
	}
	return nil
}

func (s *server) acceptLoop(ln net.Listener) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				fmt.Fprintln(s.log, "accept:", err)
			}
			return
		}
		wg.Go(func() { s.serveLine(c) })
	}
}

// serveLine reads one line and answers with a Hello echoing it.
func (s *server) serveLine(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(serverConnLimit))
	line, err := bufio.NewReader(io.LimitReader(c, maxLine)).ReadString('\n')
	if err != nil {
		return
	}
	h := s.hello(c.LocalAddr(), c.RemoteAddr())
	h.Echo = strings.TrimSuffix(line, "\n")
	b, _ := json.Marshal(h)
	_, _ = c.Write(append(b, '\n'))
}

func (s *server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	h := s.hello(local, stringAddr(r.RemoteAddr))
	h.Echo = r.Method + " " + r.URL.RequestURI()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Lab-Server", s.name)
	_ = json.NewEncoder(w).Encode(h)
}

type stringAddr string

func (a stringAddr) Network() string { return "tcp" }
func (a stringAddr) String() string  { return string(a) }

func (s *server) hello(local, peer net.Addr) Hello {
	h := Hello{Server: s.name}
	if local != nil {
		h.Local = local.String()
	}
	if peer != nil {
		h.Peer = peer.String()
	}
	return h
}

func (s *server) serveSTUN(c *net.UDPConn) {
	buf := make([]byte, 1500)
	for {
		n, peer, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				fmt.Fprintln(s.log, "stun read:", err)
			}
			return
		}
		tx, ok := parseSTUNRequest(buf[:n])
		if !ok {
			continue
		}
		sw := fmt.Sprintf("%sserver=%s local=%s", stunSoftwarePrefix, s.name, c.LocalAddr())
		_, _ = c.WriteToUDPAddrPort(stunSuccess(tx, peer, sw), peer)
	}
}

// selfSigned makes a certificate for the server's name, valid for a day.
func selfSigned(name string) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name, Organization: []string{"pairlb lab"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{defaultHTTPHost},
	}
	if ip := net.ParseIP(name); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("creating certificate: %w", err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

func agentClient(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("lab-agent client", flag.ContinueOnError)
	fs.SetOutput(stderr)
	planFile := fs.String("plan", "", "JSON list of probes")
	outFile := fs.String("out", "", "where to write the JSON results")
	timeout := fs.Duration("timeout", probeTimeout, "time limit of one probe")
	if err := fs.Parse(args); err != nil {
		return err
	}
	data, err := os.ReadFile(*planFile)
	if err != nil {
		return err
	}
	var probes []Probe
	if err := json.Unmarshal(data, &probes); err != nil {
		return fmt.Errorf("reading plan %s: %w", *planFile, err)
	}
	results := RunProbes(ctx, probes, *timeout)
	out, err := json.Marshal(results)
	if err != nil {
		return err
	}
	return os.WriteFile(*outFile, out, 0o600)
}

// RunProbes runs the probes, a few at a time, each within timeout, and returns their results in
// order.
func RunProbes(ctx context.Context, probes []Probe, timeout time.Duration) []Result {
	results := make([]Result, len(probes))
	sem := make(chan struct{}, clientParallel)
	var wg sync.WaitGroup
	for i, p := range probes {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			results[i] = runProbe(ctx, p, timeout)
		})
	}
	wg.Wait()
	return results
}

func agentProbe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("lab-agent probe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var p Probe
	kind := fs.String("kind", "tcp", "tcp, tls, http, redirect or stun")
	fs.StringVar(&p.Target, "target", "", "ADDR:PORT to probe")
	fs.StringVar(&p.Source, "source", "", "local address to send from")
	fs.StringVar(&p.Host, "host", defaultHTTPHost, "Host header (http, redirect)")
	fs.StringVar(&p.Path, "path", defaultProbePath, "request path (http, redirect)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	p.Kind = Kind(*kind)
	r := runProbe(ctx, p, probeTimeout)
	b, _ := json.MarshalIndent(r, "", "  ")
	fmt.Fprintln(stdout, string(b))
	if r.Err != "" {
		return errors.New(r.Err)
	}
	return nil
}

func runProbe(ctx context.Context, p Probe, timeout time.Duration) Result {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	r := Result{Probe: p}
	var err error
	switch p.Kind {
	case KindTCP, KindTLS:
		r.Hello, err = probeLine(ctx, p)
	case KindHTTP, KindRedirect:
		err = probeHTTP(ctx, p, &r)
	case KindSTUN:
		err = probeSTUN(ctx, p, &r)
	default:
		err = fmt.Errorf("unknown probe kind %q", p.Kind)
	}
	if err != nil {
		r.Err = err.Error()
	}
	return r
}

func dialer(source string) (*net.Dialer, error) {
	d := &net.Dialer{Timeout: probeTimeout}
	if source != "" {
		a, err := netip.ParseAddr(source)
		if err != nil {
			return nil, fmt.Errorf("source %q: %w", source, err)
		}
		d.LocalAddr = &net.TCPAddr{IP: a.AsSlice()}
	}
	return d, nil
}

// probeLine connects (with a TLS handshake for tls), sends a line and reads the server's Hello.
func probeLine(ctx context.Context, p Probe) (Hello, error) {
	var h Hello
	d, err := dialer(p.Source)
	if err != nil {
		return h, err
	}
	c, err := d.DialContext(ctx, "tcp", p.Target)
	if err != nil {
		return h, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	var cn string
	if p.Kind == KindTLS {
		// The lab's servers have self-signed certificates: what is checked is that the handshake
		// passes through the balancer to the server that then answers (its name is the
		// certificate's subject), not a chain of trust.
		tc := tls.Client(c, &tls.Config{ServerName: defaultHTTPHost, InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}) //nolint:gosec // see above
		if err := tc.HandshakeContext(ctx); err != nil {
			return h, fmt.Errorf("tls handshake: %w", err)
		}
		if certs := tc.ConnectionState().PeerCertificates; len(certs) > 0 {
			cn = certs[0].Subject.CommonName
		}
		c = tc
	}
	msg := "hello from " + c.LocalAddr().String()
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		return h, err
	}
	line, err := bufio.NewReader(io.LimitReader(c, maxLine)).ReadString('\n')
	if err != nil {
		return h, fmt.Errorf("reading the answer: %w", err)
	}
	if err := json.Unmarshal([]byte(line), &h); err != nil {
		return h, fmt.Errorf("answer %q: %w", strings.TrimSpace(line), err)
	}
	h.TLS = cn
	if h.Echo != msg {
		return h, fmt.Errorf("echo %q, want %q", h.Echo, msg)
	}
	if p.Kind == KindTLS && cn != h.Server {
		return h, fmt.Errorf("certificate of %q but answer from %q", cn, h.Server)
	}
	return h, nil
}

func probeHTTP(ctx context.Context, p Probe, r *Result) error {
	d, err := dialer(p.Source)
	if err != nil {
		return err
	}
	client := &http.Client{
		Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	defer client.CloseIdleConnections()
	path := p.Path
	if path == "" {
		path = "/"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.Target+path, nil)
	if err != nil {
		return err
	}
	if p.Host != "" {
		req.Host = p.Host
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	r.Status = resp.StatusCode
	r.Location = resp.Header.Get("Location")
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxLine))
	if err != nil {
		return fmt.Errorf("reading the body: %w", err)
	}
	if p.Kind == KindRedirect {
		if resp.StatusCode != http.StatusFound {
			return fmt.Errorf("status %d, want 302", resp.StatusCode)
		}
		return nil
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d, want 200", resp.StatusCode)
	}
	if err := json.Unmarshal(body, &r.Hello); err != nil {
		return fmt.Errorf("body %q: %w", strings.TrimSpace(string(body)), err)
	}
	if got := resp.Header.Get("X-Lab-Server"); got != r.Hello.Server {
		return fmt.Errorf("X-Lab-Server %q but body from %q", got, r.Hello.Server)
	}
	return nil
}

// probeSTUN sends a binding request from an unconnected socket, so that an answer from another
// address than the VIP is seen (and reported) rather than dropped by the kernel.
func probeSTUN(ctx context.Context, p Probe, r *Result) error {
	target, err := netip.ParseAddrPort(p.Target)
	if err != nil {
		return err
	}
	local := &net.UDPAddr{}
	if p.Source != "" {
		a, err := netip.ParseAddr(p.Source)
		if err != nil {
			return err
		}
		local.IP = a.AsSlice()
	}
	c, err := net.ListenUDP("udp", local)
	if err != nil {
		return err
	}
	defer c.Close()
	var tx [12]byte
	if _, err := rand.Read(tx[:]); err != nil {
		return err
	}
	req := stunRequest(tx)
	buf := make([]byte, 1500)
	rto := 250 * time.Millisecond
	for attempt := 0; attempt < 5 && ctx.Err() == nil; attempt++ {
		if _, err := c.WriteToUDPAddrPort(req, target); err != nil {
			return err
		}
		wait := time.Now().Add(rto)
		if dl, ok := ctx.Deadline(); ok && dl.Before(wait) {
			wait = dl
		}
		_ = c.SetReadDeadline(wait)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				break // timeout: send again
			}
			mapped, sw, perr := parseSTUNSuccess(buf[:n], tx)
			if perr != nil {
				continue // not ours
			}
			r.From = netip.AddrPortFrom(from.Addr().Unmap(), from.Port()).String()
			r.Hello.Peer = mapped.String()
			for f := range strings.FieldsSeq(strings.TrimPrefix(sw, stunSoftwarePrefix)) {
				if v, ok := strings.CutPrefix(f, "server="); ok {
					r.Hello.Server = v
				}
				if v, ok := strings.CutPrefix(f, "local="); ok {
					r.Hello.Local = v
				}
			}
			if r.From != p.Target {
				return fmt.Errorf("answer from %s, not from %s", r.From, p.Target)
			}
			return nil
		}
		rto *= 2
	}
	return errors.New("no STUN answer")
}
