// Package testenv is what pairlb's tests need of the machine they run on, in one place: the
// rule for a test whose requirement is missing (it skips on a laptop, and fails under CI=true,
// where every test must run), the programs a test needs, the pairlb binary built from the
// module, free loopback ports, loopback servers that greet, and waiting for a condition to a
// deadline instead of sleeping.
//
// It is for tests and the bench only; nothing that ships imports it. It imports no pairlb
// package, so that any package's own tests may use it.
package testenv

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Skipper is the part of testing.TB that SkipOrFail uses.
type Skipper interface {
	Helper()
	Skip(args ...any)
	Fatal(args ...any)
}

// TB is the part of testing.TB the other helpers use.
type TB interface {
	Skipper
	Fatalf(format string, args ...any)
	Cleanup(func())
	TempDir() string
}

// CI reports whether the tests run under CI=true, where a test that cannot run is a failure.
func CI() bool { return os.Getenv("CI") == "true" }

// SkipOrFail ends a test whose requirement (why: "keepalived is not installed") is missing: it
// skips, except under CI=true, where a skip would hide a test that must run, and so fails.
func SkipOrFail(t Skipper, why string) {
	t.Helper()
	if CI() {
		t.Fatal(why + ", and CI=true forbids skipping this test")
		return
	}
	t.Skip(why + " (under CI=true this fails instead)")
}

// Program returns the path of the first of names found in PATH; when none is, the test skips
// or fails (SkipOrFail), saying which package provides it.
func Program(t TB, pkg string, names ...string) string {
	t.Helper()
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	SkipOrFail(t, fmt.Sprintf("%s is not installed (Debian package %s)", names[0], pkg))
	return ""
}

// goTool is the go command: from PATH, else where the toolchain is installed here.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "/usr/local/go/bin/go"
}

// BuildPairlb builds cmd/pairlb into dir and returns the binary's path. It works from any
// directory inside the module (the build cache makes the second build of a run cheap).
func BuildPairlb(dir string) (string, error) {
	bin := filepath.Join(dir, "pairlb")
	// -buildvcs=auto, as a plain go build has it, overrides a GOFLAGS=-buildvcs=false in the
	// environment (this machine's go env has one): the binary names its commit, as an
	// operator's does, wherever the tree is a checkout.
	out, err := exec.Command(goTool(), "build", "-buildvcs=auto", "-o", bin, "github.com/pairlb/pairlb/cmd/pairlb").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("building pairlb (go build -buildvcs=auto -o %s github.com/pairlb/pairlb/cmd/pairlb): %w\n%s", bin, err, out)
	}
	return bin, nil
}

// Pairlb builds cmd/pairlb for a test, into its temporary directory.
func Pairlb(t TB) string {
	t.Helper()
	bin, err := BuildPairlb(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// FreeTCPPort is a TCP port free on 127.0.0.1 a moment ago.
func FreeTCPPort(t TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// FreeUDPPort is a UDP port free on 127.0.0.1 a moment ago.
func FreeUDPPort(t TB) int {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// EchoServer greets each connection on a free loopback port with name and echoes until EOF; it
// returns the server's address.
func EchoServer(t TB, name string) string { return GreetServer(t, "127.0.0.1:0", name) }

// GreetServer listens on addr, greets each connection with greeting and a newline and echoes
// until EOF, until the test ends.
func GreetServer(t TB, addr, greeting string) string {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				fmt.Fprintf(c, "%s\n", greeting)
				_, _ = io.Copy(c, c)
			})
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// Greeting connects to addr and returns the first line it is sent.
func Greeting(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	s, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(s), err
}

// WaitGreeting waits up to 10 s for addr to greet with want.
func WaitGreeting(t TB, addr, want string) {
	t.Helper()
	var got string
	var err error
	if !Eventually(10*time.Second, func() bool {
		got, err = Greeting(addr)
		return err == nil && got == want
	}) {
		t.Fatalf("%s: got %q, %v; want %q", addr, got, err, want)
	}
}

// LoopbackService is a virtual_services entry as YAML: name on 127.0.0.1:port, round robin, no
// health check, one real server.
func LoopbackService(name string, port int, server string) string {
	return fmt.Sprintf(`  - name: %s
    vip: 127.0.0.1
    ports: ["%d/tcp"]
    scheduler: roundrobin
    health: {type: none}
    real_servers: [{address: "%s"}]
`, name, port, server)
}

// pollEvery is how often Eventually asks again.
const pollEvery = 20 * time.Millisecond

// Eventually asks cond until it holds or within has passed, and reports whether it held. It
// asks at least once, and once more at the deadline, so that a slow machine that makes the
// condition true late is not failed for the time the last wait took.
func Eventually(within time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pollEvery) // pacing the polls of a condition, not waiting for an outcome
	}
}

// HostileFiles are files a configuration must not be allowed to name (as its token, say), by
// what the refusal says of them: each one made a reload block (holding the reload lock) or read
// gigabytes before.
func HostileFiles(t TB) map[string]string {
	t.Helper()
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big")
	// Over the limit of a token and of a configuration file.
	if err := os.WriteFile(big, bytes.Repeat([]byte("a"), 5<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	return map[string]string{"named pipe (FIFO)": fifo, "character device": "/dev/zero", "directory": dir, "file too large": big}
}

// ReturnsWithin runs f and fails the test unless it returns within d.
func ReturnsWithin[T any](t TB, d time.Duration, what string, f func() T) T {
	t.Helper()
	done := make(chan T, 1)
	go func() { done <- f() }()
	select {
	case v := <-done:
		return v
	case <-time.After(d):
		t.Fatalf("%s did not return within %s", what, d)
		panic("unreachable")
	}
}

// Buffer is a bytes.Buffer safe for concurrent writes and reads: a logger's or a child's
// output that the test reads while it is written.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String is everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
