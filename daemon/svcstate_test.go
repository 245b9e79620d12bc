package daemon

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/pairlb/pairlb/admin"
	"github.com/pairlb/pairlb/internal/testenv"
	"github.com/pairlb/pairlb/lb"
)

// TestServiceStateFollowsHealth: a service's state follows its servers' health checks, in the
// status, its header counts and pairlb_virtual_service_state: up, degraded when one server's
// listener closes, down when the other's does; each server says since when it is down.
func TestServiceStateFollowsHealth(t *testing.T) {
	listen := func() net.Listener {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() { // accept and close: enough for a tcp check
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		return ln
	}
	a, b := listen(), listen()
	aKey, bKey := a.Addr().String(), b.Addr().String()
	td := startDaemon(t, "", tcpHealthService("fe", testenv.FreeTCPPort(t), aKey, bKey)+
		testenv.LoopbackService("other", testenv.FreeTCPPort(t), testenv.EchoServer(t, "o")))

	var st *admin.Status
	waitState := func(step, want string, down, degraded int) {
		t.Helper()
		if !testenv.Eventually(10*time.Second, func() bool {
			st = td.status(t, "")
			return len(st.VirtualServices) == 2 && st.VirtualServices[0].State == want &&
				st.ServicesDown == down && st.ServicesDegraded == degraded
		}) {
			t.Fatalf("%s: fe is not %s (down %d, degraded %d): %+v", step, want, down, degraded, st)
		}
		for _, s := range lb.ServiceStates() {
			v := 0
			if s == want {
				v = 1
			}
			line := fmt.Sprintf(`pairlb_virtual_service_state{state=%q,virtual_service="fe"} %d`, s, v)
			if got := metricLines(t, td, line); len(got) != 1 {
				t.Errorf("%s: /metrics lacks %s", step, line)
			}
		}
		if got := metricLines(t, td, `pairlb_virtual_service_state{state="up",virtual_service="other"} 1`); len(got) != 1 {
			t.Errorf("%s: other is not up in /metrics", step)
		}
	}
	waitState("start", lb.ServiceUp, 0, 0)
	if st.ReadyText() != "ready" {
		t.Errorf("header with every service up: %q", st.ReadyText())
	}

	closedA := time.Now()
	a.Close()
	waitState("a closed", lb.ServiceDegraded, 0, 1)
	if rs := st.Find("fe", aKey); rs.Condition != admin.ServerDown || rs.Since.Before(closedA) {
		t.Errorf("a after its listener closed at %v: %s since %v", closedA, rs.Condition, rs.Since)
	}
	if rs := st.Find("fe", bKey); rs.Condition != admin.ServerAvailable || rs.Since.After(closedA) {
		t.Errorf("b: %s since %v", rs.Condition, rs.Since)
	}
	if got := st.ReadyText(); got != "ready, 1 service degraded" {
		t.Errorf("header with fe degraded: %q", got)
	}

	b.Close()
	waitState("b closed", lb.ServiceDown, 1, 0)
	if got := st.ReadyText(); got != "ready, 1 service down" {
		t.Errorf("header with fe down: %q", got)
	}
	if !st.Ready {
		t.Error("a service down made the daemon not ready")
	}
}
