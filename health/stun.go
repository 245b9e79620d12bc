package health

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"

	"github.com/pairlb/pairlb/config"
)

// STUN (RFC 5389) message constants the binding check needs.
const (
	stunHeaderLen      = 20
	stunMagicCookie    = 0x2112A442
	stunBindingRequest = 0x0001
	stunBindingSuccess = 0x0101
	stunBindingError   = 0x0111
	stunAttrErrorCode  = 0x0009
	stunFirstRTO       = 500 * time.Millisecond // RFC 5389 section 7.2.1
)

// stunChecker sends a STUN Binding Request over UDP from a connected socket and passes only on a
// Binding Success Response carrying the request's transaction id. It retransmits with the RFC's
// doubling RTO (500 ms, 1 s, 2 s, ...) until the probe's timeout.
//
// Failures: an ICMP port unreachable ends the check at once ("port unreachable"); a Binding Error
// Response with our transaction id ends it at once ("stun error 4xx ..."). Anything else that
// arrives (garbage, a response to another transaction) does not end the check, since a valid
// answer may still follow, but it becomes the reason when none does; silence is "timeout".
// Reads are bounded: a datagram larger than maxSTUNAnswer ends the check ("answer too large")
// rather than being judged cut short, and maxSTUNUnusable unusable datagrams end it too, so a
// flood cannot keep a check reading until its timeout.
type stunChecker struct{}

func (stunChecker) Check(ctx context.Context, addr netip.AddrPort, source netip.Addr) error {
	const op = "stun binding"
	d := net.Dialer{}
	if source.IsValid() {
		d.LocalAddr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(source, 0))
	}
	c, err := d.DialContext(ctx, "udp", addr.String())
	if err != nil {
		return failed(op, addr, err)
	}
	defer c.Close()
	conn, ok := c.(*net.UDPConn)
	if !ok {
		return failedReason(op, addr, fmt.Sprintf("not a UDP socket: %T", c))
	}

	var tx [12]byte
	if _, err := rand.Read(tx[:]); err != nil {
		return failed(op, addr, fmt.Errorf("transaction id: %w", err))
	}
	req := stunBindingRequestMsg(tx)

	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(config.DefaultHealthTimeout)
	}
	// Read deadlines move with each retransmission; cancellation must still win, so it is
	// recorded under mu and every later deadline change checks it.
	var (
		mu       sync.Mutex
		canceled bool
	)
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		canceled = true
		_ = conn.SetDeadline(time.Unix(1, 0))
		mu.Unlock()
	})
	defer stop()
	setReadDeadline := func(t time.Time) bool {
		mu.Lock()
		defer mu.Unlock()
		if canceled {
			return false
		}
		_ = conn.SetReadDeadline(t)
		return true
	}

	var (
		bad      string // reason from the last unusable datagram
		unusable int    // datagrams read that were not our answer
		// A datagram larger than the buffer comes back cut, with MSG_TRUNC: never judged.
		buf    = make([]byte, maxSTUNAnswer)
		rto    = stunFirstRTO
		sendAt = time.Now()
	)
	for {
		now := time.Now()
		if !now.Before(deadline) {
			break
		}
		if !now.Before(sendAt) {
			if _, err := conn.Write(req); err != nil {
				return stunFailed(addr, ctxErr(ctx, err))
			}
			sendAt = now.Add(rto)
			rto *= 2
		}
		if !setReadDeadline(earliest(deadline, sendAt)) {
			return failed(op, addr, ctx.Err())
		}
		n, _, flags, _, err := conn.ReadMsgUDP(buf, nil)
		if err == nil && flags&syscall.MSG_TRUNC != 0 {
			return failed(op, addr, errSTUNAnswerTooLarge)
		}
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				return stunFailed(addr, ctxErr(ctx, err))
			}
			if ctx.Err() != nil {
				break
			}
			continue // time to retransmit, or the overall deadline checked above
		}
		switch kind, reason := parseSTUNResponse(buf[:n], tx); kind {
		case stunOK:
			return nil
		case stunFatal:
			return failedReason(op, addr, reason)
		default:
			bad = reason
			if unusable++; unusable >= maxSTUNUnusable {
				return failedReason(op, addr, fmt.Sprintf("%d unusable answers: %s", unusable, bad))
			}
		}
	}
	if bad != "" {
		return failedReason(op, addr, bad)
	}
	if err := ctx.Err(); err != nil {
		return failed(op, addr, err)
	}
	return failed(op, addr, context.DeadlineExceeded)
}

// stunFailed names an ICMP port unreachable (ECONNREFUSED on a connected UDP socket) for what it
// is; other errors get the usual reasons.
func stunFailed(addr netip.AddrPort, err error) error {
	if errors.Is(err, syscall.ECONNREFUSED) {
		return &ProbeError{Op: "stun binding", Addr: addr, Reason: "port unreachable", Err: err}
	}
	return failed("stun binding", addr, err)
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// stunBindingRequestMsg is a Binding Request without attributes.
func stunBindingRequestMsg(tx [12]byte) []byte {
	b := make([]byte, stunHeaderLen)
	binary.BigEndian.PutUint16(b[0:2], stunBindingRequest)
	binary.BigEndian.PutUint16(b[2:4], 0)
	binary.BigEndian.PutUint32(b[4:8], stunMagicCookie)
	copy(b[8:20], tx[:])
	return b
}

type stunVerdict int

const (
	stunIgnore stunVerdict = iota // unusable; keep waiting
	stunOK                        // Binding Success Response to our request
	stunFatal                     // a definite negative answer to our request
)

// parseSTUNResponse judges one datagram received for the transaction tx.
func parseSTUNResponse(b []byte, tx [12]byte) (stunVerdict, string) {
	if len(b) < stunHeaderLen || b[0]&0xC0 != 0 ||
		binary.BigEndian.Uint32(b[4:8]) != stunMagicCookie {
		return stunIgnore, "not a STUN response"
	}
	length := int(binary.BigEndian.Uint16(b[2:4]))
	if length%4 != 0 || length != len(b)-stunHeaderLen {
		return stunIgnore, "malformed STUN response"
	}
	if [12]byte(b[8:20]) != tx {
		return stunIgnore, "wrong transaction id"
	}
	attrs, ok := stunAttributes(b[stunHeaderLen:])
	if !ok {
		return stunIgnore, "malformed STUN attributes"
	}
	switch typ := binary.BigEndian.Uint16(b[0:2]); typ {
	case stunBindingSuccess:
		return stunOK, ""
	case stunBindingError:
		return stunFatal, "stun error" + stunErrorCode(attrs[stunAttrErrorCode])
	default:
		return stunIgnore, fmt.Sprintf("unexpected STUN message type 0x%04x", typ)
	}
}

// stunAttributes walks the TLV attributes; it reports false if they do not tile the body.
func stunAttributes(b []byte) (map[uint16][]byte, bool) {
	attrs := map[uint16][]byte{}
	for len(b) > 0 {
		if len(b) < 4 {
			return nil, false
		}
		typ := binary.BigEndian.Uint16(b[0:2])
		n := int(binary.BigEndian.Uint16(b[2:4]))
		padded := (n + 3) &^ 3
		if len(b) < 4+padded {
			return nil, false
		}
		if _, dup := attrs[typ]; !dup {
			attrs[typ] = b[4 : 4+n]
		}
		b = b[4+padded:]
	}
	return attrs, true
}

// stunErrorCode renders an ERROR-CODE attribute value as " 420 Unknown Attribute".
func stunErrorCode(v []byte) string {
	if len(v) < 4 {
		return ""
	}
	code := int(v[2]&0x07)*100 + int(v[3])
	s := fmt.Sprintf(" %d", code)
	if phrase := v[4:]; len(phrase) > 0 {
		if len(phrase) > 64 {
			phrase = phrase[:64]
		}
		s += " " + strings.Map(func(r rune) rune {
			if !unicode.IsPrint(r) {
				return -1
			}
			return r
		}, string(phrase))
	}
	return s
}
