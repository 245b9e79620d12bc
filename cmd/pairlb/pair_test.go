package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/pairlb/pairlb/config"
	"github.com/pairlb/pairlb/internal/netns"
	"github.com/pairlb/pairlb/internal/testenv"
	"github.com/pairlb/pairlb/pair"
)

// The failover test: two pairlb nodes, each with its keepalived, on a shared client segment (a
// bridge in a namespace of its own), three echo servers behind them and a client dialing from
// 200 source addresses. All addresses are in 198.18.0.0/15.
//
//	client 198.18.0.100, 198.18.1.1-200 ─┐              ┌─ eth2 198.19.0.2 lb1
//	          lb1 eth1 198.18.0.2 ───────┤ br: front    │
//	          lb2 eth1 198.18.0.3 ───────┘     back ────┼─ eth2 198.19.0.3 lb2
//	          VIP 198.18.0.10:8080                      └─ servers 198.19.0.11-13 :8080 (:8081 health)
const (
	foVIP     = "198.18.0.10"
	foPort    = 8080
	foHealth  = 8081
	foClients = 200
)

var foServers = []string{"198.19.0.11", "198.19.0.12", "198.19.0.13"}

const foConfig = `global:
  admin: 127.0.0.1:9090   # the peer comes in on pair.nodes[].admin
  manage_addresses: false
  drain_timeout: 2s
virtual_services:
  - name: echo
    vip: 198.18.0.10
    ports: ["8080/tcp"]
    persistence: {type: source-ip, timeout: 1200s}
    health: {type: tcp, port: 8081, interval: 1s, initial: up}
    real_servers: [{address: 198.19.0.11}, {address: 198.19.0.12}, {address: 198.19.0.13}]
pair:
  networks:
    - {name: front, interface: eth1, prefix: 198.18.0.0/23, vrid: 51}
  nodes:
    - {name: lb1, priority: 150, addresses: {front: 198.18.0.2}, admin: 198.18.0.2:9090}
    - {name: lb2, priority: 100, addresses: {front: 198.18.0.3}, admin: 198.18.0.3:9090}
  advert_interval: 1s
  preempt: false
`

// proc is a process the test started in a namespace, reaped by its own goroutine.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

// startIn starts name in ns with its output appended to logFile. The shell execs the
// program, so the PID is the program's own. The process is killed when top, the whole test
// (not a subtest, which may end before the process should), ends.
func startIn(t, top *testing.T, ns *netns.NS, logFile, name string, args ...string) *proc {
	t.Helper()
	sh := append([]string{"-c", `exec "$0" "$@" >>` + logFile + ` 2>&1`, name}, args...)
	cmd, err := ns.Start("/bin/sh", sh...)
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{}), log: logFile}
	go func() { _ = cmd.Wait(); close(p.done) }()
	top.Cleanup(func() { p.stop(syscall.SIGKILL) })
	return p
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop signals the process (by its PID) and waits up to 5 s for it to exit.
func (p *proc) stop(sig syscall.Signal) bool {
	if p.alive() {
		_ = syscall.Kill(p.pid(), sig)
	}
	select {
	case <-p.done:
		return true
	case <-time.After(5 * time.Second):
		return false
	}
}

func (p *proc) output() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// foNode is one pairlb node with its keepalived.
type foNode struct {
	top    *testing.T // owns the node's processes
	name   string
	ns     *netns.NS
	dir    string
	lb, ka *proc
	runs   int
}

func (n *foNode) startPairlb(t *testing.T, bin, conf string) {
	t.Helper()
	n.runs++
	n.lb = startIn(t, n.top, n.ns, filepath.Join(n.dir, fmt.Sprintf("pairlb-%d.log", n.runs)), bin, "run", "-c", conf)
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _ := n.ns.Run(context.Background(), "ss", "-Hltn", fmt.Sprintf("sport = :%d", foPort))
		if len(bytes.TrimSpace(out)) > 0 {
			return
		}
		if !n.lb.alive() || time.Now().After(deadline) {
			t.Fatalf("pairlb on %s is not listening on :%d:\n%s", n.name, foPort, n.lb.output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (n *foNode) startKeepalived(t *testing.T, keepalived string) {
	t.Helper()
	for _, f := range []string{"keepalived.pid", "vrrp.pid"} {
		_ = os.Remove(filepath.Join(n.dir, f))
	}
	n.ka = startIn(t, n.top, n.ns, filepath.Join(n.dir, fmt.Sprintf("keepalived-%d.log", n.runs)), keepalived,
		"-n", "-l", "-D", "-P", "-f", filepath.Join(n.dir, "keepalived.conf"),
		"-p", filepath.Join(n.dir, "keepalived.pid"), "-r", filepath.Join(n.dir, "vrrp.pid"))
	ka := n.ka
	n.top.Cleanup(func() {
		if pid := vrrpChildOf(n.dir, ka); pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
}

// vrrpChild is the PID of keepalived's VRRP process, 0 while unknown. It is trusted only while
// it is a child of the keepalived this node started.
func (n *foNode) vrrpChild() int { return vrrpChildOf(n.dir, n.ka) }

func vrrpChildOf(dir string, ka *proc) int {
	if ka == nil || !ka.alive() {
		return 0
	}
	b, err := os.ReadFile(filepath.Join(dir, "vrrp.pid"))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil || !bytes.Contains(status, []byte(fmt.Sprintf("\nPPid:\t%d\n", ka.pid()))) {
		return 0
	}
	return pid
}

// accepted is the sum of connections_total over the node's virtual services, from its admin
// API's GET /api/v1/status.
func (n *foNode) accepted(t *testing.T) uint64 {
	t.Helper()
	st, err := nsAdmin(n.ns, "127.0.0.1:9090").Status(context.Background())
	if err != nil {
		t.Fatalf("%s: status: %v", n.name, err)
	}
	var sum uint64
	for _, vs := range st.VirtualServices {
		sum += vs.Accepted
	}
	return sum
}

// render writes the node's keepalived.conf, its scripts running bin.
func (n *foNode) render(t *testing.T, cfg *config.Config, bin string) {
	t.Helper()
	out, err := pair.RenderKeepalived(cfg, n.name, pair.KeepalivedOptions{Binary: bin})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(n.dir, "keepalived.conf"), out, 0o600); err != nil {
		t.Fatal(err)
	}
}

// hasVIP reports whether the VIP is on the node's eth1.
func (n *foNode) hasVIP(t *testing.T) bool {
	l, err := n.ns.Link("eth1")
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := n.ns.Handle().AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if a.IP.String() == foVIP {
			return true
		}
	}
	return false
}

func (n *foNode) waitLog(t *testing.T, p *proc, want string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !strings.Contains(p.output(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %q within %s:\n%s", n.name, want, within, p.output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func mustOK(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// echoServers serve each address's name on foPort and accept health probes on foHealth. from
// counts the service connections by the source address they came from (the node's own).
type echoServers struct {
	mu   sync.Mutex
	from map[string]int
}

func (e *echoServers) count(src string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.from[src]
}

func startEchoServers(t *testing.T, ns *netns.NS) *echoServers {
	t.Helper()
	e := &echoServers{from: map[string]int{}}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var lns []net.Listener
	conns := map[net.Conn]bool{}
	serve := func(ln net.Listener, handle func(net.Conn)) {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				handle(c)
				c.Close()
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			}()
		}
	}
	for i, addr := range foServers {
		name := fmt.Sprintf("fe%d", i+1)
		err := ns.Do(func() error {
			svc, err := net.Listen("tcp", net.JoinHostPort(addr, strconv.Itoa(foPort)))
			if err != nil {
				return err
			}
			lns = append(lns, svc)
			hc, err := net.Listen("tcp", net.JoinHostPort(addr, strconv.Itoa(foHealth)))
			if err != nil {
				return err
			}
			lns = append(lns, hc)
			wg.Add(2)
			go serve(svc, func(c net.Conn) {
				src, _, _ := net.SplitHostPort(c.RemoteAddr().String())
				e.mu.Lock()
				e.from[src]++
				e.mu.Unlock()
				fmt.Fprintf(c, "%s\n", name)
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				_, _ = io.Copy(c, c)
			})
			go serve(hc, func(net.Conn) {})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, ln := range lns {
			ln.Close()
		}
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return e
}

// ask opens a new connection to the VIP from src in the client namespace and returns the name
// the real server greets it with.
func ask(ns *netns.NS, src netip.Addr, timeout time.Duration) (string, error) {
	var name string
	err := ns.Do(func() error {
		d := net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
		c, err := d.Dial("tcp", net.JoinHostPort(foVIP, strconv.Itoa(foPort)))
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * timeout))
		line, err := bufio.NewReader(c).ReadString('\n')
		name = strings.TrimSpace(line)
		return err
	})
	return name, err
}

// untilServed dials new connections from src until one is served, at most every 20 ms, for at
// most limit; it returns how long that took and how many attempts failed.
func untilServed(ns *netns.NS, src netip.Addr, start time.Time, limit time.Duration) (time.Duration, int, error) {
	failed := 0
	for attempt := 0; attempt < 2000; attempt++ {
		if _, err := ask(ns, src, 100*time.Millisecond); err == nil {
			return time.Since(start), failed, nil
		}
		failed++
		if time.Since(start) > limit {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start), failed, fmt.Errorf("no connection served within %s (%d attempts failed)", limit, failed)
}

// waitReady waits for the node's pairlb to answer /readyz with 200, as keepalived's track
// script (`pairlb keepalived check`) asks it.
func waitReady(t *testing.T, n *foNode) {
	t.Helper()
	var err error
	if !testenv.Eventually(10*time.Second, func() bool {
		err = nsAdmin(n.ns, "127.0.0.1:9090").Ready(context.Background())
		return err == nil
	}) {
		t.Fatalf("%s: /readyz: %v", n.name, err)
	}
}

// TestPairFailover runs two pairlb nodes with keepalived in namespaces and checks that a crash
// of the active node moves service to the standby within VRRP's master-down interval, that a
// graceful stop moves it within a second, that persistent clients land on the same real
// servers, and that the standby neither served traffic nor restarted before taking over.
func TestPairFailover(t *testing.T) {
	netns.RequireRoot(t)
	keepalived := testenv.Program(t, "keepalived", "keepalived")
	if testing.Short() {
		t.Skip("-short: the failover test takes about 30 s")
	}
	bin := testenv.Pairlb(t)

	lab := netns.ForTest(t)
	mk := func(short string) *netns.NS { return lab.MustNamespace(t, short) }
	br, cli, srv := mk("br"), mk("cli"), mk("srv")
	front, err := br.Bridge("front")
	if err != nil {
		t.Fatal(err)
	}
	back, err := br.Bridge("back")
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) { // only in the test's own goroutine, not in subtests
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	pfx := netip.MustParsePrefix
	must(lab.Veth(cli, "eth0", br, "cf"))
	must(front("cf"))
	must(lab.Veth(srv, "eth0", br, "sb"))
	must(back("sb"))
	clientAddrs := []netip.Prefix{pfx("198.18.0.100/23")}
	for i := 1; i <= foClients; i++ {
		clientAddrs = append(clientAddrs, netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 1, byte(i)}), 23))
	}
	must(cli.AddAddr("eth0", clientAddrs...))
	for _, s := range foServers {
		must(srv.AddAddr("eth0", pfx(s+"/24")))
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "pairlb.yaml")
	writeFile(t, conf, foConfig)
	cfg, err := config.Load(conf)
	if err != nil {
		t.Fatal(err)
	}

	nodes := map[string]*foNode{}
	for i, name := range []string{"lb1", "lb2"} {
		n := &foNode{top: t, name: name, ns: mk(name), dir: filepath.Join(dir, name)}
		must(os.Mkdir(n.dir, 0o755))
		must(lab.Veth(n.ns, "eth1", br, fmt.Sprintf("l%df", i+1)))
		must(front(fmt.Sprintf("l%df", i+1)))
		must(lab.Veth(n.ns, "eth2", br, fmt.Sprintf("l%db", i+1)))
		must(back(fmt.Sprintf("l%db", i+1)))
		must(n.ns.AddAddr("eth1", pfx(fmt.Sprintf("198.18.0.%d/23", i+2))))
		must(n.ns.AddAddr("eth2", pfx(fmt.Sprintf("198.19.0.%d/24", i+2))))
		// README "Running the pair": answer ARP only for addresses of the asking interface and
		// announce the right source on each segment.
		must(n.ns.Sysctl("net.ipv4.conf.all.arp_ignore", "1"))
		must(n.ns.Sysctl("net.ipv4.conf.all.arp_announce", "2"))
		nodes[name] = n
	}
	lb1, lb2 := nodes["lb1"], nodes["lb2"]
	servers := startEchoServers(t, srv)
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range nodes {
				for _, p := range []*proc{n.lb, n.ka} {
					if p != nil {
						t.Logf("%s %s:\n%s", n.name, filepath.Base(p.log), p.output())
					}
				}
			}
		}
	})

	for _, n := range []*foNode{lb1, lb2} {
		n.startPairlb(t, bin, conf)
		waitReady(t, n)
		n.render(t, cfg, bin)
	}
	// lb1 first, so that it is master before lb2 starts: with nopreempt, whichever node is master
	// stays master.
	lb1.startKeepalived(t, keepalived)
	lb1.waitLog(t, lb1.ka, "Entering MASTER STATE", 10*time.Second)
	lb2.startKeepalived(t, keepalived)
	lb2.waitLog(t, lb2.ka, "Entering BACKUP STATE", 10*time.Second)
	if !lb1.hasVIP(t) || lb2.hasVIP(t) {
		t.Fatalf("VIP on lb1 %v, on lb2 %v; want lb1 only", lb1.hasVIP(t), lb2.hasVIP(t))
	}
	// The track script is `pairlb keepalived check` asking the node's /readyz.
	for _, n := range []*foNode{lb1, lb2} {
		n.waitLog(t, n.ka, "VRRP_Script(pairlb_ready) succeeded", 5*time.Second)
	}
	// `pairlb pair check` on the standby asks both nodes' admin APIs: they agree.
	if out, err := lb2.ns.Run(context.Background(), bin, "pair", "check", "-c", conf); err != nil || !strings.Contains(string(out), "pair lb2/lb1 agrees") {
		t.Errorf("pair check on lb2: %v\n%s", err, out)
	}

	probe := netip.MustParseAddr("198.18.0.100")
	if _, _, err := untilServed(cli, probe, time.Now(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	sources := make([]netip.Addr, foClients)
	before := make([]string, foClients)
	for i := range sources {
		sources[i] = clientAddrs[i+1].Addr()
		if before[i], err = ask(cli, sources[i], time.Second); err != nil {
			t.Fatalf("client %s before failover: %v", sources[i], err)
		}
	}
	// (d) The standby served nothing: every service connection so far came from lb1, and lb2's
	// own counters agree.
	if n := servers.count("198.19.0.3"); n != 0 {
		t.Errorf("the standby lb2 forwarded %d connections before failover", n)
	}
	if n := lb2.accepted(t); n != 0 {
		t.Errorf("the standby lb2 accepted %d connections before failover", n)
	}
	if servers.count("198.19.0.2") < foClients {
		t.Errorf("lb1 forwarded %d connections, want at least %d", servers.count("198.19.0.2"), foClients)
	}
	standbyPID := lb2.lb.pid()

	t.Run("crash", func(t *testing.T) {
		// (a) The active node dies: both keepalived processes and pairlb, SIGKILL, by PID.
		child := lb1.vrrpChild()
		if child == 0 {
			t.Fatal("no VRRP child of lb1's keepalived")
		}
		mustOK(t, syscall.Kill(child, syscall.SIGKILL))
		mustOK(t, syscall.Kill(lb1.ka.pid(), syscall.SIGKILL))
		mustOK(t, syscall.Kill(lb1.lb.pid(), syscall.SIGKILL))
		killed := time.Now()
		took, failed, err := untilServed(cli, probe, killed, 15*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("crash of the active node (advert_int 1s): new connections served again after %s, %d attempts failed", took.Round(time.Millisecond), failed)
		if took > 4*time.Second {
			t.Errorf("failover took %s, want under 4s with advert_int 1", took)
		}
		if !lb1.ka.stop(syscall.SIGKILL) || !lb1.lb.stop(syscall.SIGKILL) {
			t.Fatal("lb1's processes did not exit after SIGKILL")
		}
		if !lb2.hasVIP(t) {
			t.Error("the VIP is not on lb2")
		}

		// (c) Persistent clients land on the same real server: both nodes place a new client by
		// a rendezvous hash over the same servers.
		same := 0
		for i, src := range sources {
			got, err := ask(cli, src, time.Second)
			if err == nil && got == before[i] {
				same++
			} else if err != nil {
				t.Logf("client %s after failover: %v", src, err)
			}
		}
		t.Logf("after failover %d of %d clients are on the same real server", same, foClients)
		if same*100 < foClients*99 {
			t.Errorf("%d of %d clients on the same real server after failover, want at least 99%%", same, foClients)
		}

		// (d) The standby took over without a restart, and its connections reach the servers.
		if !lb2.lb.alive() || lb2.lb.pid() != standbyPID {
			t.Errorf("pairlb on lb2 restarted or died (PID %d, was %d)", lb2.lb.pid(), standbyPID)
		}
		if servers.count("198.19.0.3") < foClients {
			t.Errorf("lb2 forwarded %d connections after failover, want at least %d", servers.count("198.19.0.3"), foClients)
		}
	})
	if t.Failed() {
		return
	}

	t.Run("graceful", func(t *testing.T) {
		// lb1 comes back as backup (nopreempt: it does not take the VIP back) and removes the VIP
		// its killed keepalived left behind.
		lb1.startPairlb(t, bin, conf)
		lb1.startKeepalived(t, keepalived)
		lb1.waitLog(t, lb1.ka, "Entering BACKUP STATE", 10*time.Second)
		deadline := time.Now().Add(5 * time.Second)
		for lb1.hasVIP(t) {
			if time.Now().After(deadline) {
				t.Fatal("lb1 still holds the VIP as backup")
			}
			time.Sleep(20 * time.Millisecond)
		}
		if !lb2.hasVIP(t) {
			t.Fatal("lb2 lost the VIP when lb1 came back")
		}
		lb1Before := servers.count("198.19.0.2")

		// (b) A graceful stop of the active keepalived: it sends priority 0 and the backup takes
		// over at once.
		mustOK(t, syscall.Kill(lb2.ka.pid(), syscall.SIGTERM))
		stopped := time.Now()
		var moved time.Duration
		for moved == 0 {
			if lb1.hasVIP(t) {
				moved = time.Since(stopped)
			} else if time.Since(stopped) > 10*time.Second {
				t.Fatal("the VIP did not reach lb1 within 10s of SIGTERM")
			}
			time.Sleep(5 * time.Millisecond)
		}
		took, failed, err := untilServed(cli, probe, stopped, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("graceful stop of the active keepalived: VIP on lb1 after %s, new connections served after %s, %d attempts failed",
			moved.Round(time.Millisecond), took.Round(time.Millisecond), failed)
		if moved > time.Second {
			t.Errorf("the VIP moved in %s, want under 1s", moved)
		}
		if took > time.Second {
			t.Errorf("new connections were served again after %s, want under 1s", took)
		}
		if !lb2.ka.stop(syscall.SIGTERM) {
			t.Error("lb2's keepalived did not exit within 5s of SIGTERM")
		}
		if lb2.hasVIP(t) {
			t.Error("lb2's keepalived left the VIP behind on a graceful stop")
		}
		if servers.count("198.19.0.2") <= lb1Before {
			t.Error("lb1 forwarded nothing after taking over")
		}
		if !lb2.lb.alive() || lb2.lb.pid() != standbyPID {
			t.Error("pairlb on lb2 died with its keepalived")
		}
	})

	if t.Failed() {
		return
	}

	t.Run("pairlb-dies", func(t *testing.T) {
		// lb1 is master, lb2's keepalived comes back as backup; then pairlb alone dies on lb1.
		// The track script fails twice (fall 2, interval 1s), lb1 goes to FAULT and gives the
		// VIP up with a priority-0 advertisement.
		lb2.runs++
		lb2.startKeepalived(t, keepalived)
		lb2.waitLog(t, lb2.ka, "Entering BACKUP STATE", 10*time.Second)
		if _, _, err := untilServed(cli, probe, time.Now(), 5*time.Second); err != nil {
			t.Fatal(err)
		}
		mustOK(t, syscall.Kill(lb1.lb.pid(), syscall.SIGKILL))
		killed := time.Now()
		took, failed, err := untilServed(cli, probe, killed, 15*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("pairlb killed on the active node, keepalived running: served again after %s, %d attempts failed", took.Round(time.Millisecond), failed)
		if took > 4*time.Second {
			t.Errorf("takeover took %s, want under 4s (two failed checks a second apart, then priority 0)", took)
		}
		lb1.waitLog(t, lb1.ka, "Entering FAULT STATE", 2*time.Second)
		if lb1.hasVIP(t) || !lb2.hasVIP(t) {
			t.Errorf("VIP on lb1 %v, on lb2 %v; want lb2 only", lb1.hasVIP(t), lb2.hasVIP(t))
		}
	})
	if t.Failed() {
		return
	}

	t.Run("crash-vrrpv3-200ms", func(t *testing.T) {
		// The same crash with VRRPv3 advertising every 200 ms: both keepalived stop gracefully,
		// lb1's pairlb restarts, and both come back on the faster configuration.
		for _, n := range []*foNode{lb2, lb1} {
			if !n.ka.stop(syscall.SIGTERM) {
				t.Fatalf("%s's keepalived did not stop", n.name)
			}
		}
		lb1.startPairlb(t, bin, conf)
		waitReady(t, lb1)
		v3 := *cfg
		pr := *cfg.Pair
		pr.VRRPVersion, pr.AdvertInterval = 3, 200*time.Millisecond
		v3.Pair = &pr
		for _, n := range []*foNode{lb1, lb2} {
			n.render(t, &v3, bin)
		}
		lb1.startKeepalived(t, keepalived)
		lb1.waitLog(t, lb1.ka, "Entering MASTER STATE", 10*time.Second)
		lb2.runs++
		lb2.startKeepalived(t, keepalived)
		lb2.waitLog(t, lb2.ka, "Entering BACKUP STATE", 10*time.Second)
		if _, _, err := untilServed(cli, probe, time.Now(), 5*time.Second); err != nil {
			t.Fatal(err)
		}
		child := lb1.vrrpChild()
		if child == 0 {
			t.Fatal("no VRRP child of lb1's keepalived")
		}
		mustOK(t, syscall.Kill(child, syscall.SIGKILL))
		mustOK(t, syscall.Kill(lb1.ka.pid(), syscall.SIGKILL))
		mustOK(t, syscall.Kill(lb1.lb.pid(), syscall.SIGKILL))
		killed := time.Now()
		took, failed, err := untilServed(cli, probe, killed, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("crash of the active node (VRRPv3, advert_int 0.2s): served again after %s, %d attempts failed", took.Round(time.Millisecond), failed)
		if took > time.Second {
			t.Errorf("failover took %s, want under 1s with 200 ms adverts", took)
		}
	})
}
