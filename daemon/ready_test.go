package daemon

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pairlb/pairlb/internal/testenv"
)

// holdServer accepts connections and never answers: a TLS check against it lasts its timeout.
func holdServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return ln.Addr().String()
}

// defaultHealthService is a service with the default health timing: a tcp check every 9 s, the
// server down until its first passed check.
func defaultHealthService(name string, port int, server string) string {
	return fmt.Sprintf(`  - name: %s
    vip: 127.0.0.1
    ports: ["%d/tcp"]
    health: {type: tcp}
    real_servers: [{address: "%s"}]
`, name, port, server)
}

// startDaemonUnready builds a daemon for services, calls early (the listeners are open, run has
// not started) and then runs it until the test ends.
func startDaemonUnready(t *testing.T, services string, early func()) *testDaemon {
	t.Helper()
	dir := t.TempDir()
	head, addr := adminHead(t, dir, "")
	td := &testDaemon{file: filepath.Join(dir, "pairlb.yaml"), admin: "http://" + addr, head: head}
	td.write(t, services)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	d, err := New(Options{Log: log, Path: td.file, Version: "dev"})
	if err != nil {
		t.Fatal(err)
	}
	td.d = d
	early()
	ctx, cancel := context.WithCancel(context.Background())
	td.cancel, td.done = cancel, make(chan error, 1)
	go func() { td.done <- d.Run(ctx) }()
	t.Cleanup(func() { td.stop(t) })
	return td
}

// readyz returns /readyz's code and body; code 0 when the admin server does not answer yet.
func (td *testDaemon) readyz() (int, string) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(td.admin + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// greetingOn reads the greeting on an open connection, waiting up to limit.
func greetingOn(c net.Conn, limit time.Duration) (string, error) {
	_ = c.SetDeadline(time.Now().Add(limit))
	s, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(s), err
}

// TestNoResetsAfterAStart: a server is used only after its first passed check. With the default
// 9 s interval the first check used to wait up to 9 s while /readyz already said ready and new
// connections were reset. Now a client that connects before the daemon runs, and one that
// connects as soon as /readyz says ready, are both served.
func TestNoResetsAfterAStart(t *testing.T) {
	fe1, fe2 := testenv.EchoServer(t, "fe1"), testenv.EchoServer(t, "fe2")
	p1, p2 := testenv.FreeTCPPort(t), testenv.FreeTCPPort(t)
	// A third service whose server never completes a TLS handshake holds the first round for
	// its check's timeout, so that the wait is long enough to be seen.
	const holdFor = 1500 * time.Millisecond
	services := defaultHealthService("web", p1, fe1) + defaultHealthService("web2", p2, fe2) +
		fmt.Sprintf(`  - name: slow
    vip: 127.0.0.1
    ports: ["%d/tcp"]
    health: {type: tls, timeout: %dms}
    real_servers: [{address: "%s"}]
`, testenv.FreeTCPPort(t), holdFor.Milliseconds(), holdServer(t))

	var before []net.Conn
	started := time.Now()
	td := startDaemonUnready(t, services, func() {
		// The listeners are open: these wait in the accept queue.
		for _, p := range []int{p1, p2} {
			c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", p), time.Second)
			if err != nil {
				t.Fatalf("connecting before the start: %v", err)
			}
			before = append(before, c)
		}
	})
	var after []net.Conn
	t.Cleanup(func() { // before the daemon stops, so that it has nothing to drain
		for _, c := range append(before, after...) {
			if c != nil {
				c.Close()
			}
		}
	})

	saw := map[string]bool{}
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := td.readyz()
		if code == http.StatusOK {
			break
		}
		if code != 0 {
			saw[fmt.Sprintf("%d %s", code, body)] = true
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready after 10s: %d %s", code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	readyAfter := time.Since(started)
	// As soon as it says ready: connect and be served.
	for _, p := range []int{p1, p2} {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", p), time.Second)
		if err != nil {
			t.Errorf("connecting once ready to port %d: %v", p, err)
		}
		after = append(after, c)
	}
	for i, want := range []string{"fe1", "fe2"} {
		if after[i] == nil {
			continue
		}
		if got, err := greetingOn(after[i], 5*time.Second); got != want {
			t.Errorf("client connected once ready, to %s's service: got %q, %v; want served", want, got, err)
		}
		if got, err := greetingOn(before[i], 5*time.Second); got != want {
			t.Errorf("client connected before the start, to %s's service: got %q, %v; want served", want, got, err)
		}
	}

	if !saw["503 not ready: first health checks running"] {
		t.Errorf("/readyz never said the first checks were running; it answered %v before 200", saw)
	}
	if readyAfter > holdFor+3*time.Second {
		t.Errorf("ready %s after the start, want within the held check's timeout (%s) and a little", readyAfter, holdFor)
	}
	if st := td.status(t, ""); !st.Ready {
		t.Errorf("status says not ready once /readyz said ready")
	}
	t.Logf("ready %s after the start (first round held %s by one check)", readyAfter, holdFor)
}

// TestStopWhileTheFirstChecksRun: the wait for the first round gives way to a stop at once.
func TestStopWhileTheFirstChecksRun(t *testing.T) {
	const holdFor = 8 * time.Second
	services := fmt.Sprintf(`  - name: slow
    vip: 127.0.0.1
    ports: ["%d/tcp"]
    health: {type: tls, timeout: %dms}
    real_servers: [{address: "%s"}]
`, testenv.FreeTCPPort(t), holdFor.Milliseconds(), holdServer(t))
	td := startDaemonUnready(t, services, func() {})
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := td.readyz()
		if code == http.StatusServiceUnavailable && body == "not ready: first health checks running" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz never said the first checks were running: last %d %s", code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	stopped := time.Now()
	td.cancel()
	td.cancel = nil
	select {
	case err := <-td.done:
		if err != nil {
			t.Errorf("run: %v", err)
		}
	case <-time.After(holdFor / 2):
		t.Fatalf("run did not return within %s of the stop while the first round was held for %s", holdFor/2, holdFor)
	}
	if took := time.Since(stopped); took > 2*time.Second {
		t.Errorf("run took %s to stop while the first round was held", took)
	}
}
