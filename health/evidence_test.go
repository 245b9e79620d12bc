package health

import (
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pairlb/pairlb/config"
	"github.com/pairlb/pairlb/internal/testenv"
)

// evidenceTarget is a target whose normal probes never come within a test (an hour apart), so
// that every probe after the first is one the evidence caused.
func evidenceTarget(server string, fall int) Target {
	return Target{Service: "av", Server: server, Addr: netip.MustParseAddrPort("127.0.0.1:3478"),
		Check: config.Health{Type: config.HealthSTUN, Interval: time.Hour, Timeout: 500 * time.Millisecond, Rise: 1, Fall: fall}}
}

// startUp runs m and waits until server is up after its first probe.
func startUp(t *testing.T, m *Monitor, rec *recorder, server string) {
	t.Helper()
	run(t, m)
	eventually(t, 5*time.Second, server+" up", func() bool {
		ch := rec.changesOf(server)
		return len(ch) == 2 && ch[1].Up
	})
}

func TestSuspectMarksADeadServerDownFast(t *testing.T) {
	const fall = 3
	rec := &recorder{}
	m, fake := fakeMonitor(rec, Options{})
	m.Set([]Target{evidenceTarget("10.11.2.21", fall)})
	startUp(t, m, rec, "10.11.2.21")
	f := fake("10.11.2.21")

	f.fail.Store(true) // the server dies; the next probe would come in an hour
	suspected := time.Now()
	m.Suspect("av", "10.11.2.21", "icmp port unreachable")

	eventually(t, 2*time.Second, "an early probe", func() bool { return len(f.checks()) == 2 })
	if d := f.checks()[1].Sub(suspected); d > 500*time.Millisecond {
		t.Errorf("the early probe started %s after the evidence, want at once", d)
	}
	if st := m.Status()[0]; !st.Up || !st.Suspect || st.LastEvidence != "icmp port unreachable" || st.Evidence != 1 || st.LastEvidenceAt.Before(suspected) {
		t.Errorf("status after the evidence and one failed probe: %+v; want up, suspect, the evidence recorded", st)
	}

	// Down after fall failed probes at the fast interval: about (fall-1) x 1s after the first.
	down := rec.waitChange(t, 3, time.Duration(fall)*fastInterval+3*time.Second)
	if down.Up || down.Reason != "fake failure" {
		t.Fatalf("third change %+v, want down with the probe's reason", down.Change)
	}
	took := down.at.Sub(suspected)
	if want := time.Duration(fall-1) * fastInterval; took < want-100*time.Millisecond || took > want+time.Second {
		t.Errorf("marked down %s after the evidence, want about (fall-1) x fast interval = %s", took, want)
	}
	checks := f.checks()
	if len(checks) != 1+fall {
		t.Errorf("%d probes, want the first and %d after the evidence", len(checks), fall)
	}
	for i := 2; i < len(checks); i++ {
		if gap := checks[i].Sub(checks[i-1]); gap < fastInterval-50*time.Millisecond {
			t.Errorf("probes %d and %d %s apart, want the fast interval %s", i-1, i, gap, fastInterval)
		}
	}
	// Settled (down): back to the normal interval, no more fast probes.
	if st := m.Status()[0]; st.Up || st.Suspect {
		t.Errorf("status once down: %+v, want down and no longer suspect", st)
	}
}

func TestSuspectAloneNeverMarksDown(t *testing.T) {
	rec := &recorder{}
	var logs testenv.Buffer
	m, fake := fakeMonitor(rec, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	m.Set([]Target{evidenceTarget("10.11.2.22", 1)}) // fall 1: a single failed probe would do it
	startUp(t, m, rec, "10.11.2.22")
	f := fake("10.11.2.22")

	// A flood of forged ICMP against a healthy server, for 2.5 s from this goroutine.
	const flood = 2500 * time.Millisecond
	start := time.Now()
	calls := 0
	for time.Since(start) < flood {
		for range 1000 {
			m.Suspect("av", "10.11.2.22", "icmp port unreachable")
		}
		calls += 1000
	}
	took := time.Since(start)
	eventually(t, 2*time.Second, "the probes caused by the flood done", func() bool {
		return m.Status()[0].Suspect == false && len(f.checks()) >= 2
	})
	early := len(f.checks()) - 1
	if max := int(took/fastInterval) + 2; early > max {
		t.Errorf("%d calls of Suspect in %s caused %d probes, want at most one per fast interval (%d)", calls, took, early, max)
	}
	if early < 1 {
		t.Errorf("%d calls of Suspect caused no probe", calls)
	}
	if ch := rec.changesOf("10.11.2.22"); len(ch) != 2 {
		t.Errorf("changes %v: evidence alone changed the state of a server that passes", ch)
	}
	if st := m.Status()[0]; st.Evidence != uint64(calls) {
		t.Errorf("status counts %d reports, want %d", st.Evidence, calls)
	}
	if n := strings.Count(logs.String(), "health evidence"); n != 1 {
		t.Errorf("%d Info lines about the evidence, want 1 (once a minute per server):\n%s", n, logs.String())
	}
	t.Logf("%d calls in %s: %d early probes", calls, took, early)
}

func TestSuspectNeverBlocks(t *testing.T) {
	rec := &recorder{}
	m, fake := fakeMonitor(rec, Options{})
	tg := evidenceTarget("10.11.2.23", 3)
	tg.Check.Timeout = 30 * time.Second // the probe hangs for the whole test
	m.Set([]Target{tg})
	startUp(t, m, rec, "10.11.2.23")
	f := fake("10.11.2.23")

	// The loop is stuck in a probe, and Status holds the lock now and then: Suspect goes on.
	f.hold.Store(true)
	m.Suspect("av", "10.11.2.23", "connection refused")
	eventually(t, 2*time.Second, "a probe running", func() bool { return len(f.checks()) == 2 })
	done := make(chan time.Duration, 1)
	go func() {
		start := time.Now()
		for range 200_000 {
			m.Suspect("av", "10.11.2.23", "connection refused")
			m.Suspect("av", "no-such-server", "connection refused") // unknown: ignored
			m.Suspect("no-such-service", "10.11.2.23", "connection refused")
		}
		done <- time.Since(start)
	}()
	var took time.Duration
	select {
	case took = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("600,000 calls of Suspect did not return within 10s while the probe hung")
	}
	if st := m.Status()[0]; st.Evidence != 200_001 {
		t.Errorf("status counts %d reports, want 200001 (unknown targets ignored)", st.Evidence)
	}
	t.Logf("600,000 calls took %s while the probe hung", took)
	close(f.release) // the probe passes: suspicion ends
	eventually(t, 2*time.Second, "suspicion ended", func() bool { return !m.Status()[0].Suspect })
	f.mu.Lock()
	peak := f.peak
	f.mu.Unlock()
	if peak != 1 {
		t.Errorf("%d probes ran at once, want 1", peak)
	}
	if n := len(m.Status()); n != 1 {
		t.Errorf("Status shows %d targets after evidence about unknown ones, want 1", n)
	}
}

func TestSuspectBeforeRunAndAfterRemoval(t *testing.T) {
	rec := &recorder{}
	m, fake := fakeMonitor(rec, Options{})
	m.Suspect("av", "10.11.2.24", "before any Set") // nothing to find: ignored
	m.Set([]Target{evidenceTarget("10.11.2.24", 3)})
	startUp(t, m, rec, "10.11.2.24")
	m.Set(nil)
	m.Suspect("av", "10.11.2.24", "after removal")
	if n := len(fake("10.11.2.24").checks()); n != 1 {
		t.Errorf("%d probes of a removed target, want only its first", n)
	}
}
