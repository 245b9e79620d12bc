package lb

// connTimers holds a loop's TCP connections by deadline, a dial's timeout or the moment the
// connection may next be idle for its service's idle timeout, on a timer wheel: a slot per
// loopTick, each a list of the connections whose deadline falls in it, and one more list for
// the connections without a deadline. Every open connection is on exactly one list, so the
// wheel is also the loop's table of its connections (eachConn). A loop's tick looks only at the
// slots whose time has come, so its work is the connections that are due (and, once per turn of
// the wheel, those whose deadline lies more than a turn ahead), never a walk of every
// connection: at 200,000 connections that walk cost about 8 ms every tick. (A slot is looked at
// by two ticks, the one that reaches it and the next, for the connections not yet due then.)
//
// Activity does not move a connection on the wheel: the relay only records lastActive, as it
// always did. When an idle deadline comes, a connection that was active since is put back at its
// new deadline, lastActive plus the timeout: a connection that keeps talking costs one visit per
// idle timeout, not one per packet.
type connTimers struct {
	// slots[timerSlots] lists the connections without a deadline; each list goes through
	// tcpConn.tnext and tprev.
	slots [timerSlots + 1]*tcpConn
	next  int64 // the slot the next expire starts from: the last one it reached
}

// timerSlots is the number of slots: a turn of the wheel is timerSlots*loopTick, about 17
// minutes. An idle timeout longer than that (the default is 30 minutes) costs a connection two
// visits per turn besides the one when it is due.
const timerSlots = 1 << 12

// slotOf is the absolute slot number of time at (unix ns).
func slotOf(at int64) int64 { return at / int64(loopTick) }

// arm puts c on the wheel with deadline at (unix ns), or with none for at 0, taking it off the
// list it was on. A deadline in a slot expire has passed already goes in the slot it starts
// from next, so that it is never a turn late.
func (w *connTimers) arm(c *tcpConn, at int64) {
	w.remove(c)
	s := int32(timerSlots)
	if at != 0 {
		s = int32(max(slotOf(at), w.next) & (timerSlots - 1))
	}
	c.timerAt, c.timerSlot, c.listed = at, s, true
	c.tnext = w.slots[s]
	if c.tnext != nil {
		c.tnext.tprev = c
	}
	w.slots[s] = c
}

// remove takes c off the wheel: it has closed.
func (w *connTimers) remove(c *tcpConn) {
	if !c.listed {
		return
	}
	if c.tprev != nil {
		c.tprev.tnext = c.tnext
	} else {
		w.slots[c.timerSlot] = c.tnext
	}
	if c.tnext != nil {
		c.tnext.tprev = c.tprev
	}
	c.tprev, c.tnext, c.timerAt, c.listed = nil, nil, 0, false
}

// expire calls due for every connection whose deadline is at or before now, after taking the
// deadline away (the connection goes on the list of those without one); due may arm the
// connection again, or close it, but touches no other connection. It looks at the slots from the
// one it reached last time (whose connections not yet due stay) up to now's, every slot at most
// once, and returns how many connections it looked at, due or not: its work.
func (w *connTimers) expire(now int64, due func(c *tcpConn)) (visited int) {
	last := slotOf(now)
	first := w.next
	if last < first || last-first >= timerSlots {
		// The clock went back, or a whole turn has passed: every slot once.
		first = last - timerSlots + 1
	}
	w.next = last
	for k := first; k <= last; k++ {
		// A connection armed again by due goes to the head of its list: this walk, which
		// continues behind it, does not meet it again.
		for c := w.slots[k&(timerSlots-1)]; c != nil; {
			next := c.tnext
			visited++
			if c.timerAt <= now {
				w.arm(c, 0)
				due(c)
			}
			c = next
		}
	}
	return visited
}

// eachConn calls f for every connection on the wheel; f may close the connection it is given.
func (w *connTimers) eachConn(f func(c *tcpConn)) {
	for s := range w.slots {
		for c := w.slots[s]; c != nil; {
			next := c.tnext
			f(c)
			c = next
		}
	}
}
