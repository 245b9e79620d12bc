package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pairlb/pairlb/admin"
	"github.com/pairlb/pairlb/internal/testenv"
)

// TestReloadCommand runs `pairlb reload` against a running pairlb (the binary, on loopback,
// with a token): a good file is applied and what changed is printed; a bad one exits 1 with
// every error, one per line, both in process and as systemd's ExecReload runs the binary;
// `pairlb status` still works on the broken file and shows the failure; SIGHUP still reloads
// and its verdict is the status's too; a daemon that cannot be asked is exit 3.
func TestReloadCommand(t *testing.T) {
	bin := testenv.Pairlb(t)
	a, b := testenv.EchoServer(t, "a"), testenv.EchoServer(t, "b")
	p1, p2 := testenv.FreeTCPPort(t), testenv.FreeTCPPort(t)
	file, addr, tokenFile, p := servePairlb(t, bin, "r3load", testenv.LoopbackService("web", p1, a))
	orig, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	head := string(orig[:bytes.Index(orig, []byte("  - name: web"))])
	write := func(services string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(head+services), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := dispatch(append([]string{"reload"}, args...), &out, &errb)
		return code, out.String(), errb.String()
	}

	// A good file: exit 0, what changed.
	write(testenv.LoopbackService("web", p1, a) + testenv.LoopbackService("web2", p2, b))
	code, out, errs := run("-c", file)
	if code != 0 || !strings.HasPrefix(out, file+" applied (config ") || !strings.HasSuffix(out, ", 1 change:\nvirtual service web2 added\n") || errs != "" {
		t.Fatalf("reload of a good file: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}
	testenv.WaitGreeting(t, fmt.Sprintf("127.0.0.1:%d", p2), "b")
	// Nothing to change: says so, exit 0; the flags instead of the file.
	if code, out, errs := run("-admin", addr, "-token-file", tokenFile); code != 0 || !strings.HasSuffix(out, ": nothing changed (the file is the one in force)\n") {
		t.Errorf("reload of the same file: exit %d\n%s%s", code, out, errs)
	}

	// A bad file: exit 1 and every error, one per line, beginning with the file and line.
	write(testenv.LoopbackService("web", p1, a) + "    bogus_key: 1\n" + testenv.LoopbackService("web2", 70000, b))
	code, out, errs = run("-c", file)
	lines := strings.Split(strings.TrimSuffix(errs, "\n"), "\n")
	if code != exitRejected || out != "" || len(lines) != 3 || !strings.Contains(lines[0], " rejected; the running configuration (") {
		t.Fatalf("reload of a bad file: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}
	for i, want := range []string{"bogus_key", `"70000/tcp": port out of range`} {
		if l := lines[i+1]; !strings.HasPrefix(l, file+":") || !strings.Contains(l, want) {
			t.Errorf("error line %d is %q, want %s:LINE: ... %s", i+1, l, file, want)
		}
	}
	// The unit's ExecReload, run as systemd runs it (the binary and the file are the test's):
	// its exit status is 1 and the errors are on stderr, so `systemctl reload` fails visibly.
	argv := unitExecReload(t)
	for i, a := range argv {
		argv[i] = strings.NewReplacer("/usr/local/bin/pairlb", bin, "/etc/pairlb/pairlb.yaml", file).Replace(a)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	var cmdErr bytes.Buffer
	cmd.Stderr = &cmdErr
	var ee *exec.ExitError
	if err := cmd.Run(); !errors.As(err, &ee) || ee.ExitCode() != exitRejected || !strings.Contains(cmdErr.String(), "70000/tcp") {
		t.Errorf("ExecReload %q on a bad file: %v\n%s", argv, err, cmdErr.String())
	}
	// The broken file still gives the status its address, and the status shows the failure.
	var sout, serr bytes.Buffer
	if code := cmdStatus([]string{"-c", file}, &sout, &serr); code != 0 || !strings.Contains(sout.String(), "\nLAST RELOAD FAILED at ") ||
		!strings.Contains(sout.String(), "\n  "+file+":") {
		t.Errorf("status -c on the broken file: exit %d\n%s%s", code, sout.String(), serr.String())
	}
	// Still serving the running configuration.
	testenv.WaitGreeting(t, fmt.Sprintf("127.0.0.1:%d", p2), "b")

	// SIGHUP as before; its verdict is the status's.
	api := admin.NewClient(addr, []byte("r3load"))
	write(testenv.LoopbackService("web", p1, a))
	p.signal(t, syscall.SIGHUP)
	var st *admin.Status
	if !testenv.Eventually(10*time.Second, func() bool {
		st, err = api.Status(context.Background())
		return err == nil && st.LastReload != nil && st.LastReload.Result == admin.ReloadOK && len(st.LastReload.Changes) == 1
	}) {
		t.Fatalf("the SIGHUP reload is not in the status within 10s: %+v, %v", st, err)
	}
	if c := st.LastReload.Changes[0].String(); c != "virtual service web2 removed" || st.ConfigOnDisk.State != admin.OnDiskSame {
		t.Errorf("after SIGHUP: %q, on disk %+v", c, st.ConfigOnDisk)
	}

	// -c naming another file than the daemon's: the daemon reads its own, and the command says so.
	other := filepath.Join(t.TempDir(), "other.yaml")
	if err := os.WriteFile(other, []byte(head+testenv.LoopbackService("web", p1, a)), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, errs := run("-c", other); code != 0 || !strings.Contains(errs, "runs "+file+", not "+other) {
		t.Errorf("reload -c another file: exit %d, %q", code, errs)
	}

	// The daemon cannot be asked: exit 3, with the reason; bad usage: 2.
	wrong := filepath.Join(t.TempDir(), "wrong")
	if err := os.WriteFile(wrong, []byte("nope\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"-admin", addr, "-token-file", wrong}, exitUnreachable, "bearer token"},
		{[]string{"-c", filepath.Join(t.TempDir(), "missing.yaml")}, exitUnreachable, "or give -admin"},
		{[]string{"-admin", "localhost:1"}, exitUnreachable, "-admin"},
		{[]string{"-c", file, "now"}, exitUsage, "usage: pairlb reload"},
		{[]string{"-bogus"}, exitUsage, "flag provided but not defined"},
	} {
		if code, _, errs := run(c.args...); code != c.code || !strings.Contains(errs, c.want) {
			t.Errorf("reload %q: exit %d, %q; want %d and %q", c.args, code, errs, c.code, c.want)
		}
	}
	p.stop(t, 10*time.Second)
	if code, _, errs := run("-admin", addr); code != exitUnreachable || !strings.Contains(errs, "connection refused") {
		t.Errorf("reload without a daemon: exit %d, %q", code, errs)
	}
}

// unitExecReload is the command line of deploy/pairlb.service's ExecReload.
func unitExecReload(t *testing.T) []string {
	t.Helper()
	unit, err := os.ReadFile("../../deploy/pairlb.service")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(unit)) {
		if cmd, ok := strings.CutPrefix(strings.TrimSpace(line), "ExecReload="); ok {
			argv := strings.Fields(cmd)
			if len(argv) < 2 || argv[0] != "/usr/local/bin/pairlb" || argv[1] != "reload" {
				t.Fatalf("ExecReload is %q, want /usr/local/bin/pairlb reload ...", cmd)
			}
			return argv
		}
	}
	t.Fatal("deploy/pairlb.service has no ExecReload")
	return nil
}
