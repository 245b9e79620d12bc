package lb

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The forwarding plane logs on paths that run once per connection or per datagram only through
// a limiter: at the descriptor limit, or with a real server refusing every connection, each
// event would otherwise write its line (three per refused connection, two per UDP datagram:
// 1.2 MB of log for 15,000 datagrams), and the log itself becomes the outage.
//
// A cause is a kind of event (logCause), the server or listener it is about and its errno: "dial
// failed to 10.11.1.12:5061: connection refused" is one cause, the same refusal by another
// server another. The first event of a cause is written in full; those that follow within
// logWindow are only counted, and once the window has passed the balancer's housekeeping
// writes one summary line of them ("dial failed 59 times in the last 10 s to
// 10.11.1.12:5061: connection refused", with count and suppressed attributes). A cause that
// keeps failing writes one summary per window; one that went quiet for a whole window is
// forgotten, and its next event is written in full again. Each kind of event of each service
// tracks at most logCausesPerKind causes at once: the events of any more share one "other"
// bucket, so the limiter's memory is fixed whatever the network does. The counts, not the
// lines, are the record: every such event is also counted in a metric.

// logCause is a kind of event logged on a per-connection or per-datagram path. The set is
// fixed, so the limiter's memory is too.
type logCause uint8

const (
	logAcceptFailed logCause = iota
	logDialFailed
	logSorryDialFailed
	logConnDropped
	logUDPSessionDropped
	logUDPReadFailed
	logUDPSendFailed
	numLogCauses
)

// logCauses are the message and level of each kind, and the attribute and preposition that
// name the subject of its events in a summary ("" for a kind about the service as a whole).
var logCauses = [numLogCauses]struct {
	msg     string
	level   slog.Level
	subject string
	prep    string
}{
	logAcceptFailed:      {"accept failed", slog.LevelWarn, "listener", "on"},
	logDialFailed:        {"dial failed", slog.LevelWarn, "real_server", "to"},
	logSorryDialFailed:   {"dial to sorry server failed", slog.LevelWarn, "sorry_server", "to"},
	logConnDropped:       {"connection dropped", slog.LevelWarn, "", ""},
	logUDPSessionDropped: {"udp session dropped", slog.LevelWarn, "", ""},
	logUDPReadFailed:     {"udp read failed", slog.LevelWarn, "listener", "on"},
	logUDPSendFailed:     {"udp send failed", slog.LevelDebug, "", ""},
}

func (c logCause) String() string { return logCauses[c].msg }

// logWindow is the period a summary covers: at most one line per cause per window.
const logWindow = int64(10 * time.Second)

// logCausesPerKind bounds the causes of one kind tracked at once in one service: a Lync pool
// has a handful of Front Ends, and a failure of more at once than this is summarised together.
const logCausesPerKind = 8

// logLimiter is the state of every cause of one virtual service. It is safe for concurrent
// use; its lock is held for a scan of a few slots, never while writing.
type logLimiter struct {
	mu    sync.Mutex
	kinds [numLogCauses]logKind
}

// logKind is the causes of one kind: fixed slots, and the other bucket after them.
type logKind struct {
	slots [logCausesPerKind + 1]logSlot
}

const otherSlot = logCausesPerKind

// logSlot is one cause being tracked.
type logSlot struct {
	used    bool
	other   bool           // the bucket of causes beyond the slots
	at      netip.AddrPort // the server or listener; zero for the service
	errno   unix.Errno     // 0 for an error that carries none: such errors share a cause
	label   string         // the subject's name in the attribute (a real server's key), or "" for at
	err     error          // the first error of the window, for the summary
	start   int64          // unix ns the window began
	count   uint64         // events in the window
	written uint64         // of them, written in full (0 or 1)
}

// errnoOf is the errno inside err, found without allocating; 0 for none.
func errnoOf(err error) unix.Errno {
	for e := err; e != nil; e = errors.Unwrap(e) {
		if n, ok := e.(unix.Errno); ok {
			return n
		}
	}
	return 0
}

// allow counts an event of kind c about at (label names it, "" for at itself) with err at
// now, and reports whether it is the first of its cause in its window, to be written in full
// (write). A counted event costs a lock and a scan of a few slots, and no allocation.
func (l *logLimiter) allow(c logCause, at netip.AddrPort, label string, err error, now int64) bool {
	errno := errnoOf(err)
	k := &l.kinds[c]
	l.mu.Lock()
	defer l.mu.Unlock()
	free := -1
	for i := range logCausesPerKind {
		s := &k.slots[i]
		if !s.used {
			if free < 0 {
				free = i
			}
			continue
		}
		if s.at == at && s.errno == errno && s.label == label {
			s.count++
			return false
		}
	}
	if free < 0 {
		if s := &k.slots[otherSlot]; s.used {
			s.count++
			return false
		}
		k.slots[otherSlot] = logSlot{used: true, other: true, err: err, start: now, count: 1, written: 1}
		return true
	}
	k.slots[free] = logSlot{used: true, at: at, errno: errno, label: label, err: err, start: now, count: 1, written: 1}
	return true
}

// write writes an event of kind c that allow let through. Callers call it only then: its
// variadic attrs cost an allocation.
func (l *logLimiter) write(log *slog.Logger, c logCause, attrs ...any) {
	log.Log(context.Background(), logCauses[c].level, logCauses[c].msg, attrs...)
}

// flush writes, for each cause whose window has passed, one summary of the events held back
// in it, and forgets the causes that had no event held back in a whole window.
func (l *logLimiter) flush(log *slog.Logger, now int64, attrs ...any) {
	type summary struct {
		c    logCause
		slot logSlot
	}
	var due []summary
	l.mu.Lock()
	for c := range numLogCauses {
		for i := range l.kinds[c].slots {
			s := &l.kinds[c].slots[i]
			if !s.used || now-s.start < logWindow {
				continue
			}
			if s.count == s.written {
				*s = logSlot{} // nothing held back for a whole window: forgotten
				continue
			}
			due = append(due, summary{c, *s})
			// The cause is still failing: the next window is counted from here, with no line
			// in full, so that a flood writes one summary per window.
			s.start, s.count, s.written = now, 0, 0
		}
	}
	l.mu.Unlock()
	for _, d := range due {
		d.slot.summarise(log, d.c, time.Duration(now-d.slot.start), attrs)
	}
}

// summarise writes the summary of s's window of kind c, which lasted d.
func (s *logSlot) summarise(log *slog.Logger, c logCause, d time.Duration, attrs []any) {
	kind := logCauses[c]
	secs := d.Round(time.Second) / time.Second
	msg := fmt.Sprintf("%s %d times in the last %d s", kind.msg, s.count, secs)
	out := append([]any{}, attrs...)
	switch {
	case s.other:
		msg += fmt.Sprintf(" (more than %d causes at once), the first: %v", logCausesPerKind, s.err)
		if kind.subject != "" {
			out = append(out, kind.subject, "other")
		}
	case kind.subject != "":
		label := s.label
		if label == "" {
			label = s.at.String()
		}
		msg += fmt.Sprintf(" %s %s: %s", kind.prep, s.at, errText(s.errno, s.err))
		out = append(out, kind.subject, label)
	default:
		msg += ": " + errText(s.errno, s.err)
	}
	out = append(out, "event", kind.msg, "err", s.err, "count", s.count, "suppressed", s.count-s.written, "window", d.Round(time.Second))
	log.Log(context.Background(), kind.level, msg, out...)
}

// errText is the short form of an error in a summary: the errno's text ("connection refused")
// where there is one, since the subject is named already.
func errText(errno unix.Errno, err error) string {
	if errno != 0 {
		return errno.Error()
	}
	return fmt.Sprint(err)
}
