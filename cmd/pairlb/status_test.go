package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pairlb/pairlb/admin"
	"github.com/pairlb/pairlb/config"
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
	// Once the balancer has closed the greeting's connection nothing is open on a: drained,
	// safe to stop.
	var code int
	if !testenv.Eventually(10*time.Second, func() bool {
		out.Reset()
		code = cmdStatus([]string{"-c", file}, &out, &errb)
		return code == 0 && strings.Contains(out.String(), a+"  drained")
	}) {
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

// TestServerByAddress drains a real server's address in every service that has it through
// `pairlb server drain ADDRESS` against a running pairlb, and waits for its last connection
// with `pairlb server wait-drained`: it returns once the connection through the balancer
// closes, and times out, exit 1, while it stays open.
func TestServerByAddress(t *testing.T) {
	bin := testenv.Pairlb(t)
	fe1sip, fe1web := testenv.GreetServer(t, "127.0.41.11:0", "fe1-sip"), testenv.GreetServer(t, "127.0.41.11:0", "fe1-web")
	fe2 := testenv.GreetServer(t, "127.0.41.12:0", "fe2")
	sipPort, webPort := testenv.FreeTCPPort(t), testenv.FreeTCPPort(t)
	services := fmt.Sprintf(`  - name: sip
    vip: 127.0.0.1
    ports: ["%d/tcp"]
    scheduler: roundrobin
    health: {type: none}
    real_servers: [{address: "%s"}, {address: "%s"}]
`, sipPort, fe1sip, fe2) + testenv.LoopbackService("web", webPort, fe1web) + testenv.LoopbackService("other", testenv.FreeTCPPort(t), fe2)
	file, apiAddr, _, _ := servePairlb(t, bin, "tok", services)
	sipVIP, webVIP := fmt.Sprintf("127.0.0.1:%d", sipPort), fmt.Sprintf("127.0.0.1:%d", webPort)
	testenv.WaitGreeting(t, webVIP, "fe1-web")
	api := admin.NewClient(apiAddr, []byte("tok"))
	// The balancer closes the greeting's connection on its own time.
	if !testenv.Eventually(10*time.Second, func() bool {
		st, err := api.Status(context.Background())
		return err == nil && st.Find("web", fe1web) != nil && st.Find("web", fe1web).Active == 0
	}) {
		t.Fatal("the greeting's connection through web is still open after 10s")
	}

	run := func(args ...string) (code int, stdout, stderr string) {
		var out, errb bytes.Buffer
		code = cmdServer(append([]string{"-c", file}, args...), &out, &errb)
		return code, out.String(), errb.String()
	}

	// The address in both services it is in, one line each; the other server untouched.
	code, out, errs := run("drain", "127.0.41.11")
	if want := "sip " + fe1sip + ": draining (was enabled, active 0)\nweb " + fe1web + ": draining (was enabled, active 0)\n"; code != 0 || out != want {
		t.Fatalf("drain 127.0.41.11: exit %d, %q %q; want %q", code, out, errs, want)
	}
	var table bytes.Buffer
	if code := cmdStatus([]string{"-c", file}, &table, io.Discard); code != 0 {
		t.Fatal("status failed")
	}
	for _, want := range []string{fe1sip + "  drained", fe1web + "  drained", fe2 + "  enabled"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("status after the drain lacks %q:\n%s", want, table.String())
		}
	}
	for i := range 4 {
		if g, err := testenv.Greeting(sipVIP); err != nil || g != "fe2" {
			t.Fatalf("new connection %d through sip: %q, %v; want fe2 while fe1 drains", i, g, err)
		}
	}

	// IP:port: the one server written with it.
	if code, out, errs := run("enable", fe1web); code != 0 || out != "web "+fe1web+": enabled (was draining, active 0)\n" {
		t.Fatalf("enable %s: exit %d, %q %q", fe1web, code, out, errs)
	}

	// A connection held open through web, then the address drained again.
	held, err := net.Dial("tcp", webVIP)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if g, err := bufio.NewReader(held).ReadString('\n'); err != nil || g != "fe1-web\n" {
		t.Fatalf("held connection: %q, %v", g, err)
	}
	if code, out, errs := run("drain", "127.0.41.11"); code != 0 || !strings.Contains(out, "web "+fe1web+": draining (was enabled, active 1)\n") {
		t.Fatalf("drain with a connection open: exit %d, %q %q", code, out, errs)
	}

	// It stays open: wait-drained gives up at its timeout, saying what is left.
	start := time.Now()
	code, _, errs = run("wait-drained", "127.0.41.11", "--timeout", "1s")
	if want := "pairlb server wait-drained: 127.0.41.11: still 1 active after 1s (web " + fe1web + " 1)\n"; code != 1 || errs != want {
		t.Errorf("wait-drained with the connection open: exit %d, %q; want 1, %q", code, errs, want)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("wait-drained --timeout 1s took %s", d)
	}

	// The connection closes while wait-drained waits: it returns 0.
	var wout testenv.Buffer
	var werr bytes.Buffer
	done := make(chan int, 1)
	go func() { done <- cmdServer([]string{"-c", file, "wait-drained", "127.0.41.11"}, &wout, &werr) }()
	if !testenv.Eventually(10*time.Second, func() bool { return strings.Contains(wout.String(), "127.0.41.11: 1 active (web "+fe1web+" 1)\n") }) {
		t.Fatalf("wait-drained printed %q", wout.String())
	}
	select {
	case code := <-done:
		t.Fatalf("wait-drained returned %d with the connection open: %q %q", code, wout.String(), werr.String())
	default:
	}
	held.Close()
	select {
	case code := <-done:
		if want := "127.0.41.11: 1 active (web " + fe1web + " 1)\n127.0.41.11: drained: nothing open in sip, web\n"; code != 0 || wout.String() != want {
			t.Errorf("wait-drained after the close: exit %d, %q %q; want 0, %q", code, wout.String(), werr.String(), want)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("wait-drained did not return within 15s of the last connection closing")
	}

	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"drain", "127.0.41.99"}, 1, "real server address 127.0.41.99: in no virtual service"},
		{[]string{"disable", "127.0.41.11:1"}, 1, "in no virtual service with that port (the file has " + fe1sip + " in sip, " + fe1web + " in web; 127.0.41.11 names all of them)"},
		{[]string{"wait-drained", "127.0.41.12"}, 1, "real server address 127.0.41.12 in sip, other: still enabled: drain or disable it first"},
		{[]string{"wait-drained", "127.0.41.99"}, 1, "real server address 127.0.41.99: in no virtual service (404 Not Found)"},
		{[]string{"wait-drained", "sip"}, 2, `pairlb server: "sip": not an IP address: want an address`},
		{[]string{"wait-drained", "sip", fe1sip}, 2, "usage: pairlb server"},
		{[]string{"drain", "127.0.41.11", "--timeout", "1s"}, 2, "--timeout is for wait-drained"},
		{[]string{"wait-drained", "127.0.41.11", "--timeout", "-1s"}, 2, "--timeout -1s"},
		{[]string{"explode", "127.0.41.11"}, 2, `unknown action "explode"`},
	} {
		if code, _, errs := run(c.args...); code != c.code || !strings.Contains(errs, c.want) {
			t.Errorf("server %q: exit %d, %q; want %d and %q", c.args, code, errs, c.code, c.want)
		}
	}
	// Nothing of that changed a state.
	table.Reset()
	cmdStatus([]string{"-c", file}, &table, io.Discard)
	for _, want := range []string{fe1sip + "  drained", fe1web + "  drained", fe2 + "  enabled"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("status at the end lacks %q:\n%s", want, table.String())
		}
	}
}

// TestClientDefaultAddress: without -c and -admin, a missing default file means the default
// admin address (the daemon's default too); a -c that names a missing file is an error naming it.
func TestClientDefaultAddress(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "pairlb.yaml")

	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	f := addClientFlags(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	*f.config = missing // as if it were the default, not given by flag
	c, err := f.client(fs)
	if err != nil {
		t.Fatalf("no -c, default file missing: %v", err)
	}
	if got := c.Addr; got != config.DefaultAdmin {
		t.Errorf("admin address %q, want the default %q", got, config.DefaultAdmin)
	}

	fs = flag.NewFlagSet("status", flag.ContinueOnError)
	f = addClientFlags(fs)
	if err := fs.Parse([]string{"-c", missing}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.client(fs); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("-c naming a missing file: %v, want an error naming it", err)
	}
}
