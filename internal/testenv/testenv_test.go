package testenv

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// recorder is a Skipper that records what the test was told to do.
type recorder struct{ skipped, failed string }

func (r *recorder) Helper()           {}
func (r *recorder) Skip(args ...any)  { r.skipped = fmt.Sprint(args...) }
func (r *recorder) Fatal(args ...any) { r.failed = fmt.Sprint(args...) }

// TestSkipOrFail: a missing requirement skips on a laptop and fails under CI=true.
func TestSkipOrFail(t *testing.T) {
	t.Setenv("CI", "")
	var r recorder
	SkipOrFail(&r, "keepalived is not installed")
	if r.failed != "" || !strings.HasPrefix(r.skipped, "keepalived is not installed") {
		t.Errorf("without CI: skipped %q, failed %q", r.skipped, r.failed)
	}
	t.Setenv("CI", "true")
	r = recorder{}
	SkipOrFail(&r, "keepalived is not installed")
	if r.skipped != "" || !strings.Contains(r.failed, "CI=true forbids skipping") {
		t.Errorf("under CI=true: skipped %q, failed %q", r.skipped, r.failed)
	}
}

// TestEventually: it returns as soon as the condition holds, and false at the deadline.
func TestEventually(t *testing.T) {
	n := 0
	if !Eventually(5*time.Second, func() bool { n++; return n == 3 }) || n != 3 {
		t.Errorf("held on the third ask: Eventually asked %d times", n)
	}
	start := time.Now()
	if Eventually(50*time.Millisecond, func() bool { return false }) {
		t.Error("a condition that never holds held")
	}
	if time.Since(start) < 50*time.Millisecond {
		t.Error("gave up before the deadline")
	}
}
