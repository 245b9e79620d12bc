package lb

import (
	"bytes"
	"errors"
	"log"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// The bounds every HTTP server of pairlb keeps whatever its clients send: the port-80
// redirector here, and the admin API, which cmd/pairlb builds with NewHTTPServer and
// LimitListener. net/http's defaults suit none of them: a megabyte of header per request, no
// limit on connections, and an error log written per connection to the standard logger.
const (
	// httpMaxHeaderBytes bounds the request line and headers of one request (net/http allows
	// 4 KiB more for its own reading): the redirector needs only the request line and Host,
	// and the admin API a bearer token.
	httpMaxHeaderBytes = 8 << 10
	// httpReadHeaderTimeout is how long a client may take to send them.
	httpReadHeaderTimeout = 5 * time.Second
	httpIdleTimeout       = 60 * time.Second
	// httpLogEvery is the least time between two lines of one server's error log.
	httpLogEvery = 10 * time.Second
)

// NewHTTPServer returns a server for h with the bounds above and its error log routed to log,
// at most one line per 10 s (a count of the lines left out goes with the next). name says which
// server the lines are from.
func NewHTTPServer(h http.Handler, log *slog.Logger, name string) *http.Server {
	return &http.Server{
		Handler:           h,
		MaxHeaderBytes:    httpMaxHeaderBytes,
		ReadHeaderTimeout: httpReadHeaderTimeout,
		IdleTimeout:       httpIdleTimeout,
		ErrorLog:          httpErrorLog(log, name),
	}
}

func httpErrorLog(l *slog.Logger, name string) *log.Logger {
	return log.New(&limitedLog{log: l, name: name, now: time.Now}, "", 0)
}

// limitedLog is an http.Server's error log on slog, rate-limited: a client can make net/http
// write a line per request (a query with a semicolon, say), and an accept error repeats for as
// long as descriptors run out.
type limitedLog struct {
	log  *slog.Logger
	name string
	now  func() time.Time // time.Now but in the tests

	mu      sync.Mutex
	next    time.Time
	skipped int
}

func (w *limitedLog) Write(p []byte) (int, error) {
	now := w.now()
	w.mu.Lock()
	if now.Before(w.next) {
		w.skipped++
		w.mu.Unlock()
		return len(p), nil
	}
	skipped := w.skipped
	w.next, w.skipped = now.Add(httpLogEvery), 0
	w.mu.Unlock()
	w.log.Warn("http server", "server", w.name, "err", string(bytes.TrimSpace(p)), "suppressed", skipped)
	return len(p), nil
}

// LimitListener returns a listener that has at most max of ln's connections open at once.
// Beyond that, Accept waits for one to close, so new connections wait in the kernel's accept
// queue, which costs the process nothing, rather than each holding a goroutine and buffers;
// the header timeout frees the places of clients that send nothing.
func LimitListener(ln net.Listener, max int) net.Listener {
	return newLimitListener(ln, max, nil)
}

// limitListener is LimitListener's listener; wrap, when set, wraps each accepted connection.
type limitListener struct {
	net.Listener
	slots chan struct{}
	done  chan struct{}
	once  sync.Once
	wrap  func(net.Conn) net.Conn
	peak  atomic.Int64 // the most connections open at once, for the tests
}

func newLimitListener(ln net.Listener, max int, wrap func(net.Conn) net.Conn) *limitListener {
	return &limitListener{Listener: ln, slots: make(chan struct{}, max), done: make(chan struct{}), wrap: wrap}
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	if n := int64(len(l.slots)); n > l.peak.Load() {
		l.peak.Store(n) // only Accept's goroutine stores
	}
	if l.wrap != nil {
		c = l.wrap(c)
	}
	return &slotConn{Conn: c, release: func() { <-l.slots }}, nil
}

func (l *limitListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// slotConn gives its listener's place back when it closes.
type slotConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *slotConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// CloseWrite passes net/http's half-close on (it sends the FIN before its final wait).
func (c *slotConn) CloseWrite() error { return closeWrite(c.Conn) }

func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// errHeaderBudget ends a connection that sent more than one request's worth of header.
var errHeaderBudget = errors.New("request header too large or too many header lines")

// budgetConn bounds what is read from a connection that carries one request: bytes and lines
// (so header fields), whatever the limits of the HTTP reader above it. Reads past the budget
// fail.
type budgetConn struct {
	net.Conn
	bytes, lines int           // left
	peak         *atomic.Int64 // if set, the most bytes read from one connection, for the tests
}

// Budgets of one request on a connection of the redirector or of serveUnavailable: net/http's
// header limit plus its slack, and a browser's header fields several times over.
const (
	requestBudgetBytes = httpMaxHeaderBytes + 4<<10
	requestBudgetLines = 100
)

func newBudgetConn(c net.Conn, peak *atomic.Int64) *budgetConn {
	return &budgetConn{Conn: c, bytes: requestBudgetBytes, lines: requestBudgetLines, peak: peak}
}

func (c *budgetConn) CloseWrite() error { return closeWrite(c.Conn) }

func (c *budgetConn) Read(p []byte) (int, error) {
	if c.bytes <= 0 || c.lines < 0 {
		return 0, errHeaderBudget
	}
	n, err := c.Conn.Read(p[:min(len(p), c.bytes)])
	c.bytes -= n
	if c.lines -= bytes.Count(p[:n], []byte{'\n'}); c.lines < 0 {
		// Refused now: what this read brought could hold the whole request.
		n, err = 0, errHeaderBudget
	}
	if c.peak != nil {
		read := int64(requestBudgetBytes - c.bytes)
		for old := c.peak.Load(); read > old && !c.peak.CompareAndSwap(old, read); old = c.peak.Load() {
		}
	}
	return n, err
}
