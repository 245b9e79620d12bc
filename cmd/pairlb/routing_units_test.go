package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pairlb/pairlb/admin"
	"github.com/pairlb/pairlb/internal/netns"
	"github.com/pairlb/pairlb/internal/testenv"
	"github.com/pairlb/pairlb/routing"
)

// The box boots with its DMZ link down and without its address there (configured later):
// pairlb must start and serve the internal VIP, show the DMZ gateway's and VIP's problems in
// the status, the metrics, `pairlb routes` and the log (once), and install them when the link
// is up with its address. Before, `pairlb run` exited at start ("gateway 198.18.2.1 of virtual
// service "dmz" is on no connected subnet of this box").
//
//	router 198.18.1.1 (also the real server, :9000) ── int0 198.18.1.2 box dmz0 (198.18.2.2) ── 198.18.2.1 dmz router
//	VIPs 198.18.1.100 (gateway 198.18.1.1) and 198.18.2.100 (gateway 198.18.2.1), both :8080
const unitsConfig = `global:
  admin: 127.0.0.1:9090
  use_default_route_only: true
  manage_addresses: true
  drain_timeout: 1s
virtual_services:
  - name: internal
    vip: 198.18.1.100
    ports: ["8080/tcp"]
    default_gateway: 198.18.1.1
    health: {type: none}
    real_servers: [{address: "198.18.1.1:9000"}]
  - name: dmz
    vip: 198.18.2.100
    ports: ["8080/tcp"]
    default_gateway: 198.18.2.1
    health: {type: none}
    real_servers: [{address: "198.18.2.1:9000"}]
`

func TestRunWithTheDMZLinkDown(t *testing.T) {
	lab := netns.ForTest(t)
	bin := testenv.Pairlb(t)
	box, rtr, dmz := lab.MustNamespace(t, "ubox"), lab.MustNamespace(t, "urtr"), lab.MustNamespace(t, "udmz")
	pfx := netip.MustParsePrefix
	for _, err := range []error{
		lab.Veth(box, "int0", rtr, "eth0"),
		lab.Veth(box, "dmz0", dmz, "eth0"),
		box.AddAddr("int0", pfx("198.18.1.2/24")),
		rtr.AddAddr("eth0", pfx("198.18.1.1/24")),
		dmz.AddAddr("eth0", pfx("198.18.2.1/24")),
		box.SetLink("dmz0", false),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	greet(t, rtr, "198.18.1.1:9000", "internal server")

	dir := t.TempDir()
	conf := filepath.Join(dir, "pairlb.yaml")
	writeFile(t, conf, unitsConfig)
	p := startIn(t, t, box, filepath.Join(dir, "pairlb.log"), bin, "run", "-c", conf)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("pairlb log:\n%s", p.output())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := nsAdmin(box, "127.0.0.1:9090").Ready(context.Background())
		if err == nil {
			break
		}
		if !p.alive() {
			t.Fatalf("pairlb exited at start with the DMZ link down:\n%s", p.output())
		}
		if time.Now().After(deadline) {
			t.Fatalf("pairlb not ready within 10s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// The internal VIP serves, through its own table.
	line, err := nsLine(rtr, "198.18.1.100:8080")
	if err != nil || line != "internal server" {
		t.Errorf("internal VIP with the DMZ link down: %q, %v", line, err)
	}
	m := routing.New(box.Handle(), nil)
	rules, routes, err := m.Installed()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(routes, func(r routing.Route) bool { return r.Table == routing.TableFirst && r.Gw.String() == "198.18.1.1" }) {
		t.Errorf("no default via the internal gateway: %v", routes)
	}
	// The DMZ VIP keeps its rule, into a table that says "unreachable" until the link is up.
	if !slices.ContainsFunc(rules, func(r routing.Rule) bool {
		return r.Table == routing.TableFirst+1 && r.Src == pfx("198.18.2.100/32")
	}) {
		t.Errorf("no rule for the DMZ VIP: %v", rules)
	}

	st := nsStatus(t, box)
	if st.Routing == nil || len(st.Routing.Problems) != 2 {
		t.Fatalf("routing status with the DMZ link down: %+v", st.Routing)
	}
	pr := st.Routing.Problems[0]
	if pr.Kind != "gateway" || pr.Gateway != "198.18.2.1" || pr.Family != "ipv4" || !slices.Equal(pr.Services, []string{"dmz"}) ||
		pr.Reason != "the gateway is on no connected subnet of this box" || pr.Since.IsZero() || st.Routing.Units != 4 {
		t.Errorf("routing status: %+v", st.Routing)
	}
	if pr := st.Routing.Problems[1]; pr.Kind != "address" || pr.VIP != "198.18.2.100" || pr.Unit != "VIP address 198.18.2.100" {
		t.Errorf("routing status of the DMZ VIP: %+v", pr)
	}
	metric := func(gw string) string {
		_, body, err := nsGet(box, "127.0.0.1:9090", "/metrics")
		if err != nil {
			return err.Error()
		}
		re := regexp.MustCompile(`(?m)^pairlb_routing_unit_ok\{address="` + regexp.QuoteMeta(gw) + `",family="ipv4",kind="gateway"\} (\S+)$`)
		if m := re.FindSubmatch(body); m != nil {
			return string(m[1])
		}
		return "absent"
	}
	if got := metric("198.18.2.1"); got != "0" {
		t.Errorf("pairlb_routing_unit_ok of the DMZ gateway = %s, want 0", got)
	}
	if got := metric("198.18.1.1"); got != "1" {
		t.Errorf("pairlb_routing_unit_ok of the internal gateway = %s, want 1", got)
	}

	// pairlb routes says the same.
	for _, c := range []struct {
		action string
		code   int
		want   string
	}{
		{"show", 0, "# cannot be installed now (what is above is installed without it):\n" +
			`#   gateway 198.18.2.1 of virtual service "dmz": the gateway is on no connected subnet of this box` + "\n"},
		{"apply", 1, "except:\n" + `  gateway 198.18.2.1 of virtual service "dmz": the gateway is on no connected subnet of this box` + "\n"},
	} {
		var stdout, stderr strings.Builder
		var code int
		if err := box.Do(func() error { code = cmdRoutes([]string{"-c", conf, c.action}, &stdout, &stderr); return nil }); err != nil {
			t.Fatal(err)
		}
		if out := stdout.String() + stderr.String(); code != c.code || !strings.Contains(out, c.want) {
			t.Errorf("pairlb routes %s: exit %d, want %d and %q:\n%s", c.action, code, c.code, c.want, out)
		}
	}

	// The link comes up with its address: the DMZ table and VIP are installed, the problems
	// clear.
	if err := box.SetLink("dmz0", true); err != nil {
		t.Fatal(err)
	}
	if err := box.AddAddr("dmz0", pfx("198.18.2.2/24")); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(5 * time.Second)
	for {
		st := nsStatus(t, box)
		if st.Routing != nil && len(st.Routing.Problems) == 0 && metric("198.18.2.1") == "1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the DMZ problems did not clear within 5s of the link coming up: %+v", st.Routing)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, routes, err := m.Installed(); err != nil || !slices.ContainsFunc(routes, func(r routing.Route) bool { return r.Gw.String() == "198.18.2.1" }) {
		t.Errorf("no default via the DMZ gateway after the link came up: %v, %v", routes, err)
	}

	if !p.stop(syscall.SIGTERM) {
		t.Fatal("pairlb did not stop on SIGTERM")
	}
	log := p.output()
	if n := strings.Count(log, `msg="routing: part of the plan not installed; retrying when links or addresses change" unit="gateway 198.18.2.1"`); n != 1 {
		t.Errorf("the DMZ gateway's problem was logged %d times, want once:\n%s", n, log)
	}
	if n := strings.Count(log, `msg="routing: part of the plan installed" unit="gateway 198.18.2.1"`); n != 1 {
		t.Errorf("the DMZ gateway's repair was logged %d times, want once", n)
	}
}

// greet serves name on addr inside ns until the test ends.
func greet(t *testing.T, ns *netns.NS, addr, name string) {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, name)
			c.Close()
		}
	})
}

// nsLine connects from inside ns and returns the first line it is sent.
func nsLine(ns *netns.NS, addr string) (string, error) {
	var line string
	err := ns.Do(func() error {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		line, err = bufio.NewReader(c).ReadString('\n')
		return err
	})
	return strings.TrimSuffix(line, "\n"), err
}

// nsHTTP is an HTTP client whose connections are made inside ns (an ordinary client dials
// from goroutines outside it).
func nsHTTP(ns *netns.NS) *http.Client {
	return &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DialContext: ns.DialContext, DisableKeepAlives: true}}
}

// nsAdmin is the admin client of the pairlb whose admin API is at addr inside ns.
func nsAdmin(ns *netns.NS, addr string) *admin.Client {
	c := admin.NewClient(addr, nil)
	c.HTTP = nsHTTP(ns)
	return c
}

// nsGet sends GET path to the HTTP server at addr inside ns.
func nsGet(ns *netns.NS, addr, path string) (int, []byte, error) {
	resp, err := nsHTTP(ns).Get("http://" + addr + path)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, body, err
}

func nsStatus(t *testing.T, ns *netns.NS) *admin.Status {
	t.Helper()
	st, err := nsAdmin(ns, "127.0.0.1:9090").Status(context.Background())
	if err != nil {
		t.Fatalf("GET /api/v1/status: %v", err)
	}
	return st
}
