// Package health decides whether each real server of a virtual service is fit to receive new
// connections. It holds the checkers (TCP connect, HTTP and HTTPS requests, TLS handshake, STUN
// binding over UDP, none), the rise/fall hysteresis that turns single probe results into an
// up/down state, and the Monitor that runs one bounded probe loop per real server and reports
// every transition.
//
// It is not the balancer: it never touches a pool, a listener or a connection. It reports changes
// through Options.OnChange and the daemon package turns them into calls on lb. It does not read the
// config file either: the caller resolves every target (address, port, source address) from a
// config.Config and hands the Monitor a flat list. Metrics are not registered here; OnProbe and
// OnChange are the hooks a collector hangs on.
package health

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/pairlb/pairlb/config"
)

// Checker probes one real server once. Check returns nil when the server passed and otherwise an
// error whose text is a short human reason ("timeout", "connection refused", "status 503"); use
// errors.As with *ProbeError for the operation and the underlying error. A Checker keeps no state
// between calls and is safe for concurrent use; it returns when ctx ends at the latest.
type Checker interface {
	Check(ctx context.Context, addr netip.AddrPort, source netip.Addr) error
}

// CheckerOptions tunes the checkers NewChecker builds.
type CheckerOptions struct {
	// RootCAs verifies certificates of tls and https checks with Verify set. Nil means the
	// system roots; tests pass their own CA.
	RootCAs *x509.CertPool
}

// NewChecker returns the checker for a service's health settings.
func NewChecker(h config.Health, o CheckerOptions) (Checker, error) {
	switch h.Type {
	case config.HealthNone, "":
		return noneChecker{}, nil
	case config.HealthTCP:
		return tcpChecker{}, nil
	case config.HealthHTTP:
		return newHTTPChecker(h, false, o), nil
	case config.HealthHTTPS:
		return newHTTPChecker(h, true, o), nil
	case config.HealthTLS:
		return newTLSChecker(h, o), nil
	case config.HealthSTUN:
		return stunChecker{}, nil
	}
	return nil, fmt.Errorf("health check type %q: unsupported", h.Type)
}

// noneChecker is the check of a service without health checking: every server is up.
type noneChecker struct{}

func (noneChecker) Check(context.Context, netip.AddrPort, netip.Addr) error { return nil }

// ProbeError is a failed check. Its Error is the short Reason alone, suited to a status page and
// a log field; Op and Err keep the context for whoever wants it.
type ProbeError struct {
	Op     string         // "tcp connect", "http GET /", "tls handshake", "stun binding"
	Addr   netip.AddrPort // the probed address
	Reason string         // short human reason
	Err    error          // underlying error, may be nil
}

func (e *ProbeError) Error() string { return e.Reason }

// Unwrap returns the underlying error, so errors.Is(err, syscall.ECONNREFUSED) works.
func (e *ProbeError) Unwrap() error { return e.Err }

// Detail is the long form: operation, address, reason and the underlying error.
func (e *ProbeError) Detail() string {
	s := e.Op + " " + e.Addr.String() + ": " + e.Reason
	if e.Err != nil && e.Err.Error() != e.Reason {
		s += ": " + e.Err.Error()
	}
	return s
}

// failed wraps err from op as a *ProbeError with a reason derived from it.
func failed(op string, addr netip.AddrPort, err error) error {
	var pe *ProbeError
	if errors.As(err, &pe) {
		return err
	}
	return &ProbeError{Op: op, Addr: addr, Reason: reasonOf(err), Err: err}
}

// failedReason reports a failure that has no underlying error, such as an unexpected status.
func failedReason(op string, addr netip.AddrPort, reason string) error {
	return &ProbeError{Op: op, Addr: addr, Reason: reason}
}

// reasonOf turns an error from the network, TLS or x509 into a short reason.
func reasonOf(err error) string {
	var (
		certInvalid x509.CertificateInvalidError
		unknownCA   x509.UnknownAuthorityError
		hostname    x509.HostnameError
		recordHdr   tls.RecordHeaderError
		netErr      net.Error
		limit       *limitError
	)
	switch {
	case err == nil:
		return ""
	case errors.As(err, &limit):
		return limit.reason
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, syscall.EHOSTUNREACH):
		return "host unreachable"
	case errors.Is(err, syscall.ENETUNREACH):
		return "network unreachable"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "source address not available"
	case errors.Is(err, syscall.EPIPE):
		return "broken pipe"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed"
	case errors.As(err, &certInvalid):
		switch certInvalid.Reason {
		case x509.Expired:
			if c := certInvalid.Cert; c != nil && time.Now().Before(c.NotBefore) {
				return "certificate not yet valid"
			}
			return "certificate expired"
		case x509.NameMismatch:
			return "certificate name mismatch"
		case x509.IncompatibleUsage:
			return "certificate not valid for server auth"
		}
		return "certificate invalid"
	case errors.As(err, &unknownCA):
		return "certificate signed by unknown authority"
	case errors.As(err, &hostname):
		return "certificate name mismatch"
	case errors.As(err, &recordHdr):
		return "not a TLS server"
	case errors.As(err, &netErr) && netErr.Timeout():
		return "timeout"
	}
	return clip(err.Error())
}
