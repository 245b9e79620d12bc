package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Backends are the servers behind every candidate. They run on core 1 with the load generator:
// the HTTP, echo and UDP echo servers inside this process, iperf3's server as a child.
//
// Ports: a workload's proxy frontend listens on frontPort and forwards to frontPort+100, where
// the backend listens. The direct path dials the backend port itself.
const (
	portBulk = 15001 // iperf3
	portUDP  = 15002 // UDP echo
	portHTTP = 15003 // small HTTP responses (connection rate, persistent)
	portIdle = 15004 // TCP echo (idle connections)

	backendOffset = 100
	loopback      = "127.0.0.1"
)

func backendAddr(front int) string { return fmt.Sprintf("%s:%d", loopback, front+backendOffset) }

// httpBody is the small body of every HTTP response.
const httpBody = "hello from pairlb bench\n"

var (
	httpResp      = fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s", len(httpBody), httpBody)
	httpRespClose = fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(httpBody), httpBody)
)

// backends owns the in-process servers and the iperf3 server process.
type backends struct {
	listeners []net.Listener
	udp       *net.UDPConn
	iperf     *child
	idleConns atomic.Int64 // open connections on the echo server
	wg        sync.WaitGroup
	mu        sync.Mutex
	conns     map[net.Conn]struct{}
	echo      map[net.Conn]struct{} // the echo server's connections, for closeEcho
}

// startBackends starts the servers the selected workloads need.
func startBackends(ctx context.Context, ws []*workload, logw io.Writer) (*backends, error) {
	b := &backends{conns: map[net.Conn]struct{}{}, echo: map[net.Conn]struct{}{}}
	need := map[int]bool{}
	for _, w := range ws {
		need[w.port] = true
	}
	if need[portHTTP] {
		if err := b.serveTCP(portHTTP, b.serveHTTP); err != nil {
			b.close()
			return nil, err
		}
	}
	if need[portIdle] {
		if err := b.serveTCP(portIdle, b.serveEcho); err != nil {
			b.close()
			return nil, err
		}
	}
	if need[portUDP] {
		if err := b.serveUDP(); err != nil {
			b.close()
			return nil, err
		}
	}
	if need[portBulk] {
		// iperf3 serves one test at a time, for as long as it runs.
		cmd := exec.Command("iperf3", "-s", "-B", loopback, "-p", fmt.Sprint(portBulk+backendOffset))
		cmd.Stdout, cmd.Stderr = logw, logw
		cmd.SysProcAttr = childAttr()
		var err error
		if b.iperf, err = startChild(cmd); err != nil {
			b.close()
			return nil, fmt.Errorf("starting iperf3 server: %w", err)
		}
		if err := waitTCP(ctx, backendAddr(portBulk), 5*time.Second); err != nil {
			b.close()
			return nil, fmt.Errorf("iperf3 server: %w", err)
		}
	}
	return b, nil
}

func (b *backends) serveTCP(front int, handle func(net.Conn)) error {
	ln, err := net.Listen("tcp", backendAddr(front))
	if err != nil {
		return fmt.Errorf("backend listen %s: %w", backendAddr(front), err)
	}
	b.listeners = append(b.listeners, ln)
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				// EMFILE and friends: back off rather than spin.
				time.Sleep(10 * time.Millisecond)
				continue
			}
			b.track(c, true)
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				defer b.track(c, false)
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return nil
}

// track remembers open backend connections so that close can end them.
func (b *backends) track(c net.Conn, add bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if add {
		b.conns[c] = struct{}{}
	} else {
		delete(b.conns, c)
	}
}

// serveHTTP answers GET requests with a small body, keeping the connection open unless the
// request says "Connection: close", in which case the server closes first (so that TIME_WAIT
// lands on the server side, not on the client's ephemeral ports).
func (b *backends) serveHTTP(c net.Conn) {
	r := bufio.NewReaderSize(c, 4096)
	w := bufio.NewWriterSize(c, 4096)
	for {
		closeAfter := false
		first := true
		for {
			line, err := r.ReadSlice('\n')
			if err != nil {
				return
			}
			if len(line) <= 2 { // "\r\n": end of headers
				if first {
					continue // tolerate stray CRLF between requests
				}
				break
			}
			first = false
			if len(line) > 11 && strings.EqualFold(string(line[:11]), "connection:") &&
				strings.Contains(strings.ToLower(string(line[11:])), "close") {
				closeAfter = true
			}
		}
		if closeAfter {
			w.WriteString(httpRespClose)
			w.Flush()
			return
		}
		w.WriteString(httpResp)
		if r.Buffered() == 0 { // flush once per batch of pipelined requests
			if w.Flush() != nil {
				return
			}
		}
	}
}

// serveEcho copies what it reads back to the sender.
func (b *backends) serveEcho(c net.Conn) {
	b.idleConns.Add(1)
	defer b.idleConns.Add(-1)
	b.mu.Lock()
	b.echo[c] = struct{}{}
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.echo, c)
		b.mu.Unlock()
	}()
	buf := make([]byte, 512)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// serveUDP echoes every datagram to its sender, with two readers on one socket.
func (b *backends) serveUDP() error {
	addr, err := net.ResolveUDPAddr("udp", backendAddr(portUDP))
	if err != nil {
		return err
	}
	conn, err := net.ListenUDP("udp", addr)
	if err != nil {
		return fmt.Errorf("backend listen udp %s: %w", addr, err)
	}
	_ = conn.SetReadBuffer(4 << 20)
	_ = conn.SetWriteBuffer(4 << 20)
	b.udp = conn
	for range 2 {
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			buf := make([]byte, 2048)
			for {
				n, from, err := conn.ReadFromUDPAddrPort(buf)
				if err != nil {
					if errors.Is(err, net.ErrClosed) {
						return
					}
					continue
				}
				_, _ = conn.WriteToUDPAddrPort(buf[:n], from)
			}
		}()
	}
	return nil
}

// closeEcho closes the echo server's connections from the server side. Closing first, the
// backend keeps TIME_WAIT on its own port rather than on ephemeral ports, which the next
// run's proxy would need for its connections to the backend.
func (b *backends) closeEcho() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for c := range b.echo {
		c.Close()
	}
}

// close stops every backend and waits for its goroutines.
func (b *backends) close() {
	for _, ln := range b.listeners {
		ln.Close()
	}
	if b.udp != nil {
		b.udp.Close()
	}
	b.mu.Lock()
	for c := range b.conns {
		c.Close()
	}
	b.mu.Unlock()
	if b.iperf != nil {
		_ = b.iperf.stop(3 * time.Second)
	}
	b.wg.Wait()
}

// waitTCP dials addr until it answers or the timeout passes.
func waitTCP(ctx context.Context, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		var c net.Conn
		c, err = (&net.Dialer{Timeout: 500 * time.Millisecond}).DialContext(ctx, "tcp", addr)
		if err == nil {
			c.Close()
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s not accepting connections after %v: %w", addr, timeout, err)
}

// waitUDPEcho sends probes to addr until one comes back or the timeout passes.
func waitUDPEcho(ctx context.Context, addr string, timeout time.Duration) error {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 64)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		_, _ = c.Write([]byte("probe"))
		_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if n, err := c.Read(buf); err == nil && string(buf[:n]) == "probe" {
			return nil
		}
	}
	return fmt.Errorf("no UDP echo through %s after %v", addr, timeout)
}
