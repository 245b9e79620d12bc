package lb

import (
	"bytes"
	"errors"
	"net"
	"sync/atomic"

	"github.com/pairlb/pairlb/internal/httpbound"
)

// The redirector's HTTP bounds are httpbound's, which the admin API keeps too; what is lb's own
// is the read budget of a connection that carries one request (the redirector's and
// serveUnavailable's).
const (
	httpMaxHeaderBytes    = httpbound.MaxHeaderBytes
	httpReadHeaderTimeout = httpbound.ReadHeaderTimeout
)

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
