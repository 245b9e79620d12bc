package pair

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pairlb/pairlb/config"
	"github.com/pairlb/pairlb/internal/netns"
	"github.com/pairlb/pairlb/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// loadExample parses one of config's example files.
func loadExample(t *testing.T, name string) *config.Config {
	t.Helper()
	data, err := fs.ReadFile(config.Examples, "examples/"+name)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(name, data)
	if err != nil {
		t.Fatalf("example %s does not load:\n%v", name, err)
	}
	return cfg
}

// lyncPair is the Lync example with its VRRP secret from testdata, as config.Load reads it
// (the first line).
func lyncPair(t *testing.T) *config.Config {
	t.Helper()
	cfg := loadExample(t, "lync2013-single-pair.yaml")
	cfg.Pair.AuthSecretFile = "testdata/vrrp.secret"
	b, err := os.ReadFile(cfg.Pair.AuthSecretFile)
	if err != nil {
		t.Fatal(err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	cfg.Pair.AuthSecret = strings.TrimSpace(line)
	return cfg
}

// pairFile and validPair are a small pair as config's own tests write it.
func pairFile(pair string) string {
	return `virtual_services:
  - {name: in, vip: 198.51.100.10, ports: ["443/tcp"], default_gateway: 198.51.100.1, real_servers: [{address: 198.18.2.11}]}
  - {name: out, vip: 203.0.113.10, ports: ["443/tcp"], real_servers: [{address: 198.18.2.11}]}
  - {name: out2, vip: 203.0.113.11, ports: ["443/tcp"], real_servers: [{address: 198.18.2.11}]}
# the pair
pair:
` + pair
}

const validPair = `  networks:
    - {name: inside, interface: eth1, prefix: 198.51.100.0/24, vrid: 51}
    - {name: outside, interface: eth2, prefix: 203.0.113.0/24, vrid: 52}
  nodes:
    - {name: lb1, priority: 150, addresses: {inside: 198.51.100.2, outside: 203.0.113.2}, admin: 198.51.100.2:9090}
    - {name: lb2, priority: 100, addresses: {inside: 198.51.100.3, outside: 203.0.113.3}}
`

func TestRenderKeepalivedGolden(t *testing.T) {
	cfg := lyncPair(t)
	for _, node := range []string{"lb1", "lb2"} {
		got, err := RenderKeepalived(cfg, node, KeepalivedOptions{})
		if err != nil {
			t.Fatal(err)
		}
		golden := filepath.Join("testdata", "keepalived-lync2013-"+node+".conf.golden")
		if *update {
			if err := os.WriteFile(golden, got, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(golden)
		if err != nil {
			t.Fatalf("%v (run go test ./pair -run Golden -update to create it)", err)
		}
		if diff := cmp.Diff(string(want), string(got)); diff != "" {
			t.Errorf("%s (-want +got; -update rewrites it):\n%s", golden, diff)
		}
	}
}

func TestRenderKeepalivedVariants(t *testing.T) {
	src := pairFile(validPair + "  vrrp_version: 3\n  advert_interval: 200ms\n  preempt: true\n  preempt_delay: 1500ms\n")
	cfg, err := config.Parse("v3.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	out, err := RenderKeepalived(cfg, "lb2", KeepalivedOptions{Binary: "/opt/pairlb/bin/pairlb"})
	if err != nil {
		t.Fatal(err)
	}
	s := string(out)
	for _, want := range []string{
		"vrrp_version 3\n",
		"advert_int 0.2\n",
		"preempt_delay 1.5\n",
		"priority 100\n",
		"unicast_src_ip 203.0.113.3\n",
		"unicast_peer {\n        203.0.113.2\n    }",
		"198.51.100.10/32 dev eth1\n",
		"203.0.113.10/32 dev eth2\n        203.0.113.11/32 dev eth2\n",
		`script "/opt/pairlb/bin/pairlb keepalived check -admin 127.0.0.1:9090"`,
		"vrrp_sync_group pairlb {",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
	for _, not := range []string{"nopreempt", "authentication"} {
		if strings.Contains(s, not) {
			t.Errorf("output has %q", not)
		}
	}

	// One network: no sync group (keepalived drops a group of one), the instance notifies.
	one := strings.Replace(validPair, "    - {name: outside, interface: eth2, prefix: 203.0.113.0/24, vrid: 52}\n", "", 1)
	one = strings.NewReplacer(", outside: 203.0.113.2", "", ", outside: 203.0.113.3", "").Replace(one)
	src = `global: {admin: "0.0.0.0:9191", admin_token_file: /etc/pairlb/token}
virtual_services:
  - {name: in, vip: 198.51.100.10, ports: ["443/tcp"], real_servers: [{address: 198.18.2.11}]}
pair:
` + one
	cfg, err = config.Parse("one.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	out, err = RenderKeepalived(cfg, "lb1", KeepalivedOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s = string(out)
	if strings.Contains(s, "vrrp_sync_group") || !strings.Contains(s, "    notify \"/usr/local/bin/pairlb keepalived notify -admin 127.0.0.1:9191 -token-file /etc/pairlb/token\"\n}") {
		t.Errorf("single network:\n%s", s)
	}

	for _, tc := range []struct {
		name, node string
		opt        KeepalivedOptions
		secret     string
		msg        string
	}{
		{"unknown node", "lb3", KeepalivedOptions{}, "", `no node "lb3" in the pair (want one of lb1, lb2)`},
		{"relative binary", "lb1", KeepalivedOptions{Binary: "pairlb"}, "", "want an absolute path"},
		// Parse reads no file: the renderer refuses to go on without the secret Load reads.
		{"secret not read", "lb1", KeepalivedOptions{}, "/etc/pairlb/vrrp.secret", "was not read: load the configuration with config.Load"},
	} {
		c := *cfg
		pr := *cfg.Pair
		c.Pair = &pr
		pr.AuthSecretFile = tc.secret
		if _, err := RenderKeepalived(&c, tc.node, tc.opt); err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.msg)
		}
	}
	if _, err := RenderKeepalived(loadExample(t, "loopback.yaml"), "lb1", KeepalivedOptions{}); err == nil || !strings.Contains(err.Error(), "no pair section") {
		t.Errorf("loopback example: error %v, want no pair section", err)
	}
}

// TestRenderKeepalivedFromLoad: the renderer uses the secret config.Load read, and only it.
func TestRenderKeepalivedFromLoad(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "vrrp.secret")
	if err := os.WriteFile(secret, []byte("Lync2013\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "pairlb.yaml")
	if err := os.WriteFile(file, []byte(pairFile(validPair+"  auth_secret_file: "+secret+"\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	out, err := RenderKeepalived(cfg, "lb1", KeepalivedOptions{})
	if err != nil {
		t.Fatalf("render from the secret Load read: %v", err)
	}
	if !bytes.Contains(out, []byte("auth_pass Lync2013\n")) {
		t.Errorf("the rendered file lacks the secret:\n%s", out)
	}
}

// TestRenderKeepalivedAccepted runs keepalived's own check (-t) on the rendered files, inside a
// namespace holding the interfaces they name. keepalived -t needs the interfaces and the
// script to exist: the script is a root-owned stand-in, since only its path is checked.
func TestRenderKeepalivedAccepted(t *testing.T) {
	keepalived := testenv.Program(t, "keepalived", "keepalived")
	lab := netns.ForTest(t)
	ns, err := lab.Namespace("ka")
	if err != nil {
		t.Fatal(err)
	}
	peer, err := lab.Namespace("kapeer")
	if err != nil {
		t.Fatal(err)
	}
	cfg := lyncPair(t)
	for i, nw := range cfg.Pair.Networks {
		if err := lab.Veth(ns, nw.Interface, peer, "p"+string(rune('0'+i))); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "pairlb")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, node := range cfg.Pair.NodeNames() {
		out, err := RenderKeepalived(cfg, node, KeepalivedOptions{Binary: bin})
		if err != nil {
			t.Fatal(err)
		}
		conf := filepath.Join(dir, node+".conf")
		if err := os.WriteFile(conf, out, 0o600); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		msgs, err := ns.Run(ctx, keepalived, "-t", "-f", conf)
		cancel()
		if err != nil {
			var exit *exec.ExitError
			if !errors.As(err, &exit) {
				t.Fatal(err)
			}
			t.Errorf("keepalived -t rejects %s: %v", node, err)
		}
		// keepalived -t exits 0 on some problems it only reports (a script it cannot run).
		for _, bad := range []string{"WARNING", "Disabling", "SECURITY", "missing", "ignoring", "rror", "nknown"} {
			if bytes.Contains(msgs, []byte(bad)) {
				t.Errorf("keepalived -t on %s reports %q:\n%s", node, bad, msgs)
				break
			}
		}
	}
}
