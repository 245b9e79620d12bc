package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pairlb/pairlb/internal/testenv"
)

// child is a `pairlb run` started by a test: its stderr is kept, and the test's cleanup kills
// it if it is still running and shows the end of its log if the test failed.
type child struct {
	cmd     *exec.Cmd
	stderr  testenv.Buffer
	exited  chan struct{}
	waitErr error // set when exited is closed
}

// runPairlb starts bin with `run -c file`.
func runPairlb(t *testing.T, bin, file string) *child {
	t.Helper()
	c := &child{cmd: exec.Command(bin, "run", "-c", file), exited: make(chan struct{})}
	c.cmd.Stderr = &c.stderr
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { c.waitErr = c.cmd.Wait(); close(c.exited) }()
	t.Cleanup(func() {
		select {
		case <-c.exited:
		default:
			_ = c.cmd.Process.Kill()
			<-c.exited
		}
		if t.Failed() {
			log := c.stderr.String()
			if len(log) > 20000 {
				log = "...\n" + log[len(log)-20000:]
			}
			t.Logf("pairlb stderr:\n%s", log)
		}
	})
	return c
}

func (c *child) pid() int { return c.cmd.Process.Pid }

func (c *child) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := c.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v to pairlb: %v", sig, err)
	}
}

// wait returns the exit error once pairlb has exited, or false if it is still running after
// within.
func (c *child) wait(within time.Duration) (error, bool) {
	select {
	case <-c.exited:
		return c.waitErr, true
	case <-time.After(within):
		return nil, false
	}
}

// stop sends SIGTERM and fails the test unless pairlb exits 0 within the time given.
func (c *child) stop(t *testing.T, within time.Duration) {
	t.Helper()
	c.signal(t, syscall.SIGTERM)
	err, done := c.wait(within)
	switch {
	case !done:
		t.Fatalf("pairlb did not exit within %s of SIGTERM", within)
	case err != nil:
		t.Errorf("exit after SIGTERM: %v", err)
	}
}

// TestRunReloadAndStop drives the real binary: it serves the file, a SIGHUP with an invalid
// file keeps the old configuration serving, a SIGHUP with a valid file adds a listener while an
// open connection survives, and SIGTERM exits 0.
func TestRunReloadAndStop(t *testing.T) {
	bin := testenv.Pairlb(t)
	be := testenv.EchoServer(t, "fe1")
	p1, p2 := testenv.FreeTCPPort(t), testenv.FreeTCPPort(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "pairlb.yaml")
	head := fmt.Sprintf("global:\n  admin: 127.0.0.1:%d\n  drain_timeout: 5s\nvirtual_services:\n", testenv.FreeTCPPort(t))
	write := func(s string) {
		if err := os.WriteFile(file, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(head + testenv.LoopbackService("web", p1, be))

	p := runPairlb(t, bin, file)
	addr1 := fmt.Sprintf("127.0.0.1:%d", p1)
	addr2 := fmt.Sprintf("127.0.0.1:%d", p2)
	testenv.WaitGreeting(t, addr1, "fe1")

	open, err := net.Dial("tcp", addr1)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	openR := bufio.NewReader(open)
	if _, err := openR.ReadString('\n'); err != nil {
		t.Fatal(err)
	}

	write(head + testenv.LoopbackService("web", p1, be) + "    bogus_key: 1\n")
	p.signal(t, syscall.SIGHUP)
	// The daemon says when it has rejected the reload; only then is "still serving" a finding.
	if !testenv.Eventually(10*time.Second, func() bool { return strings.Contains(p.stderr.String(), "keeping the running configuration") }) {
		t.Fatalf("the invalid reload was not rejected within 10s:\n%s", p.stderr.String())
	}
	if got, err := testenv.Greeting(addr1); err != nil || got != "fe1" {
		t.Fatalf("after an invalid reload: %q %v", got, err)
	}
	if !strings.Contains(p.stderr.String(), "bogus_key") {
		t.Errorf("the invalid reload's error is not logged:\n%s", p.stderr.String())
	}

	write(head + testenv.LoopbackService("web", p1, be) + testenv.LoopbackService("web2", p2, be))
	p.signal(t, syscall.SIGHUP)
	testenv.WaitGreeting(t, addr2, "fe1")
	_ = open.SetDeadline(time.Now().Add(2 * time.Second))
	fmt.Fprint(open, "ping")
	buf := make([]byte, 4)
	if _, err := io.ReadFull(openR, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("open connection after reload: %q %v", buf, err)
	}
	open.Close()
	p.stop(t, 10*time.Second)
	// The stop says what it waited for (the connection just closed may not have ended yet) and
	// that the deadline closed nothing.
	log := p.stderr.String()
	for _, re := range []string{`msg="drain started" connections=[01] drain_timeout=5s`, `msg="drain ended" closed_at_deadline=0 `} {
		if !regexp.MustCompile(re).MatchString(log) {
			t.Errorf("the log after SIGTERM lacks %s:\n%s", re, log)
		}
	}
}

func TestValidate(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := dispatch([]string{"validate", "-c", "../../config/examples/lync2013-single-pair.yaml"}, &out, &errOut); code != 0 {
		t.Fatalf("validate of the Lync example exited %d:\n%s", code, errOut.String())
	}
	if !strings.Contains(out.String(), "gw 10.11.0.1") {
		t.Errorf("summary lacks the internal gateway:\n%s", out.String())
	}

	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("virtual_services:\n  - name: x\n    vip: 10.0.0.300\n    ports: [\"70000/tcp\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	errOut.Reset()
	if code := dispatch([]string{"validate", "-c", bad}, &out, &errOut); code != 1 {
		t.Fatalf("validate of a bad file exited %d, want 1", code)
	}
	for _, want := range []string{"10.0.0.300", "70000/tcp", "bad.yaml:3"} {
		if !strings.Contains(errOut.String(), want) {
			t.Errorf("errors do not mention %q:\n%s", want, errOut.String())
		}
	}
}

// TestVersionNamesTheCommit: a binary built in a checkout says which commit it is, with no
// -ldflags, so that two boxes (and pair check) can tell whether they run the same build.
func TestVersionNamesTheCommit(t *testing.T) {
	head, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		t.Skipf("not a git checkout (or no git): %v", err) // the vendored copy of go test -short
	}
	// The go command stamps no VCS information in a linked worktree (its .git is a file).
	if fi, err := os.Stat(filepath.Join("..", "..", ".git")); err == nil && !fi.IsDir() {
		t.Skip("a git worktree: the go command does not stamp builds made in one")
	}
	bin := testenv.Pairlb(t)
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("pairlb version: %v\n%s", err, out)
	}
	if want := "pairlb dev (" + string(head[:12]) + ", "; !strings.HasPrefix(string(out), want) {
		t.Fatalf("pairlb version printed %q, want it to begin with %q", out, want)
	}
}

// TestRunExitsWhenAListenerCannotOpen: with the admin address or a VIP port already taken,
// `pairlb run` used to close its listeners and hang, silent, until SIGTERM. It must exit 1 at
// once with a message naming the address.
func TestRunExitsWhenAListenerCannotOpen(t *testing.T) {
	bin := testenv.Pairlb(t)
	be := testenv.EchoServer(t, "fe1")
	for _, taken := range []string{"admin", "vip"} {
		t.Run(taken, func(t *testing.T) {
			busy, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer busy.Close()
			admin, vip := fmt.Sprintf("127.0.0.1:%d", testenv.FreeTCPPort(t)), testenv.FreeTCPPort(t)
			if taken == "admin" {
				admin = busy.Addr().String()
			} else {
				vip = busy.Addr().(*net.TCPAddr).Port
			}
			file := filepath.Join(t.TempDir(), "pairlb.yaml")
			yaml := fmt.Sprintf("global:\n  admin: %s\nvirtual_services:\n", admin) + testenv.LoopbackService("web", vip, be)
			if err := os.WriteFile(file, []byte(yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			p := runPairlb(t, bin, file)
			err, done := p.wait(10 * time.Second)
			var ee *exec.ExitError
			switch {
			case !done:
				t.Fatalf("pairlb still running 10s after it could not open %s", busy.Addr())
			case !errors.As(err, &ee) || ee.ExitCode() != 1:
				t.Errorf("exit: %v, want status 1", err)
			}
			if !strings.Contains(p.stderr.String(), busy.Addr().String()) {
				t.Errorf("the message does not name %s:\n%s", busy.Addr(), p.stderr.String())
			}
		})
	}
}
