package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// hostileFiles are the files a configuration must not be allowed to name as its token: each one
// made a reload block (holding the reload lock) or read gigabytes before.
func hostileFiles(t *testing.T) map[string]string {
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

// returnsWithin runs f and fails unless it returns within d.
func returnsWithin[T any](t *testing.T, d time.Duration, what string, f func() T) T {
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

// TestValidateReadsNamedFiles: validate reads the token and the VRRP secret as run does, and
// refuses a FIFO, /dev/zero, a directory or a huge file at once, naming the line of the key.
func TestValidateReadsNamedFiles(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "pairlb.yaml")
	for kind, path := range hostileFiles(t) {
		for _, src := range []string{
			"global:\n  admin_token_file: " + path + "\n" + "virtual_services:\n" + serviceYAML("web", 8080, "127.0.0.2:80"),
			"virtual_services:\n" + serviceYAML("web", 8080, "127.0.0.2:80") + "pair:\n  auth_secret_file: " + path + "\n",
		} {
			if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
				t.Fatal(err)
			}
			var out, errOut bytes.Buffer
			code := returnsWithin(t, 3*time.Second, "validate with a "+kind, func() int {
				return dispatch([]string{"validate", "-c", file}, &out, &errOut)
			})
			key := "global.admin_token_file"
			if strings.Contains(src, "auth_secret_file") {
				key = "pair.auth_secret_file"
			}
			if code != 1 || !strings.Contains(errOut.String(), kind) || !strings.Contains(errOut.String(), key) {
				t.Errorf("validate with a %s as %s: exit %d, stderr:\n%s", kind, key, code, errOut.String())
			}
		}
		// The configuration file itself.
		var out, errOut bytes.Buffer
		code := returnsWithin(t, 3*time.Second, "validate of a "+kind, func() int {
			return dispatch([]string{"validate", "-c", path}, &out, &errOut)
		})
		if code != 1 || !strings.Contains(errOut.String(), kind) {
			t.Errorf("validate -c %s: exit %d, stderr:\n%s", kind, code, errOut.String())
		}
	}
}

// TestValidateWarnings: warnings go to stderr, prefixed, and leave the exit status 0.
func TestValidateWarnings(t *testing.T) {
	file := filepath.Join(t.TempDir(), "pairlb.yaml")
	src := "global:\n  admin: 0.0.0.0:19090\nvirtual_services:\n" + serviceYAML("web", 8080, "127.0.0.2:80") +
		"  - {name: p, vip: 127.0.0.1, ports: [\"8443/tcp\"], scheduler: leastconn, persistence: {type: source-ip}, real_servers: [{address: 127.0.0.2}]}\n"
	if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := dispatch([]string{"validate", "-c", file}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d:\n%s", code, errOut.String())
	}
	lines := strings.Split(strings.TrimSpace(errOut.String()), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "warning: "+file+":2: global.admin") || !strings.Contains(lines[0], "IPv6") ||
		!strings.HasPrefix(lines[1], "warning: "+file+":10: virtual_services[1].scheduler") {
		t.Errorf("stderr:\n%s", errOut.String())
	}
	if !strings.Contains(out.String(), "p: 127.0.0.1 [8443/tcp] main table, placement hash (persistence source-ip 20m)") {
		t.Errorf("summary does not show the effective placement:\n%s", out.String())
	}
}

// TestReloadRefusesSpecialFiles: a reload whose token file is a FIFO, /dev/zero, a directory or
// a huge file fails at once with the reason, and the running configuration keeps serving.
func TestReloadRefusesSpecialFiles(t *testing.T) {
	be := echoServer(t, "fe1")
	p := freeTCPPort(t)
	td := startDaemon(t, "", serviceYAML("web", p, be))
	addr := fmt.Sprintf("127.0.0.1:%d", p)
	waitGreeting(t, addr, "fe1")
	for kind, path := range hostileFiles(t) {
		head := strings.Replace(td.head, "virtual_services:\n", "  admin_token_file: "+path+"\nvirtual_services:\n", 1)
		if err := os.WriteFile(td.file, []byte(head+serviceYAML("web", p, be)), 0o644); err != nil {
			t.Fatal(err)
		}
		err := returnsWithin(t, 3*time.Second, "reload with a "+kind, td.d.reload)
		if err == nil || !strings.Contains(err.Error(), kind) || !strings.Contains(err.Error(), "global.admin_token_file") {
			t.Errorf("reload with a %s token: %v", kind, err)
		}
		if got, err := greeting(addr); err != nil || got != "fe1" {
			t.Fatalf("after the rejected reload: %q %v", got, err)
		}
	}
	// And the lock is free: a good file reloads.
	td.write(t, serviceYAML("web", p, be))
	if err := returnsWithin(t, 5*time.Second, "a good reload", td.d.reload); err != nil {
		t.Fatal(err)
	}
}

// TestSIGTERMAfterFIFOReload drives the binary: a SIGHUP whose token file is a FIFO used to
// block the reload for ever, holding the reload lock, so that SIGTERM never completed. The reload
// must be refused and logged, and SIGTERM must then stop pairlb.
func TestSIGTERMAfterFIFOReload(t *testing.T) {
	bin := buildPairlb(t)
	be := echoServer(t, "fe1")
	p := freeTCPPort(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "pairlb.yaml")
	fifo := filepath.Join(dir, "token.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	head := fmt.Sprintf("global:\n  admin: 127.0.0.1:%d\n  drain_timeout: 2s\n", freeTCPPort(t))
	body := "virtual_services:\n" + serviceYAML("web", p, be)
	if err := os.WriteFile(file, []byte(head+body), 0o644); err != nil {
		t.Fatal(err)
	}
	proc := runPairlb(t, bin, file)
	waitGreeting(t, fmt.Sprintf("127.0.0.1:%d", p), "fe1")

	if err := os.WriteFile(file, []byte(head+"  admin_token_file: "+fifo+"\n"+body), 0o644); err != nil {
		t.Fatal(err)
	}
	proc.signal(t, syscall.SIGHUP)
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(proc.stderr.String(), "keeping the running configuration") {
		if time.Now().After(deadline) {
			t.Fatal("the reload with a FIFO token was not rejected within 5s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(proc.stderr.String(), "named pipe (FIFO)") {
		t.Errorf("the rejection does not say why:\n%s", proc.stderr.String())
	}
	proc.stop(t, 10*time.Second)
}
