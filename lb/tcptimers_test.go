package lb

import (
	"net"
	"testing"
	"time"
)

// TestConnTimers steps the wheel with an injected clock: a connection fires at its deadline
// and not before, within the tick it falls in; the sweep looks at the connections due and at
// no other; a deadline beyond a turn of the wheel fires on time, after a visit per turn; a
// deadline already passed fires at the next sweep, never a turn late; connections without a
// deadline or removed are never looked at but by eachConn; and a connection armed again by its
// own firing is not met twice.
func TestConnTimers(t *testing.T) {
	tick := int64(loopTick)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	var w connTimers
	w.next = slotOf(t0)
	id := map[*tcpConn]int{}
	conn := func(i int) *tcpConn { c := &tcpConn{}; id[c] = i; return c }
	conns := make([]*tcpConn, 1000)
	for i := range conns {
		conns[i] = conn(i)
		w.arm(conns[i], t0+int64(time.Hour)) // far away: more than a turn
	}
	none := conn(-6)
	w.arm(none, 0) // no deadline
	soon, later, far := conn(-1), conn(-2), conn(-3)
	w.arm(soon, t0+tick+tick/2)
	w.arm(later, t0+10*tick)
	w.arm(far, t0+int64(timerSlots+5)*tick) // a turn and five ticks ahead

	var fired []int
	due := func(c *tcpConn) { fired = append(fired, id[c]) }
	step := func(now int64) int { fired = fired[:0]; return w.expire(now, due) }

	if v := step(t0 + tick/2); v != 0 || len(fired) != 0 {
		t.Fatalf("first sweep: visited %d, fired %v; want nothing", v, fired)
	}
	// soon's slot is reached before soon is due: it is looked at, and stays.
	if v := step(t0 + tick + tick/4); v != 1 || len(fired) != 0 {
		t.Fatalf("within soon's tick, before it: visited %d, fired %v; want 1 visit, nothing fired", v, fired)
	}
	if v := step(t0 + 2*tick); v != 1 || len(fired) != 1 || fired[0] != -1 {
		t.Fatalf("soon's deadline passed: visited %d, fired %v; want soon alone", v, fired)
	}
	// Catching up over several ticks at once (a busy loop) reaches later's slot, and far's,
	// which is a turn ahead: far is looked at and stays.
	if v := step(t0 + 10*tick); v != 2 || len(fired) != 1 || fired[0] != -2 {
		t.Fatalf("at later's deadline: visited %d, fired %v; want later and far looked at, later fired", v, fired)
	}
	// A connection armed again when it fires, into the slot being walked, is not met again.
	again := conn(-4)
	w.arm(again, t0+10*tick)
	n := 0
	v := w.expire(t0+10*tick, func(c *tcpConn) { n++; w.arm(c, t0+10*tick+tick/2) })
	if n != 1 || v != 1 {
		t.Fatalf("armed again within the walk: fired %d times, visited %d; want 1 and 1", n, v)
	}
	w.remove(again)
	// A deadline in a slot already passed fires at the next sweep.
	late := conn(-5)
	w.arm(late, t0)
	if v := step(t0 + 10*tick + tick/2); v != 1 || len(fired) != 1 || fired[0] != -5 {
		t.Fatalf("a deadline armed after its slot: visited %d, fired %v; want it fired now", v, fired)
	}
	// Removed connections are never looked at.
	for _, c := range conns[:500] {
		w.remove(c)
	}
	// A turn later, far fires; on the way the 500 far-away connections still armed are looked
	// at in the one slot they share, by two sweeps, and the 500 removed not at all.
	total, firedFar := 0, false
	for now := t0 + 11*tick; now <= t0+int64(timerSlots+5)*tick; now += tick {
		total += step(now)
		for _, i := range fired {
			if i != -3 {
				t.Fatalf("fired %d at %v, before its deadline", i, time.Duration(now-t0))
			}
			firedFar = true
		}
	}
	if !firedFar {
		t.Fatal("a deadline a turn ahead never fired")
	}
	// The slot a sweep ends in is looked at again by the next, for what was not yet due.
	if total != 2*500+1 { // the 500 twice, far when due
		t.Fatalf("a turn of the wheel looked at %d connections, want 1001", total)
	}
	if c := w.slots[slotOf(t0+int64(time.Hour))&(timerSlots-1)]; c == nil {
		t.Fatal("the far-away connections left the wheel")
	}
	// The clock going back (or a sweep after a turn and more) looks at every slot once.
	if v := step(t0); v != 500 {
		t.Fatalf("after the clock went back: visited %d, want the 500 armed once", v)
	}
	// eachConn meets every connection on the wheel once: the 500 far away, the one without a
	// deadline, and those that fired, which stay without one.
	seen := map[int]int{}
	w.eachConn(func(c *tcpConn) { seen[id[c]]++ })
	for _, i := range []int{-6, -1, -2, -3, -5, 500, 999} {
		if seen[i] != 1 {
			t.Errorf("eachConn met connection %d %d times, want once", i, seen[i])
		}
	}
	if len(seen) != 500+5 || seen[0] != 0 || seen[-4] != 0 {
		t.Errorf("eachConn met %d connections, want the 505 on the wheel and not the removed", len(seen))
	}
}

// TestTCPSweepVisitsOnlyDueConnections: the loop's tick looks at the connections whose dial or
// idle deadline has come, not at every open one. It used to walk them all every 250 ms (8 ms
// per tick at 200,000 connections); here 200 quiet connections with a minute of idle timeout
// must not be looked at while five with 300 ms expire.
func TestTCPSweepVisitsOnlyDueConnections(t *testing.T) {
	be := startBackend(t, "a")
	quiet := testService(t, "quiet", be.addr())
	quiet.IdleTimeout = time.Minute
	brief := testService(t, "brief", be.addr())
	brief.IdleTimeout = 300 * time.Millisecond
	bal, _ := startBalancer(t, testConfig(quiet, brief))
	open := func(vs string, n int) {
		t.Helper()
		for range n {
			c, err := net.Dial("tcp", vs)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(make([]byte, 2)); err != nil { // the greeting: connected
				t.Fatal(err)
			}
		}
	}
	swept := func() uint64 {
		var n uint64
		for _, lp := range bal.loops {
			done := make(chan uint64)
			lp.post(func() { done <- lp.swept })
			n += <-done
		}
		return n
	}
	open(vipAddr(quiet, 0), 200)
	before := swept()
	open(vipAddr(brief, 0), 5)
	status := func(name string) ServiceStatus {
		for _, s := range bal.Status() {
			if s.Name == name {
				return s
			}
		}
		t.Fatalf("no service %s", name)
		return ServiceStatus{}
	}
	waitFor(t, "the brief connections idle out", func() bool { return status("brief").Active == 0 })
	visited := swept() - before
	if n := status("quiet").Active; n != 200 {
		t.Fatalf("%d quiet connections open, want 200", n)
	}
	// Each brief connection is looked at when its idle deadline comes (moved once by the
	// greeting), and possibly once more in its slot before it is due: at most four visits.
	if visited > 4*5 {
		t.Fatalf("the sweeps looked at %d connections to expire 5 (200 more open and quiet)", visited)
	}
}
