package lb

import (
	"bytes"
	"io"
	"log/slog"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pairlb/pairlb/config"
)

// The connection log is one line per TCP connection and per UDP session when it ends: the
// layer-4 form of HAProxy's tcplog (global.connection_log). The loops never format or write a
// line. When a connection ends, its loop hands a fixed-size record (addresses as netip values,
// the service's name as a pointer to the name its configuration already holds) to a bounded
// queue without waiting, and one goroutine of Run formats the records and writes them in
// batches. When the queue is full the record is dropped and counted: a slow disk or a stalled
// syslog costs lines, never forwarding.

// endReason says how a connection or UDP session ended. The set is fixed and documented in the
// README, so that a line can be matched on it and a metric could be labelled by it.
type endReason uint8

const (
	endNone         endReason = iota // not ended
	endClientClosed                  // both sides closed, the client first
	endServerClosed                  // both sides closed, the server first
	endIdleTimeout                   // quiet for the service's idle timeout (UDP: its udp idle timeout)
	endClientReset                   // the client's socket failed: a reset, or keepalive found the client gone
	endServerReset                   // the server's socket failed: a reset, keepalive, or an ICMP error on a UDP session
	endDialFailed                    // every destination tried (servers, sorry server) failed to connect
	endAccessDenied                  // the access lists refuse the client (UDP: after a reload changed them)
	endNoServer                      // no real server available and no sorry server
	endDrainTimeout                  // still open when the drain deadline of a stop passed
	endLoopRefused                   // the connection came from the balancer itself (the loop guard)
	endServerDown                    // close_on_down: health marked the server down
	endMoved                         // UDP: the session moved to another server (its server down, disabled or removed)
	endShutdown                      // UDP: quiet for a second while the box stops
	endLocalError                    // the box could not carry it (the epoll set refused the socket)
	numEndReasons
)

var endReasonNames = [numEndReasons]string{
	"", "client_closed", "server_closed", "idle_timeout", "client_reset", "server_reset", "dial_failed",
	"access_denied", "no_server", "drain_timeout", "loop_refused", "server_down", "moved", "shutdown",
	"local_error",
}

func (r endReason) String() string { return endReasonNames[r] }

// resetBy is the reason for a connection whose socket on side failed.
func resetBy(side int) endReason {
	if side == sideClient {
		return endClientReset
	}
	return endServerReset
}

// connRecord is what a loop hands over about a connection that ended: values and pointers to
// what exists anyway, so that handing it over allocates nothing.
type connRecord struct {
	svc        *string // the virtual service's name, in its configuration
	start, end int64   // unix ns
	client     netip.AddrPort
	server     netip.AddrPort // the real or sorry server connected or last tried; invalid for none
	in, out    uint64         // bytes client to server, server to client
	port       uint16         // the listening port
	udp        bool
	reason     endReason
}

// Bounds of the connection log. The queue holds about 2 MiB of records: at 50,000 connections
// a second, a third of a second of a writer that stalls.
const (
	connLogQueue = 16384
	connLogBatch = 256 // records formatted into one write
	// connLogLinger is how long the writer waits, after the first record of a quiet spell,
	// for others to join it in one write: lines appear at most this late.
	connLogLinger = 10 * time.Millisecond
	// connLogWarnEvery is the shortest interval between two log lines about failed writes.
	connLogWarnEvery = int64(time.Minute)
)

// Why lines were lost, the labels of pairlb_connection_log_dropped_total.
const (
	lostQueueFull = iota
	lostWriteFailed
	numLostCauses
)

var lostCauseNames = [numLostCauses]string{"queue_full", "write_failed"}

// Where the writer goroutine is in its life.
const (
	writerIdle    = iota // Run has not started it
	writerRunning        // Run's goroutine writes
	writerDone           // it has returned: nothing will write again
)

// connLog is the balancer's connection log: the queue the loops fill and the sink the writer
// empties it into.
type connLog struct {
	on      atomic.Bool // the loops hand records over only while it is set
	q       chan connRecord
	kick    chan struct{} // capacity 1: the sink changed
	written atomic.Uint64
	lost    [numLostCauses]atomic.Uint64

	mu    sync.Mutex // orders the fields below between SetConnectionLog and the writer
	state int
	w     io.Writer // nil: off
	json  bool
	old   []io.Writer // sinks replaced, for the writer to close once it writes to them no more

	stopping, done chan struct{} // made by start: the writer's stop signal and its end

	// Only the writer goroutine touches these.
	buf        []byte
	warned     int64  // unix ns of the last line about a failed write
	failedLost uint64 // lines lost to failed writes since that line
}

// queueSize is connLogQueue; a variable for the tests.
var queueSize = connLogQueue

// SetConnectionLog makes the balancer write a line for every TCP connection and UDP session
// that ends from now on to w, in format (config.ConnLogText or config.ConnLogJSON); a nil w
// turns the log off. Each Write is given whole lines, one or more. The balancer owns w from then
// on: it closes it, if it is an io.Closer, once a later call replaces it and the writer no
// longer writes to it, or when Run ends (so pass os.Stderr wrapped in a type without Close).
// Lines are written by a goroutine of Run, never by the event loops, which drop a line (counted)
// rather than wait for a slow w. Call it from any goroutine.
func (b *Balancer) SetConnectionLog(w io.Writer, format config.ConnLogFormat) {
	l := &b.clog
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.state == writerDone {
		closeSink(w) // Run has ended: nothing would ever write to it
		return
	}
	if l.w != nil {
		l.old = append(l.old, l.w)
	}
	l.w, l.json = w, format == config.ConnLogJSON
	if w != nil && l.q == nil {
		l.q = make(chan connRecord, queueSize) // before on is set: a loop that sees on sees q
	}
	l.on.Store(w != nil)
	if l.state == writerIdle {
		for _, o := range l.old {
			closeSink(o)
		}
		l.old = nil
	}
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// used reports whether the log has been on: its metrics exist from then on.
func (l *connLog) used() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.q != nil
}

func closeSink(w io.Writer) {
	if c, ok := w.(io.Closer); ok {
		_ = c.Close()
	}
}

// put hands r to the writer, or counts it lost when the queue is full. It never waits: the
// loops call it, after checking on.
func (l *connLog) put(r *connRecord) {
	select {
	case l.q <- *r:
	default:
		l.lost[lostQueueFull].Add(1)
	}
}

// logRefused records a client refused at admission (loop guard, access lists) on lp.
func (b *Balancer) logRefused(lp *loop, bnd *binding, client netip.AddrPort, why endReason) {
	if b.clog.on.Load() {
		b.clog.put(&connRecord{svc: &bnd.svc.cfg.Name, start: lp.now, end: lp.now, client: client, port: bnd.port.Listen, reason: why})
	}
}

// start starts the writer; Run calls it once, and stop when the loops have stopped.
func (l *connLog) start(log *slog.Logger) {
	l.stopping, l.done = make(chan struct{}), make(chan struct{})
	l.mu.Lock()
	l.state = writerRunning
	l.mu.Unlock()
	go func() {
		defer close(l.done)
		l.run(l.stopping, log)
	}()
}

// stop has the writer write what is queued, close its sink and return, and waits for it.
func (l *connLog) stop() {
	close(l.stopping)
	<-l.done
}

// run is the writer: it takes the records off the queue, a batch at a time, formats and writes
// them, and closes the sinks replaced. When stop is closed (the loops have stopped, so nothing
// is added any more) it writes what is queued, closes the sink and returns.
func (l *connLog) run(stop <-chan struct{}, log *slog.Logger) {
	batch := make([]connRecord, 0, connLogBatch)
	linger := time.NewTimer(connLogLinger)
	linger.Stop()
	backlog := false
	for {
		l.mu.Lock()
		q := l.q // nil until the log is first turned on: a nil channel never delivers
		l.mu.Unlock()
		select {
		case r := <-q:
			batch = append(batch, r)
			// Let more connections end before writing: while the writer sleeps on a timer,
			// a loop's put goes into the channel's buffer and wakes no goroutine, so a busy
			// balancer pays one wakeup and one write per linger, not per connection.
			// A full batch last time means more are waiting already: no linger then.
			if !backlog {
				linger.Reset(connLogLinger)
				select {
				case <-linger.C:
				case <-stop:
					linger.Stop()
				}
			}
		case <-l.kick:
		case <-stop:
			for {
				batch = more(q, batch)
				if len(batch) == 0 {
					break
				}
				l.write(batch, log)
				batch = batch[:0]
			}
			l.finish()
			return
		}
		batch = more(q, batch)
		backlog = len(batch) == cap(batch)
		l.write(batch, log)
		clear(batch) // the records point at services a reload may retire
		batch = batch[:0]
	}
}

// more adds to batch what q holds, without waiting, up to the batch's capacity.
func more(q chan connRecord, batch []connRecord) []connRecord {
	for len(batch) < cap(batch) {
		select {
		case r := <-q:
			batch = append(batch, r)
		default:
			return batch
		}
	}
	return batch
}

// write formats batch and writes it to the sink in force, then closes the sinks it replaced. The
// lines of a log just turned off go to the sink it had.
func (l *connLog) write(batch []connRecord, log *slog.Logger) {
	l.mu.Lock()
	w, js, old := l.w, l.json, l.old
	l.old = nil
	l.mu.Unlock()
	if w == nil && len(old) > 0 {
		w = old[len(old)-1]
	}
	if len(batch) > 0 && w != nil {
		buf := l.buf[:0]
		for i := range batch {
			if js {
				buf = appendJSONLine(buf, &batch[i])
			} else {
				buf = appendTextLine(buf, &batch[i])
			}
		}
		n, err := w.Write(buf)
		lost := uint64(0)
		if err != nil {
			lost = uint64(bytes.Count(buf[min(n, len(buf)):], []byte{'\n'}))
			l.lost[lostWriteFailed].Add(lost)
			l.failed(err, lost, log)
		}
		l.written.Add(uint64(len(batch)) - lost)
		if cap(buf) <= 1<<20 {
			l.buf = buf
		}
	}
	for _, o := range old {
		closeSink(o)
	}
}

// failed logs a failed write, at most once per connLogWarnEvery, with the lines lost since.
func (l *connLog) failed(err error, lost uint64, log *slog.Logger) {
	l.failedLost += lost
	now := time.Now().UnixNano()
	if l.warned != 0 && now-l.warned < connLogWarnEvery {
		return
	}
	log.Warn("connection log write failed", "err", err, "lines_lost", l.failedLost)
	l.warned, l.failedLost = now, 0
}

// finish closes every sink once the writer has written its last line.
func (l *connLog) finish() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.state = writerDone
	l.on.Store(false)
	for _, o := range l.old {
		closeSink(o)
	}
	closeSink(l.w)
	l.w, l.old = nil, nil
}

// The text line, fields apart by one space, "-" for one that is empty:
//
//	START VIRTUAL_SERVICE PORT/PROTO ROUTE CLIENT SERVER DURATION_MS BYTES_IN BYTES_OUT END
//	2025-03-04T09:14:02.123+01:00 fe-sip 5061/tcp - 203.0.113.9:51234 10.11.1.12:5061 5012 1234 5678 client_closed
//
// ROUTE is "-" until content switching gives services routes: the field is there already, so
// that the format does not change then.
func appendTextLine(b []byte, r *connRecord) []byte {
	b = appendStart(b, r.start)
	b = append(b, ' ')
	b = append(b, *r.svc...)
	b = append(b, ' ')
	b = appendPort(b, r)
	b = append(b, " - "...)
	b = appendAddr(b, r.client)
	b = append(b, ' ')
	if r.server.IsValid() {
		b = appendAddr(b, r.server)
	} else {
		b = append(b, '-')
	}
	b = append(b, ' ')
	b = strconv.AppendInt(b, r.durationMS(), 10)
	b = append(b, ' ')
	b = strconv.AppendUint(b, r.in, 10)
	b = append(b, ' ')
	b = strconv.AppendUint(b, r.out, 10)
	b = append(b, ' ')
	b = append(b, r.reason.String()...)
	return append(b, '\n')
}

// appendJSONLine writes the record as one JSON object on a line, with the text line's fields;
// an empty route or server is "".
func appendJSONLine(b []byte, r *connRecord) []byte {
	b = append(b, `{"start":"`...)
	b = appendStart(b, r.start)
	b = append(b, `","virtual_service":`...)
	b = appendJSONString(b, *r.svc)
	b = append(b, `,"port":`...)
	b = strconv.AppendUint(b, uint64(r.port), 10)
	b = append(b, `,"proto":"`...)
	b = append(b, r.proto()...)
	b = append(b, `","route":"","client":"`...)
	b = appendAddr(b, r.client)
	b = append(b, `","server":"`...)
	if r.server.IsValid() {
		b = appendAddr(b, r.server)
	}
	b = append(b, `","duration_ms":`...)
	b = strconv.AppendInt(b, r.durationMS(), 10)
	b = append(b, `,"bytes_client_to_server":`...)
	b = strconv.AppendUint(b, r.in, 10)
	b = append(b, `,"bytes_server_to_client":`...)
	b = strconv.AppendUint(b, r.out, 10)
	b = append(b, `,"end":"`...)
	b = append(b, r.reason.String()...)
	return append(b, "\"}\n"...)
}

func (r *connRecord) proto() string {
	if r.udp {
		return "udp"
	}
	return "tcp"
}

func (r *connRecord) durationMS() int64 { return max(r.end-r.start, 0) / int64(time.Millisecond) }

func appendPort(b []byte, r *connRecord) []byte {
	b = strconv.AppendUint(b, uint64(r.port), 10)
	b = append(b, '/')
	return append(b, r.proto()...)
}

// appendStart writes a time in ISO 8601 with milliseconds and the local offset.
func appendStart(b []byte, ns int64) []byte {
	return time.Unix(0, ns).AppendFormat(b, "2006-01-02T15:04:05.000Z07:00")
}

func appendAddr(b []byte, a netip.AddrPort) []byte {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()).AppendTo(b)
}

// appendJSONString writes s as a JSON string. Service names are letters, digits, '.', '_' and
// '-' (config checks them), but the line must stay JSON whatever it is given.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}
