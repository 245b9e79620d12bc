package lb

import (
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// A Lync Front End pool keeps one long-lived, mostly silent SIP connection per signed-in user.
// A goroutine waiting on each direction of each of them would cost two goroutine stacks per
// connection, several times what the connection's own state needs. So a direction that has
// been quiet for parkAfter leaves its goroutine: its socket goes into an epoll set of the
// parker's, and the first byte that arrives starts a goroutine for it again. Busy directions
// never park and pay nothing for this.

// parkAfter is how long a direction must be quiet before it parks.
const parkAfter = 250 * time.Millisecond

// parker owns the epoll set of parked relay directions and the goroutine that waits on it.
type parker struct {
	epfd int

	mu     sync.Mutex
	parked map[int32]*relay // by the source socket's descriptor
	closed bool
}

func newParker() (*parker, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("creating the epoll set for idle connections: %w", err)
	}
	return &parker{epfd: fd, parked: map[int32]*relay{}}, nil
}

// park hands r over: it returns false (and r keeps waiting on its goroutine) when the parker is
// stopped or the socket cannot be watched.
func (k *parker) park(r *relay) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed || r.p.isClosed() {
		return false
	}
	// One-shot: an event disarms the descriptor until the direction parks again.
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: r.fd}
	op := unix.EPOLL_CTL_MOD
	if !r.watched {
		op = unix.EPOLL_CTL_ADD
	}
	if err := unix.EpollCtl(k.epfd, op, int(r.fd), &ev); err != nil {
		return false
	}
	r.watched = true
	k.parked[r.fd] = r
	return true
}

// unpark takes r back when its connection closes; it reports whether r was parked (its
// goroutine is gone, so the caller finishes it).
func (k *parker) unpark(r *relay) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.parked[r.fd] != r {
		return false
	}
	delete(k.parked, r.fd)
	return true
}

// run resumes parked directions as data arrives, and closes parked connections that reach
// their idle timeout. It returns after stop; directions still parked then stay parked until
// their connection is closed (the drain deadline closes them all).
func (k *parker) run(stop <-chan struct{}) {
	events := make([]unix.EpollEvent, 128)
	lastSweep := time.Now()
	for {
		select {
		case <-stop:
			k.mu.Lock()
			k.closed = true
			k.mu.Unlock()
			return
		default:
		}
		n, err := unix.EpollWait(k.epfd, events, 200)
		if err != nil && err != unix.EINTR {
			n = 0
		}
		k.mu.Lock()
		for _, ev := range events[:max(n, 0)] {
			r := k.parked[ev.Fd]
			if r == nil {
				continue
			}
			delete(k.parked, ev.Fd)
			go r.resume()
		}
		var idle []*relay
		if now := time.Now(); now.Sub(lastSweep) >= time.Second {
			lastSweep = now
			for fd, r := range k.parked {
				if r.p.idleSince(now) {
					delete(k.parked, fd)
					idle = append(idle, r)
				}
			}
		}
		k.mu.Unlock()
		for _, r := range idle {
			r.p.idled.Store(true)
			r.p.close()
			r.finish()
		}
	}
}

// close releases the epoll set once nothing can park any more.
func (k *parker) close() { _ = unix.Close(k.epfd) }
