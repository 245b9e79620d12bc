package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pairlb/pairlb/admin"
	"github.com/pairlb/pairlb/internal/testenv"
)

// servePairlb runs `pairlb run` (bin) on a file of services with an admin token until the test
// ends, and returns the file, the admin address and the token file once it is ready.
func servePairlb(t *testing.T, bin, token, services string) (file, addr, tokenFile string, p *child) {
	t.Helper()
	dir := t.TempDir()
	addr = fmt.Sprintf("127.0.0.1:%d", testenv.FreeTCPPort(t))
	tokenFile = filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file = filepath.Join(dir, "pairlb.yaml")
	src := fmt.Sprintf("global:\n  admin: %s\n  admin_token_file: %s\n  drain_timeout: 5s\nvirtual_services:\n%s", addr, tokenFile, services)
	if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	p = runPairlb(t, bin, file)
	var err error
	if !testenv.Eventually(15*time.Second, func() bool { err = admin.NewClient(addr, nil).Ready(context.Background()); return err == nil }) {
		t.Fatalf("pairlb not ready within 15s: %v\n%s", err, p.stderr.String())
	}
	return file, addr, tokenFile, p
}

// TestStatusCommand runs `pairlb status` and `pairlb server` against a running pairlb with a
// token, finding the admin address and token through -c FILE or the flags.
func TestStatusCommand(t *testing.T) {
	bin := testenv.Pairlb(t)
	a, b := testenv.EchoServer(t, "a"), testenv.EchoServer(t, "b")
	port := testenv.FreeTCPPort(t)
	file, addr, tokenFile, p := servePairlb(t, bin, "tok3n", testenv.LoopbackService("web", port, a)+testenv.LoopbackService("media", testenv.FreeTCPPort(t), b))
	testenv.WaitGreeting(t, fmt.Sprintf("127.0.0.1:%d", port), "a")
	api := admin.NewClient(addr, []byte("tok3n"))

	var out, errb bytes.Buffer
	if code := cmdStatus([]string{"-c", file}, &out, &errb); code != 0 {
		t.Fatalf("status -c: exit %d: %s", code, errb.String())
	}
	table := out.String()
	ver, err := exec.Command(bin, "version").Output() // "pairlb dev (REVISION, TIME)\n" in a checkout
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{strings.TrimSpace(string(ver)) + ", ready, config " + file, "\nweb  127.0.0.1  [" + fmt.Sprint(port) + "/tcp]  main table  roundrobin  active ", "  connections 1  in ",
		"REAL SERVER", "HEALTH", a + "  enabled  up (none)  1", "no check\n", "\nmedia  127.0.0.1", b} {
		if !strings.Contains(table, want) {
			t.Errorf("status table lacks %q:\n%s", want, table)
		}
	}

	// --json with the flags instead of the file, flags after the command as well.
	out.Reset()
	errb.Reset()
	if code := cmdStatus([]string{"--json", "-admin", addr, "-token-file", tokenFile}, &out, &errb); code != 0 {
		t.Fatalf("status --json: exit %d: %s", code, errb.String())
	}
	var js admin.Status
	if err := json.Unmarshal(out.Bytes(), &js); err != nil || len(js.VirtualServices) != 2 || js.VirtualServices[0].Name != "web" {
		t.Fatalf("status --json: %v\n%s", err, out.String())
	}

	// Without the token: exit 1 and the API's reason.
	out.Reset()
	errb.Reset()
	if code := cmdStatus([]string{"-admin", addr}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "bearer token") {
		t.Errorf("status without a token: exit %d, %q", code, errb.String())
	}

	// server drain, then the state shows in status.
	out.Reset()
	errb.Reset()
	if code := cmdServer([]string{"-c", file, "drain", "web", a}, &out, &errb); code != 0 || out.String() != "web "+a+": draining\n" {
		t.Fatalf("server drain: exit %d, %q %q", code, out.String(), errb.String())
	}
	st, err := api.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if s := st.Find("web", a); s == nil || s.State != "draining" {
		t.Errorf("after server drain: %+v", s)
	}
	out.Reset()
	if code := cmdStatus([]string{"-c", file}, &out, &errb); code != 0 || !strings.Contains(out.String(), a+"  draining") {
		t.Errorf("status after drain: exit %d\n%s", code, out.String())
	}
	out.Reset()
	errb.Reset()
	if code := cmdServer([]string{"enable", "web", a, "-admin", addr, "-token-file", tokenFile}, &out, &errb); code != 0 || out.String() != "web "+a+": enabled\n" {
		t.Errorf("server enable with trailing flags: exit %d, %q %q", code, out.String(), errb.String())
	}

	// Unknown names, bad actions and bad usage.
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"-c", file, "drain", "nope", a}, 1, `virtual service "nope": not found`},
		{[]string{"-c", file, "disable", "web", "10.1.1.1"}, 1, `real server "10.1.1.1" of virtual service "web": not found`},
		{[]string{"-c", file, "explode", "web", a}, 2, `unknown action "explode"`},
		{[]string{"-c", file, "drain", "web"}, 2, "usage: pairlb server"},
		{[]string{"-admin", "localhost:1", "drain", "web", a}, 1, "-admin"},
		{[]string{"-c", filepath.Join(t.TempDir(), "missing.yaml"), "drain", "web", a}, 1, "or give -admin"},
	} {
		out.Reset()
		errb.Reset()
		if code := cmdServer(c.args, &out, &errb); code != c.code || !strings.Contains(errb.String(), c.want) {
			t.Errorf("server %q: exit %d, %q; want %d and %q", c.args, code, errb.String(), c.code, c.want)
		}
	}

	// A daemon that is not there: a clear error, quickly.
	p.stop(t, 10*time.Second)
	out.Reset()
	errb.Reset()
	start := time.Now()
	if code := cmdStatus([]string{"-admin", addr}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "connection refused") {
		t.Errorf("status without a daemon: exit %d, %q", code, errb.String())
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("status without a daemon took %s", time.Since(start))
	}
}
