package health

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// tcpChecker passes when a TCP connection to the server completes; it closes it at once.
type tcpChecker struct{}

func (tcpChecker) Check(ctx context.Context, addr netip.AddrPort, source netip.Addr) error {
	c, err := dialTCP(ctx, addr, source)
	if err != nil {
		return failed("tcp connect", addr, err)
	}
	return c.Close()
}

// dialTCP connects to addr, from source when it is valid: the same source address forwarded
// connections use, so a probe takes the path (and passes the filters) real traffic does.
func dialTCP(ctx context.Context, addr netip.AddrPort, source netip.Addr) (net.Conn, error) {
	d := net.Dialer{}
	if source.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(source, 0))
	}
	return d.DialContext(ctx, "tcp", addr.String())
}

// bindConn makes I/O on c end when ctx ends: it sets ctx's deadline on c and, on cancellation,
// a deadline in the past. The returned stop must be called before c is dropped.
func bindConn(ctx context.Context, c net.Conn) (stop func() bool) {
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	return context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
}

// ctxErr prefers ctx's error to err when ctx has ended: an I/O error caused by the deadline
// bindConn set in the past then reads as "timeout" rather than as a local artefact.
func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil && err != nil {
		return fmt.Errorf("%w: %w", cerr, err)
	}
	return err
}
