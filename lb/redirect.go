package lb

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pairlb/pairlb/internal/httpbound"
)

// redirectListener is the appliance's "Port 80 Redirector": an HTTP server that answers every
// request with a 302 to the service's URL template.
//
// It sits on the VIP in front of everyone, so whatever clients send costs a bounded amount: one
// request per connection, read within the header timeout and a budget of bytes and lines
// (budgetConn), and at most redirectMaxConns connections at once, the others waiting in the
// kernel's accept queue (httpbound.Limit).
type redirectListener struct {
	b   *Balancer
	key listenerKey
	ln  net.Listener // the listening socket
	lim *httpbound.Listener
	srv *http.Server
	cur atomic.Pointer[binding]
	// adopted: the socket was a forwarding listener's (a reload changed the kind); start
	// resets what that listener set on it.
	adopted bool
	// handedOver: a successor of the other kind shares the socket, and this redirector has
	// stopped accepting from it (handOver).
	handedOver atomic.Bool
	readPeak   atomic.Int64 // the most bytes read from one connection, for the tests
}

// redirectMaxConns bounds the connections one redirector holds at once. Each costs at most
// about 30 KiB (buffers, a goroutine, one request's header), so a thousand slow clients cost
// tens of megabytes, not the gigabyte net/http's defaults allowed. It is a variable for the
// tests.
var redirectMaxConns = 1024

func newRedirectListener(b *Balancer, k listenerKey, ln net.Listener, adopted bool) *redirectListener {
	r := &redirectListener{b: b, key: k, ln: ln, adopted: adopted}
	r.lim = httpbound.Limit(ln, redirectMaxConns, func(c net.Conn) net.Conn { return newBudgetConn(c, &r.readPeak) })
	r.srv = httpbound.NewServer(r, b.log, "redirector "+k.addr.String())
	// A client is sent elsewhere after one answer; keeping its connection would only hold a
	// place (and let it spend the per-connection budget over many requests).
	r.srv.SetKeepAlivesEnabled(false)
	r.srv.WriteTimeout = 10 * time.Second
	return r
}

func (r *redirectListener) rebind(bnd *binding) { r.cur.Store(bnd) }

func (r *redirectListener) start() {
	if r.adopted {
		// A fresh redirector's socket does not defer accepting; a forwarding listener's may.
		_ = r.control(func(fd int) error { return unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, 0) })
	}
	r.b.acceptWG.Add(1)
	go r.serve()
}

// retire lets the requests in flight finish.
func (r *redirectListener) retire() {
	r.b.acceptWG.Add(1)
	go func() {
		defer r.b.acceptWG.Done()
		ctx, cancel := context.WithTimeout(r.b.force, 10*time.Second)
		defer cancel()
		// After handOver, Shutdown's error is that of closing the listener a second time; its
		// requests have finished all the same.
		if err := r.srv.Shutdown(ctx); ctx.Err() != nil || (err != nil && !r.handedOver.Load()) {
			_ = r.srv.Close()
		}
	}()
}

// handOver stops the redirector accepting, before its successor of the other kind starts on
// the socket they share: retire's Shutdown runs on a goroutine of its own, and until it closed
// the listener, http.Server could still take a client that connected after Apply returned and
// answer it as a redirector. Closing this descriptor leaves the socket open (the successor
// holds a duplicate), and Go's Close returns only once no accept is under way on it. The
// requests in flight finish as retire lets them.
func (r *redirectListener) handOver() {
	r.handedOver.Store(true)
	_ = r.lim.Close()
}

// abort closes everything now. http.Server.Close closes only the listeners it serves, so the
// socket of a redirector that never served (its reload failed) is closed here.
func (r *redirectListener) abort() {
	_ = r.srv.Close()
	_ = r.lim.Close()
}

func (r *redirectListener) serve() {
	defer r.b.acceptWG.Done()
	if err := r.srv.Serve(r.lim); err != nil && !errors.Is(err, http.ErrServerClosed) && !r.handedOver.Load() {
		r.b.log.Error("redirector stopped", "listener", r.key.String(), "err", err)
	}
}

// control runs f on the listening socket's descriptor.
func (r *redirectListener) control(f func(fd int) error) error {
	sc, ok := r.ln.(syscall.Conn)
	if !ok {
		return fmt.Errorf("listener %s has no descriptor", r.key)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := raw.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// dup returns a duplicate of the listening socket, for a successor of another kind.
func (r *redirectListener) dup() (int, error) {
	nfd := -1
	err := r.control(func(fd int) error {
		var err error
		nfd, err = unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		return err
	})
	return nfd, err
}

func (r *redirectListener) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	bnd := r.cur.Load()
	st := bnd.svc.stats
	bnd.accepted.accepted.Add(1)
	st.accepted.Add(1)
	client, _ := netip.ParseAddrPort(req.RemoteAddr)
	if !bnd.svc.allowed(client.Addr()) {
		st.drop(DropAccessDenied, 1)
		http.Error(w, "forbidden", http.StatusForbidden)
		return
	}
	loc, err := expandRedirect(bnd.svc.cfg.Redirect, req)
	if err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	http.Redirect(w, req, loc, http.StatusFound)
}

// expandRedirect fills a URL template: %h is the host the request names, without its port
// (the redirect goes to another scheme, whose port is not the one the client used); %s its
// path and query, always an absolute path; %% a percent sign. A request that cannot fill a
// placeholder the template uses is refused, so that nothing a client sends can change the
// host or userinfo the template fixes.
func expandRedirect(template string, req *http.Request) (string, error) {
	var b strings.Builder
	for i := 0; i < len(template); i++ {
		c := template[i]
		if c != '%' || i+1 == len(template) {
			b.WriteByte(c)
			continue
		}
		i++
		switch template[i] {
		case 'h':
			h, err := redirectHost(req.Host)
			if err != nil {
				return "", err
			}
			b.WriteString(h)
		case 's':
			p, err := redirectTarget(req.URL)
			if err != nil {
				return "", err
			}
			b.WriteString(p)
		case '%':
			b.WriteByte('%')
		default:
			b.WriteByte('%')
			b.WriteByte(template[i])
		}
	}
	return b.String(), nil
}

// redirectHost returns the host of a Host header (or of an absolute-form request target, which
// net/http puts in Request.Host) without its port: a name of letters, digits, '-', '.' and
// '_', an IPv4 address, or an IPv6 address in brackets.
func redirectHost(hostport string) (string, error) {
	if hostport == "" {
		return "", errors.New("the request names no host")
	}
	host, port := hostport, ""
	if strings.HasPrefix(hostport, "[") {
		end := strings.IndexByte(hostport, ']')
		if end < 0 {
			return "", fmt.Errorf("host %q: unclosed bracket", hostport)
		}
		host, port = hostport[:end+1], hostport[end+1:]
		a, err := netip.ParseAddr(host[1:end])
		if err != nil || !a.Is6() || a.Zone() != "" {
			return "", fmt.Errorf("host %q: not an IPv6 address", hostport)
		}
	} else {
		if i := strings.IndexByte(hostport, ':'); i >= 0 {
			host, port = hostport[:i], hostport[i:]
		}
		if len(host) == 0 || len(host) > 253 {
			return "", fmt.Errorf("host %q: empty or too long", hostport)
		}
		for i := 0; i < len(host); i++ {
			switch c := host[i]; {
			case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '.', c == '_':
			default:
				return "", fmt.Errorf("host %q: character %q not allowed in a host name", hostport, c)
			}
		}
	}
	if port != "" {
		digits := port[1:]
		if port[0] != ':' || len(digits) > 5 || strings.Trim(digits, "0123456789") != "" {
			return "", fmt.Errorf("host %q: bad port", hostport)
		}
	}
	return host, nil
}

// redirectTarget returns the path and query of a request target: an origin-form target as it
// is, an absolute-form one (GET http://host/p) without its scheme and host. Anything that is
// not an absolute path starting with one "/" is refused: after a host the template fixes, a
// target like "http:.evil.example/p" would otherwise extend that host.
func redirectTarget(u *url.URL) (string, error) {
	if u == nil || u.Opaque != "" {
		return "", errors.New("the request target is not an absolute path")
	}
	p := u.EscapedPath()
	if p == "" && u.Host != "" {
		p = "/" // http://host
	}
	if !strings.HasPrefix(p, "/") || strings.HasPrefix(p, "//") {
		return "", fmt.Errorf("the request target %q is not an absolute path", p)
	}
	if u.RawQuery != "" || u.ForceQuery {
		p += "?" + escapeNonASCII(u.RawQuery)
	}
	return p, nil
}

// escapeNonASCII percent-encodes the bytes of s that a header value should not carry raw (the
// parser has already refused control characters and spaces).
func escapeNonASCII(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 0x80 {
			fmt.Fprintf(&b, "%%%02X", c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

// serveUnavailable answers an HTTP client with a redirect when the service has no server: the
// appliance's "Not Available Redirection". It reads one request within the redirector's
// bounds: the header timeout and a budget of bytes and lines.
func serveUnavailable(c net.Conn, template string) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(httpReadHeaderTimeout))
	req, err := http.ReadRequest(bufio.NewReader(newBudgetConn(c, nil)))
	if err != nil {
		var ne net.Error
		if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !(errors.As(err, &ne) && ne.Timeout()) {
			_, _ = io.WriteString(c, badRequest)
		}
		return
	}
	loc, err := expandRedirect(template, req)
	if err != nil {
		_, _ = io.WriteString(c, badRequest)
		return
	}
	resp := http.Response{
		StatusCode: http.StatusFound,
		ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{"Location": {loc}, "Connection": {"close"}},
		Close:  true,
	}
	_ = resp.Write(c)
}

const badRequest = "HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"

// maxUnavailable bounds the clients served an unavailable_redirect at once, each with a
// goroutine for up to the header timeout; beyond it a client is reset, as without a redirect.
const maxUnavailable = 1024
