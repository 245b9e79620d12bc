package lb

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"
)

// The forwarding plane logs on paths that run once per connection or per datagram only through
// a limiter: at the descriptor limit, or with a real server refusing every connection, each
// event would otherwise write its line (three per refused connection, two per UDP datagram:
// 1.2 MB of log for 15,000 datagrams), and the log itself becomes the outage. Each cause of
// each virtual service writes at most one line per second; the lines held back are counted,
// and the next line of that cause says how many ("suppressed"), or, if the cause has gone
// quiet, the balancer's housekeeping does. The counts, not the lines, are the record: every
// such event is also counted in a metric.

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

// logCauses are the message and level of each cause.
var logCauses = [numLogCauses]struct {
	msg   string
	level slog.Level
}{
	logAcceptFailed:      {"accept failed", slog.LevelWarn},
	logDialFailed:        {"dial failed", slog.LevelWarn},
	logSorryDialFailed:   {"dial to sorry server failed", slog.LevelWarn},
	logConnDropped:       {"connection dropped", slog.LevelWarn},
	logUDPSessionDropped: {"udp session dropped", slog.LevelWarn},
	logUDPReadFailed:     {"udp read failed", slog.LevelWarn},
	logUDPSendFailed:     {"udp send failed", slog.LevelDebug},
}

func (c logCause) String() string { return logCauses[c].msg }

// logEvery is the shortest interval between two lines of one cause of one service.
const logEvery = int64(time.Second)

// logLimiter is the state of every cause of one virtual service. It is safe for concurrent use
// and never blocks.
type logLimiter struct {
	causes [numLogCauses]logSlot
}

type logSlot struct {
	last       atomic.Int64 // unix ns of the last line written; 0 for none yet
	suppressed atomic.Uint64
}

// allow reports whether a line of cause c may be written at now, and how many lines of c were
// held back since the last one written. The caller logs only when ok, so that a suppressed
// event costs two atomic operations and no allocation.
func (l *logLimiter) allow(c logCause, now int64) (suppressed uint64, ok bool) {
	s := &l.causes[c]
	last := s.last.Load()
	if (last != 0 && now-last < logEvery) || !s.last.CompareAndSwap(last, now) {
		s.suppressed.Add(1)
		return 0, false
	}
	return s.suppressed.Swap(0), true
}

// write writes a line of cause c, allowed by allow, with the count of lines held back before
// it. Callers call it only when allow said ok: its variadic attrs cost an allocation.
func (l *logLimiter) write(log *slog.Logger, c logCause, suppressed uint64, attrs ...any) {
	if suppressed > 0 {
		attrs = append(attrs, "suppressed", suppressed)
	}
	log.Log(context.Background(), logCauses[c].level, logCauses[c].msg, attrs...)
}

// flush writes, for each cause with lines held back and none written for logEvery, a line
// saying how many, so that the count of a burst that ended is not lost.
func (l *logLimiter) flush(log *slog.Logger, now int64, attrs ...any) {
	for c := range numLogCauses {
		s := &l.causes[c]
		if s.suppressed.Load() == 0 || now-s.last.Load() < logEvery {
			continue
		}
		if n := s.suppressed.Swap(0); n > 0 {
			log.Log(context.Background(), logCauses[c].level, logCauses[c].msg, append(attrs, "suppressed", n)...)
		}
	}
}
