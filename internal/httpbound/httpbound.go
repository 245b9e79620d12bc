// Package httpbound holds the bounds every HTTP server of pairlb keeps whatever its clients
// send: the port-80 redirector of lb and the admin API. net/http's defaults suit neither: a
// megabyte of header per request, no limit on connections, and an error log written per
// connection to the standard logger.
//
// It is not an HTTP framework: a server, a listener that caps its connections, and an error log
// on slog that a client cannot flood. It imports no pairlb package, so that lb and admin can
// both use it without importing each other.
package httpbound

import (
	"bytes"
	"log"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// MaxHeaderBytes bounds the request line and headers of one request (net/http allows
	// 4 KiB more for its own reading): the redirector needs only the request line and Host,
	// and the admin API a bearer token.
	MaxHeaderBytes = 8 << 10
	// ReadHeaderTimeout is how long a client may take to send them.
	ReadHeaderTimeout = 5 * time.Second
	// IdleTimeout is how long a kept-alive connection may wait for its next request.
	IdleTimeout = 60 * time.Second
	// LogEvery is the least time between two lines of one server's error log.
	LogEvery = 10 * time.Second
)

// NewServer returns a server for h with the bounds above and its error log routed to log, at
// most one line per LogEvery (a count of the lines left out goes with the next). name says
// which server the lines are from.
func NewServer(h http.Handler, log *slog.Logger, name string) *http.Server {
	return &http.Server{
		Handler:           h,
		MaxHeaderBytes:    MaxHeaderBytes,
		ReadHeaderTimeout: ReadHeaderTimeout,
		IdleTimeout:       IdleTimeout,
		ErrorLog:          errorLog(log, name),
	}
}

func errorLog(l *slog.Logger, name string) *log.Logger {
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
	w.next, w.skipped = now.Add(LogEvery), 0
	w.mu.Unlock()
	w.log.Warn("http server", "server", w.name, "err", string(bytes.TrimSpace(p)), "suppressed", skipped)
	return len(p), nil
}

// Listener has at most a fixed number of its listener's connections open at once. Beyond
// that, Accept waits for one to close, so new connections wait in the kernel's accept queue,
// which costs the process nothing, rather than each holding a goroutine and buffers; the header
// timeout frees the places of clients that send nothing.
type Listener struct {
	net.Listener
	slots chan struct{}
	done  chan struct{}
	once  sync.Once
	wrap  func(net.Conn) net.Conn
	peak  atomic.Int64
}

// Limit returns a Listener that has at most max of ln's connections open at once. wrap, when
// not nil, wraps each accepted connection (the redirector's read budget).
func Limit(ln net.Listener, max int, wrap func(net.Conn) net.Conn) *Listener {
	return &Listener{Listener: ln, slots: make(chan struct{}, max), done: make(chan struct{}), wrap: wrap}
}

// Accept waits for a place, then for a connection.
func (l *Listener) Accept() (net.Conn, error) {
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

// Close closes the listener and ends an Accept waiting for a place.
func (l *Listener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// Peak is the most connections that were open at once, for the tests.
func (l *Listener) Peak() int64 { return l.peak.Load() }

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
func (c *slotConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
