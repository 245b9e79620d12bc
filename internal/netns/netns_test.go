package netns

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestLabVethAndCleanup(t *testing.T) {
	RequireRoot(t)
	lab := New()
	t.Cleanup(func() { _ = lab.Cleanup() })

	a, err := lab.Namespace("a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := lab.Namespace("b")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lab.Namespace("a"); err == nil {
		t.Fatal("a second namespace named a was created")
	}
	if err := lab.Veth(a, "va", b, "vb"); err != nil {
		t.Fatal(err)
	}
	if err := a.AddAddr("va", netip.MustParsePrefix("198.18.200.1/24"), netip.MustParsePrefix("2001:db8:200::1/64")); err != nil {
		t.Fatal(err)
	}
	if err := b.AddAddr("vb", netip.MustParsePrefix("198.18.200.2/24"), netip.MustParsePrefix("2001:db8:200::2/64")); err != nil {
		t.Fatal(err)
	}
	if err := b.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	out, err := b.Run(context.Background(), "cat", "/proc/sys/net/ipv4/ip_forward")
	if err != nil || string(out) != "1\n" {
		t.Fatalf("ip_forward in b = %q, %v; want 1", out, err)
	}

	for _, addr := range []string{"198.18.200.2:7000", "[2001:db8:200::2]:7000"} {
		var ln net.Listener
		if err := b.Do(func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
			t.Fatal(err)
		}
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("hi"))
			c.Close()
		}()
		var got []byte
		err := a.Do(func() error {
			c, err := net.DialTimeout("tcp", addr, 2*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			got, err = io.ReadAll(c)
			return err
		})
		ln.Close()
		if err != nil || string(got) != "hi" {
			t.Fatalf("dial %s from a: %q, %v", addr, got, err)
		}
	}

	cmd, err := a.Start("sleep", "60")
	if err != nil {
		t.Fatal(err)
	}
	if err := lab.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if cmd.ProcessState == nil {
		t.Error("started process was not reaped by Cleanup")
	}
	for _, n := range []*NS{a, b} {
		if _, err := os.Stat(filepath.Join(runDir, n.Name())); !os.IsNotExist(err) {
			t.Errorf("namespace %s still exists: %v", n.Name(), err)
		}
	}
	if err := lab.Cleanup(); err != nil {
		t.Fatalf("second Cleanup: %v", err)
	}
}
