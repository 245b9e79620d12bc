package lb

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// kernelFDs counts the descriptors of this process that a balancer may hold: epoll sets,
// eventfds and sockets. Pipes are left out: the relay's pool keeps some, and collections close
// them at times of their own.
func kernelFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err == nil && (strings.HasPrefix(target, "socket:") || target == "anon_inode:[eventpoll]" || target == "anon_inode:[eventfd]") {
			n++
		}
	}
	return n
}

// waitKernelFDs waits until kernelFDs is want again, failing after five seconds.
func waitKernelFDs(t *testing.T, want int, what string) {
	t.Helper()
	n := 0
	waitFor(t, what, func() bool { n = kernelFDs(t); return n == want })
}

// TestNewHoldsNoDescriptor: New opens nothing in the kernel, so a Balancer that is made and
// never applied or run (a daemon that fails to start after New) leaks nothing. It used to make
// each loop's epoll set and eventfd, which only Run closed.
func TestNewHoldsNoDescriptor(t *testing.T) {
	before := kernelFDs(t)
	b := New(nil)
	if n := kernelFDs(t); n != before {
		t.Fatalf("New opened %d descriptors", n-before)
	}
	if len(b.loops) != 0 {
		t.Fatalf("New made %d loops", len(b.loops))
	}
}

// TestFailedFirstApplyHoldsNoDescriptor: a first Apply that fails (a port in use) closes the
// loops it made with the sockets it opened; a later Apply makes them again.
func TestFailedFirstApplyHoldsNoDescriptor(t *testing.T) {
	be := startBackend(t, "a")
	web := testService(t, "web", be.addr())
	clash := testService(t, "clash", be.addr())
	clash.Ports[0].Listen = busyPort(t)
	before := kernelFDs(t)
	b := New(nil)
	if err := b.Apply(testConfig(web, clash)); err == nil {
		t.Fatal("Apply with a port in use succeeded")
	}
	if n := kernelFDs(t); n != before {
		t.Fatalf("a failed first Apply left %d descriptors open", n-before)
	}
	if len(b.loops) != 0 {
		t.Fatalf("a failed first Apply kept %d loops", len(b.loops))
	}
	if err := b.Apply(testConfig(web)); err != nil {
		t.Fatalf("Apply after the failed one: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	b.Run(ctx) // ended already: releases at once
	waitKernelFDs(t, before, "descriptors released by Run")
}

// TestRunReleasesWhatApplyOpened: Run called with a context that has already ended stops at
// once and closes every listener and loop Apply opened.
func TestRunReleasesWhatApplyOpened(t *testing.T) {
	be := startBackend(t, "a")
	web := testService(t, "web", be.addr())
	stun := udpService(t, "stun", be.addr())
	redir := asRedirector(testService(t, "owa-http"))
	before := kernelFDs(t)
	b := New(nil)
	if err := b.Apply(testConfig(web, stun, redir)); err != nil {
		t.Fatal(err)
	}
	if kernelFDs(t) == before {
		t.Fatal("Apply opened nothing")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	done := make(chan struct{})
	go func() { b.Run(ctx); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run with an ended context did not return within 10s")
	}
	waitKernelFDs(t, before, "descriptors released by Run")
	checkNoBalancerGoroutines(t)
}

// TestApplyBeforeRunHoldsClients: the daemon applies the configuration before Run and starts
// Run only once the first round of health checks is done. Meanwhile a TCP client waits in the
// listener's backlog and a UDP datagram in the socket's queue, untouched (nothing runs the
// loops); Run then serves both, and nothing is lost.
func TestApplyBeforeRunHoldsClients(t *testing.T) {
	be := startBackend(t, "a")
	ue := startUDPEcho(t, "u")
	web := testService(t, "web", be.addr())
	stun := udpService(t, "stun", ue.addr())
	b := New(nil)
	if err := b.Apply(testConfig(web, stun)); err != nil {
		t.Fatal(err)
	}
	c, err := net.DialTimeout("tcp", vipAddr(web, 0), 2*time.Second) // the kernel completes the handshake
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("early")); err != nil {
		t.Fatal(err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	u := dialUDP(t, vipAddr(stun, 0))
	if _, err := u.Write([]byte("early")); err != nil {
		t.Fatal(err)
	}
	for _, st := range b.Status() {
		if st.Accepted != 0 {
			t.Fatalf("%s accepted %d before Run", st.Name, st.Accepted)
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b.Run(ctx); close(done) }()
	defer func() {
		cancel()
		<-done
	}()
	all, err := io.ReadAll(c)
	if got := string(all); err != nil || got != "a\nearly" {
		t.Fatalf("TCP client queued before Run: %q, %v; want the greeting and the echo", got, err)
	}
	_ = u.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, err := u.Read(buf)
	if got := string(buf[:n]); err != nil || got != "u:early" {
		t.Fatalf("UDP datagram queued before Run: %q, %v", got, err)
	}
}

// TestShutdownLogsDrain: a stop says that the drain started and how many connections it waits
// for, and when it ends how many the deadline closed: none when the clients leave in time, the
// ones still open when it passes.
func TestShutdownLogsDrain(t *testing.T) {
	for _, tc := range []struct {
		name     string
		leave    bool // the client closes its connection once the drain has started
		drain    time.Duration
		wantLine string
	}{
		{"clients leave", true, 10 * time.Second, `msg="drain ended" closed_at_deadline=0 `},
		{"deadline", false, 200 * time.Millisecond, `msg="drain ended" closed_at_deadline=2 `},
	} {
		t.Run(tc.name, func(t *testing.T) {
			be := startBackend(t, "a")
			web := testService(t, "web", be.addr())
			cfg := testConfig(web)
			cfg.Global.DrainTimeout = tc.drain
			logs := &logCapture{}
			b := New(slog.New(slog.NewTextHandler(logs, nil)))
			if err := b.Apply(cfg); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { b.Run(ctx); close(done) }()
			defer func() { cancel(); <-done }()
			var conns []net.Conn
			for range 2 {
				c, err := net.DialTimeout("tcp", vipAddr(web, 0), 2*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := bufio.NewReader(c).ReadString('\n'); err != nil { // through to the server
					t.Fatal(err)
				}
				conns = append(conns, c)
			}
			cancel()
			waitFor(t, "drain started logged", func() bool {
				return strings.Contains(logs.String(), `msg="drain started" connections=2 drain_timeout=`+tc.drain.String())
			})
			if tc.leave {
				for _, c := range conns {
					c.Close()
				}
			}
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not return within 10s of its stop")
			}
			if got := logs.String(); !strings.Contains(got, tc.wantLine) {
				t.Fatalf("log lacks %q:\n%s", tc.wantLine, got)
			}
		})
	}
}
