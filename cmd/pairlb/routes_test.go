package main

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pairlb/pairlb/config"
	plbns "github.com/pairlb/pairlb/internal/netns"
	"github.com/pairlb/pairlb/internal/testenv"
	"github.com/pairlb/pairlb/routing"
)

const routesYAML = `global:
  use_default_route_only: true
  manage_addresses: true
virtual_services:
  - name: web
    vip: 198.51.100.100
    ports: ["80/tcp"]
    default_gateway: 198.51.100.1
    health: {type: none}
    real_servers: [{address: 198.51.100.20}]
  - name: av
    vip: 198.51.100.101
    ports: ["443/tcp"]
    default_gateway: 198.51.100.1
    transparent: true
    health: {type: none}
    real_servers: [{address: 203.0.113.10}]
`

// TestRoutesCommandInNamespace runs `pairlb routes` inside a namespace of its own: show before
// anything is installed, apply, show again (no difference), flush (nothing left).
func TestRoutesCommandInNamespace(t *testing.T) {
	lab := plbns.ForTest(t)
	box, err := lab.Namespace("rbox")
	if err != nil {
		t.Fatal(err)
	}
	peer, err := lab.Namespace("rpeer")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := lab.Namespace("rsrv")
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{
		lab.Veth(box, "ext0", peer, "eth0"),
		lab.Veth(box, "srv0", srv, "eth0"),
		box.AddAddr("ext0", netip.MustParsePrefix("198.51.100.2/24")),
		box.AddAddr("srv0", netip.MustParsePrefix("203.0.113.1/24")),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	file := filepath.Join(t.TempDir(), "pairlb.yaml")
	if err := os.WriteFile(file, []byte(routesYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	routes := func(action string) (string, int) {
		t.Helper()
		var stdout, stderr bytes.Buffer
		var code int
		if err := box.Do(func() error { code = cmdRoutes([]string{"-c", file, action}, &stdout, &stderr); return nil }); err != nil {
			t.Fatal(err)
		}
		t.Logf("pairlb routes %s: exit %d\n%s%s", action, code, stdout.String(), stderr.String())
		return stdout.String(), code
	}
	contains := func(out string, want ...string) {
		t.Helper()
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("output lacks %q", w)
			}
		}
	}
	nft := func() string {
		out, err := box.Run(context.Background(), "nft", "list", "tables")
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}

	out, code := routes("show")
	if code != 0 {
		t.Fatalf("show exited %d", code)
	}
	contains(out,
		"# table 20100: gateway 198.51.100.1 dev ext0, for web, av",
		"# table 20099: replies to transparent sockets arriving on srv0, for av",
		"\n# installed now (rules, routes, nftables; VIP addresses are neither listed nor compared)\n# nothing\n",
		"+ ip rule add from 198.51.100.100/32 lookup 20100 priority 20100 protocol 112",
		"+ ip rule add fwmark 0x70/0xff lookup 20099 priority 20099 protocol 112",
		"+ ip route add local default dev lo proto 112 metric 1024 table 20099",
		`+ nft add rule inet pairlb prerouting iifname "srv0" socket transparent 1`,
	)

	if _, code := routes("apply"); code != 0 {
		t.Fatalf("apply exited %d", code)
	}
	if !strings.Contains(nft(), "table inet pairlb") {
		t.Error("no nftables table inet pairlb after apply")
	}
	out, _ = routes("show")
	contains(out, "# none: the kernel matches the plan", "ip rule add from 198.51.100.101/32 lookup 20100")
	if _, code := routes("apply"); code != 0 {
		t.Fatalf("second apply exited %d", code)
	}

	// Unprivileged, show still reads the rules and routes; nftables needs CAP_NET_ADMIN.
	if setpriv, err := exec.LookPath("setpriv"); err != nil {
		t.Log("no setpriv: the unprivileged show is not checked")
	} else {
		bin := testenv.Pairlb(t)
		for _, p := range []string{filepath.Dir(filepath.Dir(file)), filepath.Dir(bin), filepath.Dir(file)} { // the test's temporary directories are 0700
			if err := os.Chmod(p, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Chmod(file, 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := box.Run(context.Background(), setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
			bin, "routes", "-c", file, "show")
		t.Logf("unprivileged pairlb routes show: %v\n%s", err, out)
		if err != nil {
			t.Errorf("unprivileged show failed: %v", err)
		}
		contains(string(out), "ip rule add from 198.51.100.101/32 lookup 20100",
			"# nftables not readable without CAP_NET_ADMIN: left out of the difference",
			"# none: the kernel matches the plan")
		out, err = box.Run(context.Background(), setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
			bin, "routes", "-c", file, "flush")
		if err == nil || !strings.Contains(string(out), "needs CAP_NET_ADMIN") {
			t.Errorf("unprivileged flush: %v\n%s", err, out)
		}
	}

	if _, code := routes("flush"); code != 0 {
		t.Fatalf("flush exited %d", code)
	}
	if strings.Contains(nft(), "pairlb") {
		t.Errorf("nftables table left after flush:\n%s", nft())
	}
	out, _ = routes("show")
	contains(out, "# installed now (rules, routes, nftables; VIP addresses are neither listed nor compared)\n# nothing\n")

	if _, code := routes("bogus"); code != 2 {
		t.Errorf("unknown action exited %d, want 2", code)
	}
}

// TestShowPlanMissingInterface: without root or a namespace, the plan `routes show` prints for
// a box whose DMZ interface is not there yet holds the rest of the plan, the gateway's table
// with no link, and which interface is missing for what.
func TestShowPlanMissingInterface(t *testing.T) {
	cfg := &config.Config{
		Global: config.Global{UseDefaultRouteOnly: true},
		VirtualServices: []config.VirtualService{
			{Name: "fe-sip", VIP: netip.MustParseAddr("198.51.100.50"), DefaultGateway: netip.MustParseAddr("198.51.100.1")},
			{Name: "edge-int", VIP: netip.MustParseAddr("203.0.113.50"), DefaultGateway: netip.MustParseAddr("203.0.113.1")},
		},
		Pair: &config.Pair{Networks: []config.PairNetwork{
			{Name: "internal", Interface: "eth1", Prefix: netip.MustParsePrefix("198.51.100.0/24")},
			{Name: "dmz", Interface: "eth2", Prefix: netip.MustParsePrefix("203.0.113.0/24")},
		}},
	}
	links := []routing.Link{{Index: 2, Name: "eth1", Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("198.51.100.2/24")}}}
	plan, err := routing.BuildPlan(cfg, links)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	writePlan(&b, "/etc/pairlb/pairlb.yaml", plan)
	out := b.String()
	t.Logf("plan:\n%s", out)
	for _, w := range []string{
		"# table 20100: gateway 198.51.100.1 dev eth1, for fe-sip\n",
		"# table 20101: gateway 203.0.113.1, on no link yet (see below), for edge-int\n",
		"ip route add default via 198.51.100.1 dev eth1",
		"ip rule add from 203.0.113.50/32 lookup 20101",
		`#   gateway 203.0.113.1 of virtual service "edge-int": the gateway is on no connected subnet of this box`,
		`# missing interface eth2 (pair network dmz, 203.0.113.0/24), for gateway 203.0.113.1, virtual service "edge-int"` + "\n",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("plan lacks %q", w)
		}
	}
	if strings.Contains(out, "missing interface eth1") {
		t.Error("eth1 is there, and reported missing")
	}
}
