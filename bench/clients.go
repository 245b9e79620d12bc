package main

// The load generators written here, where no standard tool fits: a connect-request-close
// client, a UDP flow client and a holder of idle connections. Each is bounded in time and in
// count.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ---- connection rate (own client) ----

const connRateClients = 50

// connRateMax bounds the connections of one run whatever its duration.
const connRateMax = 5_000_000

var httpCloseReq = []byte("GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")

func runConnRate(ctx context.Context, r *runCtx) (result, error) {
	start := time.Now()
	end := start.Add(r.duration)
	var (
		mu      sync.Mutex
		lats    []time.Duration
		errs    int
		firstEr error
		wg      sync.WaitGroup
		issued  atomic.Int64 // connections started, against the bound connRateMax
	)
	for range connRateClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := net.Dialer{Timeout: 3 * time.Second}
			buf := make([]byte, 1024)
			local := make([]time.Duration, 0, 1<<14)
			var lerrs int
			var lerr error
			for ctx.Err() == nil && time.Now().Before(end) {
				if issued.Add(1) > connRateMax {
					break
				}
				t0 := time.Now()
				if err := oneShortConn(&d, r.target, buf, t0); err != nil {
					lerrs++
					if lerr == nil {
						lerr = err
					}
					continue
				}
				local = append(local, time.Since(t0))
			}
			mu.Lock()
			lats = append(lats, local...)
			errs += lerrs
			if firstEr == nil {
				firstEr = lerr
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	if len(lats) == 0 {
		return result{}, fmt.Errorf("no connection completed through %s: %v", r.target, firstEr)
	}
	slices.Sort(lats)
	n := float64(len(lats))
	return result{
		metrics: map[string]float64{
			"conn_per_s": n / elapsed,
			"p50_ms":     ms(percentile(lats, 50)),
			"p99_ms":     ms(percentile(lats, 99)),
			"errors":     float64(errs),
		},
		units: n, cpuScale: 1000,
	}, nil
}

// oneShortConn connects, sends one request, reads the response to EOF and closes.
func oneShortConn(d *net.Dialer, target string, buf []byte, t0 time.Time) error {
	c, err := d.Dial("tcp", target)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(t0.Add(3 * time.Second))
	if _, err := c.Write(httpCloseReq); err != nil {
		return err
	}
	got := 0
	for {
		n, err := c.Read(buf[got:])
		got += n
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if got == len(buf) {
			return errors.New("response too long")
		}
	}
	if !bytes.HasPrefix(buf[:got], []byte("HTTP/1.1 200")) {
		return fmt.Errorf("unexpected response %q", buf[:min(got, 40)])
	}
	return nil
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// ---- UDP (own client) ----

// udpMax bounds the datagrams one flow sends in a run whatever its duration.
const udpMax = 50_000_000

func runUDP(ctx context.Context, r *runCtx) (result, error) {
	flows, window := r.opts.udpFlows, r.opts.udpWindow
	type flowResult struct {
		sent, recv int64
		err        error
	}
	res := make([]flowResult, flows)
	start := time.Now()
	end := start.Add(r.duration)
	var wg sync.WaitGroup
	for i := range flows {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i].sent, res[i].recv, res[i].err = udpFlow(ctx, r.target, window, end)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	var sent, recv int64
	for _, f := range res {
		if f.err != nil {
			return result{}, f.err
		}
		sent += f.sent
		recv += f.recv
	}
	if recv == 0 {
		return result{}, fmt.Errorf("no UDP echo came back through %s", r.target)
	}
	return result{
		metrics: map[string]float64{
			"pps":      float64(recv) / elapsed,
			"loss_pct": 100 * float64(sent-recv) / float64(sent),
			"sent":     float64(sent),
		},
		units: float64(recv), cpuScale: 1000,
	}, nil
}

// udpFlow keeps window datagrams in flight on one socket (one flow, as the proxy sees it)
// until end. A datagram is lost if it has not come back when the flow has heard nothing for
// udpLossTimeout; the flow then writes off what is outstanding and refills its window.
func udpFlow(ctx context.Context, target string, window int, end time.Time) (sent, recv int64, err error) {
	const udpLossTimeout = 100 * time.Millisecond
	c, err := net.Dial("udp", target)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	if uc, ok := c.(*net.UDPConn); ok {
		_ = uc.SetReadBuffer(1 << 20)
	}
	pkt := make([]byte, 64)
	copy(pkt[8:], "pairlb bench udp payload")
	buf := make([]byte, 2048)
	var next, boundary uint64 // sequence numbers below boundary have been written off
	var inflight int
	send := func() {
		binary.LittleEndian.PutUint64(pkt, next)
		next++
		if _, err := c.Write(pkt); err == nil {
			sent++
			inflight++
		}
	}
	refill := func() {
		for inflight < window && sent < udpMax {
			send()
		}
	}
	refill()
	draining := false
	for {
		now := time.Now()
		if !draining && (now.After(end) || ctx.Err() != nil || sent >= udpMax) {
			draining = true
		}
		if draining && inflight == 0 {
			break
		}
		_ = c.SetReadDeadline(now.Add(udpLossTimeout))
		n, err := c.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				boundary, inflight = next, 0
				if draining {
					break
				}
				refill()
				continue
			}
			// ECONNREFUSED from an ICMP error: count as loss and carry on.
			continue
		}
		if n < 8 || binary.LittleEndian.Uint64(buf) < boundary {
			continue // late reply to a datagram already written off
		}
		recv++
		inflight--
		if !draining {
			refill()
		}
	}
	return sent, recv, nil
}

// ---- concurrent idle connections ----

// idleDialer dials from one of 16 loopback source addresses (127.0.1.1-16), choosing the
// port at connect time (IP_BIND_ADDRESS_NO_PORT). Holding 9000 connections through a proxy
// takes 18000 ephemeral ports from one source address, and closing them leaves as many in
// TIME_WAIT; spreading the client side over several addresses keeps one run's leftovers from
// colliding with the next run's connections.
func idleDialer(worker int) *net.Dialer {
	return &net.Dialer{
		Timeout:   5 * time.Second,
		LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(1+worker%16))},
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
			})
			return errors.Join(err, serr)
		},
	}
}

func runIdle(ctx context.Context, r *runCtx) (result, error) {
	n := r.opts.idleConns
	var before proxyUsage
	if r.proxyPID > 0 {
		before = measureProxy(r.proxyPID, true)
	}
	conns := make([]net.Conn, n)
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		failed int
		first  error
		next   = make(chan int, n)
	)
	for i := range n {
		next <- i
	}
	close(next)
	start := time.Now()
	deadline := start.Add(60 * time.Second)
	for w := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := idleDialer(w)
			for i := range next {
				if ctx.Err() != nil || time.Now().After(deadline) {
					mu.Lock()
					failed++
					mu.Unlock()
					continue
				}
				c, err := d.DialContext(ctx, "tcp", r.target)
				if err != nil {
					mu.Lock()
					failed++
					if first == nil {
						first = err
					}
					mu.Unlock()
					continue
				}
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	openSecs := time.Since(start).Seconds()
	defer closeIdle(r.back, conns)
	opened := n - failed
	if opened == 0 {
		return result{}, fmt.Errorf("no connection opened through %s: %v", r.target, first)
	}
	// Wait until the backend holds every connection, i.e. the proxy has dialled them all, or
	// until their number has stopped growing (a proxy out of descriptors).
	held := r.back.idleConns.Load()
	for wait, lastGrowth := time.Now().Add(15*time.Second), time.Now(); held < int64(opened) &&
		time.Now().Before(wait) && time.Since(lastGrowth) < 2*time.Second; {
		time.Sleep(20 * time.Millisecond)
		if h := r.back.idleConns.Load(); h != held {
			held, lastGrowth = h, time.Now()
		}
	}
	time.Sleep(500 * time.Millisecond) // let allocations settle

	// A sample of the connections must still carry data.
	const sample = 100
	ok, tried := 0, 0
	msg := []byte("ping1234")
	buf := make([]byte, len(msg))
	sampleEnd := time.Now().Add(10 * time.Second) // the whole sample, however many hang
	for k := range sample {
		c := conns[(k*len(conns))/sample]
		if c == nil {
			continue
		}
		tried++
		d := time.Now().Add(3 * time.Second)
		if d.After(sampleEnd) {
			d = sampleEnd
		}
		_ = c.SetDeadline(d)
		if _, err := c.Write(msg); err != nil {
			continue
		}
		if _, err := io.ReadFull(c, buf); err == nil && bytes.Equal(buf, msg) {
			ok++
		}
		_ = c.SetDeadline(time.Time{})
	}
	m := map[string]float64{
		"conns":         float64(held),
		"open_per_s":    float64(opened) / openSecs,
		"sample_ok_pct": 100 * float64(ok) / float64(max(tried, 1)),
		"open_failures": float64(failed),
	}
	if r.proxyPID > 0 && held > 0 {
		// Per connection the proxy carries end to end: the backend's count, not the
		// client's, which includes connections a proxy accepted but could not forward.
		during := measureProxy(r.proxyPID, true)
		m["rss_kib_per_conn"] = (during.rssKiB - before.rssKiB) / float64(held)
		m["fds_per_conn"] = float64(during.fds-before.fds) / float64(held)
		m["proxy_rss_kib"] = during.rssKiB
		m["proxy_fds"] = float64(during.fds)
		m["pipe_fds_per_conn"] = float64(during.pipes-before.pipes) / float64(held)
	}
	if r.atPeak != nil {
		r.atPeak()
	}
	if failed > 0 || held < int64(opened) {
		fmt.Fprintf(os.Stderr, "  idle: %d of %d connections opened (first failure: %v), %d reached the backend\n", opened, n, first, held)
	}
	return result{metrics: m, units: float64(opened), cpuScale: 1000}, nil
}

// closeIdle ends the idle connections server side first (see backends.closeEcho), waits a
// bounded time for each client to see the close come through the proxy, then closes the
// clients, so that no end of the connections is left in TIME_WAIT on an ephemeral port.
func closeIdle(b *backends, conns []net.Conn) {
	b.closeEcho()
	deadline := time.Now().Add(10 * time.Second)
	buf := make([]byte, 64)
	for _, c := range conns {
		if c == nil {
			continue
		}
		_ = c.SetReadDeadline(deadline)
		for {
			if _, err := c.Read(buf); err != nil {
				break
			}
		}
		c.Close()
	}
	for wait := time.Now().Add(5 * time.Second); b.idleConns.Load() > 0 && time.Now().Before(wait); {
		time.Sleep(20 * time.Millisecond)
	}
}
