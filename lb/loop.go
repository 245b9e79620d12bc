package lb

import (
	"fmt"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The forwarding plane runs on event loops, as HAProxy and nginx do: one goroutine per loop
// waits on an epoll set holding the listening sockets and both sockets of every open
// connection, and moves bytes when the kernel says a socket is ready. A goroutine per
// connection direction, parked in Go's poller, costs its stack, a scheduler round trip per
// message and Go's poller bookkeeping (getsockname, getpeername, epoll_ctl on every open and
// close) on every new connection; a connection on a loop costs a small struct and two slots in
// a table, however long it stays quiet.
//
// A loop owns everything registered on it: only the loop's goroutine reads or writes a
// connection's state. Other goroutines hand work over with post.

// fdHandler is what a registered descriptor belongs to: a listener or a connection. side tells
// a connection which of its two sockets the events are for.
type fdHandler interface {
	handle(lp *loop, side int8, events uint32)
}

// yieldEvery is how long a busy loop runs before it lets other goroutines run.
const yieldEvery = time.Millisecond

// loopTick bounds how late a loop notices dial timeouts and idle connections.
const loopTick = 250 * time.Millisecond

// fdEntry is one registered descriptor. gen, carried in the epoll event, tells an event for a
// descriptor from one for an earlier socket that had the same number.
type fdEntry struct {
	h    fdHandler
	side int8
	gen  int32
}

type loop struct {
	epfd, wakefd int
	// epfile is epfd in Go's poller: a loop with nothing to do parks its goroutine there
	// instead of blocking in epoll_wait, where the runtime would hand its processor to
	// another thread after 20 µs and wake one again when the loop returns.
	epfile *os.File
	epraw  syscall.RawConn
	pollFn func(fd uintptr) bool // lp.poll, bound once

	// The events of the last poll.
	events   []unix.EpollEvent
	ready    int
	parking  bool
	deadline int64 // set on epfile

	// Only the loop's goroutine touches the fields below, up to mu.
	fds     []fdEntry
	gen     int32
	again   []*tcpConn // connections that stopped early for fairness, to continue next round
	spare   []*tcpConn // the other of two lists for again, swapped each round
	now     int64      // unix nanoseconds, read once per round
	scratch []byte     // read buffer, shared by every connection of the loop
	tickers []func(now int64)
	udp     *udpLoop   // the UDP listeners' batches, made with the first (udplisten.go)
	piped   []*tcpConn // connections that have taken a pipe, to give it back once quiet
	swept   uint64     // connections the sweep has looked at: its work, for the tests
	// timers holds the open connections by dial or idle deadline (tcptimers.go). It is
	// large (32 KiB): the fields the relay reads every round stay together before it.
	timers connTimers

	mu      sync.Mutex
	tasks   []func()
	woken   bool // a wakeup is pending on wakefd
	stopped bool
}

func newLoop() (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("creating an epoll set: %w", err)
	}
	// Non-blocking, so that os.NewFile puts it in Go's poller.
	if err := unix.SetNonblock(epfd, true); err != nil {
		sysClose(epfd)
		return nil, fmt.Errorf("making the epoll set non-blocking: %w", err)
	}
	epfile := os.NewFile(uintptr(epfd), "epoll")
	epraw, err := epfile.SyscallConn()
	if err != nil {
		epfile.Close()
		return nil, fmt.Errorf("polling the epoll set: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		epfile.Close()
		return nil, fmt.Errorf("creating an eventfd: %w", err)
	}
	lp := &loop{epfd: epfd, epfile: epfile, epraw: epraw, wakefd: wakefd, scratch: make([]byte, relayBuffer),
		events: make([]unix.EpollEvent, 256)}
	lp.pollFn = lp.poll
	lp.timers.next = slotOf(time.Now().UnixNano())
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: -1}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		lp.close()
		return nil, fmt.Errorf("watching the eventfd: %w", err)
	}
	return lp, nil
}

// add registers fd for events on behalf of h.
func (lp *loop) add(fd int, events uint32, h fdHandler, side int8) error {
	for fd >= len(lp.fds) {
		lp.fds = append(lp.fds, make([]fdEntry, max(len(lp.fds), 64))...)
	}
	lp.gen++
	lp.fds[fd] = fdEntry{h: h, side: side, gen: lp.gen}
	ev := unix.EpollEvent{Events: events, Fd: int32(fd), Pad: lp.gen}
	if errno := sysEpollCtl(lp.epfd, unix.EPOLL_CTL_ADD, fd, &ev); errno != 0 {
		lp.fds[fd] = fdEntry{}
		return fmt.Errorf("adding descriptor %d to the epoll set: %w", fd, errno)
	}
	return nil
}

// forget drops fd's entry. Closing a descriptor takes it out of the epoll set by itself (no
// epoll_ctl needed) as long as no duplicate of it is open.
func (lp *loop) forget(fd int) {
	if fd >= 0 && fd < len(lp.fds) {
		lp.fds[fd] = fdEntry{}
	}
}

// forgetIf drops fd's entry if it still belongs to h.
func (lp *loop) forgetIf(fd int, h fdHandler) {
	if fd >= 0 && fd < len(lp.fds) && lp.fds[fd].h == h {
		lp.fds[fd] = fdEntry{}
	}
}

// remove takes fd out of the epoll set while it stays open.
func (lp *loop) remove(fd int) {
	lp.forget(fd)
	_ = unix.EpollCtl(lp.epfd, unix.EPOLL_CTL_DEL, fd, nil)
}

// post runs f on the loop's goroutine. Tasks posted after the loop stopped are dropped.
func (lp *loop) post(f func()) {
	lp.mu.Lock()
	if lp.stopped {
		lp.mu.Unlock()
		return
	}
	lp.tasks = append(lp.tasks, f)
	wake := !lp.woken
	lp.woken = true
	lp.mu.Unlock()
	if wake {
		var one = [8]byte{1}
		_, _ = unix.Write(lp.wakefd, one[:])
	}
}

// onTick runs f on every tick of the loop, at least every loopTick.
func (lp *loop) onTick(f func(now int64)) { lp.tickers = append(lp.tickers, f) }

// run serves events until stop is posted.
func (lp *loop) run() {
	nextTick := time.Now().Add(loopTick).UnixNano()
	lastYield := time.Now().UnixNano()
	for {
		n := lp.wait(nextTick)
		events := lp.events
		lp.now = time.Now().UnixNano()
		if lp.now-lastYield > int64(yieldEvery) {
			// A loop that always has work never parks: let the balancer's other goroutines
			// (UDP, health checks, admin) run now rather than at the runtime's forced
			// preemption 10 ms later, which costs a signal besides.
			lastYield = lp.now
			runtime.Gosched()
		}
		for _, ev := range events[:max(n, 0)] {
			if ev.Fd < 0 {
				if !lp.runTasks() {
					return
				}
				continue
			}
			e := lp.fds[ev.Fd]
			if e.h != nil && e.gen == ev.Pad {
				e.h.handle(lp, e.side, ev.Events)
			}
		}
		if again := lp.again; len(again) > 0 {
			// Connections that stop early again go on the other list, for the next round.
			lp.again = lp.spare[:0]
			for i, c := range again {
				c.queued = false
				c.pump()
				again[i] = nil
			}
			lp.spare = again[:0]
		}
		if lp.now >= nextTick {
			nextTick = lp.now + int64(loopTick)
			for _, f := range lp.tickers {
				f(lp.now)
			}
		}
	}
}

// wait returns the events ready now; with none, and no connection to continue, it parks until
// some are ready or the tick is due.
func (lp *loop) wait(tick int64) int {
	if lp.poll(uintptr(lp.epfd)) || len(lp.again) > 0 {
		return lp.ready
	}
	if tick != lp.deadline {
		lp.deadline = tick
		_ = lp.epfile.SetReadDeadline(time.Unix(0, tick))
	}
	lp.parking, lp.ready = true, 0 // the set was found empty just now: wait before asking again
	_ = lp.epraw.Read(lp.pollFn)   // returns at the deadline with nothing read
	return lp.ready
}

// poll is pollFn: it reads the events ready now into lp.events.
func (lp *loop) poll(fd uintptr) bool {
	if lp.parking {
		lp.parking = false
		return false
	}
	n, errno := sysEpollPoll(int(fd), lp.events)
	if errno != 0 && errno != unix.EINTR {
		panic(fmt.Sprintf("epoll_wait on a loop's own set: %v", errno)) // EBADF, EFAULT, EINVAL: a bug
	}
	lp.ready = max(n, 0)
	return lp.ready > 0
}

// runTasks runs the posted tasks; it reports false when one of them stopped the loop.
func (lp *loop) runTasks() bool {
	var buf [8]byte
	_, _ = unix.Read(lp.wakefd, buf[:])
	lp.mu.Lock()
	tasks := lp.tasks
	lp.tasks, lp.woken = nil, false
	lp.mu.Unlock()
	for _, f := range tasks {
		f()
	}
	lp.mu.Lock()
	defer lp.mu.Unlock()
	return !lp.stopped
}

// stop makes run return after the tasks posted before it; it is itself run as a task.
func (lp *loop) stop() {
	lp.mu.Lock()
	lp.stopped = true
	lp.mu.Unlock()
}

// close releases the loop's descriptors once run has returned.
func (lp *loop) close() {
	lp.epfile.Close()
	sysClose(lp.wakefd)
}

// continueLater has the loop pump c again next round, after the other connections' events.
func (lp *loop) continueLater(c *tcpConn) {
	if !c.queued {
		c.queued = true
		lp.again = append(lp.again, c)
	}
}

// sweepConns ends dials that have timed out and connections idle for their service's idle
// timeout, and takes the pipes back from directions that have gone quiet. It looks only at the
// connections whose deadline has come (connTimers) and at those holding a pipe, never at every
// connection.
func (lp *loop) sweepConns(now int64) {
	lp.swept += uint64(lp.timers.expire(now, func(c *tcpConn) { c.expired(now) }))
	piped := lp.piped[:0]
	for _, c := range lp.piped {
		lp.swept++
		if !c.closed && c.givePipesBack(now) {
			piped = append(piped, c)
		} else {
			c.piped = false
		}
	}
	clear(lp.piped[len(piped):])
	lp.piped = piped
}

// closeConns closes every open connection: the drain deadline has passed.
func (lp *loop) closeConns() {
	lp.timers.eachConn(func(c *tcpConn) { c.close(endDrainTimeout) })
}

// udpState returns the loop's UDP state, made with the loop's first UDP listener.
func (lp *loop) udpState() *udpLoop {
	if lp.udp == nil {
		lp.udp = &udpLoop{
			in:      newMsgBatch(udpBatch, maxDatagram),
			out:     newMsgBatch(udpBatch, 0),
			replies: newMsgBatch(udpBatch, maxDatagram),
		}
		lp.onTick(lp.udp.sweep)
	}
	return lp.udp
}
