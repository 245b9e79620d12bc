package lb

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pairlb/pairlb/config"
	"golang.org/x/sys/unix"
)

// logCapture is a slog destination the test reads back.
type logCapture struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *logCapture) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.Write(p)
}

func (c *logCapture) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

// lines returns the lines whose msg is msg, or that summarise events whose msg is msg, and the
// sum of their suppressed counts.
func (c *logCapture) lines(msg string) (n int, suppressed uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range strings.Split(c.buf.String(), "\n") {
		if !strings.Contains(l, "msg="+strconv.Quote(msg)) && !strings.Contains(l, " event="+strconv.Quote(msg)) {
			continue
		}
		n++
		if _, after, ok := strings.Cut(l, " suppressed="); ok {
			v, _, _ := strings.Cut(after, " ")
			k, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				panic("suppressed=" + v)
			}
			suppressed += k
		}
	}
	return n, suppressed
}

// startLoggedBalancer is startBalancer with the balancer's log captured.
func startLoggedBalancer(t *testing.T, cfg *config.Config) (*Balancer, *logCapture) {
	t.Helper()
	capture := &logCapture{}
	b := New(slog.New(slog.NewTextHandler(capture, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err := b.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return b, capture
}

// TestLogFloodBounded: a flood of failures on the per-connection and per-datagram paths (a
// real server refusing every TCP connection; a source address the box does not hold, so every
// UDP datagram's session fails to open) writes about one line per second per cause, and the
// lines' suppressed counts, with the housekeeping's line for the end of the burst, add up to
// every event.
func TestLogFloodBounded(t *testing.T) {
	dead := netip.AddrPortFrom(loopback, freePort(t, "tcp"))
	web := testService(t, "web", dead)
	media := udpService(t, "media", netip.MustParseAddrPort("127.0.0.1:9"))
	media.SourceAddresses = []netip.Addr{netip.MustParseAddr("198.51.100.77")} // not on this box: bind fails
	bal, logs := startLoggedBalancer(t, testConfig(web, media))
	start := time.Now()

	const conns, datagrams = 200, 2000
	for range conns {
		c, err := net.DialTimeout("tcp", vipAddr(web, 0), 2*time.Second)
		if err != nil {
			continue // reset so soon that connect saw it: accepted, and counted, all the same
		}
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, _ = c.Read(make([]byte, 1)) // reset once the dial fails
		c.Close()
	}
	u := dialUDP(t, vipAddr(media, 0))
	for range datagrams {
		if _, err := u.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	webSt, mediaSt := bal.services["web"].stats, bal.services["media"].stats
	waitFor(t, "every datagram's failure counted", func() bool {
		return mediaSt.dropped[DropDialFailed].Load()+mediaSt.dropped[DropUDPReceiveOverflow].Load() == datagrams
	})
	waitFor(t, "every connection's failure counted", func() bool { return webSt.dropped[DropDialFailed].Load() == conns })
	elapsed := time.Since(start)

	// One line per second per cause and service at most, during the flood.
	bound := 1 + int(elapsed/time.Second) + 1
	lines, _ := logs.lines("dial failed")
	if lines > 2*bound {
		t.Fatalf("%d \"dial failed\" lines for %d connections and %d datagrams in %v, want at most %d", lines, conns, datagrams, elapsed, 2*bound)
	}
	// The end of the burst: the housekeeping writes what was held back.
	bal.housekeeping(time.Now().Add(time.Duration(logWindow) + time.Second))
	lines, suppressed := logs.lines("dial failed")
	events := webSt.dropped[DropDialFailed].Load() + mediaSt.dropped[DropDialFailed].Load()
	if lines > 2*bound+2 {
		t.Errorf("%d lines after the housekeeping, want at most %d", lines, 2*bound+2)
	}
	// A line either reports an event of its own (a failure) or only a count (the housekeeping's
	// summary).
	flushLines := 0
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, `event="dial failed"`) && strings.Contains(l, " count=") {
			flushLines++
		}
	}
	if got := uint64(lines-flushLines) + suppressed; got != events {
		t.Errorf("lines (%d, %d of them counts only) and suppressed counts (%d) account for %d failures, want %d", lines, flushLines, suppressed, got, events)
	}
	if suppressed == 0 {
		t.Error("no line reports a suppressed count")
	}
}

// takeLines returns the lines of buf and empties it.
func takeLines(buf *bytes.Buffer) []string {
	s := strings.TrimSuffix(buf.String(), "\n")
	buf.Reset()
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// TestLogLimiter: with an injected clock, a burst of one cause collapses into its first line
// and one summary a window later with the count; causes (server, errno) are apart; a cause
// still failing writes one summary per window and none in full; one quiet for a window is
// forgotten; causes beyond the bound share the other bucket.
func TestLogLimiter(t *testing.T) {
	var l logLimiter
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}))
	t0 := time.Unix(1700000000, 0).UnixNano()
	sec := int64(time.Second)
	fe1 := netip.MustParseAddrPort("10.11.1.12:5061")
	fe2 := netip.MustParseAddrPort("10.11.1.13:5061")
	refused := fmt.Errorf("connect: %w", unix.ECONNREFUSED)
	timedOut := fmt.Errorf("connect: %w", unix.ETIMEDOUT)
	event := func(at netip.AddrPort, err error, when int64) bool {
		if l.allow(logDialFailed, at, at.String(), err, when) {
			l.write(log, logDialFailed, "virtual_service", "web", "real_server", at.String(), "err", err)
			return true
		}
		return false
	}

	// A burst of 59 refusals in a second: one line in full.
	written := 0
	for i := range 59 {
		if event(fe1, refused, t0+int64(i)*sec/59) {
			written++
		}
	}
	// Other causes are apart: another server, another errno.
	if !event(fe2, refused, t0+sec) || !event(fe1, timedOut, t0+sec) {
		t.Error("a second cause was held back")
	}
	if written != 1 {
		t.Fatalf("%d lines in full for a burst of one cause, want 1", written)
	}
	buf.Reset()
	l.flush(log, t0+logWindow-1, "virtual_service", "web") // the window has not passed
	if got := takeLines(&buf); len(got) != 0 {
		t.Errorf("flush within the window wrote %q", got)
	}
	l.flush(log, t0+logWindow, "virtual_service", "web")
	want := `level=WARN msg="dial failed 59 times in the last 10 s to 10.11.1.12:5061: connection refused" virtual_service=web real_server=10.11.1.12:5061 event="dial failed" err="connect: connection refused" count=59 suppressed=58 window=10s`
	if got := takeLines(&buf); len(got) != 1 || got[0] != want {
		t.Errorf("summary of the burst:\n got %q\nwant %q", got, want)
	}

	// Still failing: the next window writes no line in full, and one summary.
	for i := range 5 {
		if event(fe1, refused, t0+logWindow+1+int64(i)) {
			t.Error("an event of a cause still failing was written in full")
		}
	}
	l.flush(log, t0+logWindow+sec+1, "virtual_service", "web") // fe2 and the timeout: nothing held back, forgotten
	if got := takeLines(&buf); len(got) != 0 {
		t.Errorf("flush of causes with nothing held back wrote %q", got)
	}
	l.flush(log, t0+2*logWindow, "virtual_service", "web")
	if got := takeLines(&buf); len(got) != 1 || !strings.Contains(got[0], `msg="dial failed 5 times in the last 10 s to 10.11.1.12:5061: connection refused"`) || !strings.Contains(got[0], " suppressed=5 ") {
		t.Errorf("summary of the second window: %q", got)
	}
	// Quiet for a window: forgotten, and the next event is written in full.
	l.flush(log, t0+3*logWindow, "virtual_service", "web")
	if got := takeLines(&buf); len(got) != 0 {
		t.Errorf("flush of a quiet window wrote %q", got)
	}
	if !event(fe1, refused, t0+3*logWindow+1) {
		t.Error("the first event after a quiet window was held back")
	}
	if !event(fe2, refused, t0+3*logWindow+1) {
		t.Error("a forgotten cause's next event was held back")
	}

	// Bounded: beyond logCausesPerKind causes at once, the rest share one bucket.
	l.kinds = [numLogCauses]logKind{}
	buf.Reset()
	const servers = logCausesPerKind + 5
	written = 0
	for round := range 3 {
		for i := range servers {
			if event(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 11, 1, byte(i)}), 5061), refused, t0+int64(round)) {
				written++
			}
		}
	}
	if written != logCausesPerKind+1 {
		t.Errorf("%d lines in full for %d causes, want %d (one per slot, one for the bucket)", written, servers, logCausesPerKind+1)
	}
	buf.Reset()
	l.flush(log, t0+logWindow, "virtual_service", "web")
	got := takeLines(&buf)
	if len(got) != logCausesPerKind+1 {
		t.Fatalf("%d summaries, want %d:\n%s", len(got), logCausesPerKind+1, strings.Join(got, "\n"))
	}
	wantOther := fmt.Sprintf(`msg="dial failed 15 times in the last 10 s (more than %d causes at once), the first: connect: connection refused" virtual_service=web real_server=other`, logCausesPerKind)
	if !strings.Contains(strings.Join(got, "\n"), wantOther) {
		t.Errorf("no summary of the other bucket %q in:\n%s", wantOther, strings.Join(got, "\n"))
	}
}

// TestLogLimiterServiceCause: a kind about the service as a whole (no subject) summarises with
// the error alone.
func TestLogLimiterServiceCause(t *testing.T) {
	var l logLimiter
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	t0 := time.Unix(1700000000, 0).UnixNano()
	for i := range 3 {
		ok := l.allow(logUDPSendFailed, netip.AddrPort{}, "", unix.ENOBUFS, t0+int64(i))
		if ok != (i == 0) {
			t.Errorf("event %d: allow = %v", i, ok)
		}
	}
	l.flush(log, t0+logWindow+int64(time.Second)/2, "virtual_service", "media")
	if got := buf.String(); !strings.Contains(got, `msg="udp send failed 3 times in the last 11 s: no buffer space available" virtual_service=media event="udp send failed"`) {
		t.Errorf("summary %q", got)
	}
}

func TestLogLimiterAllocatesNothing(t *testing.T) {
	var l logLimiter
	now := time.Now().UnixNano()
	to := netip.MustParseAddrPort("10.11.1.12:5061")
	err := fmt.Errorf("connect: %w", unix.ECONNREFUSED)
	l.allow(logDialFailed, to, "10.11.1.12:5061", err, now)
	if a := testing.AllocsPerRun(1000, func() { l.allow(logDialFailed, to, "10.11.1.12:5061", err, now) }); a != 0 {
		t.Errorf("%.1f allocations per suppressed event", a)
	}
}
