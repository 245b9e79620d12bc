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

	"github.com/pairlb/pairlb/internal/testenv"
)

// TestValidateReadsNamedFiles: validate reads the token and the VRRP secret as run does, and
// refuses a FIFO, /dev/zero, a directory or a huge file at once, naming the line of the key.
func TestValidateReadsNamedFiles(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "pairlb.yaml")
	for kind, path := range testenv.HostileFiles(t) {
		for _, src := range []string{
			"global:\n  admin_token_file: " + path + "\n" + "virtual_services:\n" + testenv.LoopbackService("web", 8080, "127.0.0.2:80"),
			"virtual_services:\n" + testenv.LoopbackService("web", 8080, "127.0.0.2:80") + "pair:\n  auth_secret_file: " + path + "\n",
		} {
			if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
				t.Fatal(err)
			}
			var out, errOut bytes.Buffer
			code := testenv.ReturnsWithin(t, 3*time.Second, "validate with a "+kind, func() int {
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
		code := testenv.ReturnsWithin(t, 3*time.Second, "validate of a "+kind, func() int {
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
	src := "global:\n  admin: 0.0.0.0:19090\nvirtual_services:\n" + testenv.LoopbackService("web", 8080, "127.0.0.2:80") +
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

// TestSIGTERMAfterFIFOReload drives the binary: a SIGHUP whose token file is a FIFO used to
// block the reload for ever, holding the reload lock, so that SIGTERM never completed. The reload
// must be refused and logged, and SIGTERM must then stop pairlb.
func TestSIGTERMAfterFIFOReload(t *testing.T) {
	bin := testenv.Pairlb(t)
	be := testenv.EchoServer(t, "fe1")
	p := testenv.FreeTCPPort(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "pairlb.yaml")
	fifo := filepath.Join(dir, "token.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	head := fmt.Sprintf("global:\n  admin: 127.0.0.1:%d\n  drain_timeout: 2s\n", testenv.FreeTCPPort(t))
	body := "virtual_services:\n" + testenv.LoopbackService("web", p, be)
	if err := os.WriteFile(file, []byte(head+body), 0o644); err != nil {
		t.Fatal(err)
	}
	proc := runPairlb(t, bin, file)
	testenv.WaitGreeting(t, fmt.Sprintf("127.0.0.1:%d", p), "fe1")

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
