package health

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/netip"

	"github.com/pairlb/pairlb/config"
)

// tlsChecker passes when a TLS handshake with the server completes. With verify set the server's
// chain must lead to a trusted root and every certificate must be within its validity period;
// the name is checked too when one is configured (SNI, else Host). A server probed by IP address
// alone has its chain and dates checked but no name. Without verify any certificate is accepted:
// the check then proves that the TLS stack answers, which is what a passthrough balancer needs.
// What the server sends during the handshake is bounded by maxTLSHandshakeBytes.
type tlsChecker struct {
	serverName string // sent as SNI and, with verify, checked against the certificate
	verify     bool
	roots      *x509.CertPool // nil: system roots
}

func newTLSChecker(h config.Health, o CheckerOptions) *tlsChecker {
	name := h.SNI
	if name == "" {
		name = h.Host
	}
	return &tlsChecker{serverName: name, verify: h.Verify, roots: o.RootCAs}
}

func (c *tlsChecker) Check(ctx context.Context, addr netip.AddrPort, source netip.Addr) error {
	conn, _, err := c.handshake(ctx, addr, source)
	if err != nil {
		return err
	}
	return conn.Close()
}

// handshake connects and completes a TLS handshake, reading at most maxTLSHandshakeBytes from
// the server; errors are *ProbeError already. It returns the raw connection too, so that the
// caller can give it the budget of what it reads next.
func (c *tlsChecker) handshake(ctx context.Context, addr netip.AddrPort, source netip.Addr) (*tls.Conn, *budgetConn, error) {
	tc, err := dialTCP(ctx, addr, source)
	if err != nil {
		return nil, nil, failed("tcp connect", addr, err)
	}
	raw := newBudgetConn(tc, maxTLSHandshakeBytes, errTLSHandshakeTooLarge)
	conn := tls.Client(raw, c.config())
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, nil, failed("tls handshake", addr, ctxErr(ctx, err))
	}
	return conn, raw, nil
}

func (c *tlsChecker) config() *tls.Config {
	cfg := &tls.Config{
		ServerName: c.serverName,
		// Verification is done in VerifyConnection: it also works when there is no name to
		// check, which the standard verifier refuses.
		InsecureSkipVerify: true, //nolint:gosec // verified below when configured
	}
	if c.verify {
		cfg.VerifyConnection = c.verifyConnection
	}
	return cfg
}

func (c *tlsChecker) verifyConnection(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("no certificate")
	}
	opts := x509.VerifyOptions{
		Roots:         c.roots,
		DNSName:       c.serverName,
		Intermediates: x509.NewCertPool(),
	}
	for _, ic := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(ic)
	}
	_, err := cs.PeerCertificates[0].Verify(opts)
	return err
}
