package health

import (
	"bufio"
	"context"
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
// hand on the connection so that nothing outlives the check: no transport, no idle pool.
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

	var conn net.Conn
	if c.tls != nil {
		tc, err := c.tls.handshake(ctx, addr, source)
		if err != nil {
			return err
		}
		conn = tc
	} else {
		conn, err = dialTCP(ctx, addr, source)
		if err != nil {
			return failed("tcp connect", addr, err)
		}
	}
	defer conn.Close()
	stop := bindConn(ctx, conn)
	defer stop()

	if err := req.Write(conn); err != nil {
		return failed(op, addr, ctxErr(ctx, err))
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return failed(op, addr, ctxErr(ctx, err))
	}
	// The body is not read: the status decides, and closing conn releases everything. (Closing
	// resp.Body could drain it, and a server that stalls mid-body would then delay the result.)
	if !c.expected(resp.StatusCode) {
		return failedReason(op, addr, "status "+strconv.Itoa(resp.StatusCode))
	}
	return nil
}

func (c *httpChecker) expected(code int) bool {
	if len(c.expect) == 0 {
		return code >= 200 && code <= 399
	}
	return slices.Contains(c.expect, code)
}
