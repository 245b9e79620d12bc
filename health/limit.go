package health

import (
	"net"
	"strings"
	"unicode"
	"unicode/utf8"
)

// What a check may read from a real server. A server is trusted to carry traffic, not to
// behave: a broken or hostile one may answer a probe with an endless header line, a huge
// certificate chain or a flood of datagrams, and a check must then fail with a reason rather
// than grow the process that carries all traffic. Every limit is several times what a real
// Lync/Skype for Business or IIS server sends, so that it only ever trips on a server that is
// broken.
const (
	// maxResponseHeaderBytes bounds an HTTP response's status line and headers together. IIS
	// answers a health URL with a few hundred bytes of header; its own default limit for a
	// whole request header (http.sys MaxRequestBytes) is 16 KiB.
	maxResponseHeaderBytes = 64 << 10
	// maxResponseHeaders bounds the header lines of an HTTP response: Apache's default
	// (LimitRequestFields) for a request; IIS sends about ten.
	maxResponseHeaders = 100
	// maxTLSHandshakeBytes bounds what the server sends during a TLS handshake, most of it the
	// certificate chain. A Lync Edge or front-end chain (leaf with its SAN list, one or two
	// intermediates) is 5-15 KiB; the largest public chains are about 40 KiB. Go's TLS stack
	// has its own per-message limits (64 KiB, 256 KiB for the certificate message) but none
	// on the whole handshake; this one is ours.
	maxTLSHandshakeBytes = 192 << 10
	// tlsReadAhead is what the TLS layer may read past what the HTTP layer asked for: one
	// whole record (16 KiB of plaintext plus its header and tag).
	tlsReadAhead = 16<<10 + 512
	// httpReadBuffer is the HTTP reader's buffer, which may read that far past the headers.
	httpReadBuffer = 4 << 10
	// maxSTUNAnswer is the largest STUN datagram a check accepts. A Binding Success Response
	// is about a hundred bytes (XOR-MAPPED-ADDRESS and a few vendor attributes); RFC 5389
	// keeps STUN over UDP within the path MTU, so anything above an Ethernet frame is not a
	// STUN server's answer.
	maxSTUNAnswer = 1500
	// maxSTUNUnusable is how many unusable datagrams (not STUN, another transaction, malformed)
	// one check reads before it gives up. A server answers each request once and a check sends
	// at most a handful of retransmissions, so a real server never comes near it; a flood
	// ends the check at once instead of keeping it reading until its timeout.
	maxSTUNUnusable = 32
	// maxReasonLen bounds a reason built from an error's text, which may quote what the server
	// sent: it goes to every status answer and log line.
	maxReasonLen = 160
)

// limitError is a bound a check exceeded; its text is the reason.
type limitError struct{ reason string }

func (e *limitError) Error() string { return e.reason }

var (
	errResponseHeaderTooLarge = &limitError{"response header too large"}
	errTooManyHeaders         = &limitError{"too many response headers"}
	errTLSHandshakeTooLarge   = &limitError{"TLS handshake too large"}
	errSTUNAnswerTooLarge     = &limitError{"answer too large"}
)

// budgetConn is a connection that fails its reads once a byte budget is spent. It wraps the raw
// connection of every TCP-based check, below TLS and HTTP, so that whatever a layer above does
// with its buffers, the check cannot read more than the budget in total. The budget is set per
// phase (handshake, response header) with the error that names the phase. It is used by one
// goroutine, the check's.
type budgetConn struct {
	net.Conn
	left int64
	err  error
	read int64 // total read, for tests
}

// newBudgetConn wraps c with a budget of n bytes that fails with err.
func newBudgetConn(c net.Conn, n int64, err error) *budgetConn {
	return &budgetConn{Conn: c, left: n, err: err}
}

// limit gives the connection a new budget of n bytes from now, failing with err.
func (c *budgetConn) limit(n int64, err error) { c.left, c.err = n, err }

func (c *budgetConn) Read(p []byte) (int, error) {
	if c.left <= 0 {
		return 0, c.err
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.Conn.Read(p)
	c.left -= int64(n)
	c.read += int64(n)
	return n, err
}

// clip makes an error's text fit a reason: printable, on one line, at most maxReasonLen bytes.
func clip(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			return '?'
		}
		return r
	}, s)
	if len(s) <= maxReasonLen {
		return s
	}
	cut := maxReasonLen
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}
