// Package netns builds throwaway network namespaces for pairlb's root tests, the bench and the
// lab: a Lab creates named namespaces with a prefix unique to the process ("plb-<pid>-<n>-"),
// refuses a name that already exists, links them with veth pairs (created directly inside the
// namespaces, never in the caller's), runs commands and Go code inside them, and deletes all of
// it, processes included, in Cleanup.
//
// It is not a general namespace library and never touches the caller's own namespace: there is
// no way to link a namespace to the host's interfaces. It needs root (CAP_SYS_ADMIN and
// CAP_NET_ADMIN).
package netns

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/pairlb/pairlb/internal/testenv"
)

// runDir is where iproute2 and vishvananda/netns keep named namespaces.
const runDir = "/var/run/netns"

var labSeq atomic.Int64

// Lab is a set of namespaces created together and deleted together.
type Lab struct {
	prefix string

	mu    sync.Mutex
	nss   []*NS
	procs []*exec.Cmd
	done  bool
}

// NS is one network namespace of a Lab.
type NS struct {
	lab    *Lab
	name   string
	handle vnetns.NsHandle
	nl     *netlink.Handle
}

// New returns an empty Lab whose namespaces are named "plb-<pid>-<n>-<short>".
func New() *Lab {
	return &Lab{prefix: fmt.Sprintf("plb-%d-%d-", os.Getpid(), labSeq.Add(1))}
}

// Available reports whether namespaces can be made here (running as root).
func Available() bool { return os.Geteuid() == 0 }

// Prefix is the prefix of every namespace name in the lab.
func (l *Lab) Prefix() string { return l.prefix }

// Namespace creates a namespace named Prefix()+short with its loopback up. It fails if a
// namespace of that name exists already.
func (l *Lab) Namespace(short string) (*NS, error) {
	name := l.prefix + short
	if len(name) > 64 || short == "" || filepath.Base(name) != name {
		return nil, fmt.Errorf("namespace name %q: invalid", name)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return nil, errors.New("lab is cleaned up")
	}
	if _, err := os.Stat(filepath.Join(runDir, name)); err == nil {
		return nil, fmt.Errorf("namespace %s exists already", name)
	}
	h, err := newNamed(name)
	if err != nil {
		return nil, fmt.Errorf("creating namespace %s: %w", name, err)
	}
	nlh, err := netlink.NewHandleAt(h)
	if err != nil {
		h.Close()
		_ = vnetns.DeleteNamed(name)
		return nil, fmt.Errorf("netlink handle in namespace %s: %w", name, err)
	}
	ns := &NS{lab: l, name: name, handle: h, nl: nlh}
	l.nss = append(l.nss, ns)
	lo, err := nlh.LinkByName("lo")
	if err == nil {
		err = nlh.LinkSetUp(lo)
	}
	if err != nil {
		return nil, fmt.Errorf("setting lo up in %s: %w", name, err)
	}
	return ns, nil
}

// newNamed creates and names a namespace on a locked thread, then returns the thread to the
// namespace it was in. A thread that cannot return stays locked and dies with its goroutine.
func newNamed(name string) (vnetns.NsHandle, error) {
	type result struct {
		h   vnetns.NsHandle
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := vnetns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{vnetns.None(), err}
			return
		}
		defer orig.Close()
		h, err := vnetns.NewNamed(name)
		if serr := vnetns.Set(orig); serr != nil {
			ch <- result{h, errors.Join(err, fmt.Errorf("returning to the original namespace: %w", serr))}
			return // the thread stays locked and is discarded
		}
		runtime.UnlockOSThread()
		ch <- result{h, err}
	}()
	r := <-ch
	return r.h, r.err
}

// Name is the namespace's full name, as `ip netns` shows it.
func (n *NS) Name() string { return n.name }

// Handle is a netlink handle working inside the namespace.
func (n *NS) Handle() *netlink.Handle { return n.nl }

// NsHandle is the namespace's file handle (valid until Cleanup).
func (n *NS) NsHandle() vnetns.NsHandle { return n.handle }

// Do runs f on a thread inside the namespace. Sockets f creates stay in the namespace after it
// returns, so a listener opened in Do can be served from any goroutine.
func (n *NS) Do(f func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := vnetns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- err
			return
		}
		defer orig.Close()
		if err := vnetns.Set(n.handle); err != nil {
			runtime.UnlockOSThread()
			ch <- fmt.Errorf("entering namespace %s: %w", n.name, err)
			return
		}
		ferr := f()
		if err := vnetns.Set(orig); err != nil {
			ch <- errors.Join(ferr, fmt.Errorf("leaving namespace %s: %w", n.name, err))
			return // the thread stays locked and is discarded
		}
		runtime.UnlockOSThread()
		ch <- ferr
	}()
	return <-ch
}

// DialContext connects from inside the namespace; the connection may then be used from any
// goroutine. As an http.Transport's DialContext it makes a client that asks servers inside the
// namespace (an ordinary client dials from goroutines outside it).
func (n *NS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Run runs a command inside the namespace (`ip netns exec`) and returns its combined output.
func (n *NS) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.name, name}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("running %s %q in %s: %w: %s", name, args, n.name, err, bytes.TrimSpace(out.Bytes()))
	}
	return out.Bytes(), nil
}

// Start starts a long-running command inside the namespace. Cleanup kills it (its process
// group) if it is still running; the caller may Wait for it first.
func (n *NS) Start(name string, args ...string) (*exec.Cmd, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.name, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	n.lab.mu.Lock()
	defer n.lab.mu.Unlock()
	if n.lab.done {
		return nil, errors.New("lab is cleaned up")
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s in %s: %w", name, n.name, err)
	}
	n.lab.procs = append(n.lab.procs, cmd)
	return cmd, nil
}

// Sysctl sets a sysctl inside the namespace ("net.ipv4.ip_forward", "1").
func (n *NS) Sysctl(key, value string) error {
	path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	return n.Do(func() error {
		// /proc/sys/net reflects the namespace of the process's thread that opens it.
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("setting %s=%s in %s: %w", key, value, n.name, err)
		}
		return nil
	})
}

// Link returns the link of that name inside the namespace.
func (n *NS) Link(name string) (netlink.Link, error) {
	l, err := n.nl.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("finding link %s in %s: %w", name, n.name, err)
	}
	return l, nil
}

// AddAddr adds addresses to a link inside the namespace. IPv6 addresses are added with nodad
// so they are usable at once.
func (n *NS) AddAddr(link string, prefixes ...netip.Prefix) error {
	l, err := n.Link(link)
	if err != nil {
		return err
	}
	for _, p := range prefixes {
		a := &netlink.Addr{IPNet: ipNet(p)}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := n.nl.AddrAdd(l, a); err != nil {
			return fmt.Errorf("adding %s to %s in %s: %w", p, link, n.name, err)
		}
	}
	return nil
}

// AddRoute adds a main-table route to dst via gw inside the namespace.
func (n *NS) AddRoute(dst netip.Prefix, gw netip.Addr) error {
	r := &netlink.Route{Dst: ipNet(dst), Gw: gw.AsSlice()}
	if err := n.nl.RouteAdd(r); err != nil {
		return fmt.Errorf("adding route %s via %s in %s: %w", dst, gw, n.name, err)
	}
	return nil
}

// SetLink sets a link inside the namespace up or down.
func (n *NS) SetLink(name string, up bool) error {
	l, err := n.Link(name)
	if err != nil {
		return err
	}
	if up {
		err = n.nl.LinkSetUp(l)
	} else {
		err = n.nl.LinkSetDown(l)
	}
	if err != nil {
		return fmt.Errorf("setting %s up=%v in %s: %w", name, up, n.name, err)
	}
	return nil
}

// Veth links two namespaces of the lab with a veth pair, aName in a and bName in b, both up.
// The pair is created inside a, so no interface ever appears in the caller's namespace.
func (l *Lab) Veth(a *NS, aName string, b *NS, bName string) error {
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: aName},
		PeerName:      bName,
		PeerNamespace: netlink.NsFd(int(b.handle)),
	}
	if err := a.nl.LinkAdd(v); err != nil {
		return fmt.Errorf("creating veth %s/%s between %s and %s: %w", aName, bName, a.name, b.name, err)
	}
	if err := a.SetLink(aName, true); err != nil {
		return err
	}
	return b.SetLink(bName, true)
}

// Bridge creates a bridge named name inside ns, up, and returns a function that attaches a
// port (a link already in ns) to it.
func (n *NS) Bridge(name string) (attach func(port string) error, err error) {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := n.nl.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("creating bridge %s in %s: %w", name, n.name, err)
	}
	if err := n.SetLink(name, true); err != nil {
		return nil, err
	}
	return func(port string) error {
		p, err := n.Link(port)
		if err != nil {
			return err
		}
		if err := n.nl.LinkSetMaster(p, br); err != nil {
			return fmt.Errorf("attaching %s to bridge %s in %s: %w", port, name, n.name, err)
		}
		return n.SetLink(port, true)
	}, nil
}

// Cleanup kills the processes the lab started and deletes its namespaces, with their links.
// It is safe to call more than once.
func (l *Lab) Cleanup() error {
	l.mu.Lock()
	procs, nss := l.procs, l.nss
	l.procs, l.nss, l.done = nil, nil, true
	l.mu.Unlock()

	var errs []error
	for _, cmd := range procs {
		if cmd.ProcessState != nil {
			continue // already waited for
		}
		// The process group of this one process we started (Setpgid), never a name.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		waited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(waited) }()
		select {
		case <-waited:
		case <-time.After(5 * time.Second):
			errs = append(errs, fmt.Errorf("process %d did not exit", cmd.Process.Pid))
		}
	}
	for _, ns := range slices.Backward(nss) {
		ns.nl.Close()
		ns.handle.Close()
		if err := vnetns.DeleteNamed(ns.name); err != nil {
			errs = append(errs, fmt.Errorf("deleting namespace %s: %w", ns.name, err))
		}
	}
	return errors.Join(errs...)
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// TB is the part of testing.TB that RequireRoot uses.
type TB interface {
	Helper()
	Skip(args ...any)
	Fatal(args ...any)
}

// RequireRoot skips a test that needs namespaces when not running as root, except under
// CI=true, where such a skip would hide a failure and so fails the test instead.
func RequireRoot(t TB) {
	t.Helper()
	if Available() {
		return
	}
	testenv.SkipOrFail(t, "test needs root (network namespaces)")
}

// TestingT is the part of testing.TB that ForTest and MustNamespace use.
type TestingT interface {
	TB
	Cleanup(func())
	Errorf(format string, args ...any)
}

// ForTest returns a Lab for one test: the test needs root (see RequireRoot), and everything the
// lab made is removed when the test ends.
func ForTest(t TestingT) *Lab {
	t.Helper()
	RequireRoot(t)
	l := New()
	t.Cleanup(func() {
		if err := l.Cleanup(); err != nil {
			t.Errorf("lab cleanup: %v", err)
		}
	})
	return l
}

// MustNamespace is Namespace for tests: an error ends the test.
func (l *Lab) MustNamespace(t TB, short string) *NS {
	t.Helper()
	n, err := l.Namespace(short)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// NFTCounters reads the packet counters of an nftables table in the namespace, summed by rule
// comment: the lab's routers and the tests' routers count reply paths this way.
func (n *NS) NFTCounters(ctx context.Context, family, table string) (map[string]uint64, error) {
	out, err := n.Run(ctx, "nft", "-j", "list", "table", family, table)
	if err != nil {
		return nil, err
	}
	return ParseNFTCounters(out)
}

// ParseNFTCounters sums the packet counters of `nft -j list` output by rule comment.
func ParseNFTCounters(out []byte) (map[string]uint64, error) {
	var doc struct {
		Nftables []struct {
			Rule *struct {
				Comment string            `json:"comment"`
				Expr    []json.RawMessage `json:"expr"`
			} `json:"rule"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, fmt.Errorf("parsing nft output: %w", err)
	}
	m := map[string]uint64{}
	for _, o := range doc.Nftables {
		if o.Rule == nil || o.Rule.Comment == "" {
			continue
		}
		for _, e := range o.Rule.Expr {
			var c struct {
				Counter *struct {
					Packets uint64 `json:"packets"`
				} `json:"counter"`
			}
			if json.Unmarshal(e, &c) == nil && c.Counter != nil {
				m[o.Rule.Comment] += c.Counter.Packets
			}
		}
	}
	return m, nil
}
