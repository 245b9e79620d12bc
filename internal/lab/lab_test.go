package lab

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pairlb/pairlb/config"
	"github.com/pairlb/pairlb/internal/netns"
	"github.com/pairlb/pairlb/internal/testenv"
)

type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// assertGone checks that nothing of the lab is left: no namespace with its prefix, no state.
func assertGone(t *testing.T, prefix, stateDir string) {
	t.Helper()
	left, err := Leftovers(prefix)
	if err != nil || len(left) > 0 {
		t.Errorf("left after the lab: namespaces %v (%v)", left, err)
	}
	entries, err := os.ReadDir(stateDir)
	if err != nil || len(entries) > 0 {
		t.Errorf("left in the state directory %s: %v (%v)", stateDir, entries, err)
	}
}

// The whole lab: every port of every service of the Lync example answers, through the right
// router, and nothing is left afterwards.
func TestLab(t *testing.T) {
	netns.RequireRoot(t)
	t.Parallel()
	bin := testenv.Pairlb(t)
	stateDir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	start := time.Now()
	rep, err := Run(ctx, Options{Binary: bin, StateDir: stateDir, Progress: logWriter{t}})
	var printed bytes.Buffer
	if rep != nil {
		Print(&printed, rep)
		t.Logf("\n%s", printed.String())
		assertGone(t, rep.Prefix, stateDir)
	}
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 45*time.Second {
		t.Errorf("the lab took %s; want well under a minute", d)
	}
	cfg, _, err := MappedExample()
	if err != nil {
		t.Fatal(err)
	}
	ports := 0
	for _, vs := range cfg.VirtualServices {
		ports += len(vs.Ports)
	}
	if len(rep.Rows) != ports || ports < 37 {
		t.Errorf("%d rows, want one per service port (%d)", len(rep.Rows), ports)
	}
	for _, r := range rep.Rows {
		if !r.Pass() {
			t.Errorf("%s %s: %d/%d answered, path %s, errors %v", r.Service, r.Key(), r.Answered, r.Sent, r.Path, r.Errors)
		}
		if r.Network == "internal" && r.Sent != 2*2*2 {
			t.Errorf("%s: %d requests, want 8 (two clients, the DMZ-subnet one included)", r.Key(), r.Sent)
		}
	}
	if rep.PairlbExit != "exit status 0" {
		t.Errorf("pairlb after SIGTERM: %s", rep.PairlbExit)
	}
	// `pairlb status` in the box: its table printed under the rows, and its --json answer
	// matching the configuration.
	if sc := rep.Status; !sc.OK() || sc.Services != len(cfg.VirtualServices) || sc.Ports != len(rep.Rows) || sc.Servers == 0 {
		t.Errorf("pairlb status check: %+v", sc)
	}
	out := printed.String()
	for _, want := range []string{"pairlb status on the box (-admin 127.0.0.1:9090):", "status check (--json): pass: ", "pairlb status check: pass"} {
		if !strings.Contains(out, want) {
			t.Errorf("the printed report lacks %q", want)
		}
	}
	for _, vs := range cfg.VirtualServices {
		if !strings.Contains(out, "\n  "+vs.Name+"  ") {
			t.Errorf("the printed status lacks virtual service %s", vs.Name)
		}
	}
	if !rep.Pass() {
		t.Error("report does not pass")
	}
}

// The checks are not vacuous: without use_default_route_only the box answers the DMZ-subnet
// client straight out of its DMZ interface, the internal router drops the rest of each session as
// invalid, and every internal row fails with the leak named. The lab is kept and then removed
// with Clean, as `pairlb lab --keep` and `--clean` do.
func TestLabCatchesAsymmetry(t *testing.T) {
	netns.RequireRoot(t)
	t.Parallel()
	bin := testenv.Pairlb(t)
	stateDir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	rep, err := Run(ctx, Options{
		Binary: bin, StateDir: stateDir, Progress: logWriter{t}, Keep: true, Requests: 1,
		change:       func(c *config.Config) { c.Global.UseDefaultRouteOnly = false },
		probeTimeout: time.Second,
	})
	if rep != nil {
		t.Cleanup(func() {
			if err := Clean(stateDir, logWriter{t}); err != nil {
				t.Errorf("Clean: %v", err)
			}
			assertGone(t, rep.Prefix, stateDir)
		})
	}
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	Print(&b, rep)
	t.Logf("\n%s", b.String())
	if !rep.Kept || len(rep.Namespaces) < 20 {
		t.Fatalf("lab not kept: %+v", rep)
	}
	if left, _ := Leftovers(rep.Prefix); len(left) != len(rep.Namespaces) {
		t.Errorf("kept lab has %d namespaces, the state records %d", len(left), len(rep.Namespaces))
	}
	for _, r := range rep.Rows {
		switch {
		case r.Network == "internal":
			if r.Pass() || r.Path.OK || !strings.Contains(strings.Join(r.Path.Leaks, ";"), "straight from the box to cli-dmzsub") {
				t.Errorf("%s: passed or no leak reported without use_default_route_only: %d/%d, path %s", r.Key(), r.Answered, r.Sent, r.Path)
			}
		case !r.Pass():
			t.Errorf("%s %s: %d/%d answered, path %s, errors %v", r.Service, r.Key(), r.Answered, r.Sent, r.Path, r.Errors)
		}
	}
	if rep.Invalid["r-int"] == 0 {
		t.Error("the internal router dropped no invalid packets")
	}
}
