package daemon

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pairlb/pairlb/internal/testenv"
)

// connectOnce makes one connection through vip that reads the greeting and closes, and returns
// the client's address as the connection log writes it.
func connectOnce(t *testing.T, vip string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", vip, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 64)); err != nil {
		t.Fatal(err)
	}
	return c.LocalAddr().String()
}

// waitLogged waits until the file at path holds the JSON line of the connection from client.
func waitLogged(t *testing.T, path, client string) {
	t.Helper()
	want := []byte(`"client":"` + client + `"`)
	if !testenv.Eventually(5*time.Second, func() bool {
		b, _ := os.ReadFile(path)
		return bytes.Contains(b, want)
	}) {
		b, _ := os.ReadFile(path)
		t.Fatalf("%s has no line for %s:\n%s", path, client, b)
	}
}

func logged(path, client string) bool {
	b, _ := os.ReadFile(path)
	return bytes.Contains(b, []byte(`"client":"`+client+`"`))
}

// holdsFile reports whether this process has path open.
func holdsFile(t *testing.T, path string) bool {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && target == path {
			return true
		}
	}
	return false
}

func checkMode(t *testing.T, path string) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o640 {
		t.Errorf("%s created with mode %v, want 0640", path, fi.Mode().Perm())
	}
}

// TestConnectionLogFileReopenedOnReload: the file is created 0640 whatever the umask; after
// logrotate's rename, a reload opens a new file at the path, the lines go there and the rotated
// file is closed; a re-apply keeps the open file; a reload whose log cannot be opened is
// refused and the log goes on where it was.
func TestConnectionLogFileReopenedOnReload(t *testing.T) {
	defer syscall.Umask(syscall.Umask(0o077)) // the unit's
	dir := t.TempDir()
	path := filepath.Join(dir, "connections.log")
	be := testenv.EchoServer(t, "fe1")
	p := testenv.FreeTCPPort(t)
	vip := fmt.Sprintf("127.0.0.1:%d", p)
	services := testenv.LoopbackService("web", p, be)
	td := startDaemon(t, "", services, "  connection_log: {to: "+path+", format: json}\n")
	testenv.WaitGreeting(t, vip, "fe1")
	checkMode(t, path)
	first := connectOnce(t, vip)
	waitLogged(t, path, first)

	rotated := path + ".1"
	if err := os.Rename(path, rotated); err != nil {
		t.Fatal(err)
	}
	if _, err := td.d.Reload(); err != nil {
		t.Fatal(err)
	}
	checkMode(t, path)
	second := connectOnce(t, vip)
	waitLogged(t, path, second)
	if logged(rotated, second) {
		t.Errorf("the line of a connection after the reload went to the rotated file")
	}
	if !testenv.Eventually(5*time.Second, func() bool { return !holdsFile(t, rotated) }) {
		t.Errorf("the rotated file is still open after the reload")
	}

	kept := path + ".2"
	if err := os.Rename(path, kept); err != nil {
		t.Fatal(err)
	}
	if _, err := td.client().Reapply(context.Background()); err != nil {
		t.Fatal(err)
	}
	third := connectOnce(t, vip)
	waitLogged(t, kept, third)
	if _, err := os.Stat(path); err == nil {
		t.Error("the re-apply opened the log file anew")
	}

	bad := filepath.Join(dir, "missing", "connections.log")
	if err := os.WriteFile(td.file, []byte(strings.Replace(td.head, path, bad, 1)+services), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := td.d.Reload(); err == nil || !strings.Contains(err.Error(), "global.connection_log.to") || !strings.Contains(err.Error(), bad) {
		t.Errorf("reload with the log in a missing directory: %v", err)
	}
	fourth := connectOnce(t, vip)
	waitLogged(t, kept, fourth)
}

// TestConnectionLogSyslog: with to: syslog each line is a datagram to the local syslog socket,
// tagged pairlb-conn; a start without the socket fails, naming it.
func TestConnectionLogSyslog(t *testing.T) {
	defer func(s string) { syslogSocket = s }(syslogSocket)
	dir := t.TempDir()
	syslogSocket = filepath.Join(dir, "log")
	be := testenv.EchoServer(t, "fe1")
	p := testenv.FreeTCPPort(t)
	vip := fmt.Sprintf("127.0.0.1:%d", p)
	services := testenv.LoopbackService("web", p, be)
	global := "  connection_log: {to: syslog}\n"

	head, _ := adminHead(t, dir, "")
	file := filepath.Join(dir, "pairlb.yaml")
	if err := os.WriteFile(file, []byte(strings.Replace(head, "virtual_services:\n", global+"virtual_services:\n", 1)+services), 0o644); err != nil {
		t.Fatal(err)
	}
	if d, err := New(Options{Path: file}); err == nil || !strings.Contains(err.Error(), "global.connection_log: syslog") || !strings.Contains(err.Error(), syslogSocket) {
		if d != nil {
			t.Fatal("a daemon started without its syslog socket")
		}
		t.Errorf("start without a syslog socket: %v", err)
	}

	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: syslogSocket, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	startDaemon(t, "", services, global)
	testenv.WaitGreeting(t, vip, "fe1")
	client := connectOnce(t, vip)
	want := regexp.MustCompile(`^<30>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d pairlb-conn\[` + fmt.Sprint(os.Getpid()) + `\]: \S+ web ` +
		fmt.Sprint(p) + `/tcp - ` + regexp.QuoteMeta(client+" "+be) + ` \d+ 0 4 client_closed$`)
	_ = ln.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	for {
		n, err := ln.Read(buf)
		if err != nil {
			t.Fatalf("no datagram for %s: %v", client, err)
		}
		if msg := string(buf[:n]); strings.Contains(msg, " "+client+" ") {
			if !want.MatchString(msg) {
				t.Errorf("datagram %q, want it to match %s", msg, want)
			}
			break
		}
	}
}

// TestConnectionLogStderr: with to: stderr the lines go to the daemon's stderr, which stays open
// after the daemon has stopped.
func TestConnectionLogStderr(t *testing.T) {
	dir := t.TempDir()
	be := testenv.EchoServer(t, "fe1")
	p := testenv.FreeTCPPort(t)
	vip := fmt.Sprintf("127.0.0.1:%d", p)
	head, _ := adminHead(t, dir, "")
	file := filepath.Join(dir, "pairlb.yaml")
	src := strings.Replace(head, "virtual_services:\n", "  connection_log: {to: stderr}\nvirtual_services:\n", 1) + testenv.LoopbackService("web", p, be)
	if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	stderr := &testenv.Buffer{}
	d, err := New(Options{Path: file, Stderr: stderr})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Fatal("run did not return within 15s")
		}
	}()
	testenv.WaitGreeting(t, vip, "fe1")
	client := connectOnce(t, vip)
	if !testenv.Eventually(5*time.Second, func() bool { return strings.Contains(stderr.String(), " "+client+" "+be+" ") }) {
		t.Fatalf("stderr has no line for %s:\n%s", client, stderr.String())
	}
}
