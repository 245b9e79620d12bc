package lb

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pairlb/pairlb/config"
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

// lines returns the lines whose msg is msg, and the sum of their suppressed counts.
func (c *logCapture) lines(msg string) (n int, suppressed uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range strings.Split(c.buf.String(), "\n") {
		if !strings.Contains(l, "msg="+strconv.Quote(msg)) {
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
	bal.housekeeping(time.Now().Add(2 * time.Second))
	lines, suppressed := logs.lines("dial failed")
	events := webSt.dropped[DropDialFailed].Load() + mediaSt.dropped[DropDialFailed].Load()
	if lines > 2*bound+2 {
		t.Errorf("%d lines after the housekeeping, want at most %d", lines, 2*bound+2)
	}
	// A line either reports an event of its own (a failure) or only a count (the housekeeping's).
	flushLines := 0
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, `msg="dial failed"`) && !strings.Contains(l, " err=") {
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

// TestLogLimiter: one line per cause per second, the count of those held back on the next, and
// causes apart.
func TestLogLimiter(t *testing.T) {
	var l logLimiter
	t0 := time.Unix(1700000000, 0).UnixNano()
	sec := int64(time.Second)
	type step struct {
		c       logCause
		at      int64
		ok      bool
		skipped uint64
	}
	for i, s := range []step{
		{logDialFailed, 0, true, 0},
		{logDialFailed, 1, false, 0},
		{logDialFailed, sec / 2, false, 0},
		{logUDPSendFailed, sec / 2, true, 0}, // another cause
		{logDialFailed, sec - 1, false, 0},
		{logDialFailed, sec, true, 3},
		{logDialFailed, 3 * sec, true, 0},
	} {
		n, ok := l.allow(s.c, t0+s.at)
		if ok != s.ok || n != s.skipped {
			t.Errorf("step %d: allow = %d %v, want %d %v", i, n, ok, s.skipped, s.ok)
		}
	}
	// Held back, then quiet: flush says how many, once.
	l.allow(logDialFailed, t0+3*sec+1)
	l.allow(logDialFailed, t0+3*sec+2)
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	l.flush(log, t0+3*sec+sec/2) // too early: the cause is still within its second
	if buf.Len() != 0 {
		t.Errorf("flush within the second wrote %q", buf.String())
	}
	l.flush(log, t0+5*sec, "virtual_service", "web")
	l.flush(log, t0+6*sec, "virtual_service", "web")
	if got := buf.String(); strings.Count(got, "\n") != 1 || !strings.Contains(got, `msg="dial failed" virtual_service=web suppressed=2`) {
		t.Errorf("flush wrote %q", got)
	}
}

func TestLogLimiterAllocatesNothing(t *testing.T) {
	var l logLimiter
	now := time.Now().UnixNano()
	l.allow(logUDPSendFailed, now)
	if a := testing.AllocsPerRun(1000, func() { l.allow(logUDPSendFailed, now) }); a != 0 {
		t.Errorf("%.1f allocations per suppressed event", a)
	}
}
