package health

import (
	"crypto/tls"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pairlb/pairlb/config"
)

// startTLS serves TLS handshakes with cert on loopback and then waits for the client to close.
func startTLS(t *testing.T, cert tls.Certificate) netip.AddrPort {
	t.Helper()
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	srv := startTCP(t, "127.0.0.1:0", func(c net.Conn) {
		tc := tls.Server(c, cfg)
		_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
		if tc.Handshake() == nil {
			holdUntilClosed(tc)
		}
	})
	return srv.Addr(t)
}

func TestTLSCheck(t *testing.T) {
	pki := newTestPKI(t)
	valid := startTLS(t, pki.valid)
	expired := startTLS(t, pki.expired)
	selfSigned := startTLS(t, pki.other)
	plain := startTCP(t, "127.0.0.1:0", func(c net.Conn) {
		_, _ = c.Write([]byte("220 not tls at all\r\n\r\n"))
		holdUntilClosed(c)
	}).Addr(t)
	silent := startTCP(t, "127.0.0.1:0", holdUntilClosed).Addr(t)

	tests := []struct {
		name string
		addr netip.AddrPort
		hc   config.Health
		want string
	}{
		{"valid, no verify", valid, config.Health{}, ""},
		{"valid, verify by host name", valid, config.Health{Host: "pool.example.test", Verify: true}, ""},
		{"valid, verify by sni", valid, config.Health{SNI: "pool.example.test", Verify: true}, ""},
		{"valid, verify without a name checks chain and dates", valid, config.Health{Verify: true}, ""},
		{"valid, verify wrong name", valid, config.Health{Host: "edge.example.test", Verify: true}, "certificate name mismatch"},
		{"expired, no verify", expired, config.Health{}, ""},
		{"expired, verify", expired, config.Health{Host: "pool.example.test", Verify: true}, "certificate expired"},
		{"expired, verify without name", expired, config.Health{Verify: true}, "certificate expired"},
		{"unknown CA, verify", selfSigned, config.Health{Verify: true}, "certificate signed by unknown authority"},
		{"unknown CA, no verify", selfSigned, config.Health{}, ""},
		{"not a TLS server", plain, config.Health{}, "not a TLS server"},
		{"no answer", silent, config.Health{}, "timeout"},
		{"closed port", closedPort(t), config.Health{}, "connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.hc.Type = config.HealthTLS
			c, err := NewChecker(tt.hc, CheckerOptions{RootCAs: pki.pool})
			if err != nil {
				t.Fatal(err)
			}
			got, err := check(t, c, tt.addr, netip.Addr{}, 300*time.Millisecond)
			if got != tt.want {
				t.Errorf("reason %q, want %q (detail: %v)", got, tt.want, detailOf(err))
			}
		})
	}
}

func TestTLSExpiredReasonMentionsExpired(t *testing.T) {
	pki := newTestPKI(t)
	c, _ := NewChecker(config.Health{Type: config.HealthTLS, Verify: true}, CheckerOptions{RootCAs: pki.pool})
	got, err := check(t, c, startTLS(t, pki.expired), netip.Addr{}, 2*time.Second)
	if !strings.Contains(got, "expired") {
		t.Fatalf("reason %q does not mention expired", got)
	}
	if d := detailOf(err); !strings.Contains(d, "tls handshake") {
		t.Errorf("detail %q does not name the operation", d)
	}
}

func detailOf(err error) string {
	if err == nil {
		return ""
	}
	return detail(err)
}
