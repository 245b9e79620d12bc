package health

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"

	"github.com/pairlb/pairlb/config"
)

// httpChecker sends one request on a fresh connection (plain or TLS) and passes when the status
// is expected: one of Expect, or 200-399 when Expect is empty. The request carries the configured
// Host header (the probed address when none) and Connection: close. It is written and read by
// hand on the connection so that nothing outlives the check: no transport, no idle pool. What it
// reads is bounded (see limit.go): the status line and headers, the TLS handshake for https;
// the body is never read.
type httpChecker struct {
	tls    *tlsChecker // nil: plain http
	method string
	path   string
	host   string
	expect []int
}

func newHTTPChecker(h config.Health, secure bool, o CheckerOptions) *httpChecker {
	c := &httpChecker{method: h.Method, path: h.Path, host: h.Host, expect: slices.Clone(h.Expect)}
	if c.method == "" {
		c.method = http.MethodGet
	}
	if c.path == "" {
		c.path = "/"
	}
	if secure {
		c.tls = newTLSChecker(h, o)
	}
	return c
}

func (c *httpChecker) Check(ctx context.Context, addr netip.AddrPort, source netip.Addr) error {
	scheme := "http"
	if c.tls != nil {
		scheme = "https"
	}
	op := scheme + " " + c.method + " " + c.path
	req, err := http.NewRequestWithContext(ctx, c.method, scheme+"://"+addr.String()+c.path, nil)
	if err != nil {
		return failed(op, addr, err)
	}
	req.Host = c.host
	req.Close = true
	req.Header.Set("User-Agent", "pairlb-health")

	var (
		conn net.Conn
		raw  *budgetConn
	)
	if c.tls != nil {
		tc, bc, err := c.tls.handshake(ctx, addr, source)
		if err != nil {
			return err
		}
		// From here on the raw connection carries the response header, in TLS records.
		bc.limit(maxResponseHeaderBytes+httpReadBuffer+tlsReadAhead, errResponseHeaderTooLarge)
		conn, raw = tc, bc
	} else {
		tc, err := dialTCP(ctx, addr, source)
		if err != nil {
			return failed("tcp connect", addr, err)
		}
		raw = newBudgetConn(tc, maxResponseHeaderBytes+httpReadBuffer, errResponseHeaderTooLarge)
		conn = raw
	}
	defer conn.Close()
	stop := bindConn(ctx, raw.Conn)
	defer stop()

	if err := req.Write(conn); err != nil {
		return failed(op, addr, ctxErr(ctx, err))
	}
	head, err := readResponseHead(bufio.NewReaderSize(conn, httpReadBuffer))
	if err != nil {
		return failed(op, addr, ctxErr(ctx, err))
	}
	// The head is complete and bounded: net/http parses it from memory. The body is not read:
	// the status decides, and closing conn releases everything.
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(head)), req)
	if err != nil {
		return failed(op, addr, err)
	}
	if !c.expected(resp.StatusCode) {
		return failedReason(op, addr, "status "+strconv.Itoa(resp.StatusCode))
	}
	return nil
}

// readResponseHead reads a response's status line and headers, up to and including the empty
// line that ends them, within maxResponseHeaderBytes and maxResponseHeaders. Memory is bounded
// by the first limit whatever the server sends: an endless line is cut at the limit, not
// gathered first.
func readResponseHead(r *bufio.Reader) ([]byte, error) {
	var (
		head    []byte
		lines   int
		partial bool // the last piece read did not end its line
	)
	for {
		piece, err := r.ReadSlice('\n')
		if len(head)+len(piece) > maxResponseHeaderBytes {
			return nil, errResponseHeaderTooLarge
		}
		head = append(head, piece...)
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			partial = true
			continue
		case err != nil:
			return nil, err
		}
		if !partial && (len(piece) == 1 || len(piece) == 2 && piece[0] == '\r') && lines > 0 {
			return head, nil // the empty line after the status line and headers
		}
		partial = false
		lines++
		if lines > 1+maxResponseHeaders {
			return nil, errTooManyHeaders
		}
	}
}

func (c *httpChecker) expected(code int) bool {
	if len(c.expect) == 0 {
		return code >= 200 && code <= 399
	}
	return slices.Contains(c.expect, code)
}
