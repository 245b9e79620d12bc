package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pairlb/pairlb/internal/testenv"
)

// TestSoak runs the real binary for a minute under everything at once: reloads (SIGHUP and the
// admin API, valid and invalid), real servers killed and restarted, floods of new TCP
// connections and of new UDP clients, beside steady TCP and UDP clients whose servers stay
// healthy. No exchange with a server that stayed healthy may fail, and afterwards pairlb's
// descriptors and memory must be back to where they were before the load.
//
// Everything is on loopback: the VIP is 127.0.0.1, the real servers 127.0.0.2-4.
func TestSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("the soak runs for a minute; not with -short")
	}
	soakFor := time.Minute
	if d, err := time.ParseDuration(os.Getenv("PAIRLB_SOAK")); err == nil && d > 0 {
		soakFor = d // a shorter run while working on the test itself
	}
	bin := testenv.Pairlb(t)

	// Three TCP servers and two UDP servers; each can be killed (every connection cut) and
	// brought back on the same address.
	var tcps []*soakTCPServer
	for i := range 3 {
		tcps = append(tcps, startSoakTCP(t, fmt.Sprintf("127.0.0.%d:0", i+2), fmt.Sprintf("tcp%d", i+1)))
	}
	var udps []*soakUDPServer
	for i := range 2 {
		udps = append(udps, startSoakUDP(t, fmt.Sprintf("127.0.0.%d:0", i+2), fmt.Sprintf("udp%d", i+1)))
	}

	webPort, extraPort := testenv.FreeTCPPort(t), testenv.FreeTCPPort(t)
	udpPort := testenv.FreeUDPPort(t)
	adminAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreeTCPPort(t))
	dir := t.TempDir()
	file := filepath.Join(dir, "pairlb.yaml")
	// Two valid files the reloads alternate between (b adds a service and changes weights),
	// and one invalid one that must be rejected while the running configuration serves on.
	conf := func(variant string) string {
		var b strings.Builder
		fmt.Fprintf(&b, "global:\n  admin: %s\n  drain_timeout: 5s\nvirtual_services:\n", adminAddr)
		weight := 1
		if variant == "b" {
			weight = 3
		}
		fmt.Fprintf(&b, `  - name: web
    vip: 127.0.0.1
    ports: ["%d/tcp"]
    scheduler: leastconn
    health: {type: tcp, interval: 1s, timeout: 500ms, rise: 1, fall: 1}
    real_servers:
`, webPort)
		for i, s := range tcps {
			w := 1
			if i == 0 {
				w = weight
			}
			fmt.Fprintf(&b, "      - {address: \"%s\", weight: %d}\n", s.addr, w)
		}
		fmt.Fprintf(&b, `  - name: stun
    vip: 127.0.0.1
    ports: ["%d/udp"]
    health: {type: stun, interval: 1s, timeout: 500ms, rise: 1, fall: 1}
    udp: {idle_timeout: 2s}
    real_servers:
`, udpPort)
		for _, s := range udps {
			fmt.Fprintf(&b, "      - {address: \"%s\"}\n", s.addr)
		}
		if variant == "b" {
			fmt.Fprintf(&b, `  - name: extra
    vip: 127.0.0.1
    ports: ["%d/tcp"]
    health: {type: none}
    real_servers: [{address: "%s"}]
`, extraPort, tcps[0].addr)
		}
		if variant == "bad" {
			b.WriteString("    bogus_key: true\n")
		}
		return b.String()
	}
	write := func(variant string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(conf(variant)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("a")

	proc := runPairlb(t, bin, file)
	pid := proc.pid()
	web := fmt.Sprintf("127.0.0.1:%d", webPort)
	vipUDP := fmt.Sprintf("127.0.0.1:%d", udpPort)
	waitReadyz(t, "http://"+adminAddr)

	// Warm up with the steady load and a flood each, so that the baseline holds what a running
	// daemon keeps (pools, buffers, runtime structures), then let it settle and measure.
	res := &soakResults{}
	warm, stopWarm := context.WithCancel(context.Background())
	var warmWG sync.WaitGroup
	soakSteady(warm, &warmWG, res, web, vipUDP, tcps, udps)
	soakFloods(warm, &warmWG, res, web, vipUDP)
	time.Sleep(5 * time.Second) // the warm-up is load for a fixed time, not a wait for a condition
	stopWarm()
	warmWG.Wait()
	if f := res.failures(); len(f) > 0 {
		t.Fatalf("failures during the warm-up, before any fault was injected:\n%s", strings.Join(f, "\n"))
	}
	baseFDs, baseRSS := settle(t, pid, 0, 0, 30*time.Second)
	t.Logf("baseline after warm-up: %d descriptors, RSS %d KiB", baseFDs, baseRSS>>10)

	// The soak: steady clients, floods, kills and reloads, all at once.
	res = &soakResults{}
	ctx, stop := context.WithTimeout(context.Background(), soakFor)
	defer stop()
	var wg sync.WaitGroup
	soakSteady(ctx, &wg, res, web, vipUDP, tcps, udps)
	soakFloods(ctx, &wg, res, web, vipUDP)
	var reloads, rejected, kills atomic.Int64
	wg.Add(2)
	go func() { // the reloads
		defer wg.Done()
		tick := time.NewTicker(700 * time.Millisecond)
		defer tick.Stop()
		for n := 0; ; n++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			variant := []string{"b", "a", "bad", "b", "a"}[n%5]
			write(variant)
			if n%3 == 0 {
				code, body := soakReload(adminAddr)
				switch {
				case variant == "bad" && code != http.StatusUnprocessableEntity:
					res.fail("admin reload of an invalid file: %d %s", code, body)
				case variant != "bad" && code != http.StatusOK:
					res.fail("admin reload: %d %s", code, body)
				}
			} else if err := proc.cmd.Process.Signal(syscall.SIGHUP); err != nil {
				res.fail("SIGHUP: %v", err) // not t.Fatal: this is not the test's goroutine
				return
			}
			reloads.Add(1)
			if variant == "bad" {
				rejected.Add(1)
			}
		}
	}()
	killLoop := func(every, down time.Duration, kill func(n int) func()) {
		defer wg.Done()
		for n := 0; ; n++ {
			select {
			case <-ctx.Done():
				return
			case <-time.After(every):
			}
			restart := kill(n)
			kills.Add(1)
			select {
			case <-ctx.Done():
			case <-time.After(down):
			}
			restart()
		}
	}
	// One TCP server down at a time for 2 s; one UDP server down at a time for 5 s, longer
	// than a session may stay on a dead server (udpMoveBound).
	go killLoop(3*time.Second, 2*time.Second, func(n int) func() {
		s := tcps[n%len(tcps)]
		s.kill()
		return func() { s.restart(t) }
	})
	wg.Add(1)
	go killLoop(7*time.Second, 5*time.Second, func(n int) func() {
		s := udps[n%len(udps)]
		s.kill()
		return func() { s.restart(t) }
	})
	wg.Wait()
	t.Logf("soak over %s: %d TCP exchanges, %d UDP exchanges, %d flood connections, %d flood datagrams, %d reloads (%d invalid), %d kills; excused by a kill: %d",
		soakFor, res.tcpOK.Load(), res.udpOK.Load(), res.floodConns.Load(), res.floodDatagrams.Load(),
		reloads.Load(), rejected.Load(), kills.Load(), res.excused.Load())
	if f := res.failures(); len(f) > 0 {
		t.Errorf("%d exchanges with healthy servers failed:\n%s", len(f), strings.Join(f, "\n"))
	}
	if res.tcpOK.Load() == 0 || res.udpOK.Load() == 0 || reloads.Load() < 10 || kills.Load() < 4 {
		t.Errorf("the soak did too little to mean anything")
	}

	// Back where it started: open connections close, UDP sessions idle out, and the
	// descriptors and memory they held are given back.
	write("a")
	proc.signal(t, syscall.SIGHUP)
	fds, rss := settle(t, pid, baseFDs, baseRSS, 60*time.Second)
	t.Logf("after the soak: %d descriptors, RSS %d KiB", fds, rss>>10)

	proc.stop(t, 15*time.Second)
}

// rssSlack is how far above the baseline pairlb's RSS may settle: the Go runtime returns freed
// memory to the system gradually and keeps some of its heap for reuse, so "back to the start"
// is within a few MiB, not to the page; a leak of the load's connections or sessions would be
// far more (the load opens tens of thousands).
const rssSlack = 8 << 20

// settle polls pid until its descriptors are at most wantFDs and its RSS at most wantRSS +
// rssSlack (with wantFDs 0: until the descriptor count is stable for two seconds), and returns
// the last figures. It fails the test when that does not happen within limit.
func settle(t *testing.T, pid, wantFDs int, wantRSS int64, limit time.Duration) (int, int64) {
	t.Helper()
	deadline := time.Now().Add(limit)
	var fds, low int
	var rss int64
	stableSince := time.Now()
	for {
		fds, rss = procFDs(t, pid), procRSS(t, pid)
		if wantFDs == 0 {
			// Health probes open descriptors for a moment: the baseline is the lowest count,
			// once it has held for a while.
			if low == 0 || fds < low {
				low, stableSince = fds, time.Now()
			}
			if time.Since(stableSince) > 2*time.Second {
				return low, rss
			}
		} else if fds <= wantFDs && rss <= wantRSS+rssSlack {
			return fds, rss
		}
		if time.Now().After(deadline) {
			t.Fatalf("pairlb did not settle within %s: %d descriptors (want at most %d), RSS %d KiB (want at most %d KiB)\n%s",
				limit, fds, wantFDs, rss>>10, (wantRSS+rssSlack)>>10, fdList(pid))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func procFDs(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func fdList(pid int) string {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	counts := map[string]int{}
	for _, e := range ents {
		l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		if i := strings.Index(l, ":["); i > 0 {
			l = l[:i]
		}
		counts[l]++
	}
	out := fmt.Sprintf("descriptors by kind: %v", counts)
	// The sockets themselves, when ss is there: which one is left says what leaked.
	if b, err := exec.Command("ss", "-tuanpe").Output(); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, fmt.Sprintf("pid=%d,", pid)) {
				out += "\n" + l
			}
		}
	}
	return out
}

func procRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS %q: %v", v, err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

func waitReadyz(t *testing.T, base string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := soakHTTP.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("pairlb not ready after 15 s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// soakHTTP asks pairlb's admin API without keeping connections open, which would count among
// the descriptors the test compares.
var soakHTTP = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

func soakReload(admin string) (int, string) {
	resp, err := soakHTTP.Post("http://"+admin+"/api/v1/reload", "", nil)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(b)
}

// soakResults collects what the clients saw. A failure is an exchange that failed while its
// server was not killed during it; one that a kill explains is only counted.
type soakResults struct {
	tcpOK, udpOK, excused      atomic.Int64
	floodConns, floodDatagrams atomic.Int64
	mu                         sync.Mutex
	fails                      []string
	more                       int
}

func (r *soakResults) fail(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.fails) < 30 {
		r.fails = append(r.fails, time.Now().Format("15:04:05.000 ")+fmt.Sprintf(format, args...))
	} else {
		r.more++
	}
}

func (r *soakResults) failures() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := append([]string(nil), r.fails...)
	if r.more > 0 {
		out = append(out, fmt.Sprintf("... and %d more", r.more))
	}
	return out
}

// kills is the number of kills so far across all servers, to tell whether one happened during
// an exchange whose server is unknown (a connection cut before the greeting).
var soakKills atomic.Int64

// soakSteady starts the clients whose exchanges must all succeed unless a kill explains it: 10
// long TCP connections that echo every 100 ms, 2 loops of short TCP connections, and 6 UDP
// clients that each keep one source port.
func soakSteady(ctx context.Context, wg *sync.WaitGroup, res *soakResults, web, vip string, tcps []*soakTCPServer, udps []*soakUDPServer) {
	byName := map[string]*soakTCPServer{}
	for _, s := range tcps {
		byName[s.name] = s
	}
	udpByName := map[string]*soakUDPServer{}
	for _, s := range udps {
		udpByName[s.name] = s
	}
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			soakLongTCP(ctx, res, web, byName, i)
		}()
	}
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				soakShortTCP(res, web, byName)
			}
		}()
	}
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			soakUDPClient(ctx, res, vip, udpByName, i)
		}()
	}
}

// soakLongTCP keeps a connection open and echoes a line on it every 100 ms; when the
// connection breaks because its server was killed, it opens another.
func soakLongTCP(ctx context.Context, res *soakResults, web string, servers map[string]*soakTCPServer, id int) {
	for ctx.Err() == nil {
		kills := soakKills.Load()
		gens := generations(servers)
		c, err := net.DialTimeout("tcp", web, 2*time.Second)
		if err != nil {
			res.fail("long %d: connect: %v", id, err)
			time.Sleep(100 * time.Millisecond) // pace the retries of a failing client
			continue
		}
		r := bufio.NewReader(c)
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		name, err := r.ReadString('\n')
		if err != nil {
			if soakKills.Load() != kills {
				res.excused.Add(1)
			} else {
				res.fail("long %d: greeting: %v", id, err)
			}
			c.Close()
			continue
		}
		srv := servers[strings.TrimSpace(name)]
		if srv == nil {
			res.fail("long %d: greeting from an unknown server %q", id, name)
			c.Close()
			continue
		}
		gen := gens[srv.name]
		for n := 0; ctx.Err() == nil; n++ {
			msg := fmt.Sprintf("long-%d-%d\n", id, n)
			_ = c.SetDeadline(time.Now().Add(3 * time.Second))
			_, err := io.WriteString(c, msg)
			var got string
			if err == nil {
				got, err = r.ReadString('\n')
			}
			if err == nil && got != msg {
				err = fmt.Errorf("echo %q, want %q", got, msg)
			}
			if err != nil {
				if srv.generation() != gen {
					res.excused.Add(1)
				} else {
					res.fail("long %d on %s (not killed): %v", id, srv.name, err)
				}
				break
			}
			res.tcpOK.Add(1)
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
		c.Close()
	}
}

// generations snapshots every server's kill count, taken before a connection is opened so that a
// kill between the server's greeting and the client's reading it still excuses the failure.
func generations(servers map[string]*soakTCPServer) map[string]int64 {
	g := make(map[string]int64, len(servers))
	for name, s := range servers {
		g[name] = s.generation()
	}
	return g
}

// soakShortTCP opens a connection, reads the greeting, echoes one line and closes.
func soakShortTCP(res *soakResults, web string, servers map[string]*soakTCPServer) {
	kills := soakKills.Load()
	gens := generations(servers)
	c, err := net.DialTimeout("tcp", web, 2*time.Second)
	if err != nil {
		res.fail("short: connect: %v", err)
		time.Sleep(100 * time.Millisecond) // pace the retries of a failing client
		return
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	r := bufio.NewReader(c)
	name, err := r.ReadString('\n')
	var srv *soakTCPServer
	var gen int64
	if err == nil {
		if srv = servers[strings.TrimSpace(name)]; srv == nil {
			res.fail("short: greeting from an unknown server %q", name)
			return
		}
		gen = gens[srv.name]
		_, err = io.WriteString(c, "short\n")
		var got string
		if err == nil {
			got, err = r.ReadString('\n')
		}
		if err == nil && got != "short\n" {
			err = fmt.Errorf("echo %q", got)
		}
	}
	switch {
	case err == nil:
		res.tcpOK.Add(1)
	case srv != nil && srv.generation() != gen, srv == nil && soakKills.Load() != kills:
		res.excused.Add(1)
	default:
		res.fail("short: %v (server %v)", err, name)
	}
}

// soakUDPClient sends a numbered datagram from one source port every 100 ms, as a STUN or media
// client does, and wants each echoed by its server within three tries.
func soakUDPClient(ctx context.Context, res *soakResults, vip string, servers map[string]*soakUDPServer, id int) {
	c, err := net.Dial("udp", vip)
	if err != nil {
		res.fail("udp %d: %v", id, err)
		return
	}
	defer c.Close()
	buf := make([]byte, 1500)
	var last *soakUDPServer // the server of the last answer
	var lastGen int64
	for n := 0; ctx.Err() == nil; n++ {
		msg := fmt.Sprintf("udp-%d-%d", id, n)
		ok := false
	tries:
		for range 3 {
			if _, err := c.Write([]byte(msg)); err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
				res.fail("udp %d: write: %v", id, err)
			}
			_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			for {
				k, err := c.Read(buf)
				if err != nil {
					if errors.Is(err, syscall.ECONNREFUSED) {
						continue // an ICMP error relayed from an earlier datagram
					}
					break // timed out: send again
				}
				name, body, _ := bytes.Cut(buf[:k], []byte(" "))
				if string(body) != msg {
					continue // a late answer to an earlier try
				}
				if last = servers[string(name)]; last == nil {
					res.fail("udp %d: answer from an unknown server %q", id, name)
					return
				}
				lastGen = last.generation()
				ok = true
				break tries
			}
		}
		switch {
		case ok:
			res.udpOK.Add(1)
		case last != nil && last.generation() != lastGen && time.Since(last.killedAt()) < udpMoveBound:
			res.excused.Add(1) // its server was killed: the session moves once health says so
		case last == nil && time.Since(lastUDPKill()) < udpMoveBound:
			res.excused.Add(1) // its first server was killed before answering
		case last == nil:
			res.fail("udp %d: no answer to %s in 3 tries, no server killed lately", id, msg)
		default:
			res.fail("udp %d: no answer to %s in 3 tries; its server %s was not killed in the last %s", id, msg, last.name, udpMoveBound)
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// soakFloods starts the floods: every 2 s a burst of 300 TCP connections opened at once and
// closed without a byte, and a burst of 1,000 datagrams from 200 new source ports (new UDP
// sessions that idle out). Each burst is bounded; the floods stop with ctx.
func soakFloods(ctx context.Context, wg *sync.WaitGroup, res *soakResults, web, vip string) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			var burst sync.WaitGroup
			for range 300 {
				burst.Add(1)
				go func() {
					defer burst.Done()
					c, err := net.DialTimeout("tcp", web, 2*time.Second)
					if err != nil {
						res.fail("flood: connect: %v", err)
						return
					}
					res.floodConns.Add(1)
					c.Close()
				}()
			}
			burst.Wait()
			select {
			case <-ctx.Done():
			case <-time.After(2 * time.Second):
			}
		}
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			for range 200 {
				c, err := net.Dial("udp", vip)
				if err != nil {
					res.fail("udp flood: %v", err)
					return
				}
				for range 5 {
					if _, err := c.Write([]byte("flood")); err == nil {
						res.floodDatagrams.Add(1)
					}
				}
				c.Close()
			}
			select {
			case <-ctx.Done():
			case <-time.After(2 * time.Second):
			}
		}
	}()
}

// soakTCPServer greets each connection with its name and echoes lines. kill closes the
// listener and cuts every connection with a reset; restart listens again on the same address.
type soakTCPServer struct {
	name, addr string
	gen        atomic.Int64 // incremented by each kill

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func startSoakTCP(t *testing.T, addr, name string) *soakTCPServer {
	t.Helper()
	s := &soakTCPServer{name: name, conns: map[net.Conn]struct{}{}}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s.addr = ln.Addr().String()
	s.serve(ln)
	t.Cleanup(func() { s.kill(); s.wg.Wait() })
	return s
}

func (s *soakTCPServer) generation() int64 { return s.gen.Load() }

func (s *soakTCPServer) serve(ln net.Listener) {
	s.mu.Lock()
	s.ln = ln
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			if s.ln != ln { // killed meanwhile
				s.mu.Unlock()
				c.Close()
				continue
			}
			s.conns[c] = struct{}{}
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer func() {
					s.mu.Lock()
					delete(s.conns, c)
					s.mu.Unlock()
					c.Close()
				}()
				if _, err := fmt.Fprintf(c, "%s\n", s.name); err != nil {
					return
				}
				_, _ = io.Copy(c, c)
			}()
		}
	}()
}

func (s *soakTCPServer) kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return
	}
	s.gen.Add(1)
	soakKills.Add(1)
	s.ln.Close()
	s.ln = nil
	for c := range s.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		c.Close()
	}
}

func (s *soakTCPServer) restart(t *testing.T) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		ln, err := net.Listen("tcp", s.addr)
		if err == nil {
			s.serve(ln)
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("restarting %s on %s: %v", s.name, s.addr, err)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// udpMoveBound is how long a UDP client may go unanswered after its server was killed: health
// (interval 1 s, timeout 500 ms, fall 1, sped up by the ICMP errors the client's datagrams
// draw) marks the server down, and the client's next datagram moves its session.
const udpMoveBound = 3 * time.Second

// lastUDPKillNanos is when a UDP server was last killed (unix nanoseconds).
var lastUDPKillNanos atomic.Int64

func lastUDPKill() time.Time { return time.Unix(0, lastUDPKillNanos.Load()) }

// soakUDPServer answers a STUN binding request with a success (the health check) and any
// other datagram with "NAME DATAGRAM". kill closes its socket, so datagrams to it draw ICMP
// port unreachable, as from a crashed server; restart binds the same address again.
type soakUDPServer struct {
	name, addr string
	gen        atomic.Int64
	killed     atomic.Int64 // unix nanoseconds of the last kill

	mu   sync.Mutex
	conn net.PacketConn
	wg   sync.WaitGroup
}

func startSoakUDP(t *testing.T, addr, name string) *soakUDPServer {
	t.Helper()
	s := &soakUDPServer{name: name}
	c, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s.addr = c.LocalAddr().String()
	s.serve(c)
	t.Cleanup(func() { s.kill(); s.wg.Wait() })
	return s
}

func (s *soakUDPServer) generation() int64 { return s.gen.Load() }

func (s *soakUDPServer) killedAt() time.Time { return time.Unix(0, s.killed.Load()) }

func (s *soakUDPServer) serve(c net.PacketConn) {
	s.mu.Lock()
	s.conn = c
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			msg := buf[:n]
			var out []byte
			if n >= 20 && binary.BigEndian.Uint16(msg[0:]) == 0x0001 && binary.BigEndian.Uint32(msg[4:]) == 0x2112A442 {
				out = make([]byte, 20) // Binding Success, no attributes, the request's transaction
				binary.BigEndian.PutUint16(out[0:], 0x0101)
				binary.BigEndian.PutUint32(out[4:], 0x2112A442)
				copy(out[8:], msg[8:20])
			} else {
				out = append([]byte(s.name+" "), msg...)
			}
			_, _ = c.WriteTo(out, from)
		}
	}()
}

func (s *soakUDPServer) kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil {
		return
	}
	s.gen.Add(1)
	soakKills.Add(1)
	now := time.Now().UnixNano()
	s.killed.Store(now)
	lastUDPKillNanos.Store(now)
	s.conn.Close()
	s.conn = nil
}

func (s *soakUDPServer) restart(t *testing.T) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.ListenPacket("udp", s.addr)
		if err == nil {
			s.serve(c)
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("restarting %s on %s: %v", s.name, s.addr, err)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}
