package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pairlb/pairlb/lb"
)

// TestStatusCommand runs `pairlb status` and `pairlb server` against an in-process daemon with
// a token, finding the admin address and token through -c FILE or the flags.
func TestStatusCommand(t *testing.T) {
	a, b := echoServer(t, "a"), echoServer(t, "b")
	port := freeTCPPort(t)
	td := startDaemon(t, "tok3n", serviceYAML("web", port, a)+serviceYAML("media", freeTCPPort(t), b))
	waitGreeting(t, fmt.Sprintf("127.0.0.1:%d", port), "a")
	addr := strings.TrimPrefix(td.admin, "http://")
	tokenFile := filepath.Join(filepath.Dir(td.file), "token")

	var out, errb bytes.Buffer
	if code := cmdStatus([]string{"-c", td.file}, &out, &errb); code != 0 {
		t.Fatalf("status -c: exit %d: %s", code, errb.String())
	}
	table := out.String()
	for _, want := range []string{"pairlb dev, ready, config " + td.file, "\nweb  127.0.0.1  [" + fmt.Sprint(port) + "/tcp]  main table  roundrobin  active ", "  connections 1  in ",
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
	var st statusResponse
	if err := json.Unmarshal(out.Bytes(), &st); err != nil || len(st.VirtualServices) != 2 || st.VirtualServices[0].Name != "web" {
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
	if code := cmdServer([]string{"-c", td.file, "drain", "web", a}, &out, &errb); code != 0 || out.String() != "web "+a+": draining\n" {
		t.Fatalf("server drain: exit %d, %q %q", code, out.String(), errb.String())
	}
	if s := findServer(td.status(t, "tok3n"), "web", a); s.State != "draining" {
		t.Errorf("after server drain: %+v", s)
	}
	out.Reset()
	if code := cmdStatus([]string{"-c", td.file}, &out, &errb); code != 0 || !strings.Contains(out.String(), a+"  draining") {
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
		{[]string{"-c", td.file, "drain", "nope", a}, 1, `virtual service "nope": not found`},
		{[]string{"-c", td.file, "disable", "web", "10.1.1.1"}, 1, `real server "10.1.1.1" of virtual service "web": not found`},
		{[]string{"-c", td.file, "explode", "web", a}, 2, `unknown action "explode"`},
		{[]string{"-c", td.file, "drain", "web"}, 2, "usage: pairlb server"},
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
	td.stop(t)
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

func TestHumanBytes(t *testing.T) {
	for n, want := range map[uint64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 5 << 20: "5.0 MiB", 3 << 40: "3.0 TiB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestPrintStatusPlacement: the status table says what places a new client: the scheduler, or
// the consistent hash of persistence with the scheduler named as unused, and the table's fill.
func TestPrintStatusPlacement(t *testing.T) {
	svc := func(name, sched, placement string, p *lb.PersistenceStatus) serviceView {
		return serviceView{ServiceStatus: lb.ServiceStatus{Name: name, VIP: "198.51.100.10", Scheduler: sched, Placement: placement, Persistence: p,
			Ports: []lb.PortStatus{{Port: "443/tcp"}}}}
	}
	st := &statusResponse{Version: "dev", Ready: true, VirtualServices: []serviceView{
		svc("plain", "leastconn", "leastconn", nil),
		svc("hashed", "leastconn", "hash", &lb.PersistenceStatus{Type: "source-ip", PlaceBy: "hash", Entries: 12, MaxEntries: 1048576}),
		svc("scheduled", "roundrobin", "roundrobin", &lb.PersistenceStatus{Type: "source-ip", PlaceBy: "scheduler", Entries: 3, MaxEntries: 4, Evictions: 9}),
	}}
	st.VirtualServices[0].UDPSessions, st.VirtualServices[0].UDPMoves = 4, 2
	var out bytes.Buffer
	printStatus(&out, st, time.Now())
	for _, want := range []string{
		"\nplain  198.51.100.10  [443/tcp]  main table  leastconn  active 0 (udp sessions 4, moved 2)  ",
		"\nhashed  198.51.100.10  [443/tcp]  main table  hash (scheduler leastconn unused) + persistence 12/1048576  active 0  ",
		"\nscheduled  198.51.100.10  [443/tcp]  main table  roundrobin + persistence 3/4 (9 evicted)  active 0  ",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status table lacks %q:\n%s", want, out.String())
		}
	}
}
